"""The one place that says whether a turn may start: per-client limits and token budgets (docs/api.md §11).

Before Coze is called, `aadmit_turn` checks, in this order:

1. the bot: a client with its own bot list may only use those (`403 bot_not_allowed`);
2. the token budgets: a client whose use today (UTC) or this month has reached its daily or
   monthly budget gets `429 quota_exceeded`, `Retry-After` = seconds until that budget resets;
3. requests per minute, then concurrent streams (`429 rate_limited`);
4. replies in flight against what is left of a budget: each reply in flight is assumed to cost the
   client's average reply this month (`CHAT_BUDGET_RESERVE_TOKENS` before its first). A new turn
   is refused (`429 rate_limited`, retry shortly) when those reservations already cover what is
   left. So concurrent first turns overshoot a budget by at most what the replies already in
   flight spend beyond their reservations; a running reply is never cut.

Steps 3 and 4 run as one atomic step (a Lua script in Redis with REDIS_URL, a lock in-process
otherwise), so workers racing for the last slot or the last tokens can't both win. (The spend
is read just before that step: a reply stored and released in between is missed by this one
admission, which can then let one more reply in than the bound above.) Spend is read
from the daily usage rollup (`DailyUsage`), which `turn_finish` updates in the same transaction
that stores a reply: a reply's tokens count from the moment it is stored, in every worker.
DailyUsage days are UTC days because TIME_ZONE is UTC; budgets follow them (a reply counts on
the day it started).

A client's limits come from its ApiClient row, cached per process for LIMITS_CACHE_SECONDS, so
an admin edit takes effect within seconds without a restart. Limits left empty use the
server-wide defaults; users and browsers always do, and have no budgets.

If Redis can't be reached the limiter lets requests through and logs a warning: an outage of the
limiter should not become an outage of the chat. Budgets still hold (they read the database).
"""

import asyncio
import logging
import math
import threading
import time
import uuid
import weakref
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import redis
import redis.asyncio as aredis
from django.conf import settings
from django.db.models import Q, Sum
from rest_framework.throttling import BaseThrottle

from chat.domain.errors import ChatError
from chat.runtime.db import db_async
from sessions_admin.models import ApiClient, DailyUsage

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60
LIMITS_CACHE_SECONDS = 5.0


def now() -> datetime:
    """The current time in UTC. The one clock of budgets: tests replace it to cross midnight."""
    return datetime.now(UTC)


def day_reset(at: datetime) -> datetime:
    """The next UTC midnight after `at`."""
    return datetime.combine(at.astimezone(UTC).date() + timedelta(days=1), datetime.min.time(), UTC)


def month_reset(at: datetime) -> datetime:
    """Midnight UTC of the first day of the month after `at`."""
    day = at.astimezone(UTC).date()
    first = date(day.year + 1, 1, 1) if day.month == 12 else date(day.year, day.month + 1, 1)
    return datetime.combine(first, datetime.min.time(), UTC)


def seconds_until(moment: datetime, at: datetime) -> int:
    return max(1, math.ceil((moment - at).total_seconds()))


# --- a client's limits ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits in force for one owner; 0 rpm or streams = unlimited, None budget = none."""

    rpm: int
    max_streams: int
    daily_tokens: int | None = None
    monthly_tokens: int | None = None
    allowed_bot_ids: tuple[str, ...] = ()
    client_name: str = ""

    @property
    def has_budget(self) -> bool:
        return self.daily_tokens is not None or self.monthly_tokens is not None


@dataclass(frozen=True, slots=True)
class _ClientRow:
    """An ApiClient's own settings (None = use the server default), as cached."""

    name: str
    rpm: int | None
    max_streams: int | None
    daily_tokens: int | None
    monthly_tokens: int | None
    allowed_bot_ids: tuple[str, ...]


def _defaults() -> Limits:
    return Limits(rpm=settings.CHAT_RATE_LIMIT_PER_MINUTE, max_streams=settings.CHAT_MAX_CONCURRENT_STREAMS)


