"""The Coze adapter: the only module that imports cozepy.

It owns the shared `AsyncCoze` client (one per event loop, i.e. one per worker process), builds
requests, translates cozepy's stream into our own `Upstream*` events, and maps every cozepy or
transport failure to a `ChatError` with a code from docs/api.md §3. Details never carry the token.

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
import warnings
import weakref
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

import httpx
from authlib.deprecate import AuthlibDeprecationWarning
from django.conf import settings
from pydantic import ValidationError

from chat.domain.errors import ChatError
from chat.domain.events import Usage

# cozepy 0.20 imports authlib.jose, which warns on every start of every process (three lines of
# noise before each management command). Only that one warning: authlib's other deprecations and
# everyone else's still show. The filter must follow authlib's own "always" filter for its
# warnings (set when authlib.deprecate is imported, above) and precede the cozepy import.
warnings.filterwarnings(
    "ignore", message=r"authlib\.jose module is deprecated", category=AuthlibDeprecationWarning, module=r"cozepy\."
)

from cozepy import (  # noqa: E402
    AsyncAuth,
    AsyncCoze,
    AsyncJWTOAuthApp,
    AsyncTokenAuth,
    ChatEvent,
    ChatEventType,
    CozeAPIError,
    CozeInvalidEventError,
    Message,
    MessageObjectString,
    OAuthToken,
)
from cozepy.request import AsyncHTTPClient  # noqa: E402

logger = logging.getLogger(__name__)

RATE_LIMIT_CODES = {4008, 4009, 4020}
AUTH_FAILED_CODES = {4100, 4101}
BUSY_CODE = 4016
# Coze codes that mean the request itself can never succeed as sent.
PERMANENT_CODES = {4000, 4001, 4002, 4006, 4010, 4011, 4015, 4102, 4104}
DEFAULT_RETRY_AFTER = {4008: 3600, 4009: 2, 4020: 2, 429: 2}

# The HTTP response of the last request cozepy sent from this task, set by an httpx response hook
# (hooks run in the task that awaits the request). It gives the logid and Retry-After of failed
# calls, and the open response of a chat stream, which cozepy's public API never hands out.
_last_response: contextvars.ContextVar[httpx.Response | None] = contextvars.ContextVar(
    "coze_last_response", default=None
)


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
_simulator = None  # the demo mode's SimulatorServer, once started
_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple, AsyncCoze]]" = weakref.WeakKeyDictionary()


def coze_mode() -> str:
    """`configured` with a token or an OAuth app, `simulator` in demo mode."""
    return "configured" if settings.COZE_API_TOKEN or settings.COZE_OAUTH_APP_ID else "simulator"


def simulator_base_url() -> str:
    """Start the built-in simulator once per process (demo mode), announce demo mode, and return
    the simulator's URL. Blocks while the simulator starts: on an event loop use `aget_client()`."""
    global _simulator
    with _simulator_lock:
        if _simulator is None:
            from chat.simulator import SimulatorConfig, SimulatorServer

            server = SimulatorServer(SimulatorConfig(token_delay_ms=settings.COZE_SIMULATOR_TOKEN_DELAY_MS))
            server.start()
            _simulator = server
            logger.warning(
                "DEMO MODE: COZE_API_TOKEN is not set, so replies come from the built-in Coze simulator at %s, "
                "not from Coze. Set COZE_API_TOKEN and COZE_BOT_ID to talk to a real bot.",
                server.base_url,
            )
        return _simulator.base_url


def start_demo_mode() -> None:
    """In demo mode, start the simulator and announce demo mode now. A server process calls this
    as it loads the ASGI application, so the log says so at start-up and no turn waits for it."""
    if coze_mode() == "simulator":
        simulator_base_url()


class RefreshingJWTAuth(AsyncAuth):
    """An OAuth JWT app's access token, reused until a minute before it expires.

    cozepy's own `AsyncJWTAuth` uses a token up to its expiry second, so a request could leave
    with a token that expires on the way; this fetches tokens through cozepy's public
    `AsyncJWTOAuthApp` instead.
    """

    REFRESH_MARGIN_SECONDS = 60

    def __init__(self, *, oauth_app: AsyncJWTOAuthApp, ttl: int):
        self.oauth_app = oauth_app
        self.ttl = ttl
        self.access_token: OAuthToken | None = None

    @property
    def token_type(self) -> str:
        return "Bearer"

    @property
    async def atoken(self) -> str:
        token = self.access_token
        if token is None or time.time() + self.REFRESH_MARGIN_SECONDS >= token.expires_in:
            token = self.access_token = await self.oauth_app.get_access_token(self.ttl)
        return token.access_token


def _endpoint() -> tuple[str, tuple]:
    """Base URL and a hashable description of the credentials."""
    if settings.COZE_OAUTH_APP_ID:
        return settings.COZE_BASE_URL, ("jwt", settings.COZE_OAUTH_APP_ID, settings.COZE_OAUTH_KEY_ID)
    if settings.COZE_API_TOKEN:
        return settings.COZE_BASE_URL, ("token", settings.COZE_API_TOKEN)
    return simulator_base_url(), ("token", "demo-mode-token")


