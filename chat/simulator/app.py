"""The Coze simulator as a pure ASGI application (no web framework, no Django).

It speaks the wire format of Coze's Open API (the endpoints below, as Coze documents them)
closely enough that cozepy parses its answers exactly as it parses the real service. Everything it
knows lives in memory in one :class:`SimulatorState`, exposed as ``app.state``.

Endpoints (JSON answers are ``{"code": 0, "msg": "", "data": ...}``; business errors are
HTTP 200 with a non-zero ``code``; every response carries a unique ``x-tt-logid`` header):

======================================  ====================================================
``POST /v3/chat?conversation_id=``      start a chat; ``stream: true`` answers SSE, otherwise
                                        the chat object (``in_progress``) and the chat runs
                                        in the background with the same timing
``POST /v3/chat/retrieve?…&chat_id=``   the chat object (GET works too)
``GET /v3/chat/message/list?…``         the chat's messages once it has completed: answer,
                                        verbose, two follow-ups
``POST /v3/chat/cancel``                body ``{conversation_id, chat_id}``; flips the status
                                        to ``canceled`` but, like Coze, does not stop the
                                        stream; 4104 when the chat already ended
``POST /v1/conversation/create``        a conversation; user ``messages`` seed its memory
``GET /v1/conversation/retrieve``       the conversation object
``POST /v1/conversations/{id}/clear``   starts a new section: the memory is reset
``POST /api/permission/oauth2/token``   OAuth JWT grant (signature not checked); issued
                                        tokens are valid Bearer tokens afterwards
``POST /v1/files/upload``               multipart, field ``file``: ``{"id","bytes","file_name",
                                        "created_at"}``; code 4000 for a file over
                                        ``max_upload_bytes`` (Coze: 512 MB), of a type Coze
                                        does not take (by extension), empty, or missing
``GET /v1/files/retrieve?file_id=``     the same file object; 4000 when unknown
``GET /_sim/stats``                     ``open_streams``, ``total_streams``,
                                        ``client_disconnects``, ``cancels``
``GET /_sim/chats/{chat_id}``           ``status``, ``tokens_sent``, ``client_disconnected_at``,
                                        ``canceled_at``, ``finished_at``, ``conversation_id``,
                                        ``stream``, ``additional_messages`` (as received)
``GET /_sim/files/{file_id}``           ``file_name``, ``bytes``, ``content_type`` (of the
                                        part), ``sha256`` of the content received
======================================  ====================================================

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

A chat whose stream the client closes stops at once: it is recorded with
``client_disconnected_at`` and status ``canceled`` (``canceled_at`` stays null: only the
cancel endpoint sets it), and the conversation is free for the next chat.
"""

from __future__ import annotations

import asyncio
import base64
import email.parser
import email.policy
import hashlib
import itertools
import json
import math
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

__all__ = ["SimulatorApp", "SimulatorConfig", "SimulatorState", "create_app"]

AsgiMessage = dict[str, Any]
Receive = Callable[[], Awaitable[AsgiMessage]]
Send = Callable[[AsgiMessage], Awaitable[None]]
Handler = Callable[["Request"], Awaitable["Response | None"]]
Route = tuple[frozenset[str], Handler, bool]  # methods, handler, needs authentication

REASONING_TEXT = "Let me think about that."
FOLLOW_UPS = ("Tell me more", "What else can you do?")
VERBOSE_CONTENT = '{"msg_type":"generate_answer_finish","data":"","from_module":null,"from_unit":null}'
JWT_GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
MAX_BODY_BYTES = 16 * 1024 * 1024
UPLOAD_PATH = "/v1/files/upload"
# Coze's documented limit for one uploaded file.
COZE_MAX_UPLOAD_BYTES = 512 * 1024 * 1024
# Extensions of the file types Coze's upload accepts (documents, text and code, images, audio,
# video, archives).
COZE_UPLOAD_EXTENSIONS = frozenset(
    "doc docx xls xlsx ppt pptx pdf numbers csv txt md json xml html htm cpp py java c js ts go "
    "jpg jpeg jpg2 png gif webp heic heif bmp pcd tiff tif wav ogg mp3 m4a mp4 avi mov 3gp 3gpp flv "
    "webm wmv rmvb zip rar".split()
)
# Finished chats beyond this many are forgotten, oldest first, so a long demo stays small.
MAX_CHATS = 20_000

_DIRECTIVE_RE = re.compile(r"\[sim:([a-z_0-9]+)(?:=([^\]]*))?\]")
_ECHO = "[sim:echo]"
# httpx's line splitter (and so cozepy) breaks lines on these too; JSON may escape them.
_LINE_BREAK_ESCAPES = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}
_SEPARATORS = (",", ":")


