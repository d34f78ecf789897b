"""WebSocket transport, `ws/chat/` (docs/api.md §5, §9).

Frames in: `{"type":"chat", …body}`, `{"type":"resume","session_id","last_event_id"}`,
`{"type":"cancel"[, "chat_id"]}`, `{"type":"ping"}`.
Frames out: the same objects as the SSE `data` lines, each with the `id` its SSE event has,
`{"type":"done","id"}` after each reply, and `{"type":"pong"}`. Each reply (or resume) runs in
its own task so `receive` and `disconnect` never wait on the upstream. A bad frame gets an
`error` object; the socket stays open.

Authentication (docs/api.md §2, §5): `Authorization: Bearer` (an API key or an end-user token), or
the browser's session cookie. Browsers can't set headers on a WebSocket, so a page offers its
end-user token as a subprotocol instead: `new WebSocket(url, ["cozeproject.bearer", token])`. The
server selects `cozeproject.bearer` (never echoing the token), and the token stays out of URLs and
so out of access logs. A socket outlives a token: each `chat` and `resume` frame checks its
Bearer credential again, and one that has expired or been revoked closes the socket with 4401.
"""

import asyncio
import contextlib
import json
import logging

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from chat.access import tokens
from chat.access.auth import aowner_from_api_key, bearer_key
from chat.access.browsers import BROWSER_SESSION_KEY, owner_for_browser, owner_for_user
from chat.conversations import sessions
from chat.domain.errors import ChatError
from chat.domain.events import PING
from chat.domain.inputs import ChatRequest, Owner
from chat.domain.sse import encode_json
from chat.resume import resuming
from chat.runtime.logging import new_request_id, request_id_var
from chat.runtime.tasks import in_background
from chat.transports.serializers import SESSION_ID_RE, parse_chat_request
from chat.turn import service
from chat.turn.control import TurnControl
from sessions_admin.models import Reply

logger = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
# Offered with an end-user token as a second subprotocol, by browsers that can't send Authorization.
TOKEN_SUBPROTOCOL = "cozeproject.bearer"
CHAT_FRAME_EXTRA_FIELDS = frozenset({"type"})


def _parse_resume(frame: dict) -> tuple[str, int]:
    session_id = frame.get("session_id")
    if not isinstance(session_id, str) or not SESSION_ID_RE.match(session_id):
        raise ChatError("invalid", "resume needs the session_id of the reply to follow.")
    after_id = frame.get("last_event_id", 0)
    if after_id is None:
        after_id = 0
    if isinstance(after_id, bool) or not isinstance(after_id, int) or after_id < 0:
        raise ChatError("invalid", "last_event_id must be the id of an event: a whole number.")
    return session_id, after_id


def _offered_token(scope) -> str | None:
    """The end-user token a browser offered as a subprotocol beside TOKEN_SUBPROTOCOL ("" when it
    offered the marker without one); None when it offered none."""
    offered = scope.get("subprotocols") or []
    if TOKEN_SUBPROTOCOL not in offered:
        return None
    return next((value for value in offered if tokens.looks_like_token(value)), "")