def _resolve(row: _ClientRow | None) -> Limits:
    # Defaults are read at each use, so a changed setting needs no cache flush.
    if row is None:
        return _defaults()
    return Limits(
        rpm=settings.CHAT_RATE_LIMIT_PER_MINUTE if row.rpm is None else row.rpm,
        max_streams=settings.CHAT_MAX_CONCURRENT_STREAMS if row.max_streams is None else row.max_streams,
        daily_tokens=row.daily_tokens,
        monthly_tokens=row.monthly_tokens,
        allowed_bot_ids=row.allowed_bot_ids,
        client_name=row.name,
    )


_client_rows: dict[int, tuple[float, _ClientRow | None]] = {}


def _load_client_row(api_client_id: int) -> _ClientRow | None:
    client = (
        ApiClient.objects.filter(pk=api_client_id)
        .only(
            "name",
            "rate_limit_per_minute",
            "max_concurrent_streams",
            "daily_token_budget",
            "monthly_token_budget",
            "allowed_bot_ids",
        )
        .first()
    )
    if client is None:
        return None
    return _ClientRow(
        name=client.name,
        rpm=client.rate_limit_per_minute,
        max_streams=client.max_concurrent_streams,
        daily_tokens=client.daily_token_budget,
        monthly_tokens=client.monthly_token_budget,
        allowed_bot_ids=tuple(client.allowed_bots),
    )


def _cached_row(api_client_id: int) -> tuple[bool, _ClientRow | None]:
    cached = _client_rows.get(api_client_id)
    if cached is not None and cached[0] > time.monotonic():
        return True, cached[1]
    return False, None


def _remember_row(api_client_id: int, row: _ClientRow | None) -> None:
    if len(_client_rows) > 10_000:
        _client_rows.clear()
    _client_rows[api_client_id] = (time.monotonic() + LIMITS_CACHE_SECONDS, row)


def limits_for(owner) -> Limits:
    """The limits of `owner` (an API client's own, else the defaults); cached LIMITS_CACHE_SECONDS."""
    if owner.api_client_id is None:
        return _defaults()
    found, row = _cached_row(owner.api_client_id)
    if not found:
        row = _load_client_row(owner.api_client_id)
        _remember_row(owner.api_client_id, row)
    return _resolve(row)


_aload_client_row = db_async(_load_client_row)


async def alimits_for(owner) -> Limits:
    """`limits_for` for async code."""
    if owner.api_client_id is None:
        return _defaults()
    found, row = _cached_row(owner.api_client_id)
    if not found:
        row = await _aload_client_row(owner.api_client_id)
        _remember_row(owner.api_client_id, row)
    return _resolve(row)


def forget_cached_limits() -> None:
    """Drop this process's cache (tests; other processes follow within LIMITS_CACHE_SECONDS)."""
    _client_rows.clear()


# --- spend ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Spend:
    today_tokens: int = 0
    today_replies: int = 0
    month_tokens: int = 0
    month_replies: int = 0


def spend_of(owner_key: str, at: datetime) -> Spend:
    """Tokens and ended replies of `owner_key` on the UTC day of `at` and in its month (one query)."""
    today = at.astimezone(UTC).date()
    today_only = Q(day=today)
    sums = DailyUsage.objects.filter(owner_key=owner_key, day__gte=today.replace(day=1), day__lte=today).aggregate(
        today_tokens=Sum("total_tokens", filter=today_only),
        today_replies=Sum("replies", filter=today_only),
        month_tokens=Sum("total_tokens"),
        month_replies=Sum("replies"),
    )
    return Spend(**{name: value or 0 for name, value in sums.items()})


aspend_of = db_async(spend_of)


@dataclass(frozen=True, slots=True)
class BudgetUse:
    period: str  # "day" or "month"
    used: int
    limit: int
    resets_at: datetime