@dataclass
class SimulatorConfig:
    """How a simulator instance behaves.

    ``token``: when set, every Coze endpoint requires ``Authorization: Bearer <token>`` (or a
    token issued by the OAuth endpoint) and answers HTTP 401 / code 4100 otherwise.
    ``token_delay_ms``: pause between two deltas. ``first_token_delay_ms``: pause between
    ``conversation.chat.in_progress`` and the first delta. ``max_upload_bytes``: the largest
    file ``/v1/files/upload`` takes.
    """

    token: str | None = None
    token_delay_ms: float = 0
    first_token_delay_ms: float = 0
    max_upload_bytes: int = COZE_MAX_UPLOAD_BYTES


@dataclass(eq=False)
class Conversation:
    """A conversation and the memory of its current section."""

    id: str
    created_at: int
    meta_data: dict[str, Any]
    section_id: str
    turns: list[str] = field(default_factory=list)
    running_chat_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created_at": self.created_at,
            "meta_data": self.meta_data,
            "last_section_id": self.section_id,
        }


@dataclass(eq=False)
class Chat:
    """One chat (a user turn and its answer), as Coze reports it and as tests inspect it."""

    id: str
    conversation_id: str
    bot_id: str
    section_id: str
    created_at: int
    meta_data: dict[str, Any]
    stream: bool
    status: str = "in_progress"
    usage: dict[str, int] = field(default_factory=lambda: {"token_count": 0, "output_count": 0, "input_count": 0})
    last_error: dict[str, Any] = field(default_factory=lambda: {"code": 0, "msg": ""})
    completed_at: int | None = None
    failed_at: int | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    tokens_sent: int = 0
    request_messages: list[Any] = field(default_factory=list)
    client_disconnected_at: float | None = None
    canceled_at: float | None = None
    finished_at: float | None = None

    def as_dict(self, status: str | None = None) -> dict[str, Any]:
        """The Coze chat object; ``status`` overrides the stored one (for stream events)."""
        data: dict[str, Any] = {
            "id": self.id,
            "conversation_id": self.conversation_id,
            "bot_id": self.bot_id,
            "created_at": self.created_at,
            "last_error": self.last_error,
            "meta_data": self.meta_data,
            "status": status or self.status,
            "usage": self.usage,
            "section_id": self.section_id,
        }
        if self.completed_at is not None:
            data["completed_at"] = self.completed_at
        if self.failed_at is not None:
            data["failed_at"] = self.failed_at
        return data

    def inspection(self) -> dict[str, Any]:
        """What ``GET /_sim/chats/{id}`` answers."""
        return {
            "status": self.status,
            "tokens_sent": self.tokens_sent,
            "client_disconnected_at": self.client_disconnected_at,
            "canceled_at": self.canceled_at,
            "finished_at": self.finished_at,
            "conversation_id": self.conversation_id,
            "stream": self.stream,
            "additional_messages": self.request_messages,
        }


@dataclass(eq=False)
class UploadedFile:
    """A file received by ``/v1/files/upload``: its metadata and a digest, not its content."""

    id: str
    file_name: str
    bytes: int
    content_type: str
    sha256: str
    created_at: int

    def as_dict(self) -> dict[str, Any]:
        """Coze's file object."""
        return {"id": self.id, "bytes": self.bytes, "file_name": self.file_name, "created_at": self.created_at}

    def inspection(self) -> dict[str, Any]:
        return {
            "file_name": self.file_name,
            "bytes": self.bytes,
            "content_type": self.content_type,
            "sha256": self.sha256,
        }


@dataclass(eq=False)
class SimulatorState:
    """Everything the simulator knows; safe to read from another thread for inspection."""

    conversations: dict[str, Conversation] = field(default_factory=dict)
    chats: dict[str, Chat] = field(default_factory=dict)
    issued_tokens: dict[str, float] = field(default_factory=dict)  # token -> expiry
    files: dict[str, UploadedFile] = field(default_factory=dict)
    open_streams: int = 0
    total_streams: int = 0
    client_disconnects: int = 0
    cancels: int = 0
    background: set[asyncio.Task[None]] = field(default_factory=set)

    def stats(self) -> dict[str, int]:
        return {
            "open_streams": self.open_streams,
            "total_streams": self.total_streams,
            "client_disconnects": self.client_disconnects,
            "cancels": self.cancels,
        }


class CozeError(Exception):
    """A Coze business error, answered as ``{"code": code, "msg": msg}``."""

    def __init__(self, code: int, msg: str, status: int = 200, headers: list | None = None):
        super().__init__(f"{code}: {msg}")
        self.code = code
        self.msg = msg
        self.status = status
        self.headers = headers or []


class SimulatedDrop(Exception):
    """Raised mid-stream for ``[sim:drop]`` so the server aborts the connection."""


