"""The counters behind rate limits, stream slots and reservations: in Redis with REDIS_URL (shared
by the workers, each step one atomic Lua script), else in this process.

If Redis can't be reached the limiter lets requests through and logs a warning: an outage of the
limiter should not become an outage of the chat. Budgets still hold (they read the database).
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

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60


ADMITTED, OVER_RATE, OVER_STREAMS, OVER_BUDGET_IN_FLIGHT, SPEND_CHANGED = 0, 1, 2, 3, 4

# One atomic step per turn. KEYS: the minute window, the in-flight set (slot ids scored by lease
# expiry, so slots of a crashed worker lapse on their own), the owner's release count. ARGV: rpm
# (0 = off), window seconds, now, lease expiry, max streams (0 = off), slot id ("" = take none),
# key expiry, tokens reserved per reply in flight, tokens left of the tightest budget (-1 = no
# budget), the release count read before the spend ("" = not checked).
# A slot is released only after its reply's spend is stored; a release since the admission read
# its spend means that spend may miss the reply whose slot is now free: SPEND_CHANGED, read again.
ADMIT_SCRIPT = """
if ARGV[10] ~= '' and (redis.call('GET', KEYS[3]) or '0') ~= ARGV[10] then return {4, 0} end
local rpm = tonumber(ARGV[1])
if rpm > 0 then
  local count = redis.call('INCR', KEYS[1])
  if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
  if count > rpm then return {1, redis.call('TTL', KEYS[1])} end
end
if ARGV[6] == '' then return {0, 0} end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
local in_flight = redis.call('ZCARD', KEYS[2])
local max_streams = tonumber(ARGV[5])
if max_streams > 0 and in_flight >= max_streams then return {2, 0} end
local left = tonumber(ARGV[9])
if left >= 0 and in_flight * tonumber(ARGV[8]) >= left then return {3, 0} end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[6])
redis.call('EXPIRE', KEYS[2], ARGV[7])
return {0, 0}
"""

# The minute window alone (requests other than chat turns): INCR, expiry on the first hit.
HIT_SCRIPT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return {count, redis.call('TTL', KEYS[1])}
"""

# Give a slot back; count the release (see ADMIT_SCRIPT) when it was held.
RELEASE_SCRIPT = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('INCR', KEYS[2])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
return 1
"""

# Extend a slot's lease if it is still held (XX: never re-add a released slot).
RENEW_SCRIPT = """
if redis.call('ZADD', KEYS[1], 'XX', 'CH', ARGV[1], ARGV[2]) == 1 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
return 1
"""


def window_key(owner_key: str) -> str:
    return f"cozeproject:rl:{owner_key}:{int(time.time() // WINDOW_SECONDS)}"


def streams_key(owner_key: str) -> str:
    return f"cozeproject:streams:{owner_key}"


def releases_key(owner_key: str) -> str:
    return f"cozeproject:streams:{owner_key}:released"


def lease_seconds() -> float:
    # As long as a session lock's lease: a crashed worker's slots lapse when its sessions unlock.
    return settings.CHAT_SESSION_LOCK_TTL


class LocalCounters:
    """The counters of one process (no REDIS_URL). Owners are forgotten once they hold nothing."""

    def __init__(self):
        self.lock = threading.Lock()
        self.windows: dict[str, int] = defaultdict(int)
        self.streams: dict[str, dict[str, float]] = {}
        self.releases: dict[str, int] = defaultdict(int)

    def hit(self, owner_key: str) -> tuple[int, int]:
        key = window_key(owner_key)
        with self.lock:
            return self._hit(key)

    def _hit(self, key: str) -> tuple[int, int]:
        if len(self.windows) > 10_000:  # drop past windows
            current = int(time.time() // WINDOW_SECONDS)
            for stale in [k for k in self.windows if int(k.rsplit(":", 1)[1]) < current]:
                del self.windows[stale]
        self.windows[key] += 1
        return self.windows[key], WINDOW_SECONDS - int(time.time() % WINDOW_SECONDS)

    def _purge(self, owner_key: str, now: float) -> dict[str, float]:
        slots = self.streams.get(owner_key, {})
        for stale in [slot for slot, expires in slots.items() if expires <= now]:
            del slots[stale]
        if not slots:
            self.streams.pop(owner_key, None)
        return slots

    def admit(
        self, owner_key: str, *, rpm: int, slot_id: str, max_streams: int, reserve: int, left: int, releases: str = ""
    ) -> tuple[int, int]:
        now = time.time()
        with self.lock:
            if releases and str(self.releases.get(owner_key, 0)) != releases:
                return SPEND_CHANGED, 0
            if rpm:
                count, ttl = self._hit(window_key(owner_key))
                if count > rpm:
                    return OVER_RATE, ttl
            if not slot_id:
                return ADMITTED, 0
            if len(self.streams) > 1000:
                for owner in list(self.streams):
                    self._purge(owner, now)
            slots = self._purge(owner_key, now)
            if max_streams and len(slots) >= max_streams:
                return OVER_STREAMS, 0
            if left >= 0 and len(slots) * reserve >= left:
                return OVER_BUDGET_IN_FLIGHT, 0
            self.streams.setdefault(owner_key, slots)[slot_id] = now + lease_seconds()
            return ADMITTED, 0

    def renew(self, owner_key: str, slot_id: str) -> None:
        with self.lock:
            slots = self.streams.get(owner_key)
            if slots is not None and slot_id in slots:
                slots[slot_id] = time.time() + lease_seconds()

    def release(self, owner_key: str, slot_id: str) -> None:
        with self.lock:
            slots = self.streams.get(owner_key)
            if slots is not None:
                if slots.pop(slot_id, None) is not None:
                    self.releases[owner_key] += 1
                if not slots:
                    del self.streams[owner_key]


local_counters = LocalCounters()

async_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aredis.Redis]" = weakref.WeakKeyDictionary()
_sync_client: redis.Redis | None = None


def aredis_client() -> aredis.Redis:
    loop = asyncio.get_running_loop()
    client = async_clients.get(loop)
    if client is None:
        client = aredis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
        async_clients[loop] = client
    return client


def redis_client() -> redis.Redis:
    global _sync_client
    if _sync_client is None:
        _sync_client = redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    return _sync_client


async def areleases(owner_key: str) -> str:
    """How many slots `owner_key` has released (a count to hand back to `aadmit`); "" when it
    can't be read (Redis away: nothing is limited then anyway)."""
    if not settings.REDIS_URL:
        return str(local_counters.releases.get(owner_key, 0))
    try:
        count = await aredis_client().get(releases_key(owner_key))
    except redis.RedisError:
        return ""
    return count.decode() if count else "0"


