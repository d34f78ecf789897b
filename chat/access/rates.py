"""Requests per minute for requests other than chat turns (sessions, files, usage, resumes): the
same minute window as a turn's admission, so every request of a client counts once."""

from rest_framework.throttling import BaseThrottle

from chat.access import client_limits, counters
from chat.domain.errors import ChatError

# Names this limiter in the warning logged when Redis is away.
LIMITER = "Rate limiter"


def check_request(owner) -> None:
    """Count one request of `owner` against its requests per minute (sync, for DRF views)."""
    limit = client_limits.limits_for(owner).rpm
    if limit:
        _refuse_over(limit, counters.window_hit(owner.key, limiter=LIMITER))


async def acheck_request(owner) -> None:
    """`check_request` for async views (a resume is a request like any other)."""
    limit = (await client_limits.alimits_for(owner)).rpm
    if limit:
        _refuse_over(limit, await counters.awindow_hit(owner.key, limiter=LIMITER))


def _refuse_over(limit: int, hit: tuple[int, int] | None) -> None:
    """Raise `rate_limited` when the window's count is over `limit` (None: Redis away, let it pass)."""
    if hit is None:
        return
    count, ttl = hit
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
