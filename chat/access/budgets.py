"""Token budgets (docs/api.md §11): the budgets' clock, a client's spend today and this month, the
check that refuses a turn over budget, the reservation a reply in flight counts for, and the
caller's own report (`GET /api/usage`).

Spend is read from the daily usage rollup (`DailyUsage`), which `turn_finish` updates in the same
transaction that stores a reply: a reply's tokens count from the moment it is stored, in every
worker. DailyUsage days are UTC days because TIME_ZONE is UTC; budgets follow them (a reply counts
on the day it started).
"""

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from django.conf import settings
from django.db.models import F, Q, Sum

from chat.access import client_limits
from chat.access.client_limits import Limits
from chat.domain.errors import ChatError
from chat.runtime.db import db_async
from sessions_admin.models import DailyUsage


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


@dataclass(frozen=True, slots=True)
class Spend:
    today_tokens: int = 0
    today_replies: int = 0
    month_tokens: int = 0
    month_replies: int = 0
    # This month's replies that ended without completing (cancelled, failed, interrupted): Coze
    # counts the tokens of a completed chat, so these mostly stored none.
    month_ended_early: int = 0


def spend_of(owner_key: str, at: datetime) -> Spend:
    """Tokens and ended replies of `owner_key` on the UTC day of `at` and in its month (one query)."""
    today = at.astimezone(UTC).date()
    today_only = Q(day=today)
    sums = DailyUsage.objects.filter(owner_key=owner_key, day__gte=today.replace(day=1), day__lte=today).aggregate(
        today_tokens=Sum("total_tokens", filter=today_only),
        today_replies=Sum("replies", filter=today_only),
        month_tokens=Sum("total_tokens"),
        month_replies=Sum("replies"),
        month_ended_early=Sum(F("cancelled") + F("failed") + F("interrupted")),
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


def check_budgets(limits: Limits, spend: Spend, at: datetime) -> int:
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
    """Tokens a reply in flight is assumed to cost: the client's average completed reply this
    month, else (no completed reply yet) CHAT_BUDGET_RESERVE_TOKENS.

    Replies that ended early — a client that cancels often stores many zero-token replies — are
    left out of the count, so they can't shrink the reservation below what a reply costs; what
    tokens they did spend stay in the sum, which errs towards a larger reservation.
    """
    completed = spend.month_replies - spend.month_ended_early
    if completed > 0:
        return max(1, round(spend.month_tokens / completed))
    return settings.CHAT_BUDGET_RESERVE_TOKENS


def usage_report(owner) -> dict:
    """`GET /api/usage`: the owner's use today and this month, its limits and what is left."""
    limits = client_limits.limits_for(owner)
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
