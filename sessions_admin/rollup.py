"""The daily usage rollup (`DailyUsage`): what the usage dashboard reads instead of the replies.

One row per calendar day (in TIME_ZONE, by the reply's start time), bot and owner, counting the
replies that have ended: how they ended, their tokens, and their time to first token (count, sum
and a histogram, see `TTFT_BUCKET_BOUNDS_MS`). Replies still in progress are not counted yet.

* `record_reply` adds one reply as it ends. `turn_finish` calls it inside the transaction that
  stores the reply's outcome, so the reply and its count commit together or not at all (on
  PostgreSQL the `cozeproject_turn_finish` function runs the same upsert itself). It reads
  the reply by primary key and runs one upsert (`INSERT … ON CONFLICT DO UPDATE SET n = n +
  excluded.n`, atomic on PostgreSQL and SQLite alike): constant work per turn, and concurrent
  replies of the same day, bot and owner can't lose each other's counts.
* `rebuild_days` recomputes days from the replies (data that predates the rollup, replies changed
  outside the chat service): the `rebuild_daily_usage` command and `seed_chat_data` use it.

The rollup is not touched when replies are deleted (`clear_chat_sessions`, `prune_chat_data`,
the session API), so spend history and budgets outlive the transcripts, and a rebuild never
erases what it cannot recompute: it leaves alone the days the deletion engine noted
(`PrunedUsageDay`), and any row that counts more replies than are still stored (deleted some
other way), and it never removes rows of days without replies.
"""

import bisect
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from django.db import connection, transaction
from django.db.models import Count, Min, Q, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from sessions_admin.models import TTFT_BUCKET_BOUNDS_MS, TTFT_BUCKET_FIELDS, DailyUsage, PrunedUsageDay, Reply

KEY_FIELDS = ("day", "bot_id", "owner_key")
TOKEN_FIELDS = ("input_tokens", "output_tokens", "total_tokens")
COUNTER_FIELDS = (
    "replies",
    "failed",
    "cancelled",
    "interrupted",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "ttft_count",
    "ttft_sum_ms",
    *TTFT_BUCKET_FIELDS,
)
# The statuses counted in their own column (the rest of `replies` completed).
STATUS_FIELDS = {
    Reply.Status.FAILED: "failed",
    Reply.Status.CANCELLED: "cancelled",
    Reply.Status.INTERRUPTED: "interrupted",
}


def ttft_bucket(ttft_ms: int) -> int:
    """The histogram bucket (index into TTFT_BUCKET_FIELDS) a time to first token falls in."""
    return bisect.bisect_right(TTFT_BUCKET_BOUNDS_MS, ttft_ms)


def usage_day(started_at: datetime) -> date:
    """The rollup day of a reply: its start's calendar date in TIME_ZONE (whatever zone is active)."""
    return timezone.localtime(started_at, timezone.get_default_timezone()).date()


def day_start(day: date) -> datetime:
    """Midnight starting `day` in TIME_ZONE, as an aware datetime."""
    return timezone.make_aware(datetime.combine(day, datetime.min.time()), timezone.get_default_timezone())


def _upsert_sql() -> str:
    quote = connection.ops.quote_name
    table = quote(DailyUsage._meta.db_table)
    columns = [*KEY_FIELDS, *COUNTER_FIELDS]
    updates = ", ".join(f"{quote(name)} = {table}.{quote(name)} + excluded.{quote(name)}" for name in COUNTER_FIELDS)
    return (
        f"INSERT INTO {table} ({', '.join(quote(name) for name in columns)}) "  # noqa: S608 (names from the model)
        f"VALUES ({', '.join(['%s'] * len(columns))}) "
        f"ON CONFLICT ({', '.join(quote(name) for name in KEY_FIELDS)}) DO UPDATE SET {updates}"
    )


