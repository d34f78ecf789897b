"""The shared cozepy client: one `AsyncCoze` per event loop and credentials, its HTTP pool, and
the demo mode's in-process simulator."""

import asyncio
import contextvars
import itertools
import logging
import threading
import time
import weakref

import httpx
from cozepy import AsyncAuth, AsyncCoze, AsyncJWTOAuthApp, AsyncTokenAuth, OAuthToken
from cozepy.request import AsyncHTTPClient
from django.conf import settings

logger = logging.getLogger(__name__)


def _cozepy_logs_through_ours() -> None:
    """cozepy gives its logger a stderr handler of its own, WARNING and no propagation when it is
    imported. When that happens after Django configured logging, settings.LOGGING's level, handlers
    and filters for "cozepy" (the privacy filter among them, docs/api.md §15) would be bypassed:
    undo it, so its records go through ours. (The filters sit on the logger object and stay.)"""
    from cozepy import log as cozepy_log

    cozepy_log.logger.removeHandler(cozepy_log.handler)
    cozepy_log.logger.propagate = True
    if not settings.configured:
        return  # imported outside Django (the bench's clients): Django's logging set-up comes later
    level = getattr(settings, "LOGGING", {}).get("loggers", {}).get("cozepy", {}).get("level")
    if level:
        cozepy_log.logger.setLevel(level)


_cozepy_logs_through_ours()

# The HTTP response of the last request cozepy sent from this task, set by an httpx response hook
# (hooks run in the task that awaits the request). It gives the logid and Retry-After of failed
# calls, and the open response of a chat stream, which cozepy's public API never hands out.
last_response: contextvars.ContextVar[httpx.Response | None] = contextvars.ContextVar("cozelast_response", default=None)


_simulator_lock = threading.Lock()
_simulator = None  # the demo mode's SimulatorServer, once started
_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple, AsyncCoze]]" = weakref.WeakKeyDictionary()
_http_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[AsyncHTTPClient]]" = (
    weakref.WeakKeyDictionary()
)


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
    last_response.set(response)


def last_header(name: str) -> str:
    response = last_response.get()
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
        http_client = _build_http_client()
        client = AsyncCoze(auth=_build_auth(base_url, credentials), base_url=base_url, http_client=http_client)
        per_loop[key] = client
        _http_clients.setdefault(loop, []).append(http_client)
    return client


async def aclose_clients() -> None:
    """Close the clients of the running event loop, for code that runs its own short-lived loop
    (a command's `asyncio.run`): their connections close with it rather than at garbage collection."""
    loop = asyncio.get_running_loop()
    _clients.pop(loop, None)
    for http_client in _http_clients.pop(loop, []):
        await http_client.aclose()
