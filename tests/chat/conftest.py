"""Fixtures of the chat tests shared between modules."""

import pytest
import redis

from chat.resume import replay
from tests.conftest import NO_REDIS, TEST_REDIS_URL


def redis_ok(url: str) -> bool:
    try:
        return bool(url) and bool(redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def clear_redis_buffers(url: str) -> None:
    """Reply ids start again in each test database: drop the streams earlier tests left."""
    client = redis.from_url(url)
    stale = list(client.scan_iter(f"{replay.KEY_PREFIX}*"))
    if stale:
        client.delete(*stale)


@pytest.fixture(params=["memory", "redis"])
def backend(request, settings):
    """The replay backend under test: this process's memory, or Redis Streams."""
    if request.param == "memory":
        settings.REDIS_URL = ""
    elif not TEST_REDIS_URL:
        pytest.skip(NO_REDIS)
    else:
        settings.REDIS_URL = TEST_REDIS_URL
        clear_redis_buffers(settings.REDIS_URL)
    return request.param