def record_reply(*, reply_pk: int) -> None:
    """Add an ended reply to its day's rollup row (created if it's the first).

    Call it once per reply, after its outcome is stored and in the same transaction. A reply still
    `in_progress` (or gone) is ignored, as the rebuild ignores it: only ended replies are counted.
    """
    reply = (
        Reply.objects.filter(pk=reply_pk)
        .exclude(status=Reply.Status.IN_PROGRESS)
        .values("started_at", "bot_id", "owner_key", "status", *TOKEN_FIELDS, "time_to_first_token_ms")
        .first()
    )
    if reply is None:
        return
    counters = dict.fromkeys(COUNTER_FIELDS, 0)
    counters["replies"] = 1
    if reply["status"] in STATUS_FIELDS:
        counters[STATUS_FIELDS[reply["status"]]] = 1
    for name in TOKEN_FIELDS:
        counters[name] = reply[name]
    ttft_ms = reply["time_to_first_token_ms"]
    if ttft_ms is not None:
        counters.update(ttft_count=1, ttft_sum_ms=ttft_ms)
        counters[TTFT_BUCKET_FIELDS[ttft_bucket(ttft_ms)]] = 1
    values = [usage_day(reply["started_at"]), reply["bot_id"], reply["owner_key"], *counters.values()]
    with connection.cursor() as cursor:
        cursor.execute(_upsert_sql(), values)


def record_replies(replies) -> int:
    """Add many ended replies (a queryset) to the rollup at once; returns the rows written.

    For bulk loads (`seed_chat_data`) of replies the rollup has never counted: one grouped query
    over them, by day, bot and owner, then the same additive upsert as `record_reply`, row by
    row. Replies still in progress are left out, as everywhere.
    """
    groups = (
        replies.exclude(status=Reply.Status.IN_PROGRESS)
        .annotate(usage_day=TruncDate("started_at", tzinfo=timezone.get_default_timezone()))
        .values("usage_day", "bot_id", "owner_key")
        .annotate(**_day_aggregates())
        .order_by()
    )
    rows = [
        [group["usage_day"], group["bot_id"], group["owner_key"], *(group[name] or 0 for name in COUNTER_FIELDS)]
        for group in groups
    ]
    if rows:
        with connection.cursor() as cursor:
            cursor.executemany(_upsert_sql(), rows)
    return len(rows)


# --- rebuilding -------------------------------------------------------------------------------


def _day_aggregates() -> dict:
    """The rollup's counters as aggregates over a day's replies (grouped by bot and owner)."""
    # Only columns of PostgreSQL's `reply_usage_window` index, so a day is an index-only scan.
    counted = "started_at"
    aggregates = {
        "replies": Count(counted),
        **{field: Count(counted, filter=Q(status=status)) for status, field in STATUS_FIELDS.items()},
        "input_tokens": Sum("input_tokens"),
        "output_tokens": Sum("output_tokens"),
        "total_tokens": Sum("total_tokens"),
        "ttft_count": Count("time_to_first_token_ms"),
        "ttft_sum_ms": Sum("time_to_first_token_ms"),
    }
    lows, highs = (0, *TTFT_BUCKET_BOUNDS_MS), (*TTFT_BUCKET_BOUNDS_MS, None)
    for field, low, high in zip(TTFT_BUCKET_FIELDS, lows, highs, strict=True):
        in_bucket = Q(time_to_first_token_ms__gte=low)
        if high is not None:
            in_bucket &= Q(time_to_first_token_ms__lt=high)
        aggregates[field] = Count(counted, filter=in_bucket)
    return aggregates


def day_rows(day: date) -> list[DailyUsage]:
    """The rollup rows of `day`, computed from its ended replies."""
    replies = Reply.objects.filter(started_at__gte=day_start(day), started_at__lt=day_start(day + timedelta(days=1)))
    groups = (
        replies.exclude(status=Reply.Status.IN_PROGRESS)
        .values("bot_id", "owner_key")
        .annotate(**_day_aggregates())
        .order_by()
    )
    # Sums over no rows are NULL (a group without any time to first token): those counters are 0.
    return [DailyUsage(day=day, **{**group, **{name: group[name] or 0 for name in COUNTER_FIELDS}}) for group in groups]


@dataclass(slots=True)
class RebuildResult:
    days: int = 0  # days covered (rebuilt or kept)
    rows: int = 0  # rows those days have now
    replies: int = 0  # counted in those days now
    replies_before: int = 0  # counted in those days before the rebuild
    days_kept: int = 0  # days with deleted replies (PrunedUsageDay), left as they were
    rows_kept: int = 0  # rows left as they were: they count replies no longer stored