@dataclass
class Response:
    """A complete (non-streaming) HTTP response."""

    status: int
    body: bytes
    content_type: bytes = b"application/json"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    logid: str
    receive: Receive
    send: Send

    def json(self) -> dict[str, Any]:
        """The body as a JSON object ({} when empty); code 4000 when it is not one."""
        if not self.body.strip():
            return {}
        try:
            data = json.loads(self.body)
        except ValueError:
            raise CozeError(4000, "invalid JSON body") from None
        if not isinstance(data, dict):
            raise CozeError(4000, "the body must be a JSON object")
        return data


@dataclass
class Directives:
    """The ``[sim:…]`` directives of one user text."""

    flags: set[str]
    echo: str | None = None
    slow_ms: float | None = None
    first_delay_ms: float | None = None
    silence_s: float | None = None

    @classmethod
    def parse(cls, text: str) -> Directives:
        if "[sim:" not in text:
            return cls(flags=set())
        flags: set[str] = set()
        values: dict[str, float] = {}
        for name, value in _DIRECTIVE_RE.findall(text):
            flags.add(name)
            if name in ("slow", "first_delay", "silence") and value:
                try:
                    number = float(value)
                except ValueError:
                    number = -1.0
                if not math.isfinite(number) or number < 0:
                    raise CozeError(4000, f"invalid simulator directive [sim:{name}={value}]")
                values.setdefault(name, number)
        echo = text.split(_ECHO, 1)[1] if _ECHO in text else None
        return cls(
            flags=flags,
            echo=echo,
            slow_ms=values.get("slow"),
            first_delay_ms=values.get("first_delay"),
            silence_s=values.get("silence"),
        )


def json_bytes(obj: Any) -> bytes:
    """One line of UTF-8 JSON that survives cozepy's line splitting byte for byte."""
    text = json.dumps(obj, ensure_ascii=False, separators=_SEPARATORS)
    text = text.translate(_LINE_BREAK_ESCAPES)
    try:
        return text.encode()
    except UnicodeEncodeError:  # lone surrogates: \u escapes round-trip them exactly
        return json.dumps(obj, separators=_SEPARATORS).encode()


def split_deltas(text: str) -> list[str]:
    """Cut ``text`` into pieces of 1, 2, 3, 4, 1, 2, … code points ("" gives no pieces)."""
    pieces = []
    start = 0
    for size in itertools.cycle((1, 2, 3, 4)):
        if start >= len(text):
            return pieces
        pieces.append(text[start : start + size])
        start += size
    return pieces  # pragma: no cover - the cycle never ends on its own


def message_text(message: Any) -> str:
    """The text of one Coze message (``object_string``: its ``text`` items joined)."""
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if not isinstance(content, str):
        return ""
    if message.get("content_type") != "object_string":
        return content
    try:
        items = json.loads(content)
    except ValueError:
        return content
    if not isinstance(items, list):
        return content
    return "".join(item["text"] for item in items if isinstance(item, dict) and isinstance(item.get("text"), str))


def user_text(messages: list[Any]) -> str:
    """The text of the last user message ("" when there is none)."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return message_text(message)
    return ""


def message_attachments(message: Any) -> list[dict[str, Any]]:
    """The ``image``/``file``/``audio`` items of an ``object_string`` message ([] otherwise)."""
    if not isinstance(message, dict) or message.get("content_type") != "object_string":
        return []
    try:
        items = json.loads(message.get("content") or "")
    except (TypeError, ValueError):
        return []
    if not isinstance(items, list):
        return []
    return [item for item in items if isinstance(item, dict) and item.get("type") in ("image", "file", "audio")]


def last_user_message(messages: list[Any]) -> Any:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return message
    return None


def answer_text(text: str, directives: Directives, earlier_turns: list[str]) -> str:
    """The deterministic answer to ``text`` given the section's earlier user turns."""
    if directives.echo is not None:
        return directives.echo
    answer = f"You said: {text}"
    if earlier_turns:
        answer += f" (turn {len(earlier_turns) + 1}; before that you said: {earlier_turns[-1]})"
    return answer


def sse_frame(event: str, data: Any) -> bytes:
    return b"event:" + event.encode() + b"\ndata:" + json_bytes(data) + b"\n\n"


