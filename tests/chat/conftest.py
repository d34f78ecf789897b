"""Fixtures of the chat tests shared between modules."""

import pytest
import redis

from chat.resume import replay


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
    elif not redis_ok(settings.REDIS_URL):
        pytest.skip("needs REDIS_URL with a running Redis")
    else:
        clear_redis_buffers(settings.REDIS_URL)
    return request.param