class ChatConsumer(AsyncJsonWebsocketConsumer):
    # No channel-layer channel per socket: nothing is ever sent to one (cancels go through the
    # worker's own channel, chat.turn.cancellation), and it would cost a Redis subscription per socket.
    channel_layer_alias = "no-channel-layer-for-chat-sockets"

    async def connect(self) -> None:
        self.owner: Owner | None = None
        self.credential: str | None = None  # the Bearer key or token, checked again on each turn
        self.replies: dict[asyncio.Task, TurnControl] = {}
        self.resumes: dict[asyncio.Task, str] = {}  # following a session's reply
        offered = self.scope.get("subprotocols") or []
        await self.accept(subprotocol=TOKEN_SUBPROTOCOL if TOKEN_SUBPROTOCOL in offered else None)
        try:
            self.owner = await self._resolve_owner()
        except ChatError:
            self.owner = None
        if self.owner is None:
            # Accept first so the client sees the application close code, not a bare HTTP 403.
            await self.close(code=CLOSE_UNAUTHENTICATED)

    async def _resolve_owner(self) -> Owner | None:
        headers = dict(self.scope.get("headers", []))
        authorization = headers.get(b"authorization", b"").decode("latin1")
        key = bearer_key(authorization)
        if key is None:
            key = _offered_token(self.scope)
        if key is not None:
            self.credential = key
            return await aowner_from_api_key(key, address=self._address())
        user = self.scope.get("user")
        if user is not None and user.is_authenticated:
            return owner_for_user(user)
        session = self.scope.get("session")
        if settings.CHAT_ALLOW_ANONYMOUS and session is not None:
            browser_id = await database_sync_to_async(session.get)(BROWSER_SESSION_KEY)
            if browser_id:
                return owner_for_browser(browser_id)
        return None

    def _address(self) -> str | None:
        client = self.scope.get("client")
        return client[0] if client else None

    async def _still_authenticated(self) -> bool:
        """Whether the socket's Bearer credential still holds (cached, as for any request); if it
        expired or was revoked, the socket gets the `error` and is closed with 4401."""
        if self.credential is None:
            return True
        try:
            self.owner = await aowner_from_api_key(self.credential, address=self._address())
        except ChatError as error:
            self.owner = None
            await self._send_error(error)
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return False
        return True

    async def receive(self, text_data=None, bytes_data=None, **kwargs) -> None:
        if self.owner is None:
            return
        raw = text_data if text_data is not None else bytes_data
        if raw is None or len(raw) > settings.CHAT_MAX_BODY_BYTES:
            await self._send_error(ChatError("payload_too_large", "Frames are limited to 1 MiB."))
            return
        try:
            frame = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            await self._send_error(ChatError("invalid", "Frames must be JSON objects."))
            return
        await self.receive_json(frame)

    async def receive_json(self, content, **kwargs) -> None:
        frame_type = content.get("type") if isinstance(content, dict) else None
        if frame_type in ("chat", "resume") and not await self._still_authenticated():
            return
        if frame_type == "chat":
            try:
                chat_request = parse_chat_request(content, extra_fields=CHAT_FRAME_EXTRA_FIELDS)
            except ChatError as error:
                await self._send_error(error)
                return
            control = TurnControl(owner_key=self.owner.key)
            request_id_var.set(new_request_id())  # each turn on the socket is its own request in the logs
            task = asyncio.create_task(self._run_reply(chat_request, control))
            self.replies[task] = control
            task.add_done_callback(lambda done: self.replies.pop(done, None))
        elif frame_type == "resume":
            try:
                session_id, after_id = _parse_resume(content)
            except ChatError as error:
                await self._send_error(error)
                return
            request_id_var.set(new_request_id())
            task = asyncio.create_task(self._run_resume(session_id, after_id))
            self.resumes[task] = session_id
            task.add_done_callback(lambda done: self.resumes.pop(done, None))
        elif frame_type == "cancel":
            chat_id = content.get("chat_id")
            for control in list(self.replies.values()):
                if not chat_id or control.chat_id == chat_id:
                    control.stop("cancelled")
            # A reply this socket follows after a resume runs elsewhere: cancel it by its session.
            for session_id in set(self.resumes.values()):
                in_background(self._cancel_session(session_id))
        elif frame_type == "ping":
            await self.send_json({"type": "pong"})
        else:
            await self._send_error(ChatError("invalid", "Unknown frame type; use chat, resume, cancel or ping."))

    async def _run_reply(self, chat_request: ChatRequest, control: TurnControl) -> None:
        # Each event carries the id the SSE stream would give it, so a resume can name it (§9).
        event_id = 0
        try:
            async for event in service.achat_events(
                owner=self.owner, chat_request=chat_request, transport=Reply.Transport.WEBSOCKET, control=control
            ):
                if event is not PING:
                    event_id += 1
                    await self.send_json({**event.as_dict(), "id": event_id})
        except ChatError as error:
            event_id += 1
            await self.send_json({**error.as_event(), "id": event_id})
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("WebSocket reply failed")
            event_id += 1
            await self.send_json({**ChatError("internal_error").as_event(), "id": event_id})
        await self.send_json({"type": "done", "id": event_id + 1})

    async def _run_resume(self, session_id: str, after_id: int) -> None:
        """Replay a session's reply after `after_id` and follow it to `done`, as the SSE resume does."""
        try:
            events = await resuming.aopen_reply_stream(
                owner=self.owner, session_id=session_id, after_id=after_id, heartbeat=settings.CHAT_SSE_HEARTBEAT
            )
            async with contextlib.aclosing(events):
                async for item in events:
                    if item is not PING:
                        await self.send_json(item.frame())
        except ChatError as error:
            await self.send_json({**error.as_event(), "id": 1})
            await self.send_json({"type": "done", "id": 2})
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("WebSocket resume failed")
            await self._send_error(ChatError("internal_error"))

    async def _cancel_session(self, session_id: str) -> None:
        try:
            await sessions.asession_cancel(owner=self.owner, session_id=session_id)
        except ChatError:
            pass  # the reply ended or the session went meanwhile

    async def _send_error(self, error: ChatError) -> None:
        await self.send_json(error.as_event())

    async def disconnect(self, code) -> None:
        # The client is gone: stop its replies (stored as cancelled) and wait for the records.
        # Resumable replies run on (their sending tasks end, the turns do not); resumes just end.
        tasks = [*self.replies, *self.resumes]
        for control in self.replies.values():
            if not control.resumable:
                control.stop("cancelled")
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    @classmethod
    async def encode_json(cls, content) -> str:
        return encode_json(content)
