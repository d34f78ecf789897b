"""The Coze simulator as a pure ASGI application (no web framework, no Django).

It speaks the wire format of Coze's Open API (the endpoints below, as Coze documents them)
closely enough that cozepy and @coze/api parse its answers exactly as they parse the real
service. Everything it knows lives in memory in one :class:`SimulatorState`, exposed as
``app.state``.

Endpoints (JSON answers are ``{"code": 0, "msg": "", "data": ...}``; business errors are
HTTP 200 with a non-zero ``code``; every response carries a unique ``x-tt-logid`` header):

========================================  ==================================================
``POST /v3/chat?conversation_id=``        start a chat; ``stream: true`` answers SSE,
                                          otherwise the chat object (``in_progress``) and the
                                          chat runs in the background with the same timing.
                                          Without ``conversation_id`` a new conversation; a
                                          conversation without a bot takes the chat's
``POST /v3/chat/retrieve?…&chat_id=``     the chat object (GET works too)
``GET /v3/chat/message/list?…``           the chat's messages once it has completed:
                                          (function_call, tool_response,) answer, verbose,
                                          two follow-ups (POST works too)
``POST /v3/chat/cancel``                  body ``{conversation_id, chat_id}``; flips the
                                          status to ``canceled`` but, like Coze, does not stop
                                          the stream; 4104 when the chat already ended. A chat
                                          waiting for tool outputs ends there
``POST /v3/chat/submit_tool_outputs``     ``?conversation_id=&chat_id=``, body
                                          ``{tool_outputs: [{tool_call_id, output}], stream}``:
                                          continues a chat paused in ``requires_action``
                                          (below), streamed like ``/v3/chat`` or answered with
                                          the chat object; 4000 unless each pending call has
                                          exactly one output
``POST /v1/conversation/create``          JSON or form body, all optional: ``bot_id``,
                                          ``meta_data``, ``messages`` (stored; the user ones
                                          seed the memory; in a form, JSON text)
``GET /v1/conversation/retrieve``         the conversation object (POST works too)
``GET /v1/conversations?bot_id=``         the bot's conversations, newest first:
                                          ``{conversations, has_more}`` by ``page_num``,
                                          ``page_size`` (≤ 50; POST works too)
``POST /v1/conversations/{id}/clear``     starts a new section: the memory is reset (the
                                          stored messages stay)
``DELETE /v1/conversations/{id}``         deletes it (then 4002), recorded
``POST /v1/conversation/message/list``    ``?conversation_id=``, body ``{order, chat_id,
                                          before_id, after_id, limit}``: questions and
                                          answers, ``first_id``, ``last_id``, ``has_more``
                                          beside ``data``; see ``MessageRoutes``
``POST /v1/conversation/message/delete``  ``?conversation_id=&message_id=``: the deleted
                                          message, recorded
``POST|DELETE /v1/conversations/{id}/     ``{feedback_type: "like"|"unlike", reason_types?,
messages/{id}/feedback``                  comment?}`` (POST) → ``{}``, recorded
``POST /api/permission/oauth2/token``     OAuth JWT grant (signature not checked); issued
                                          tokens are valid Bearer tokens afterwards
``POST /v1/files/upload``                 multipart, field ``file``: ``{"id","bytes",
                                          "file_name","created_at"}``; code 4000 for a file
                                          over ``max_upload_bytes`` (Coze: 512 MB), of a type
                                          Coze does not take (by extension), empty, or missing
``GET /v1/files/retrieve?file_id=``       the same file object; 4000 when unknown
``GET /_sim/stats``                       ``open_streams``, ``total_streams``,
                                          ``client_disconnects``, ``cancels``
``GET /_sim/chats/{chat_id}``             ``status``, ``tokens_sent``,
                                          ``client_disconnected_at``, ``canceled_at``,
                                          ``finished_at``, ``conversation_id``, ``stream``,
                                          ``additional_messages`` (as received), ``user_id``,
                                          ``required_action``, ``tool_outputs`` (as received)
``GET /_sim/conversations/{id}``          ``bot_id``, ``section_id``, ``turns`` (the memory),
                                          ``message_ids`` (stored), ``running_chat_id``
``GET /_sim/files/{file_id}``             ``file_name``, ``bytes``, ``content_type`` (of the
                                          part), ``sha256`` of the content received
``GET /_sim/feedback``                    ``{"feedback": [...]}``: each feedback call in order
                                          (``method``, ``conversation_id``, ``message_id``,
                                          ``feedback_type``, ``reason_types``, ``comment``)
``GET /_sim/deletions``                   ``{"deletions": [...]}``: each deleted conversation
                                          or message (``conversation_id``, ``message_id``)
========================================  ==================================================

Answers are deterministic. The user text is the content of the last ``additional_messages``
item with role ``user`` (the ``text`` fields joined for ``object_string``). The answer is
``"You said: {text}"``, plus ``" (turn {n}; before that you said: {previous})"`` from the
second turn of a section on. It streams in deltas of 1, 2, 3, 4, 1, 2, … code points, so
splits land inside words, CRLF pairs and emoji sequences. A user message of ``object_string``
with ``image``/``file`` items gets `` [received: image cat.png, file https://…/a.pdf]`` after
its answer (not after an ``[sim:echo]``), naming each uploaded file by the name it was uploaded
with, or each link; an unknown ``file_id`` fails the chat request with code 4000, as on Coze.
Usage: ``output_count`` is the
number of delta events (reasoning pieces included), ``input_count`` is the number of
characters of user text in the section // 4 + 1.

Directives anywhere in the user text change the behaviour of that one chat:

``[sim:echo]``            the answer is exactly the text after the directive
``[sim:reasoning]``       ``reasoning_content`` deltas ("Let me think about that.") first
``[sim:slow=MS]``         delay between deltas (overrides ``token_delay_ms``)
``[sim:first_delay=MS]``  delay before the first delta (overrides ``first_token_delay_ms``)
``[sim:tool]``            the bot calls its local plugin ``get_weather`` first (below);
``[sim:tool=A,B]``        calls the plugins ``A`` and ``B``
``[sim:auth_failed]``     HTTP 401, code 4100
``[sim:no_permission]``   HTTP 403, code 4101
``[sim:rate_limited]``    HTTP 429, code 4020, ``Retry-After: 2``
``[sim:http429]``         HTTP 429, ``text/plain`` "Too Many Requests", ``Retry-After: 3``
``[sim:daily_limit]``     code 4008
``[sim:system_busy]``     code 4009
``[sim:busy]``            code 4016
``[sim:bad_param]``       code 4000
``[sim:server_error]``    HTTP 500, ``text/html`` ``<html>oops</html>``
``[sim:garbage]``         HTTP 200 ``text/event-stream`` with an unparseable line
``[sim:chat_failed]``     half of the deltas, then ``conversation.chat.failed`` (5000), done
``[sim:error_event]``     half of the deltas, then an ``error`` event (4013); the body ends
``[sim:drop]``            half of the deltas, then the connection is cut mid-body
``[sim:silence=S]``       half of the deltas, S seconds of nothing, then the rest

Local plugins (``[sim:tool]``): after ``conversation.chat.in_progress`` and the first-token
delay, the chat sends one ``function_call`` message per plugin (``conversation.message.completed``,
content ``{"name", "arguments"}``), then ``conversation.chat.requires_action`` whose chat object
has ``status: "requires_action"`` and ``required_action: {type: "submit_tool_outputs",
submit_tool_outputs: {tool_calls: [{id, type: "function", function: {name, arguments}}]}}``
(``arguments`` is the JSON string ``{"input": <the user text without directives>}``), then the
stream ends. The conversation stays busy (4016) until ``/v3/chat/submit_tool_outputs`` brings
one output per call: the same chat then goes on (no ``conversation.chat.created``: it starts
at ``conversation.chat.in_progress``), sends one ``tool_response`` message per output, and
answers as usual with `` [tool NAME: OUTPUT]`` appended for each call (also after an
``[sim:echo]``). A chat not given its outputs within ``tool_output_timeout_s`` fails (5000).

A chat whose stream the client closes stops at once: it is recorded with
``client_disconnected_at`` and status ``canceled`` (``canceled_at`` stays null: only the
cancel endpoint sets it), and the conversation is free for the next chat.

Coze Studio (``SimulatorConfig(studio=True)``, ``python -m chat.simulator --studio``) answers
as a self-hosted Coze Studio does instead: a stream ends with ``event:conversation.stream.done``
and an empty ``data:`` line, not ``done``; no ``verbose`` message; a non-stream chat answers
once it has ended (or paused for tools); personal access tokens only (no OAuth route); a
conversation's ``messages`` at creation are ignored; ``/v3/chat/retrieve``,
``/v3/chat/message/list``, ``/v1/conversation/retrieve`` and ``/v1/conversations`` are GET
only; and there is no ``submit_tool_outputs``, feedback, message delete or file retrieve
route. Like Studio, an unknown route or method answers HTTP 404 ``{"code": 404, "msg":
"not found"}``.
"""