def first_reply_day() -> date | None:
    first = Reply.objects.aggregate(first=Min("started_at"))["first"]
    return usage_day(first) if first else None


def rebuild_days(
    first: date,
    last: date,
    *,
    dry_run: bool = False,
    progress: Callable[[date, RebuildResult], None] | None = None,
) -> RebuildResult:
    """Replace the rollup rows of the days `first` to `last` (both included) with what the replies
    say, except where the replies no longer say everything: days noted in PrunedUsageDay are left
    as they are, and so is any row counting more replies than are stored for its day, bot and
    owner (or counting replies of which none is left).

    One short transaction per day. On PostgreSQL each takes a lock on the rollup table that makes
    replies ending meanwhile wait (a few milliseconds) and then count on top: a reply is counted
    exactly once whether it ended before or during the rebuild. With `dry_run` nothing is written;
    the result says what would be. `progress` is called after each day.
    """
    result = RebuildResult()
    pruned = set(PrunedUsageDay.objects.filter(day__gte=first, day__lte=last).values_list("day", flat=True))
    day = first
    while day <= last:
        if day in pruned:
            kept = DailyUsage.objects.filter(day=day).aggregate(rows=Count("pk"), replies=Sum("replies"))
            result.days += 1
            result.days_kept += 1
            result.rows += kept["rows"]
            result.replies += kept["replies"] or 0
            result.replies_before += kept["replies"] or 0
            if progress:
                progress(day, result)
            day += timedelta(days=1)
            continue
        with transaction.atomic():
            if connection.vendor == "postgresql" and not dry_run:
                # SHARE ROW EXCLUSIVE conflicts with the upserts' ROW EXCLUSIVE (and with itself):
                # replies that ended before this point are committed and read below; those ending
                # now wait for this transaction, and add to the rows it writes.
                table = connection.ops.quote_name(DailyUsage._meta.db_table)
                with connection.cursor() as cursor:
                    cursor.execute(f"LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE")
            existing = {(row.bot_id, row.owner_key): row for row in DailyUsage.objects.filter(day=day)}
            result.replies_before += sum(row.replies for row in existing.values())
            fresh = {(row.bot_id, row.owner_key): row for row in day_rows(day)}
            # A row that counts more replies than are stored had some deleted: keep what it knows.
            kept = {key: row for key, row in existing.items() if key not in fresh or row.replies > fresh[key].replies}
            rows = [row for key, row in fresh.items() if key not in kept]
            if not dry_run:
                DailyUsage.objects.filter(day=day).exclude(pk__in=[row.pk for row in kept.values()]).delete()
                DailyUsage.objects.bulk_create(rows, batch_size=1000)
        result.days += 1
        result.rows += len(rows) + len(kept)
        result.rows_kept += len(kept)
        result.replies += sum(row.replies for row in rows) + sum(row.replies for row in kept.values())
        if progress:
            progress(day, result)
        day += timedelta(days=1)
    if connection.vendor == "postgresql" and not dry_run and result.days:
        # Fresh statistics, so the dashboard's plans fit the rows just written.
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {connection.ops.quote_name(DailyUsage._meta.db_table)}")
    return result


def rebuild(
    *, days: int | None = None, dry_run: bool = False, progress: Callable[[date, RebuildResult], None] | None = None
) -> RebuildResult:
    """Rebuild the last `days` days (today included), or, with None, every day from the first
    reply's to today. Rows of days outside that range stay: their replies are gone (deleted or
    pruned), and spend history outlives them."""
    today = timezone.localdate(timezone.now(), timezone.get_default_timezone())
    if days is not None:
        return rebuild_days(today - timedelta(days=days - 1), today, dry_run=dry_run, progress=progress)
    first = first_reply_day() or today
    return rebuild_days(first, today, dry_run=dry_run, progress=progress)


class Progress:
    """A progress line at most every `every` seconds, for commands rebuilding many days."""

    def __init__(self, write: Callable[[str], None], *, every: float = 2.0):
        self.write, self.every = write, every
        self.started = self.last = time.monotonic()

    def __call__(self, day: date, result: RebuildResult) -> None:
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self.write(
                f"  … {day:%Y-%m-%d}: {result.days:,} days, {result.rows:,} rows, {result.replies:,} replies "
                f"({now - self.started:.0f} s)"
            )