_IDS = itertools.count(7 * 10**18 + (time.time_ns() // 10**6 % 10**12) * 10**5)
_DONE_FRAME = b'event:done\ndata:"[DONE]"\n\n'
_ERROR_EVENT_FRAME = sse_frame("error", {"code": 4013, "msg": "model error"})

# Faults answered before any chat exists, in order of precedence: a Coze error as
# (code, msg, HTTP status, extra headers), or a whole non-JSON response.
_PRE_CHAT_FAULTS: dict[str, tuple[int, str, int, list] | Response] = {
    "auth_failed": (4100, "authentication is invalid", 401, []),
    "no_permission": (4101, "the token has no permission for this resource", 403, []),
    "rate_limited": (
        4020,
        "the request rate exceeded the limit",
        429,
        [(b"retry-after", b"2")],
    ),
    "http429": Response(429, b"Too Many Requests", b"text/plain", [(b"retry-after", b"3")]),
    "daily_limit": (4008, "the bot's daily usage limit is exceeded", 200, []),
    "system_busy": (4009, "the system is busy, please try again later", 200, []),
    "busy": (4016, "a chat is already running in this conversation", 200, []),
    "bad_param": (4000, "invalid parameter", 200, []),
    "server_error": Response(500, b"<html>oops</html>", b"text/html"),
    "garbage": Response(200, b"nonsense line\n\n", b"text/event-stream"),
}
# Faults that strike after half of the deltas, in order of precedence.
_MID_STREAM_FAULTS = ("chat_failed", "error_event", "drop", "silence")


@dataclass
class ChatPlan:
    """Everything a chat will send, serialised up front so the per-delta work is one send."""

    reasoning_frames: list[bytes]
    answer_frames: list[bytes]
    final_messages: list[dict[str, Any]]
    usage: dict[str, int]
    first_delay: float
    token_delay: float
    fault: str | None
    silence: float


class _StreamOutput:
    """Buffers frames and sends them, one ``send`` per burst, whenever the chat pauses."""

    __slots__ = ("_buffer", "_send")

    def __init__(self, send: Send):
        self._send = send
        self._buffer: list[bytes] = []

    def write(self, frame: bytes) -> None:
        self._buffer.append(frame)

    def take(self) -> bytes:
        body = b"".join(self._buffer)
        self._buffer = []
        return body

    async def flush(self) -> None:
        if self._buffer:
            await self._send({"type": "http.response.body", "body": self.take(), "more_body": True})

    async def pause(self, seconds: float) -> None:
        if seconds > 0:
            await self.flush()
            await asyncio.sleep(seconds)


class _NullOutput:
    """Where a non-streaming chat "sends": nowhere, but with the same timing."""

    __slots__ = ()

    def write(self, frame: bytes) -> None:
        pass

    async def flush(self) -> None:
        pass

    async def pause(self, seconds: float) -> None:
        if seconds > 0:
            await asyncio.sleep(seconds)


def _new_logid() -> str:
    return time.strftime("%Y%m%d%H%M%S") + os.urandom(10).hex().upper()


def _json_response(status: int, payload: Any, headers: list | None = None) -> Response:
    return Response(status, json_bytes(payload), headers=headers or [])


def _ok(data: Any) -> Response:
    return _json_response(200, {"code": 0, "msg": "", "data": data})


class SimulatorApp:
    """The ASGI callable. ``state`` holds the simulator's memory, ``config`` its settings."""

    def __init__(self, config: SimulatorConfig):
        self.config = config
        self.state = SimulatorState()
        self._routes: dict[str, Route] = {
            "/v3/chat": (frozenset({"POST"}), self._chat_create, True),
            "/v3/chat/retrieve": (
                frozenset({"GET", "POST"}),
                self._chat_retrieve,
                True,
            ),
            "/v3/chat/message/list": (
                frozenset({"GET", "POST"}),
                self._chat_messages,
                True,
            ),
            "/v3/chat/cancel": (frozenset({"POST"}), self._chat_cancel, True),
            "/v1/conversation/create": (
                frozenset({"POST"}),
                self._conversation_create,
                True,
            ),
            "/v1/conversation/retrieve": (
                frozenset({"GET", "POST"}),
                self._conversation_retrieve,
                True,
            ),
            UPLOAD_PATH: (frozenset({"POST"}), self._file_upload, True),
            "/v1/files/retrieve": (frozenset({"GET"}), self._file_retrieve, True),
            "/api/permission/oauth2/token": (
                frozenset({"POST"}),
                self._oauth_token,
                False,
            ),
            "/_sim/stats": (frozenset({"GET"}), self._sim_stats, False),
        }

    @staticmethod
    def new_id() -> str:
        """A 19-digit numeric id like Coze's, unique within the process."""
        return str(next(_IDS))

    # ----------------------------------------------------------------- ASGI plumbing

    async def __call__(self, scope: AsgiMessage, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        logid = _new_logid()
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
        return _json_response(error.status, payload, error.headers)

    async def _dispatch(self, request: Request) -> Response | None:
        route = self._routes.get(request.path)
        if route is None:
            route = self._pattern_route(request.path)
        if route is None:
            return _json_response(404, {"code": 4000, "msg": "not found"})
        methods, handler, needs_auth = route
        if request.method not in methods:
            return _json_response(405, {"code": 4000, "msg": "method not allowed"})
        if needs_auth:
            self._authenticate(request)
        return await handler(request)

    def _pattern_route(self, path: str) -> Route | None:
        parts = path.split("/")
        # /v1/conversations/{id}/clear
        if len(parts) == 5 and parts[1:3] == ["v1", "conversations"] and parts[4] == "clear":
            return frozenset({"POST"}), self._conversation_clear, True
        # /_sim/chats/{id}
        if len(parts) == 4 and parts[1:3] == ["_sim", "chats"]:
            return frozenset({"GET"}), self._sim_chat, False
        # /_sim/files/{id}
        if len(parts) == 4 and parts[1:3] == ["_sim", "files"]:
            return frozenset({"GET"}), self._sim_file, False
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

    # ----------------------------------------------------------------- lookups

    def _conversation(self, conversation_id: str | None) -> Conversation:
        conversation = self.state.conversations.get(conversation_id or "")
        if conversation is None:
            raise CozeError(4002, f"conversation {conversation_id!r} does not exist")
        return conversation

    def _chat(self, conversation_id: str | None, chat_id: str | None) -> Chat:
        self._conversation(conversation_id)
        chat = self.state.chats.get(chat_id or "")
        if chat is None or chat.conversation_id != conversation_id:
            raise CozeError(4001, f"chat {chat_id!r} does not exist")
        return chat

    def _new_conversation(self, meta_data: Any) -> Conversation:
        conversation = Conversation(
            id=self.new_id(),
            created_at=int(time.time()),
            meta_data=meta_data if isinstance(meta_data, dict) else {},
            section_id=self.new_id(),
        )
        self.state.conversations[conversation.id] = conversation
        return conversation

    # ----------------------------------------------------------------- conversations

    async def _conversation_create(self, request: Request) -> Response:
        body = request.json()
        conversation = self._new_conversation(body.get("meta_data"))
        messages = body.get("messages") or []
        if isinstance(messages, list):
            conversation.turns.extend(
                message_text(m) for m in messages if isinstance(m, dict) and m.get("role") == "user"
            )
        return _ok(conversation.as_dict())

    async def _conversation_retrieve(self, request: Request) -> Response:
        return _ok(self._conversation(request.query.get("conversation_id")).as_dict())

    async def _conversation_clear(self, request: Request) -> Response:
        conversation = self._conversation(request.path.split("/")[3])
        conversation.section_id = self.new_id()
        conversation.turns = []
        return _ok({"id": conversation.section_id, "conversation_id": conversation.id})

    # ----------------------------------------------------------------- chats

    async def _chat_create(self, request: Request) -> Response | None:
        body = request.json()
        messages = body.get("additional_messages") or []
        if not isinstance(messages, list):
            raise CozeError(4000, "additional_messages must be a list")
        text = user_text(messages)
        directives = Directives.parse(text)
        for name, fault in _PRE_CHAT_FAULTS.items():
            if name in directives.flags:
                if isinstance(fault, Response):
                    return fault
                raise CozeError(*fault)
        received = self._received_attachments(message_attachments(last_user_message(messages)))

        conversation_id = request.query.get("conversation_id")
        if conversation_id:
            conversation = self._conversation(conversation_id)
        else:
            conversation = self._new_conversation(None)
        if conversation.running_chat_id is not None:
            raise CozeError(4016, "a chat is already running in this conversation")

        stream = body.get("stream") is True
        chat = Chat(
            id=self.new_id(),
            conversation_id=conversation.id,
            bot_id=str(body.get("bot_id") or ""),
            section_id=conversation.section_id,
            created_at=int(time.time()),
            meta_data=body["meta_data"] if isinstance(body.get("meta_data"), dict) else {},
            stream=stream,
            request_messages=messages,
        )
        plan = self._plan(chat, conversation, text, directives, received)
        if body.get("auto_save_history", True) is not False:
            conversation.turns.append(text)
        conversation.running_chat_id = chat.id
        self._remember(chat)

        if stream:
            await self._stream(request, chat, plan)
            return None
        task = asyncio.ensure_future(self._run_in_background(chat, plan))
        self.state.background.add(task)
        task.add_done_callback(self.state.background.discard)
        return _ok(chat.as_dict())

    def _remember(self, chat: Chat) -> None:
        chats = self.state.chats
        chats[chat.id] = chat
        excess = len(chats) - MAX_CHATS
        if excess > 0:
            excess += MAX_CHATS // 10  # prune in batches, not on every chat
            oldest = itertools.islice(chats.items(), 2 * excess)
            for chat_id in [cid for cid, old in oldest if old.finished_at is not None][:excess]:
                del chats[chat_id]

    def _received_attachments(self, items: list[dict[str, Any]]) -> str:
        """`` [received: image cat.png, file https://…]`` for the answer; 4000 for an unknown file id."""
        names = []
        for item in items:
            file_id, file_url = item.get("file_id"), item.get("file_url")
            if file_id:
                uploaded = self.state.files.get(str(file_id))
                if uploaded is None:
                    raise CozeError(4000, f"file {file_id!r} does not exist")
                names.append(f"{item['type']} {uploaded.file_name}")
            elif isinstance(file_url, str) and file_url:
                names.append(f"{item['type']} {file_url}")
            else:
                raise CozeError(4000, f"a {item['type']} item needs file_id or file_url")
        return f" [received: {', '.join(names)}]" if names else ""

    def _plan(
        self, chat: Chat, conversation: Conversation, text: str, directives: Directives, received: str = ""
    ) -> ChatPlan:
        answer = answer_text(text, directives, conversation.turns)
        if directives.echo is None:  # an echo stays exactly the text after the directive
            answer += received
        message = {
            "id": self.new_id(),
            "conversation_id": chat.conversation_id,
            "bot_id": chat.bot_id,
            "role": "assistant",
            "type": "answer",
        }
        tail = {
            "content_type": "text",
            "chat_id": chat.id,
            "section_id": chat.section_id,
        }
        # Pre-serialise the message around its content: each delta only dumps its piece.
        head = b"event:conversation.message.delta\ndata:" + json_bytes(message)[:-1]
        tail_bytes = b"," + json_bytes(tail)[1:] + b"\n\n"
        answer_frames = [head + b',"content":' + json_bytes(piece) + tail_bytes for piece in split_deltas(answer)]
        reasoning_frames = []
        if "reasoning" in directives.flags:
            reasoning_frames = [
                head + b',"content":"","reasoning_content":' + json_bytes(piece) + tail_bytes
                for piece in split_deltas(REASONING_TEXT)
            ]

        stamps = {"created_at": chat.created_at, "updated_at": chat.created_at}

        def completed(kind: str, content: str, message_id: str) -> dict[str, Any]:
            return {
                **message,
                "id": message_id,
                "type": kind,
                "content": content,
                **tail,
                **stamps,
            }

        answer_message = completed("answer", answer, message["id"])
        if reasoning_frames:
            answer_message["reasoning_content"] = REASONING_TEXT
        final_messages = [
            answer_message,
            completed("verbose", VERBOSE_CONTENT, self.new_id()),
            *(completed("follow_up", question, self.new_id()) for question in FOLLOW_UPS),
        ]
        section_chars = sum(map(len, conversation.turns)) + len(text)
        output_count = len(reasoning_frames) + len(answer_frames)
        input_count = section_chars // 4 + 1
        first_ms = directives.first_delay_ms
        slow_ms = directives.slow_ms
        fault = next((f for f in _MID_STREAM_FAULTS if f in directives.flags), None)
        return ChatPlan(
            reasoning_frames=reasoning_frames,
            answer_frames=answer_frames,
            final_messages=final_messages,
            usage={
                "token_count": input_count + output_count,
                "output_count": output_count,
                "input_count": input_count,
            },
            first_delay=(self.config.first_token_delay_ms if first_ms is None else first_ms) / 1000,
            token_delay=(self.config.token_delay_ms if slow_ms is None else slow_ms) / 1000,
            fault=fault,
            silence=directives.silence_s or 0.0,
        )

    async def _run(self, chat: Chat, plan: ChatPlan, out: _StreamOutput | _NullOutput) -> None:
        """Play ``plan`` into ``out`` with its timing, updating ``chat`` as Coze would."""
        out.write(sse_frame("conversation.chat.created", chat.as_dict(status="created")))
        out.write(sse_frame("conversation.chat.in_progress", chat.as_dict()))

        frames = plan.reasoning_frames + plan.answer_frames
        cut = len(plan.reasoning_frames) + len(plan.answer_frames) // 2 if plan.fault else len(frames)
        await self._deltas(chat, frames[:cut], out, plan.first_delay, plan.token_delay)
        if plan.fault == "silence":
            await out.pause(plan.silence)
        elif plan.fault == "chat_failed":
            self._finish(chat, "failed", error={"code": 5000, "msg": "internal error"})
            out.write(sse_frame("conversation.chat.failed", chat.as_dict()))
            out.write(_DONE_FRAME)
            return
        elif plan.fault == "error_event":
            self._finish(chat, "failed", error={"code": 4013, "msg": "model error"})
            out.write(_ERROR_EVENT_FRAME)
            return
        elif plan.fault == "drop":
            self._finish(chat, "failed", error={"code": 5000, "msg": "connection dropped"})
            await out.flush()
            raise SimulatedDrop(f"[sim:drop] cuts the stream of chat {chat.id}")
        await self._deltas(chat, frames[cut:], out, plan.token_delay if cut else plan.first_delay, plan.token_delay)
        if not frames:
            await out.pause(plan.first_delay)

        self._finish(chat, "completed", usage=plan.usage, messages=plan.final_messages)
        for message in plan.final_messages:
            out.write(sse_frame("conversation.message.completed", message))
        out.write(sse_frame("conversation.chat.completed", chat.as_dict(status="completed")))
        out.write(_DONE_FRAME)

    @staticmethod
    async def _deltas(
        chat: Chat, frames: list[bytes], out: _StreamOutput | _NullOutput, delay: float, token_delay: float
    ) -> None:
        """Send delta ``frames``: ``delay`` before the first, ``token_delay`` before the rest."""
        for frame in frames:
            await out.pause(delay)
            delay = token_delay
            out.write(frame)
            chat.tokens_sent += 1

    def _finish(
        self,
        chat: Chat,
        status: str,
        *,
        error: dict[str, Any] | None = None,
        usage: dict[str, int] | None = None,
        messages: list[dict[str, Any]] | None = None,
    ) -> None:
        """Record the end of a chat and free its conversation.

        A chat canceled meanwhile stays ``canceled``, but keeps its usage and messages: like
        Coze, a cancel does not stop the work (nor the billing).
        """
        now = time.time()
        if chat.status == "in_progress":
            chat.status = status
            if status == "completed":
                chat.completed_at = int(now)
            else:
                chat.failed_at = int(now)
                chat.last_error = error or {"code": 5000, "msg": "internal error"}
        if usage is not None:
            chat.usage = usage
        if messages is not None:
            chat.messages = messages
        chat.finished_at = now
        self._release(chat)

    def _release(self, chat: Chat) -> None:
        conversation = self.state.conversations.get(chat.conversation_id)
        if conversation is not None and conversation.running_chat_id == chat.id:
            conversation.running_chat_id = None

    async def _run_in_background(self, chat: Chat, plan: ChatPlan) -> None:
        try:
            await self._run(chat, plan, _NullOutput())
        except SimulatedDrop:
            pass  # already recorded as failed; there is no connection to cut
        finally:
            self._release(chat)

    async def _stream(self, request: Request, chat: Chat, plan: ChatPlan) -> None:
        """Answer with SSE while a watcher task notices a client disconnect at once."""
        state = self.state
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-tt-logid", request.logid.encode()),
        ]
        await request.send({"type": "http.response.start", "status": 200, "headers": headers})
        out = _StreamOutput(request.send)
        producer = asyncio.ensure_future(self._run(chat, plan, out))
        watcher = asyncio.ensure_future(self._watch_disconnect(request.receive, chat, producer))
        state.open_streams += 1
        state.total_streams += 1
        try:
            try:
                await producer
            except asyncio.CancelledError:
                if chat.client_disconnected_at is None:
                    raise  # we are being cancelled ourselves (server shutdown)
                return
            finally:
                watcher.cancel()
            await request.send({"type": "http.response.body", "body": out.take()})
        finally:
            state.open_streams -= 1
            if not producer.done():
                producer.cancel()
            self._release(chat)

    async def _watch_disconnect(self, receive: Receive, chat: Chat, producer: asyncio.Future) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        if producer.done():
            return
        now = time.time()
        chat.client_disconnected_at = now
        self.state.client_disconnects += 1
        if chat.status == "in_progress":
            chat.status = "canceled"
        if chat.finished_at is None:
            chat.finished_at = now
        self._release(chat)
        producer.cancel()

    async def _chat_retrieve(self, request: Request) -> Response:
        query = request.query
        return _ok(self._chat(query.get("conversation_id"), query.get("chat_id")).as_dict())

    async def _chat_messages(self, request: Request) -> Response:
        query = request.query
        return _ok(self._chat(query.get("conversation_id"), query.get("chat_id")).messages)

    async def _chat_cancel(self, request: Request) -> Response:
        body = request.json()
        conversation_id = body.get("conversation_id") or request.query.get("conversation_id")
        chat_id = body.get("chat_id") or request.query.get("chat_id")
        if not conversation_id or not chat_id:
            raise CozeError(4000, "conversation_id and chat_id are required")
        chat = self._chat(str(conversation_id), str(chat_id))
        if chat.status != "in_progress":
            raise CozeError(4104, f"chat {chat.id} cannot be cancelled: it is {chat.status}")
        chat.status = "canceled"
        chat.canceled_at = time.time()
        self.state.cancels += 1
        return _ok(chat.as_dict())

    # ----------------------------------------------------------------- files

    async def _file_upload(self, request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        if not content_type.lower().startswith("multipart/form-data"):
            raise CozeError(4000, "the body must be multipart/form-data with a file field")
        part = _multipart_file(content_type, request.body, "file")
        if part is None:
            raise CozeError(4000, "the file field is missing")
        file_name, part_type, content = part
        if len(content) > self.config.max_upload_bytes:
            raise CozeError(4000, f"the file exceeds the size limit of {self.config.max_upload_bytes} bytes")
        if not content:
            raise CozeError(4000, "the file is empty")
        extension = file_name.rsplit(".", 1)[-1].lower() if "." in file_name else ""
        if extension not in COZE_UPLOAD_EXTENSIONS:
            raise CozeError(4000, f"unsupported file type: {file_name!r}")
        uploaded = UploadedFile(
            id=self.new_id(),
            file_name=file_name,
            bytes=len(content),
            content_type=part_type,
            sha256=hashlib.sha256(content).hexdigest(),
            created_at=int(time.time()),
        )
        self.state.files[uploaded.id] = uploaded
        return _ok(uploaded.as_dict())

    async def _file_retrieve(self, request: Request) -> Response:
        uploaded = self.state.files.get(request.query.get("file_id", ""))
        if uploaded is None:
            raise CozeError(4000, "the file does not exist")
        return _ok(uploaded.as_dict())

    # ----------------------------------------------------------------- OAuth (JWT grant)

    async def _oauth_token(self, request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        if "application/x-www-form-urlencoded" in content_type:
            form: dict[str, Any] = dict(parse_qsl(request.body.decode("utf-8", "replace")))
        else:
            try:
                form = request.json()
            except CozeError:
                return _oauth_error(400, "invalid_request", "the body must be JSON or a form")
        if form.get("grant_type") != JWT_GRANT_TYPE:
            return _oauth_error(400, "unsupported_grant_type", f"grant_type must be {JWT_GRANT_TYPE}")
        scheme, _, assertion = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not assertion.strip():
            return _oauth_error(401, "invalid_client", "a JWT is required as Bearer token")
        claims = _jwt_claims(assertion.strip())
        if claims is None:
            return _oauth_error(401, "invalid_client", "the JWT cannot be decoded")
        missing = [claim for claim in ("iss", "aud", "exp") if claim not in claims]
        if missing:
            return _oauth_error(401, "invalid_client", f"the JWT lacks {', '.join(missing)}")
        now = time.time()
        if not isinstance(claims["exp"], (int, float)) or claims["exp"] < now:
            return _oauth_error(401, "invalid_client", "the JWT has expired")
        duration = form.get("duration_seconds") or 900
        try:
            duration = int(duration)
        except (TypeError, ValueError):
            return _oauth_error(400, "invalid_request", "duration_seconds must be an integer")
        if duration <= 0:
            return _oauth_error(400, "invalid_request", "duration_seconds must be positive")
        token = "sim-jwt-" + os.urandom(16).hex()
        expires_in = int(now) + duration
        self.state.issued_tokens[token] = expires_in
        return _json_response(
            200,
            {"access_token": token, "expires_in": expires_in, "token_type": "Bearer"},
        )

    # ----------------------------------------------------------------- inspection

    async def _sim_stats(self, request: Request) -> Response:
        return _json_response(200, self.state.stats())

    async def _sim_file(self, request: Request) -> Response:
        uploaded = self.state.files.get(request.path.split("/")[3])
        if uploaded is None:
            return _json_response(404, {"code": 4000, "msg": "file not found"})
        return _json_response(200, uploaded.inspection())

    async def _sim_chat(self, request: Request) -> Response:
        chat = self.state.chats.get(request.path.split("/")[3])
        if chat is None:
            return _json_response(404, {"code": 4001, "msg": "chat not found"})
        return _json_response(200, chat.inspection())


def _multipart_file(content_type: str, body: bytes, field_name: str) -> tuple[str, str, bytes] | None:
    """(file name, part content type, content) of the multipart field ``field_name``, or None."""
    parser = email.parser.BytesParser(policy=email.policy.HTTP)
    message = parser.parsebytes(b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
    if not message.is_multipart():
        return None
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == field_name:
            file_name = part.get_filename() or ""
            return file_name, part.get_content_type(), part.get_payload(decode=True) or b""
    return None


def _oauth_error(status: int, error_code: str, message: str) -> Response:
    # Coze's OAuth endpoints answer errors in this shape; cozepy raises CozeAPIError for it.
    return _json_response(status, {"error_code": error_code, "error_message": message})


def _jwt_claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT, without checking its signature (None when undecodable)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except ValueError:
        return None
    return claims if isinstance(claims, dict) else None


def create_app(config: SimulatorConfig | None = None) -> SimulatorApp:
    """A fresh simulator ASGI app; its memory is ``app.state``."""
    return SimulatorApp(config or SimulatorConfig())