async def aadmit(
    owner_key: str, *, rpm: int, slot_id: str, max_streams: int, reserve: int, left: int, releases: str = ""
) -> tuple[int, int, bool]:
    """(result, retry-after of the rate window, whether a slot is held). With `releases` (from
    `areleases`, read before the spend), SPEND_CHANGED when a slot was released since: nothing
    counted, nothing taken."""
    if not settings.REDIS_URL:
        result, ttl = local_counters.admit(
            owner_key, rpm=rpm, slot_id=slot_id, max_streams=max_streams, reserve=reserve, left=left, releases=releases
        )
        return result, ttl, bool(slot_id) and result == ADMITTED
    lease = lease_seconds()
    wall = time.time()
    try:
        result, ttl = await aredis_client().eval(
            ADMIT_SCRIPT,
            3,
            window_key(owner_key),
            streams_key(owner_key),
            releases_key(owner_key),
            rpm,
            WINDOW_SECONDS,
            wall,
            wall + lease,
            max_streams,
            slot_id,
            int(lease) + 60,
            reserve,
            left,
            releases,
        )
    except redis.RedisError as exc:
        logger.warning("Rate limiter: Redis unavailable, not limiting: %s", exc)
        return ADMITTED, 0, False
    return int(result), int(ttl), bool(slot_id) and int(result) == ADMITTED


async def arenew_slot(owner_key: str, slot_id: str) -> None:
    if not settings.REDIS_URL:
        local_counters.renew(owner_key, slot_id)
        return
    lease = lease_seconds()
    try:
        await aredis_client().eval(
            RENEW_SCRIPT, 1, streams_key(owner_key), time.time() + lease, slot_id, int(lease) + 60
        )
    except redis.RedisError as exc:
        logger.warning("Rate limiter: could not renew a stream slot: %s", exc)


async def arelease_slot(owner_key: str, slot_id: str) -> None:
    if not settings.REDIS_URL:
        local_counters.release(owner_key, slot_id)
        return
    try:
        await aredis_client().eval(
            RELEASE_SCRIPT, 2, streams_key(owner_key), releases_key(owner_key), slot_id, int(lease_seconds()) + 60
        )
    except redis.RedisError as exc:
        logger.warning("Rate limiter: could not release a stream slot (it lapses by itself): %s", exc)


def window_hit(owner_key: str, *, limiter: str) -> tuple[int, int] | None:
    """Count one request in `owner_key`'s minute window: (requests so far, seconds left of the
    window), or None when Redis is away (logged as `limiter`'s warning: nothing is limited then)."""
    if not settings.REDIS_URL:
        return local_counters.hit(owner_key)
    try:
        count, ttl = redis_client().eval(HIT_SCRIPT, 1, window_key(owner_key), WINDOW_SECONDS)
    except redis.RedisError as exc:
        logger.warning("%s: Redis unavailable, not counting: %s", limiter, exc)
        return None
    return int(count), int(ttl)


async def awindow_hit(owner_key: str, *, limiter: str) -> tuple[int, int] | None:
    """`window_hit` for async code."""
    if not settings.REDIS_URL:
        return local_counters.hit(owner_key)
    try:
        count, ttl = await aredis_client().eval(HIT_SCRIPT, 1, window_key(owner_key), WINDOW_SECONDS)
    except redis.RedisError as exc:
        logger.warning("%s: Redis unavailable, not counting: %s", limiter, exc)
        return None
    return int(count), int(ttl)
