"""Shared fixtures: the Coze simulator over real HTTP, the project served by a real ASGI server,
API keys, and clients for the three transports.

The chat service runs its database work on its own threads, so tests that go through it use
`django_db(transaction=True)`: those threads must see committed rows.
"""

import asyncio
import json
import os
import socket
import threading
import time

import httpx
import pytest
import redis
import uvicorn

from chat.domain.sse import parse_sse
from chat.simulator import SimulatorConfig, SimulatorServer

COZE_TEST_TOKEN = "pat_test_SECRET_coze_token_0123456789"

# The tests that need Redis use REDIS_URL when it is set, else a Redis on the default port: they
# run wherever one answers, and say why when they skip. (The rest of the suite uses Redis only
# when REDIS_URL is set, as the product does.)
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def _find_redis() -> str:
    url = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    try:
        return url if redis.from_url(url, socket_connect_timeout=1).ping() else ""
    except (redis.RedisError, OSError):
        return ""


TEST_REDIS_URL = _find_redis()
NO_REDIS = f"no Redis answers at {os.environ.get('REDIS_URL') or DEFAULT_REDIS_URL} (REDIS_URL, else the default port)"
needs_redis = pytest.mark.skipif(not TEST_REDIS_URL, reason=NO_REDIS)


@pytest.fixture
def redis_url(settings) -> str:
    """The Redis the test uses, set as settings.REDIS_URL (and so passed to worker processes)."""
    if not TEST_REDIS_URL:
        pytest.skip(NO_REDIS)
    settings.REDIS_URL = TEST_REDIS_URL
    return TEST_REDIS_URL


@pytest.fixture(scope="session")
def simulator():
    """The Coze simulator, requiring the test token like Coze requires a real one."""
    server = SimulatorServer(SimulatorConfig(token=COZE_TEST_TOKEN))
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def coze_settings(settings, simulator):
    """Point the adapter at the simulator, as a configured (non-demo) deployment."""
    settings.COZE_API_TOKEN = COZE_TEST_TOKEN
    settings.COZE_BASE_URL = simulator.base_url
    settings.COZE_STREAM_IDLE_TIMEOUT = 5.0
    settings.CHAT_SSE_HEARTBEAT = 15.0
    settings.CHAT_ALLOW_ANONYMOUS = False
    # Limits are tested on their own (test_rate_limits.py); elsewhere they would couple tests.
    settings.CHAT_RATE_LIMIT_PER_MINUTE = 0
    settings.CHAT_MAX_CONCURRENT_STREAMS = 0
    settings.CHAT_AUTH_FAILURES_PER_MINUTE = 0
    return settings


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Django's cache (local memory, per process) emptied around each test: the admin dashboard is
    cached for a minute, and a page one test rendered must not answer the next one (the browser
    tests' servers run in this process)."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


@pytest.fixture(autouse=True)
def _request_signals_as_in_production():
    """Django's test Client reconnects `close_old_connections` to `request_started` after each of
    its requests; take it off again, as `ChatConfig.ready` does for the servers (chat/apps.py)."""
    from django.core import signals
    from django.db import close_old_connections, reset_queries

    signals.request_started.disconnect(close_old_connections)
    signals.request_started.disconnect(reset_queries)


@pytest.fixture(scope="session", autouse=True)
def _close_db_threads_at_end(django_db_setup, django_db_blocker):
    yield
    from chat.runtime.db import close_db_threads

    with django_db_blocker.unblock():
        close_db_threads()


class LiveServer:
    """The project's ASGI application served by uvicorn in a thread, on a free port."""

    def __init__(self, application=None):
        if application is None:
            from cozeproject.asgi import application

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.sock = sock
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        # Without uvicorn's own proxy headers, which believe X-Forwarded-For from 127.0.0.1: the
        # application decides the client's address (CHAT_TRUSTED_PROXIES, cozeproject/asgi.py).
        config = uvicorn.Config(
            application,
            lifespan="off",
            log_level="warning",
            log_config=None,
            timeout_graceful_shutdown=2,
            proxy_headers=False,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)

    def start(self):
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the live server did not start"
            time.sleep(0.01)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def asgi_server(transactional_db):
    server = LiveServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def api_key(transactional_db):
    from sessions_admin.models import ApiClient

    _, raw_key = ApiClient.create_with_key(name="test client")
    return raw_key


@pytest.fixture
def other_api_key(transactional_db):
    from sessions_admin.models import ApiClient

    _, raw_key = ApiClient.create_with_key(name="other client")
    return raw_key


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def http(asgi_server):
    """A sync httpx client for the live server."""
    with httpx.Client(base_url=asgi_server.url, timeout=30) as client:
        yield client


def read_sse(response: httpx.Response) -> list[dict]:
    """Parsed events of a finished SSE response: `{"id","event","data"}` (data JSON-decoded)."""
    events = parse_sse(response.text)
    for event in events:
        if "data" in event and event["data"] != "[DONE]":
            event["data"] = json.loads(event["data"])
    return events


def stream_chat(client: httpx.Client, key: str, body: dict, path: str = "/api/chat/stream"):
    """POST to the SSE endpoint; returns (response, events)."""
    response = client.post(path, json=body, headers=auth(key))
    return response, read_sse(response) if response.headers.get("content-type", "").startswith(
        "text/event-stream"
    ) else []


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.02):
    """Poll `predicate` until truthy; returns its value or fails the test."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


async def await_until(predicate, timeout: float = 5.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)