def budget_uses(limits: Limits, spend: Spend, at: datetime) -> list[BudgetUse]:
    """Each budget `limits` sets, with its use."""
    uses = []
    if limits.daily_tokens is not None:
        uses.append(BudgetUse("day", spend.today_tokens, limits.daily_tokens, day_reset(at)))
    if limits.monthly_tokens is not None:
        uses.append(BudgetUse("month", spend.month_tokens, limits.monthly_tokens, month_reset(at)))
    return uses


def _check_budgets(limits: Limits, spend: Spend, at: datetime) -> int:
    """Raises ChatError("quota_exceeded") when a budget is used up; returns the tokens left (the
    smallest over the budgets)."""
    uses = budget_uses(limits, spend, at)
    spent = [use for use in uses if use.used >= use.limit]
    if spent:
        # Chatting resumes when every used-up budget has reset.
        resets_at = max(use.resets_at for use in spent)
        names = " and ".join(f"{'daily' if use.period == 'day' else 'monthly'} ({use.limit:,})" for use in spent)
        raise ChatError(
            "quota_exceeded",
            f"This client has used its {names} token budget; it resets at {resets_at:%Y-%m-%d %H:%M} UTC.",
            retry_after=seconds_until(resets_at, at),
        )
    return min(use.limit - use.used for use in uses)


def reservation_per_reply(spend: Spend) -> int:
    """Tokens a reply in flight is assumed to cost: the client's average this month, else the setting."""
    if spend.month_replies:
        return max(1, round(spend.month_tokens / spend.month_replies))
    return settings.CHAT_BUDGET_RESERVE_TOKENS


# --- counters: Redis or in-process ------------------------------------------------------------

ADMITTED, OVER_RATE, OVER_STREAMS, OVER_BUDGET_IN_FLIGHT = 0, 1, 2, 3

