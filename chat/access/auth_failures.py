"""Failed API-key authentications, counted by client address.

A wrong key costs a database lookup. An address that has sent CHAT_AUTH_FAILURES_PER_MINUTE wrong
keys in the current minute is blocked until the minute ends: chat.access.auth then refuses its keys that
are not ours with `429 rate_limited` before any lookup. The failures are counted in the same
minute windows as the request limits (Redis with REDIS_URL, so the count is the workers' sum);
whether an address is blocked is remembered by each worker from the counts its own failures
return, so checking costs no I/O, and a worker that has not yet seen a blocked address's failure
lets one more lookup through before it knows.
"""

import logging
import math
import threading
import time

from django.conf import settings

from chat.access import counters

logger = logging.getLogger(__name__)

# Names this limiter in the warning logged when Redis is away.
LIMITER = "Failed-authentication limiter"


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
    hit = counters.window_hit(_auth_failures_owner(address), limiter=LIMITER)
    if hit is not None:
        _after_auth_failure(address, *hit)


async def arecord_auth_failure(address: str | None) -> None:
    """Count a wrong API key from `address`; the one that reaches the limit blocks the address."""
    if not address or not settings.CHAT_AUTH_FAILURES_PER_MINUTE:
        return
    hit = await counters.awindow_hit(_auth_failures_owner(address), limiter=LIMITER)
    if hit is not None:
        _after_auth_failure(address, *hit)
