"""Per-owner rate limits: requests per minute and concurrent streams.

With REDIS_URL the counters live in Redis, so every worker process shares them; without it they
are per process (one worker). If Redis can't be reached the limiter lets requests through and
logs a warning: an outage of the limiter should not become an outage of the chat.
"""

import asyncio
import logging
import threading
import time
import weakref
from collections import defaultdict

import redis
import redis.asyncio as aredis
from django.conf import settings
from rest_framework.throttling import BaseThrottle

from chat.errors import ChatError

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60

# Fixed one-minute window: INCR, set the expiry on the first hit, return the count and TTL.
HIT_SCRIPT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return {count, redis.call('TTL', KEYS[1])}
"""

# Concurrent streams as a sorted set of slot ids scored by lease expiry, so slots of a crashed
# worker lapse on their own.
ACQUIRE_SCRIPT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


def _window_key(owner_key: str) -> str:
    return f"cozeproject:rl:{owner_key}:{int(time.time() // WINDOW_SECONDS)}"


def _streams_key(owner_key: str) -> str:
    return f"cozeproject:streams:{owner_key}"


def _too_many_requests(retry_after: int) -> ChatError:
    return ChatError(
        "rate_limited",
        f"More than {settings.CHAT_RATE_LIMIT_PER_MINUTE} requests a minute; retry in {retry_after} s.",
        retry_after=max(1, retry_after),
    )


def _too_many_streams() -> ChatError:
    return ChatError(
        "rate_limited",
        f"At most {settings.CHAT_MAX_CONCURRENT_STREAMS} replies may stream at once for one client.",
        retry_after=1,
    )


# --- in-process backend -----------------------------------------------------------------------


class _LocalCounters:
    def __init__(self):
        self.lock = threading.Lock()
        self.windows: dict[str, int] = defaultdict(int)
        self.streams: dict[str, dict[str, float]] = defaultdict(dict)

    def hit(self, owner_key: str) -> tuple[int, int]:
        key = _window_key(owner_key)
        with self.lock:
            if len(self.windows) > 10_000:  # drop past windows
                current = int(time.time() // WINDOW_SECONDS)
                for stale in [k for k in self.windows if int(k.rsplit(":", 1)[1]) < current]:
                    del self.windows[stale]
            self.windows[key] += 1
            return self.windows[key], WINDOW_SECONDS - int(time.time() % WINDOW_SECONDS)

    def acquire(self, owner_key: str, slot_id: str, limit: int, ttl: float) -> bool:
        now = time.time()
        with self.lock:
            slots = self.streams[owner_key]
            for stale in [slot for slot, expires in slots.items() if expires <= now]:
                del slots[stale]
            if len(slots) >= limit:
                return False
            slots[slot_id] = now + ttl
            return True

    def release(self, owner_key: str, slot_id: str) -> None:
        with self.lock:
            self.streams[owner_key].pop(slot_id, None)


_local = _LocalCounters()

# --- Redis clients ----------------------------------------------------------------------------

_async_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aredis.Redis]" = weakref.WeakKeyDictionary()
_sync_client: redis.Redis | None = None


def _aredis() -> aredis.Redis:
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        client = aredis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
        _async_clients[loop] = client
    return client


def _redis() -> redis.Redis:
    global _sync_client
    if _sync_client is None:
        _sync_client = redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    return _sync_client


# --- checks -----------------------------------------------------------------------------------


async def acheck_request(owner_key: str) -> None:
    """Count one request; raises ChatError("rate_limited") over CHAT_RATE_LIMIT_PER_MINUTE."""
    limit = settings.CHAT_RATE_LIMIT_PER_MINUTE
    if not limit:
        return
    if settings.REDIS_URL:
        try:
            count, ttl = await _aredis().eval(HIT_SCRIPT, 1, _window_key(owner_key), WINDOW_SECONDS)
        except redis.RedisError as exc:
            logger.warning("Rate limiter: Redis unavailable, not limiting: %s", exc)
            return
    else:
        count, ttl = _local.hit(owner_key)
    if count > limit:
        raise _too_many_requests(int(ttl))


def check_request(owner_key: str) -> None:
    """Sync twin of `acheck_request`, for DRF views."""
    limit = settings.CHAT_RATE_LIMIT_PER_MINUTE
    if not limit:
        return
    if settings.REDIS_URL:
        try:
            count, ttl = _redis().eval(HIT_SCRIPT, 1, _window_key(owner_key), WINDOW_SECONDS)
        except redis.RedisError as exc:
            logger.warning("Rate limiter: Redis unavailable, not limiting: %s", exc)
            return
    else:
        count, ttl = _local.hit(owner_key)
    if count > limit:
        raise _too_many_requests(int(ttl))


async def aacquire_stream(owner_key: str, slot_id: str) -> bool:
    """Take a concurrent-stream slot; raises ChatError("rate_limited") when all are taken.

    Returns whether a slot was taken (False when unlimited or the limiter is unavailable).
    """
    limit = settings.CHAT_MAX_CONCURRENT_STREAMS
    if not limit:
        return False
    ttl = settings.CHAT_SESSION_LOCK_TTL
    if settings.REDIS_URL:
        now = time.time()
        try:
            taken = await _aredis().eval(
                ACQUIRE_SCRIPT, 1, _streams_key(owner_key), now, now + ttl, limit, slot_id, int(ttl) + 60
            )
        except redis.RedisError as exc:
            logger.warning("Rate limiter: Redis unavailable, not limiting streams: %s", exc)
            return False
    else:
        taken = _local.acquire(owner_key, slot_id, limit, ttl)
    if not taken:
        raise _too_many_streams()
    return True


async def arelease_stream(owner_key: str, slot_id: str) -> None:
    if settings.REDIS_URL:
        try:
            await _aredis().zrem(_streams_key(owner_key), slot_id)
        except redis.RedisError as exc:
            logger.warning("Rate limiter: could not release a stream slot (it lapses by itself): %s", exc)
    else:
        _local.release(owner_key, slot_id)


class OwnerRateThrottle(BaseThrottle):
    """DRF throttle sharing the per-minute counter with the chat transports."""

    def allow_request(self, request, view) -> bool:
        owner = getattr(request, "auth", None)
        if owner is not None and hasattr(owner, "key"):
            check_request(owner.key)
        return True