# One atomic step per turn. KEYS: the minute window, the in-flight set (slot ids scored by lease
# expiry, so slots of a crashed worker lapse on their own). ARGV: rpm (0 = off), window seconds,
# now, lease expiry, max streams (0 = off), slot id ("" = take none), key expiry, tokens reserved
# per reply in flight, tokens left of the tightest budget (-1 = no budget).
ADMIT_SCRIPT = """
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

# Extend a slot's lease if it is still held (XX: never re-add a released slot).
RENEW_SCRIPT = """
if redis.call('ZADD', KEYS[1], 'XX', 'CH', ARGV[1], ARGV[2]) == 1 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
return 1
"""


def _window_key(owner_key: str) -> str:
    return f"cozeproject:rl:{owner_key}:{int(time.time() // WINDOW_SECONDS)}"


def _streams_key(owner_key: str) -> str:
    return f"cozeproject:streams:{owner_key}"


def _lease_seconds() -> float:
    # As long as a session lock's lease: a crashed worker's slots lapse when its sessions unlock.
    return settings.CHAT_SESSION_LOCK_TTL


class _LocalCounters:
    """The counters of one process (no REDIS_URL). Owners are forgotten once they hold nothing."""

    def __init__(self):
        self.lock = threading.Lock()
        self.windows: dict[str, int] = defaultdict(int)
        self.streams: dict[str, dict[str, float]] = {}

    def hit(self, owner_key: str) -> tuple[int, int]:
        key = _window_key(owner_key)
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
        self, owner_key: str, *, rpm: int, slot_id: str, max_streams: int, reserve: int, left: int
    ) -> tuple[int, int]:
        now = time.time()
        with self.lock:
            if rpm:
                count, ttl = self._hit(_window_key(owner_key))
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
            self.streams.setdefault(owner_key, slots)[slot_id] = now + _lease_seconds()
            return ADMITTED, 0

    def renew(self, owner_key: str, slot_id: str) -> None:
        with self.lock:
            slots = self.streams.get(owner_key)
            if slots is not None and slot_id in slots:
                slots[slot_id] = time.time() + _lease_seconds()

    def release(self, owner_key: str, slot_id: str) -> None:
        with self.lock:
            slots = self.streams.get(owner_key)
            if slots is not None:
                slots.pop(slot_id, None)
                if not slots:
                    del self.streams[owner_key]


_local = _LocalCounters()

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


async def _aadmit_counters(
    owner_key: str, *, rpm: int, slot_id: str, max_streams: int, reserve: int, left: int
) -> tuple[int, int, bool]:
    """(result, retry-after of the rate window, whether a slot is held)."""
    if not settings.REDIS_URL:
        result, ttl = _local.admit(
            owner_key, rpm=rpm, slot_id=slot_id, max_streams=max_streams, reserve=reserve, left=left
        )
        return result, ttl, bool(slot_id) and result == ADMITTED
    lease = _lease_seconds()
    wall = time.time()
    try:
        result, ttl = await _aredis().eval(
            ADMIT_SCRIPT,
            2,
            _window_key(owner_key),
            _streams_key(owner_key),
            rpm,
            WINDOW_SECONDS,
            wall,
            wall + lease,
            max_streams,
            slot_id,
            int(lease) + 60,
            reserve,
            left,
        )
    except redis.RedisError as exc:
        logger.warning("Rate limiter: Redis unavailable, not limiting: %s", exc)
        return ADMITTED, 0, False
    return int(result), int(ttl), bool(slot_id) and int(result) == ADMITTED


async def _arenew_slot(owner_key: str, slot_id: str) -> None:
    if not settings.REDIS_URL:
        _local.renew(owner_key, slot_id)
        return
    lease = _lease_seconds()
    try:
        await _aredis().eval(RENEW_SCRIPT, 1, _streams_key(owner_key), time.time() + lease, slot_id, int(lease) + 60)
    except redis.RedisError as exc:
        logger.warning("Rate limiter: could not renew a stream slot: %s", exc)


async def _arelease_slot(owner_key: str, slot_id: str) -> None:
    if not settings.REDIS_URL:
        _local.release(owner_key, slot_id)
        return
    try:
        await _aredis().zrem(_streams_key(owner_key), slot_id)
    except redis.RedisError as exc:
        logger.warning("Rate limiter: could not release a stream slot (it lapses by itself): %s", exc)


# --- admission --------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class Admission:
    """A turn let in: it holds an in-flight slot (when a stream limit or a budget needs one),
    renewed in the background for as long as the turn runs. Give it back with `arelease_turn`."""

    owner_key: str
    api_client_id: int | None
    limits: Limits
    slot_id: str = ""
    renewal: asyncio.Task | None = None
    released: bool = False


async def _keep_renewing(owner_key: str, slot_id: str) -> None:
    # A reply longer than the lease keeps its slot: renewed three times per lease.
    while True:
        await asyncio.sleep(_lease_seconds() / 3)
        await _arenew_slot(owner_key, slot_id)


async def aadmit_turn(*, owner, bot_id: str) -> Admission:
    """Let a turn of `owner` with `bot_id` start, or raise ChatError: `bot_not_allowed` (403),
    `quota_exceeded` (429, Retry-After until the budget resets) or `rate_limited` (429).

    Call once per turn, before anything is stored or sent to Coze; always `arelease_turn` the
    result, however the turn ends.
    """
    limits = await alimits_for(owner)
    if limits.allowed_bot_ids and bot_id not in limits.allowed_bot_ids:
        raise ChatError("bot_not_allowed", f"bot_id {bot_id!r} is not allowed for this API client.")
    left, reserve = -1, 0
    if limits.has_budget:
        at = now()
        spend = await aspend_of(owner.key, at)
        left = _check_budgets(limits, spend, at)
        reserve = reservation_per_reply(spend)
    slot_id = uuid.uuid4().hex if (limits.max_streams or limits.has_budget) else ""
    result, ttl, held = await _aadmit_counters(
        owner.key, rpm=limits.rpm, slot_id=slot_id, max_streams=limits.max_streams, reserve=reserve, left=left
    )
    if result == OVER_RATE:
        raise ChatError(
            "rate_limited",
            f"More than {limits.rpm} requests a minute; retry in {max(1, ttl)} s.",
            retry_after=max(1, ttl),
        )
    if result == OVER_STREAMS:
        raise ChatError(
            "rate_limited", f"At most {limits.max_streams} replies may stream at once for one client.", retry_after=1
        )
    if result == OVER_BUDGET_IN_FLIGHT:
        raise ChatError(
            "rate_limited",
            "The replies in flight may use the rest of this client's token budget; retry when one has ended.",
            retry_after=1,
        )
    admission = Admission(owner_key=owner.key, api_client_id=owner.api_client_id, limits=limits)
    if held:
        admission.slot_id = slot_id
        admission.renewal = asyncio.create_task(_keep_renewing(owner.key, slot_id))
    return admission


async def arelease_turn(admission: Admission) -> None:
    """The turn has ended (and its reply is stored): free its slot and check budget alerts."""
    if admission.released:
        return
    admission.released = True
    if admission.renewal is not None:
        admission.renewal.cancel()
    if admission.slot_id:
        await _arelease_slot(admission.owner_key, admission.slot_id)
    if admission.limits.has_budget and admission.api_client_id is not None:
        from chat import alerts  # alerts reads budgets from here

        alerts.check_in_background(
            api_client_id=admission.api_client_id, owner_key=admission.owner_key, limits=admission.limits
        )


# --- requests other than chat turns -----------------------------------------------------------


def check_request(owner) -> None:
    """Count one request of `owner` against its requests per minute (sync, for DRF views)."""
    limit = limits_for(owner).rpm
    if not limit:
        return
    if settings.REDIS_URL:
        try:
            count, ttl = _redis().eval(HIT_SCRIPT, 1, _window_key(owner.key), WINDOW_SECONDS)
        except redis.RedisError as exc:
            logger.warning("Rate limiter: Redis unavailable, not limiting: %s", exc)
            return
    else:
        count, ttl = _local.hit(owner.key)
    _refuse_over(limit, count, ttl)


async def acheck_request(owner) -> None:
    """`check_request` for async views (a resume is a request like any other)."""
    limit = (await alimits_for(owner)).rpm
    if not limit:
        return
    if settings.REDIS_URL:
        try:
            count, ttl = await _aredis().eval(HIT_SCRIPT, 1, _window_key(owner.key), WINDOW_SECONDS)
        except redis.RedisError as exc:
            logger.warning("Rate limiter: Redis unavailable, not limiting: %s", exc)
            return
    else:
        count, ttl = _local.hit(owner.key)
    _refuse_over(limit, count, ttl)


def _refuse_over(limit: int, count: int, ttl: int) -> None:
    if count > limit:
        raise ChatError(
            "rate_limited", f"More than {limit} requests a minute; retry in {max(1, ttl)} s.", retry_after=max(1, ttl)
        )


class OwnerRateThrottle(BaseThrottle):
    """DRF throttle sharing the per-minute counter with the chat transports."""

    def allow_request(self, request, view) -> bool:
        owner = getattr(request, "auth", None)
        if owner is not None and hasattr(owner, "key"):
            check_request(owner)
        return True


# --- failed API-key authentications by client address ------------------------------------------
#
# A wrong key costs a database lookup. An address that has sent CHAT_AUTH_FAILURES_PER_MINUTE wrong
# keys in the current minute is blocked until the minute ends: chat.auth then refuses its keys that
# are not ours with `429 rate_limited` before any lookup. The failures are counted in the same
# minute windows as the request limits (Redis with REDIS_URL, so the count is the workers' sum);
# whether an address is blocked is remembered by each worker from the counts its own failures
# return, so checking costs no I/O, and a worker that has not yet seen a blocked address's failure
# lets one more lookup through before it knows.

_blocked_until: dict[str, float] = {}  # address -> wall-clock end of its block, in this worker
_blocked_lock = threading.Lock()


def auth_block_seconds(address: str | None) -> int:
    """Seconds left of `address`'s block for failed authentications (0: not blocked). No I/O."""
    if not address:
        return 0
    until = _blocked_until.get(address)
    if until is None:
        return 0
    left = until - time.time()
    if left <= 0:
        with _blocked_lock:
            _blocked_until.pop(address, None)
        return 0
    return max(1, math.ceil(left))