def _build_auth(base_url: str, credentials: tuple):
    if credentials[0] == "jwt":
        oauth_app = AsyncJWTOAuthApp(
            client_id=settings.COZE_OAUTH_APP_ID,
            private_key=settings.COZE_OAUTH_PRIVATE_KEY,
            public_key_id=settings.COZE_OAUTH_KEY_ID,
            base_url=base_url,
        )
        return RefreshingJWTAuth(oauth_app=oauth_app, ttl=settings.COZE_OAUTH_TOKEN_TTL)
    return AsyncTokenAuth(credentials[1])


async def _remember_response(response: httpx.Response) -> None:
    _last_response.set(response)


def _last_header(name: str) -> str:
    response = _last_response.get()
    return "" if response is None else response.headers.get(name, "")


class ShardedTransport(httpx.AsyncBaseTransport):
    """Spreads requests round-robin over several small httpx connection pools.

    httpcore 1.0's pool re-scans all its connections, quadratically in the idle ones, every time
    a request starts or a response closes. With 1,000 open streams in one pool that bookkeeping
    costs more CPU than the streams themselves (measured: 1,000 direct cozepy streams of 1 s took
    35 s, 76 % of it in `_assign_requests_to_connections`). Small pools keep it cheap; each keeps
    its connections alive as one big pool would.
    """

    def __init__(self, *, limits: httpx.Limits, proxy: str | None = None, shards: int = 32):
        def share(total: int | None) -> int | None:
            return None if total is None else max(1, -(-total // shards))

        shard_limits = httpx.Limits(
            max_connections=share(limits.max_connections),
            max_keepalive_connections=share(limits.max_keepalive_connections),
            keepalive_expiry=limits.keepalive_expiry,
        )
        ssl_context = httpx.create_ssl_context()  # one for all shards: each costs about a millisecond
        self._pools = [
            httpx.AsyncHTTPTransport(verify=ssl_context, limits=shard_limits, proxy=proxy) for _ in range(shards)
        ]
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
    # httpx ignores the proxy environment once it is given a transport, so mount one sharded
    # transport per proxy the environment names, under httpx's own URL patterns (NO_PROXY entries
    # map to None: the direct transport).
    proxy_mounts = {
        pattern: None if proxy is None else ShardedTransport(limits=limits, proxy=proxy)
        for pattern, proxy in environment_proxies().items()
    }
    return AsyncHTTPClient(
        timeout=timeout,
        transport=ShardedTransport(limits=limits),
        mounts=proxy_mounts,
        event_hooks={"response": [_remember_response]},
    )


def environment_proxies() -> dict[str, str | None]:
    """HTTP_PROXY, HTTPS_PROXY, ALL_PROXY and NO_PROXY as httpx reads them when it builds its own
    transport: {"https://": "http://proxy:3128", "all://*.internal": None, …}. httpx keeps this in
    a private module (httpx is pinned); tests/chat/test_coze_proxy.py checks it through a real proxy."""
    from httpx._utils import get_environment_proxies

    return get_environment_proxies()


async def aget_client() -> AsyncCoze:
    """`get_client()` for code on the event loop: in demo mode the simulator is started off the loop
    when it is not running yet (a server process has started it already, see `start_demo_mode`)."""
    if coze_mode() == "simulator" and _simulator is None:
        await asyncio.to_thread(simulator_base_url)
    return get_client()


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
        messages = [
            Message(
                role=item.get("role", "user"),
                type=item.get("type") or ("question" if item.get("role", "user") == "user" else "answer"),
                content=item["content"],
                content_type=item.get("content_type", "text"),
                meta_data=item.get("meta_data"),
            )
            for item in additional_messages
        ]
        last = additional_messages[-1]
        if attachments and last.get("role", "user") == "user" and last.get("content_type", "text") == "text":
            # The turn's own question is the last message (context before it): its attachments go with it.
            items = [MessageObjectString.build_text(last["content"])] if last["content"] else []
            messages[-1] = Message.build_user_question_objects(items + [attachment_item(a) for a in attachments])
        return messages
    if attachments:
        items = [MessageObjectString.build_text(message)] if message else []
        items += [attachment_item(attachment) for attachment in attachments]
        return [Message.build_user_question_objects(items)]
    return [Message.build_user_question_text(message or "")]


class UpstreamChat:
    """An open streaming chat. Iterate `events()`; always `await aclose()` (the service does so in
    a finally): closing cozepy's stream leaves its HTTP response open until garbage collection, and
    only closing that response frees the connection and tells Coze the client is gone."""

    def __init__(self, *, stream: AsyncGenerator[ChatEvent, None], first: ChatEvent | None, response: httpx.Response):
        self._stream = stream
        self._first = first
        self._response = response
        self.logid = response.headers.get("x-tt-logid", "")
        self._completed = False
        self._closed = False

    async def events(self) -> AsyncIterator[UpstreamEvent]:
        """Yields our events; raises ChatError on any upstream failure or a stream that ends early."""
        try:
            if self._first is not None:
                first, self._first = self._first, None
                for event in self._translate(first):
                    yield event
            async for chat_event in self._stream:
                for event in self._translate(chat_event):
                    yield event
        except ChatError:
            raise
        except Exception as exc:
            raise map_exception(exc, logid=self.logid, mid_stream=True) from exc
        if not self._completed:
            raise ChatError(
                "upstream_error",
                "Coze ended the stream before the reply was complete.",
                retryable=True,
                logid=self.logid,
            )

    def _translate(self, event: ChatEvent) -> tuple[UpstreamEvent, ...]:
        kind = event.event
        if kind == ChatEventType.CONVERSATION_MESSAGE_DELTA:
            message = event.message
            if message.reasoning_content and message.content:
                return UpstreamReasoning(message.reasoning_content), UpstreamDelta(message.content)
            if message.reasoning_content:
                return (UpstreamReasoning(message.reasoning_content),)
            if message.content:
                return (UpstreamDelta(message.content),)
        elif kind == ChatEventType.CONVERSATION_MESSAGE_COMPLETED:
            message = event.message
            if message.type == "follow_up":
                return (UpstreamFollowUp(message.content),)
            if message.type == "answer" and message.id:
                return (UpstreamAnswer(message.id),)
        elif kind == ChatEventType.CONVERSATION_CHAT_CREATED:
            chat = event.chat
            return (UpstreamStarted(chat_id=chat.id, conversation_id=chat.conversation_id, logid=self.logid),)
        elif kind == ChatEventType.CONVERSATION_CHAT_COMPLETED:
            usage = event.chat.usage
            self._completed = True
            return (
                UpstreamCompleted(
                    Usage(
                        input_tokens=usage.input_count if usage else 0,
                        output_tokens=usage.output_count if usage else 0,
                        total_tokens=usage.token_count if usage else 0,
                    )
                ),
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
        return ()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await _close_stream(self._stream, self._response)


def _chat_stream_response() -> httpx.Response:
    """The HTTP response of the chat stream cozepy has just opened in this task.

    The one place that depends on how cozepy streams (hence its exact pin): its public
    `chat.stream()` yields events but never the HTTP response, and closing it leaves the response
    open. It does send the request through our httpx client, whose response hook saw the response.
    If a cozepy upgrade stops doing so, fail here, loudly, rather than leak a connection per turn.
    """
    response = _last_response.get()
    if response is None or not response.request.url.path.endswith("/v3/chat"):
        raise RuntimeError(
            "cozepy streamed the chat without our httpx client's response hook seeing its response; "
            "chat/coze.py can't close such streams (see tests/chat/test_coze_adapter.py)"
        )
    return response


async def _close_stream(stream: AsyncGenerator[ChatEvent, None], response: httpx.Response | None) -> None:
    # The generator first, then the HTTP response: that is what frees the connection.
    try:
        await stream.aclose()
    except Exception:  # e.g. still running in another task: closing the response stops it anyway
        logger.debug("closing the cozepy stream failed", exc_info=True)
    if response is not None:
        await response.aclose()


def _is_event_stream(response: httpx.Response | None) -> bool:
    return response is not None and "event-stream" in response.headers.get("content-type", "")


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
    client = await aget_client()
    _last_response.set(None)
    stream = client.chat.stream(
        bot_id=bot_id,
        user_id=user_id,
        additional_messages=messages,
        custom_variables=custom_variables or None,
        meta_data=meta_data or None,
        conversation_id=conversation_id or None,
        auto_save_history=True,
    )
    try:
        # cozepy sends the request on the stream's first step; take its first event (the chat
        # object) here, so that a refusal raises before the caller sees any of the reply.
        first = await anext(stream, None)
    except BaseException as exc:
        response = _last_response.get()
        await _close_stream(stream, response)
        if not isinstance(exc, Exception):
            raise
        raise map_exception(exc, logid=_last_header("x-tt-logid"), mid_stream=_is_event_stream(response)) from exc
    try:
        response = _chat_stream_response()
    except RuntimeError:
        await stream.aclose()
        raise
    return UpstreamChat(stream=stream, first=first, response=response)


async def achat_cancel(*, conversation_id: str, chat_id: str) -> None:
    """Ask Coze to mark the chat cancelled. Best effort: a chat that already ended answers 4104."""
    try:
        await (await aget_client()).chat.cancel(conversation_id=conversation_id, chat_id=chat_id)
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
        uploaded = await (await aget_client()).files.upload(file=(file_name, file, content_type))
    except Exception as exc:
        raise map_exception(exc, logid=_last_header("x-tt-logid"), mid_stream=False) from exc
    return UploadedFile(file_id=uploaded.id, file_name=uploaded.file_name or file_name, bytes=uploaded.bytes or 0)


# --- error mapping ----------------------------------------------------------------------------


def _redact(text: str) -> str:
    token = settings.COZE_API_TOKEN
    if token:
        text = text.replace(token, "[redacted]")
    return text


def _retry_after(code: int) -> int:
    header = _last_header("retry-after")
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
