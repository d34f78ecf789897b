"""The Coze adapter: the only module that imports cozepy.

It owns the shared `AsyncCoze` client (one per event loop, i.e. one per worker process), builds
requests, translates cozepy's stream into our own `Upstream*` events, and maps every cozepy or
transport failure to a `ChatError` with a code from API.md §3. Details never carry the token.

In demo mode (no COZE_API_TOKEN) it starts the built-in Coze simulator in this process and talks
to it over HTTP exactly as it would talk to Coze.
"""

import asyncio
import contextvars
import itertools
import json
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
from cozepy import (
    AsyncCoze,
    AsyncJWTAuth,
    AsyncTokenAuth,
    ChatEventType,
    CozeAPIError,
    CozeInvalidEventError,
    Message,
    MessageObjectString,
)
from cozepy.request import AsyncHTTPClient
from django.conf import settings
from pydantic import ValidationError

from chat.errors import ChatError
from chat.events import Usage

logger = logging.getLogger(__name__)

RATE_LIMIT_CODES = {4008, 4009, 4020}
AUTH_FAILED_CODES = {4100, 4101}
BUSY_CODE = 4016
# Coze codes that mean the request itself can never succeed as sent.
PERMANENT_CODES = {4000, 4001, 4002, 4006, 4010, 4011, 4015, 4102, 4104}
DEFAULT_RETRY_AFTER = {4008: 3600, 4009: 2, 4020: 2, 429: 2}

# Set by the httpx response hook, read after a cozepy call in the same task.
_last_logid: contextvars.ContextVar[str] = contextvars.ContextVar("coze_last_logid", default="")
_last_retry_after: contextvars.ContextVar[str] = contextvars.ContextVar("coze_last_retry_after", default="")


@dataclass(frozen=True, slots=True)
class UpstreamStarted:
    chat_id: str
    conversation_id: str
    logid: str


@dataclass(frozen=True, slots=True)
class UpstreamReasoning:
    content: str


@dataclass(frozen=True, slots=True)
class UpstreamDelta:
    content: str


@dataclass(frozen=True, slots=True)
class UpstreamAnswer:
    message_id: str


@dataclass(frozen=True, slots=True)
class UpstreamFollowUp:
    content: str


@dataclass(frozen=True, slots=True)
class UpstreamCompleted:
    usage: Usage


UpstreamEvent = (
    UpstreamStarted | UpstreamReasoning | UpstreamDelta | UpstreamAnswer | UpstreamFollowUp | UpstreamCompleted
)


# --- client -----------------------------------------------------------------------------------

_simulator_lock = threading.Lock()
_simulator_base_url: str | None = None
_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple, AsyncCoze]]" = weakref.WeakKeyDictionary()


def coze_mode() -> str:
    """`configured` with a token or an OAuth app, `simulator` in demo mode."""
    return "configured" if settings.COZE_API_TOKEN or settings.COZE_OAUTH_APP_ID else "simulator"


def simulator_base_url() -> str:
    """Start the built-in simulator once per process (demo mode) and return its URL."""
    global _simulator_base_url
    with _simulator_lock:
        if _simulator_base_url is None:
            from chat.simulator import SimulatorConfig, SimulatorServer

            server = SimulatorServer(SimulatorConfig(token_delay_ms=settings.COZE_SIMULATOR_TOKEN_DELAY_MS))
            _simulator_base_url = server.start()
            logger.warning(
                "DEMO MODE: COZE_API_TOKEN is not set, so replies come from the built-in Coze simulator at %s, "
                "not from Coze. Set COZE_API_TOKEN and COZE_BOT_ID to talk to a real bot.",
                _simulator_base_url,
            )
        return _simulator_base_url


class RefreshingJWTAuth(AsyncJWTAuth):
    """cozepy's JWT auth uses a token up to its expiry second; refresh a minute early instead, so
    a request never leaves with a token that expires on the way."""

    REFRESH_MARGIN_SECONDS = 60

    async def _generate_token(self):
        if self._token is None or time.time() + self.REFRESH_MARGIN_SECONDS >= self._token.expires_in:
            self._token = await self._oauth_cli.get_access_token(self._ttl)
        return self._token


def _endpoint() -> tuple[str, tuple]:
    """Base URL and a hashable description of the credentials."""
    if settings.COZE_OAUTH_APP_ID:
        return settings.COZE_BASE_URL, ("jwt", settings.COZE_OAUTH_APP_ID, settings.COZE_OAUTH_KEY_ID)
    if settings.COZE_API_TOKEN:
        return settings.COZE_BASE_URL, ("token", settings.COZE_API_TOKEN)
    return simulator_base_url(), ("token", "demo-mode-token")