def _after_auth_failure(address: str, count: int, ttl: int) -> None:
    limit = settings.CHAT_AUTH_FAILURES_PER_MINUTE
    if count < limit:
        return
    with _blocked_lock:
        if len(_blocked_until) > 10_000:
            wall = time.time()
            for stale in [a for a, until in _blocked_until.items() if until <= wall]:
                del _blocked_until[stale]
        _blocked_until[address] = time.time() + max(1, ttl)
    if count == limit:  # once per address and minute (across workers with Redis)
        logger.warning(
            "%d failed API-key authentications from %s this minute: its unknown keys are refused "
            "without a lookup for %d s (counted in cozeproject_auth_failures_total)",
            count,
            address,
            max(1, ttl),
        )


def _auth_failures_owner(address: str) -> str:
    return f"authfail:{address}"


def record_auth_failure(address: str | None) -> None:
    """Count a wrong API key from `address` (sync twin of `arecord_auth_failure`)."""
    if not address or not settings.CHAT_AUTH_FAILURES_PER_MINUTE:
        return
    if settings.REDIS_URL:
        try:
            count, ttl = _redis().eval(HIT_SCRIPT, 1, _window_key(_auth_failures_owner(address)), WINDOW_SECONDS)
        except redis.RedisError as exc:
            logger.warning("Failed-authentication limiter: Redis unavailable, not counting: %s", exc)
            return
    else:
        count, ttl = _local.hit(_auth_failures_owner(address))
    _after_auth_failure(address, int(count), int(ttl))