from __future__ import annotations

import time
from urllib.parse import parse_qsl

from .chats import ChatRoutes
from .conversations import ConversationRoutes
from .files import FileRoutes
from .inspection import InspectionRoutes
from .messages import MessageRoutes
from .oauth import OAuthRoutes
from .state import SimulatorConfig, SimulatorState
from .wire import (
    MAX_BODY_BYTES,
    UPLOAD_PATH,
    AsgiMessage,
    CozeError,
    Receive,
    Request,
    Response,
    Route,
    Send,
    json_response,
    new_logid,
)

__all__ = ["SimulatorApp", "SimulatorConfig", "SimulatorState", "create_app"]


class SimulatorApp(ChatRoutes, ConversationRoutes, MessageRoutes, FileRoutes, OAuthRoutes, InspectionRoutes):
    """The ASGI callable. ``state`` holds the simulator's memory, ``config`` its settings."""

    def __init__(self, config: SimulatorConfig):
        self.config = config
        self.state = SimulatorState()
        studio = config.studio
        # Studio serves some reads on GET only, and lacks the routes set to None here.
        get_or_post = frozenset({"GET"} if studio else {"GET", "POST"})
        post = frozenset({"POST"})
        routes: dict[str, Route | None] = {
            "/v3/chat": (post, self._chat_create, True),
            "/v3/chat/retrieve": (get_or_post, self._chat_retrieve, True),
            "/v3/chat/message/list": (get_or_post, self._chat_messages, True),
            "/v3/chat/cancel": (post, self._chat_cancel, True),
            "/v3/chat/submit_tool_outputs": None if studio else (post, self._chat_submit_tool_outputs, True),
            "/v1/conversation/create": (post, self._conversation_create, True),
            "/v1/conversation/retrieve": (get_or_post, self._conversation_retrieve, True),
            "/v1/conversations": (get_or_post, self._conversation_list, True),
            "/v1/conversation/message/list": (post, self._message_list, True),
            "/v1/conversation/message/delete": None if studio else (post, self._message_delete, True),
            UPLOAD_PATH: (post, self._file_upload, True),
            "/v1/files/retrieve": None if studio else (frozenset({"GET"}), self._file_retrieve, True),
            "/api/permission/oauth2/token": None if studio else (post, self._oauth_token, False),
            "/_sim/stats": (frozenset({"GET"}), self._sim_stats, False),
            "/_sim/feedback": (frozenset({"GET"}), self._sim_feedback, False),
            "/_sim/deletions": (frozenset({"GET"}), self._sim_deletions, False),
        }
        self._routes: dict[str, Route] = {path: route for path, route in routes.items() if route is not None}

    # ----------------------------------------------------------------- ASGI plumbing

    async def __call__(self, scope: AsgiMessage, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        logid = new_logid()
        try:
            limit = self.config.max_upload_bytes + 1024 * 1024 if scope["path"] == UPLOAD_PATH else MAX_BODY_BYTES
            body = await self._read_body(receive, limit)
            if body is None:  # the client left before sending its body
                return
            request = Request(
                method=scope["method"],
                path=scope["path"],
                query=dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"))),
                headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]},
                body=body,
                logid=logid,
                receive=receive,
                send=send,
            )
            response = await self._dispatch(request)
        except CozeError as error:
            response = self._error_response(error, logid)
        if response is not None:
            await self._send_response(send, response, logid)

    @staticmethod
    async def _lifespan(receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    @staticmethod
    async def _read_body(receive: Receive, limit: int = MAX_BODY_BYTES) -> bytes | None:
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise CozeError(4000, "the body is too large")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    @staticmethod
    async def _send_response(send: Send, response: Response, logid: str) -> None:
        headers = [
            (b"content-type", response.content_type + b"; charset=utf-8"),
            (b"content-length", str(len(response.body)).encode()),
            (b"x-tt-logid", logid.encode()),
            *response.headers,
        ]
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": headers,
            }
        )
        await send({"type": "http.response.body", "body": response.body})

    @staticmethod
    def _error_response(error: CozeError, logid: str) -> Response:
        payload = {"code": error.code, "msg": error.msg, "detail": {"logid": logid}}
        return json_response(error.status, payload, error.headers)

    async def _dispatch(self, request: Request) -> Response | None:
        route = self._routes.get(request.path)
        if route is None:
            route = self._pattern_route(request.path)
        if route is None or (self.config.studio and request.method not in route[0]):
            return self._not_found()
        methods, handler, needs_auth = route
        if request.method not in methods:
            return json_response(405, {"code": 4000, "msg": "method not allowed"})
        if needs_auth:
            self._authenticate(request)
        return await handler(request)

    def _not_found(self) -> Response:
        if self.config.studio:  # Studio's answer to a path (or method) it has no route for
            return json_response(404, {"code": 404, "msg": "not found"})
        return json_response(404, {"code": 4000, "msg": "not found"})

    def _pattern_route(self, path: str) -> Route | None:
        parts = path.split("/")
        if len(parts) >= 4 and parts[1:3] == ["v1", "conversations"] and parts[3]:
            # /v1/conversations/{id}
            if len(parts) == 4:
                return frozenset({"DELETE"}), self._conversation_delete, True
            # /v1/conversations/{id}/clear
            if len(parts) == 5 and parts[4] == "clear":
                return frozenset({"POST"}), self._conversation_clear, True
            # /v1/conversations/{id}/messages/{id}/feedback
            if len(parts) == 7 and parts[4] == "messages" and parts[6] == "feedback" and not self.config.studio:
                return frozenset({"POST", "DELETE"}), self._message_feedback, True
            return None
        # /_sim/chats/{id}, /_sim/conversations/{id}, /_sim/files/{id}
        if len(parts) == 4 and parts[1] == "_sim":
            handler = {"chats": self._sim_chat, "conversations": self._sim_conversation, "files": self._sim_file}
            if parts[2] in handler:
                return frozenset({"GET"}), handler[parts[2]], False
        return None

    def _authenticate(self, request: Request) -> None:
        expected = self.config.token
        if expected is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token:
            if token == expected:
                return
            expiry = self.state.issued_tokens.get(token)
            if expiry is not None and expiry > time.time():
                return
        raise CozeError(4100, "authentication is invalid", 401)


def create_app(config: SimulatorConfig | None = None) -> SimulatorApp:
    """A fresh simulator ASGI app; its memory is ``app.state``."""
    return SimulatorApp(config or SimulatorConfig())