def _build_auth(base_url: str, credentials: tuple):
    if credentials[0] == "jwt":
        return RefreshingJWTAuth(
            client_id=settings.COZE_OAUTH_APP_ID,
            private_key=settings.COZE_OAUTH_PRIVATE_KEY,
            public_key_id=settings.COZE_OAUTH_KEY_ID,
            ttl=settings.COZE_OAUTH_TOKEN_TTL,
            base_url=base_url,
        )
    return AsyncTokenAuth(credentials[1])


async def _remember_response_headers(response: httpx.Response) -> None:
    _last_logid.set(response.headers.get("x-tt-logid", ""))
    _last_retry_after.set(response.headers.get("retry-after", ""))


class ShardedTransport(httpx.AsyncBaseTransport):
    """Spreads requests round-robin over several small httpx connection pools.

    httpcore 1.0's pool re-scans all its connections, quadratically in the idle ones, every time
    a request starts or a response closes. With 1,000 open streams in one pool that bookkeeping
    costs more CPU than the streams themselves (measured: 1,000 direct cozepy streams of 1 s took
    35 s, 76 % of it in `_assign_requests_to_connections`). Small pools keep it cheap; each keeps
    its connections alive as one big pool would.
    """

    def __init__(self, *, limits: httpx.Limits, shards: int = 32):
        def share(total: int | None) -> int | None:
            return None if total is None else max(1, -(-total // shards))

        shard_limits = httpx.Limits(
            max_connections=share(limits.max_connections),
            max_keepalive_connections=share(limits.max_keepalive_connections),
            keepalive_expiry=limits.keepalive_expiry,
        )
        ssl_context = httpx.create_ssl_context()  # one for all shards: each costs about a millisecond
        self._pools = [httpx.AsyncHTTPTransport(verify=ssl_context, limits=shard_limits) for _ in range(shards)]
        self._next = itertools.cycle(self._pools).__next__

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._next().handle_async_request(request)

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()


def _build_http_client() -> AsyncHTTPClient:
    # The read timeout is the idle timeout: httpx applies it to every socket read, so a stream
    # that goes silent for that long fails with ReadTimeout at no per-token cost.
    timeout = httpx.Timeout(
        connect=settings.COZE_CONNECT_TIMEOUT,
        read=settings.COZE_STREAM_IDLE_TIMEOUT,
        write=30.0,
        pool=30.0,
    )
    limits = httpx.Limits(
        max_connections=settings.COZE_MAX_CONNECTIONS,
        max_keepalive_connections=min(1000, settings.COZE_MAX_CONNECTIONS),
        keepalive_expiry=30.0,
    )
    return AsyncHTTPClient(
        timeout=timeout,
        transport=ShardedTransport(limits=limits),
        event_hooks={"response": [_remember_response_headers]},
    )


def get_client() -> AsyncCoze:
    """The shared client of the running event loop (httpx pools can't cross loops)."""
    base_url, credentials = _endpoint()
    loop = asyncio.get_running_loop()
    per_loop = _clients.setdefault(loop, {})
    key = (base_url, credentials, settings.COZE_STREAM_IDLE_TIMEOUT, settings.COZE_CONNECT_TIMEOUT)
    client = per_loop.get(key)
    if client is None:
        client = AsyncCoze(auth=_build_auth(base_url, credentials), base_url=base_url, http_client=_build_http_client())
        per_loop[key] = client
    return client


# --- requests ---------------------------------------------------------------------------------


def attachment_item(attachment: dict) -> MessageObjectString:
    """The Coze object_string item for one resolved attachment: `{"kind": "image"|"file", "file_id"}`
    for an uploaded file, or `{"kind", "url"}` for a link. (The OpenAI path maps `image_url`
    parts to `{"kind": "image", "url": …}`.)"""
    build = MessageObjectString.build_image if attachment["kind"] == "image" else MessageObjectString.build_file
    if attachment.get("file_id"):
        return build(file_id=attachment["file_id"])
    return build(file_url=attachment["url"])


def build_messages(
    *, message: str | None, additional_messages: list[dict] | None, attachments: list[dict] | tuple = ()
) -> list[Message]:
    """Coze message objects for a turn: the request's additional_messages, or one user message —
    plain text, or with `attachments` (see `attachment_item`) one object_string message of the
    text and those items, as Coze expects multimodal input."""
    if additional_messages:
        return [
            Message(
                role=item.get("role", "user"),
                type=item.get("type") or ("question" if item.get("role", "user") == "user" else "answer"),
                content=item["content"],
                content_type=item.get("content_type", "text"),
                meta_data=item.get("meta_data"),
            )
            for item in additional_messages
        ]
    if attachments:
        items = [MessageObjectString.build_text(message)] if message else []
        items += [attachment_item(attachment) for attachment in attachments]
        return [Message.build_user_question_objects(items)]
    return [Message.build_user_question_text(message or "")]


class UpstreamChat:
    """An open streaming chat. Iterate `events()`; always `await aclose()` (the service does so in
    a finally), because cozepy leaves an abandoned stream's connection open until GC."""

    def __init__(self, *, stream, logid: str):
        self._stream = stream
        self.logid = logid
        self._closed = False

    async def events(self) -> AsyncIterator[UpstreamEvent]:
        """Yields our events; raises ChatError on any upstream failure or a stream that ends early."""
        completed = False
        try:
            async for event in self._stream:
                kind = event.event
                if kind == ChatEventType.CONVERSATION_MESSAGE_DELTA:
                    message = event.message
                    if message.reasoning_content:
                        yield UpstreamReasoning(message.reasoning_content)
                    if message.content:
                        yield UpstreamDelta(message.content)
                elif kind == ChatEventType.CONVERSATION_MESSAGE_COMPLETED:
                    message = event.message
                    if message.type == "follow_up":
                        yield UpstreamFollowUp(message.content)
                    elif message.type == "answer" and message.id:
                        yield UpstreamAnswer(message.id)
                elif kind == ChatEventType.CONVERSATION_CHAT_CREATED:
                    chat = event.chat
                    yield UpstreamStarted(chat_id=chat.id, conversation_id=chat.conversation_id, logid=self.logid)
                elif kind == ChatEventType.CONVERSATION_CHAT_COMPLETED:
                    usage = event.chat.usage
                    completed = True
                    yield UpstreamCompleted(
                        Usage(
                            input_tokens=usage.input_count if usage else 0,
                            output_tokens=usage.output_count if usage else 0,
                            total_tokens=usage.token_count if usage else 0,
                        )
                    )
                elif kind == ChatEventType.CONVERSATION_CHAT_FAILED:
                    last_error = event.chat.last_error
                    raise error_from_coze_code(
                        last_error.code if last_error else 0,
                        last_error.msg if last_error else "",
                        logid=self.logid,
                    )
                elif kind == ChatEventType.CONVERSATION_CHAT_REQUIRES_ACTION:
                    raise ChatError(
                        "upstream_error",
                        "The bot asked for a tool call, which this server does not support.",
                        retryable=False,
                        logid=self.logid,
                    )
        except ChatError:
            raise
        except Exception as exc:
            raise map_exception(exc, logid=self.logid, mid_stream=True) from exc
        if not completed:
            raise ChatError(
                "upstream_error",
                "Coze ended the stream before the reply was complete.",
                retryable=True,
                logid=self.logid,
            )

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Close the generators first, then the HTTP response itself: that is what frees the
        # connection and tells Coze (or the simulator) the client is gone.
        try:
            await self._stream._iterator.aclose()
        except Exception:
            logger.debug("closing cozepy stream iterator failed", exc_info=True)
        await self._stream._raw_response.aclose()


async def achat_open(
    *,
    bot_id: str,
    user_id: str,
    conversation_id: str | None,
    messages: list[Message],
    custom_variables: dict[str, str] | None = None,
    meta_data: dict[str, str] | None = None,
) -> UpstreamChat:
    """Send the chat request and return the open stream. Raises ChatError when Coze refuses it
    or can't be reached (these happen before any byte of the reply)."""
    client = get_client()
    try:
        # `_create` rather than `stream()`: only the AsyncStream it returns exposes the httpx
        # response, which we must close ourselves.
        stream = await client.chat._create(
            bot_id=bot_id,
            user_id=user_id,
            stream=True,
            additional_messages=messages,
            custom_variables=custom_variables or None,
            meta_data=meta_data or None,
            conversation_id=conversation_id or None,
            auto_save_history=True,
        )
    except Exception as exc:
        raise map_exception(exc, logid=_last_logid.get(), mid_stream=False) from exc
    return UpstreamChat(stream=stream, logid=stream.response.logid or "")


async def achat_cancel(*, conversation_id: str, chat_id: str) -> None:
    """Ask Coze to mark the chat cancelled. Best effort: a chat that already ended answers 4104."""
    try:
        await get_client().chat.cancel(conversation_id=conversation_id, chat_id=chat_id)
    except Exception as exc:  # noqa: BLE001 - cancel is advisory; the stream is closed anyway
        logger.info("Coze cancel for chat %s did not apply: %s", chat_id, _redact(str(exc)))


@dataclass(frozen=True, slots=True)
class UploadedFile:
    file_id: str
    file_name: str
    bytes: int


async def aupload_file(*, file, file_name: str, content_type: str) -> UploadedFile:
    """Upload a file to Coze (`/v1/files/upload`) and return Coze's record of it.

    `file` is a binary file object (Django's uploaded file, on disk when large): httpx reads
    and sends it in 64 KiB chunks, so it is never held in memory whole. Raises ChatError when
    Coze refuses it or can't be reached, mapped as for chats.
    """
    try:
        uploaded = await get_client().files.upload(file=(file_name, file, content_type))
    except Exception as exc:
        raise map_exception(exc, logid=_last_logid.get(), mid_stream=False) from exc
    return UploadedFile(file_id=uploaded.id, file_name=uploaded.file_name or file_name, bytes=uploaded.bytes or 0)


# --- error mapping ----------------------------------------------------------------------------


def _redact(text: str) -> str:
    token = settings.COZE_API_TOKEN
    if token:
        text = text.replace(token, "[redacted]")
    return text


def _retry_after(code: int) -> int:
    header = _last_retry_after.get()
    if header.isdigit():
        return max(1, int(header))
    return DEFAULT_RETRY_AFTER.get(code, 2)


def error_from_coze_code(code: int, msg: str, *, logid: str = "") -> ChatError:
    """Map a Coze business code (or an HTTP status cozepy put in its place) to our ChatError."""
    public_msg = _redact(msg)[:200]
    if code in AUTH_FAILED_CODES or code in (401, 403):
        return ChatError("upstream_auth_failed", upstream_code=code, logid=logid)
    if code in RATE_LIMIT_CODES or code == 429:
        return ChatError(
            "upstream_rate_limited",
            f"Coze asked to slow down (code {code}); retry later.",
            retry_after=_retry_after(code),
            upstream_code=code,
            logid=logid,
        )
    if code == BUSY_CODE:
        return ChatError(
            "session_busy",
            "Coze is still answering another message in this conversation.",
            upstream_code=code,
            logid=logid,
        )
    if 100 <= code < 600:
        # An HTTP status: cozepy got a body that was not Coze's JSON (a proxy page, a crash).
        return ChatError(
            "upstream_error",
            f"Coze answered HTTP {code} with an unexpected body.",
            retryable=code >= 500,
            upstream_code=code,
            logid=logid,
        )
    detail = f"Coze error {code}: {public_msg}" if public_msg else f"Coze error {code}."
    return ChatError("upstream_error", detail, retryable=code not in PERMANENT_CODES, upstream_code=code, logid=logid)


def map_exception(exc: Exception, *, logid: str = "", mid_stream: bool) -> ChatError:
    """Map whatever cozepy or httpx raised to a ChatError."""
    if isinstance(exc, ChatError):
        return exc
    if isinstance(exc, CozeAPIError):
        return error_from_coze_code(exc.code or 0, exc.msg or "", logid=exc.logid or logid)
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
        return ChatError("upstream_unavailable", "Coze could not be reached.", logid=logid)
    if isinstance(exc, httpx.ReadTimeout):
        return ChatError(
            "upstream_timeout",
            f"Coze sent nothing for {settings.COZE_STREAM_IDLE_TIMEOUT:g} seconds.",
            logid=logid,
        )
    if isinstance(exc, httpx.TimeoutException):
        return ChatError("upstream_timeout", logid=logid)
    if isinstance(exc, httpx.TransportError):
        return ChatError(
            "upstream_error" if mid_stream else "upstream_unavailable",
            "The connection to Coze broke off.",
            retryable=True,
            logid=logid,
        )
    if isinstance(exc, (CozeInvalidEventError, ValidationError, json.JSONDecodeError)):
        return ChatError("upstream_error", "Coze sent a malformed event.", retryable=True, logid=logid)
    text = str(exc)
    if text.startswith("error event:"):
        # cozepy raises a bare Exception for the stream's `error` event; its payload is {code, msg}.
        try:
            payload = json.loads(text.removeprefix("error event:").strip())
            return error_from_coze_code(int(payload.get("code", 0)), str(payload.get("msg", "")), logid=logid)
        except (ValueError, TypeError, AttributeError):
            return ChatError("upstream_error", "Coze reported an error in the stream.", logid=logid)
    logger.error("Unexpected error talking to Coze: %s", _redact(repr(exc)))
    return ChatError("upstream_error", logid=logid)