async def arecord_auth_failure(address: str | None) -> None:
    """Count a wrong API key from `address`; the one that reaches the limit blocks the address."""
    if not address or not settings.CHAT_AUTH_FAILURES_PER_MINUTE:
        return
    if settings.REDIS_URL:
        try:
            count, ttl = await _aredis().eval(HIT_SCRIPT, 1, _window_key(_auth_failures_owner(address)), WINDOW_SECONDS)
        except redis.RedisError as exc:
            logger.warning("Failed-authentication limiter: Redis unavailable, not counting: %s", exc)
            return
    else:
        count, ttl = _local.hit(_auth_failures_owner(address))
    _after_auth_failure(address, int(count), int(ttl))


def auth_failures_reset() -> None:
    """Forget this worker's blocks (tests; the counters themselves lapse with their minute)."""
    with _blocked_lock:
        _blocked_until.clear()


# --- the caller's own use (GET /api/usage) ----------------------------------------------------


def usage_report(owner) -> dict:
    """`GET /api/usage`: the owner's use today and this month, its limits and what is left."""
    limits = limits_for(owner)
    spend = spend_of(owner.key, now())

    def remaining(budget: int | None, used: int) -> int | None:
        return None if budget is None else max(0, budget - used)

    return {
        "today": {"tokens": spend.today_tokens, "replies": spend.today_replies},
        "month": {"tokens": spend.month_tokens, "replies": spend.month_replies},
        "limits": {
            "rpm": limits.rpm or None,
            "max_streams": limits.max_streams or None,
            "daily_tokens": limits.daily_tokens,
            "monthly_tokens": limits.monthly_tokens,
        },
        "remaining": {
            "daily_tokens": remaining(limits.daily_tokens, spend.today_tokens),
            "monthly_tokens": remaining(limits.monthly_tokens, spend.month_tokens),
        },
    }
