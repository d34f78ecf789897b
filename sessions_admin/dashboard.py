"""The admin's usage dashboard: the numbers (from the daily rollup, `DailyUsage`, plus the top
sessions) and the charts (server-side SVG, so the page needs no JavaScript and no CDN).

`usage_dashboard()` is the only function that touches the database. The chart functions are
pure: data in, an SVG string out, every label escaped.
"""

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from html import escape

from django.conf import settings
from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from sessions_admin.models import (
    TTFT_BUCKET_BOUNDS_MS,
    TTFT_BUCKET_FIELDS,
    ApiClient,
    ChatSession,
    DailyUsage,
    Feedback,
    Reply,
)
from sessions_admin.rollup import STATUS_FIELDS, day_start

# Replies that count as errors in the error rate: the upstream or the server failed. A user's
# cancel is not an error.
ERROR_STATUSES = (Reply.Status.FAILED, Reply.Status.INTERRUPTED)
ERROR_FIELDS = [STATUS_FIELDS[status] for status in ERROR_STATUSES]  # their counters in DailyUsage
# Sessions `_top_sessions` looks at by lifetime tokens before it groups the window's replies instead.
TOP_SESSION_CANDIDATES = 200
PALETTE = ["#417690", "#e0a030", "#79aec8", "#b35c5c", "#5b9e6b", "#8e6bb3", "#c7783d", "#6b7f8e"]


# --- numbers ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DayUsage:
    day: date
    tokens_by_bot: dict[str, int]
    replies: int
    errors: int
    ttft_avg_ms: float | None
    ttft_p95_ms: float | None  # estimated from the rollup's histogram, see histogram_percentile
    rated_up: int = 0  # ratings of the answers written that day (docs/api.md §15)
    rated_down: int = 0

    @property
    def rated(self) -> int:
        return self.rated_up + self.rated_down

    @property
    def down_share(self) -> float:
        return self.rated_down / self.rated if self.rated else 0.0

    @property
    def tokens(self) -> int:
        return sum(self.tokens_by_bot.values())

    @property
    def error_rate(self) -> float:
        return self.errors / self.replies if self.replies else 0.0


@dataclass(frozen=True, slots=True)
class TopEntry:
    """An owner or a session, with its share of the window's usage."""

    key: str
    label: str
    replies: int
    tokens: int
    url_filter: str = ""  # changelist query string selecting this entry's replies


@dataclass(frozen=True, slots=True)
class Dashboard:
    start: date
    end: date
    days: list[DayUsage]
    bots: list[str]
    top_owners: list[TopEntry]
    top_sessions: list[TopEntry]
    replies: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    tokens: int = 0
    ttft_avg_ms: float | None = None
    ttft_p95_ms: float | None = None  # an estimate, as DayUsage's
    rated_up: int = 0
    rated_down: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def error_rate(self) -> float:
        return self.errors / self.replies if self.replies else 0.0

    @property
    def rated(self) -> int:
        return self.rated_up + self.rated_down

    @property
    def down_share(self) -> float:
        return self.rated_down / self.rated if self.rated else 0.0

    @property
    def cost(self) -> Decimal | None:
        return token_cost(self.input_tokens, self.output_tokens)


PRICE_SETTINGS = "CHAT_PRICE_PER_1K_INPUT_TOKENS and CHAT_PRICE_PER_1K_OUTPUT_TOKENS"
NO_PRICE_NOTE = f"No token prices are set, so no cost is shown: set {PRICE_SETTINGS} (docs/admin.md, Spend)."


def token_prices() -> tuple[Decimal, Decimal] | None:
    """The prices of 1,000 input and of 1,000 output tokens, or None when either is not set.

    Each is its own setting, or CHAT_TOKEN_PRICE_PER_1K (one price for both) where it is unset.
    """
    shared = getattr(settings, "CHAT_TOKEN_PRICE_PER_1K", None)
    prices = []
    for name in ("CHAT_PRICE_PER_1K_INPUT_TOKENS", "CHAT_PRICE_PER_1K_OUTPUT_TOKENS"):
        price = getattr(settings, name, None)
        price = shared if price in (None, "") else price
        if price in (None, ""):
            return None
        prices.append(Decimal(str(price)))
    return prices[0], prices[1]


def token_cost(input_tokens: int | None, output_tokens: int | None) -> Decimal | None:
    """Estimated spend for these tokens at the configured prices (None without prices)."""
    prices = token_prices()
    if prices is None or input_tokens is None or output_tokens is None:
        return None
    return ((prices[0] * input_tokens + prices[1] * output_tokens) / 1000).quantize(Decimal("0.01"))


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Linear-interpolated percentile, the same definition as SQL's percentile_cont."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def histogram_percentile(buckets: Sequence[int], fraction: float) -> float | None:
    """An estimate of a time-to-first-token percentile from the rollup's histogram (ms).

    Finds the bucket holding the `fraction · count`-th reply and interpolates linearly inside it,
    as Prometheus' `histogram_quantile` does: the first bucket starts at 0, and a percentile in
    the open-ended last bucket (25.6 s and more) is given as that bucket's lower bound. The exact
    percentile lies in the same bucket or, rarely, the next one, and buckets are √2 wide: the
    estimate is good to a bucket's width, not to the millisecond.
    """
    total = sum(buckets)
    if not total:
        return None
    rank = fraction * total
    below = 0
    for index, count in enumerate(buckets):
        if count and below + count >= rank:
            low = TTFT_BUCKET_BOUNDS_MS[index - 1] if index else 0
            if index == len(TTFT_BUCKET_BOUNDS_MS):
                return float(low)
            return low + (TTFT_BUCKET_BOUNDS_MS[index] - low) * (rank - below) / count
        below += count
    return None  # not reached: the last non-empty bucket always holds the rank


def usage_dashboard(*, days: int = 30, top: int = 10, now: datetime | None = None) -> Dashboard:
    """Usage over the last `days` calendar days (today included, in TIME_ZONE).

    Reads the daily rollup (`DailyUsage`: 28,558 rows for 90 days of 500,000 replies in the
    benchmark) for everything but the top sessions, which come from the sessions and their
    replies (see `_top_sessions`). Only replies that have ended are counted; p95 times to first
    token are estimates from the rollup's histogram (`histogram_percentile`).
    """
    now = now or timezone.now()
    end = timezone.localdate(now, timezone.get_default_timezone())
    start = end - timedelta(days=days - 1)
    window = DailyUsage.objects.filter(day__gte=start, day__lte=end)

    per_day_bot = (
        window.values("day", "bot_id")
        .annotate(
            tokens=Sum("total_tokens"),
            input_tokens=Sum("input_tokens"),
            output_tokens=Sum("output_tokens"),
            replies=Sum("replies"),
            **{name: Sum(name) for name in ERROR_FIELDS},
            ttft_sum=Sum("ttft_sum_ms"),
            ttft_count=Sum("ttft_count"),
            **{name: Sum(name) for name in TTFT_BUCKET_FIELDS},
        )
        .order_by()
    )
    tokens = defaultdict(lambda: defaultdict(int))
    counts = defaultdict(lambda: [0, 0, 0, 0])  # replies, errors, ttft sum, ttft count
    buckets = defaultdict(lambda: [0] * len(TTFT_BUCKET_FIELDS))
    bot_totals = defaultdict(int)
    input_tokens = output_tokens = 0
    for row in per_day_bot:
        tokens[row["day"]][row["bot_id"]] += row["tokens"]
        bot_totals[row["bot_id"]] += row["tokens"]
        day_counts = counts[row["day"]]
        day_counts[0] += row["replies"]
        day_counts[1] += sum(row[name] for name in ERROR_FIELDS)
        day_counts[2] += row["ttft_sum"]
        day_counts[3] += row["ttft_count"]
        day_buckets = buckets[row["day"]]
        for index, name in enumerate(TTFT_BUCKET_FIELDS):
            day_buckets[index] += row[name]
        input_tokens += row["input_tokens"]
        output_tokens += row["output_tokens"]

    ratings = ratings_per_day(start, end)
    day_list = []
    for offset in range(days):
        day = start + timedelta(days=offset)
        replies, errors, ttft_sum, ttft_count = counts.get(day, (0, 0, 0, 0))
        day_list.append(
            DayUsage(
                day=day,
                tokens_by_bot=dict(tokens.get(day, {})),
                replies=replies,
                errors=errors,
                ttft_avg_ms=ttft_sum / ttft_count if ttft_count else None,
                ttft_p95_ms=histogram_percentile(buckets[day], 0.95) if day in buckets else None,
                rated_up=ratings.get(day, (0, 0))[0],
                rated_down=ratings.get(day, (0, 0))[1],
            )
        )
    ttft_sum = sum(value[2] for value in counts.values())
    ttft_count = sum(value[3] for value in counts.values())
    all_buckets = [sum(column) for column in zip(*buckets.values(), strict=True)] if buckets else []
    return Dashboard(
        start=start,
        end=end,
        days=day_list,
        bots=sorted(bot_totals, key=lambda bot: -bot_totals[bot]),
        top_owners=_top_owners(window, top),
        top_sessions=_top_sessions(since=day_start(start), until=day_start(end + timedelta(days=1)), top=top),
        replies=sum(value[0] for value in counts.values()),
        errors=sum(value[1] for value in counts.values()),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        tokens=sum(bot_totals.values()),
        ttft_avg_ms=ttft_sum / ttft_count if ttft_count else None,
        ttft_p95_ms=histogram_percentile(all_buckets, 0.95),
        rated_up=sum(up for up, _ in ratings.values()),
        rated_down=sum(down for _, down in ratings.values()),
    )


def ratings_per_day(first: date, last: date) -> dict[date, tuple[int, int]]:
    """Ratings (up, down) of the answers written each day from `first` to `last` (TIME_ZONE days).

    From the ratings table itself (its `answered_at` index): one grouped query over the window's
    ratings, which are a small share of the answers.
    """
    rows = (
        Feedback.objects.filter(answered_at__gte=day_start(first), answered_at__lt=day_start(last + timedelta(days=1)))
        .annotate(day=TruncDate("answered_at", tzinfo=timezone.get_default_timezone()))
        .values("day")
        .annotate(
            up=Count("pk", filter=Q(rating=Feedback.Rating.UP)), down=Count("pk", filter=Q(rating=Feedback.Rating.DOWN))
        )
        .order_by()
    )
    return {row["day"]: (row["up"], row["down"]) for row in rows}


@dataclass(frozen=True, slots=True)
class ClientBudget:
    """An API client's spend today and this month (UTC) against its budgets (None: no budget)."""

    client_pk: int
    name: str
    today_tokens: int
    month_tokens: int
    daily_budget: int | None
    monthly_budget: int | None


def client_budgets(*, at: datetime | None = None) -> list[ClientBudget]:
    """Every active API client with a budget or with spend this month, most of a budget used first.

    Two queries: the clients, and their month's DailyUsage rows summed per owner (the
    `daily_usage_owner_day` index).
    """
    from chat.access import budgets  # the budgets' clock and their UTC days

    at = at or budgets.now()
    today = at.date()
    sums = {
        row["owner_key"]: row
        for row in DailyUsage.objects.filter(
            owner_key__startswith="client:", day__gte=today.replace(day=1), day__lte=today
        )
        .values("owner_key")
        .annotate(month=Sum("total_tokens"), today=Sum("total_tokens", filter=Q(day=today)))
        .order_by()
    }
    rows = []
    for client in ApiClient.objects.filter(is_active=True).only("name", "daily_token_budget", "monthly_token_budget"):
        spend = sums.get(client.owner_key, {})
        if client.daily_token_budget is None and client.monthly_token_budget is None and not spend:
            continue
        rows.append(
            ClientBudget(
                client_pk=client.pk,
                name=client.name,
                today_tokens=spend.get("today") or 0,
                month_tokens=spend.get("month") or 0,
                daily_budget=client.daily_token_budget,
                monthly_budget=client.monthly_token_budget,
            )
        )

    def share(row: ClientBudget) -> float:
        shares = [used / budget for used, budget in budget_pairs(row) if budget]
        return max(shares, default=-1.0)

    return sorted(rows, key=lambda row: (-share(row), -row.month_tokens, row.name))


def budget_pairs(row: ClientBudget) -> list[tuple[int, int | None]]:
    return [(row.today_tokens, row.daily_budget), (row.month_tokens, row.monthly_budget)]


def budget_bar(used: int, budget: int | None) -> str:
    """HTML: a bar of `used` against `budget` with the numbers, or the use alone without a budget."""
    if budget is None:
        return escape(f"{used:,} tokens (no budget)")
    percent = used * 100 / budget if budget else 100.0
    return (
        f'<span class="budget-use{" over-budget" if used >= budget else ""}">'
        f'<progress value="{min(used, budget)}" max="{max(budget, 1)}"></progress> '
        f"{escape(f'{used:,} of {budget:,} tokens ({percent:.0f}%)')}"
        f"{'<strong> over budget</strong>' if used >= budget else ''}</span>"
    )


def owner_labels(owner_keys: Sequence[str]) -> dict[str, str]:
    """Readable names for owner keys: "API client <name>", "user <username>" or "anonymous browser
    <first characters>"; an owner whose record is gone is named by its kind and number."""

    def ids(prefix: str) -> list[int]:
        return [
            int(key[len(prefix) :]) for key in owner_keys if key.startswith(prefix) and key[len(prefix) :].isdigit()
        ]

    labels = {}
    client_ids, user_ids = ids("client:"), ids("user:")
    if client_ids:
        for pk, name in ApiClient.objects.filter(pk__in=client_ids).values_list("pk", "name"):
            labels[f"client:{pk}"] = f"API client {name}"
    if user_ids:
        from django.contrib.auth import get_user_model

        User = get_user_model()
        for pk, username in User.objects.filter(pk__in=user_ids).values_list("pk", User.USERNAME_FIELD):
            labels[f"user:{pk}"] = f"user {username}"
    for key in owner_keys:
        if key not in labels:
            kind, _, ident = key.partition(":")
            if kind == "browser":
                labels[key] = f"anonymous browser {ident[:8]}"
            elif kind in ("client", "user") and ident.isdigit():
                labels[key] = f"{'API client' if kind == 'client' else 'user'} #{ident} (deleted)"
            else:
                labels[key] = key
    return labels


def _top_owners(window, top: int) -> list[TopEntry]:
    rows = list(
        window.values("owner_key")
        .annotate(tokens=Sum("total_tokens"), replies=Sum("replies"))
        .order_by("-tokens", "owner_key")[:top]
    )
    labels = owner_labels([row["owner_key"] for row in rows])
    return [
        TopEntry(
            key=row["owner_key"],
            label=labels[row["owner_key"]],
            replies=row["replies"],
            tokens=row["tokens"],
            url_filter=f"owner={row['owner_key']}",
        )
        for row in rows
    ]


def _top_sessions(*, since: datetime, until: datetime, top: int) -> list[TopEntry]:
    """The `top` sessions by tokens of the replies that started in [since, until) and have ended.

    Exact, and usually without grouping the window's replies (~150 ms for a month at 500,000
    replies): a session's tokens in the window are at most its lifetime total
    (`ChatSession.total_tokens`, which only grows), and a session with a reply in the window has
    been active since its start (`last_activity` is set as each reply starts and ends). So the
    sessions active in the window are taken by lifetime total, the window's tokens of a batch of
    them summed at a time, until the `top`-th best is more than the next session's lifetime total:
    nobody further down can reach it. The first batch usually settles it. If
    TOP_SESSION_CANDIDATES sessions don't, the window's replies are grouped after all.
    """
    if top <= 0:
        return []
    replies = Reply.objects.filter(started_at__gte=since, started_at__lt=until).exclude(status=Reply.Status.IN_PROGRESS)
    candidates = list(
        ChatSession.objects.filter(last_activity__gte=since)
        .order_by("-total_tokens", "pk")
        .values_list("pk", "total_tokens")[: TOP_SESSION_CANDIDATES + 1]
    )
    totals: dict[int, tuple[int, int]] = {}  # session pk: (tokens, replies) in the window
    ranked: list[tuple[int, tuple[int, int]]] = []
    position, batch, settled = 0, 2 * top, False
    while position < min(len(candidates), TOP_SESSION_CANDIDATES):
        chunk = [pk for pk, _ in candidates[position : min(position + batch, TOP_SESSION_CANDIDATES)]]
        sums = replies.filter(session_id__in=chunk).values("session_id").annotate(tokens=Sum("total_tokens"))
        for row in sums.annotate(replies=Count("*")).order_by():
            totals[row["session_id"]] = (row["tokens"], row["replies"])
        position += len(chunk)
        ranked = sorted(totals.items(), key=lambda item: (-item[1][0], item[0]))[:top]
        if position == len(candidates) or (len(ranked) == top and ranked[-1][1][0] > candidates[position][1]):
            settled = True
            break
    if not settled:
        rows = (
            replies.values("session_id")
            .annotate(tokens=Sum("total_tokens"), replies=Count("*"))
            .order_by("-tokens", "session_id")[:top]
        )
        ranked = [(row["session_id"], (row["tokens"], row["replies"])) for row in rows]

    sessions = ChatSession.objects.in_bulk([pk for pk, _ in ranked])
    labels = owner_labels([session.owner_key for session in sessions.values()])
    entries = []
    for pk, (tokens, reply_count) in ranked:
        session = sessions.get(pk)
        if session is None:  # deleted meanwhile
            continue
        entries.append(
            TopEntry(
                key=str(session.pk),
                label=f"{session.session_id} ({labels[session.owner_key]})",
                replies=reply_count,
                tokens=tokens or 0,
                url_filter=f"session__id__exact={session.pk}",
            )
        )
    return entries


# --- charts -----------------------------------------------------------------------------------


def compact(value: float) -> str:
    """12 → "12", 12_300 → "12.3k", 4_500_000 → "4.5M"."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            text = f"{value / limit:.1f}".removesuffix(".0")
            return f"{text}{suffix}"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def nice_ticks(maximum: float, count: int = 4) -> list[float]:
    """Round axis ticks from 0 to at least `maximum`: 0, 250, 500, … ."""
    if maximum <= 0:
        return [0, 1]
    raw = maximum / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return [step * index for index in range(math.ceil(maximum / step - 1e-9) + 1)]


@dataclass(frozen=True, slots=True)
class Frame:
    """Plot geometry: an SVG of `width` by `height` with margins for the axes and the legend."""

    width: int = 720
    height: int = 250
    left: int = 64
    right: int = 16
    top: int = 30
    bottom: int = 36

    @property
    def plot_width(self) -> float:
        return self.width - self.left - self.right

    @property
    def plot_height(self) -> float:
        return self.height - self.top - self.bottom

    def y(self, value: float, maximum: float) -> float:
        return self.top + self.plot_height * (1 - value / maximum)


def _svg(frame: Frame, title: str, body: list[str]) -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {frame.width} {frame.height}" role="img" '
        f'xmlns="http://www.w3.org/2000/svg" aria-label="{escape(title)}">'
        f"<title>{escape(title)}</title>{''.join(body)}</svg>"
    )


def _axes(
    frame: Frame, labels: Sequence[str], ticks: list[float], *, unit: str = "", right_axis: str = ""
) -> list[str]:
    parts = []
    top = ticks[-1]
    for tick in ticks:
        y = frame.y(tick, top)
        parts.append(
            f'<line x1="{frame.left}" x2="{frame.width - frame.right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{frame.left - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">'
            f"{escape(compact(tick) + unit)}</text>"
        )
    slot = frame.plot_width / max(len(labels), 1)
    every = max(1, math.ceil(len(labels) / 10))
    # Every `every`-th label, and the last day's in place of the one before it (they would touch).
    shown = set(range(0, len(labels), every))
    if labels and len(labels) - 1 not in shown:
        shown.discard(max(shown))
        shown.add(len(labels) - 1)
    for index, label in enumerate(labels):
        if index in shown:
            x = frame.left + slot * (index + 0.5)
            parts.append(
                f'<text x="{x:.1f}" y="{frame.height - frame.bottom + 16}" text-anchor="middle" class="tick">'
                f"{escape(label)}</text>"
            )
    if right_axis:
        parts.append(
            f'<text x="{frame.width - frame.right}" y="{frame.top - 14}" text-anchor="end" class="tick">'
            f"{escape(right_axis)}</text>"
        )
    return parts


def _legend(frame: Frame, names: Sequence[str], colours: Sequence[str], *, line: Sequence[bool] = ()) -> list[str]:
    parts, x = [], frame.left
    for index, (name, colour) in enumerate(zip(names, colours, strict=True)):
        if line and line[index]:
            parts.append(f'<line x1="{x}" x2="{x + 14}" y1="10" y2="10" stroke="{colour}" stroke-width="2.5"/>')
        else:
            parts.append(f'<rect x="{x}" y="4" width="12" height="12" fill="{colour}"/>')
        parts.append(f'<text x="{x + 18}" y="14" class="legend">{escape(name)}</text>')
        x += 34 + 9 * len(name)  # about the width of the name at the stylesheet's 15 px
    return parts


def stacked_bar_chart(
    labels: Sequence[str], series: Sequence[tuple[str, Sequence[float]]], *, title: str, unit: str = ""
) -> str:
    """Bars per label, each stacked from the series' values (e.g. tokens per day, one series per bot)."""
    frame = Frame()
    totals = [sum(values[index] for _, values in series) for index in range(len(labels))]
    ticks = nice_ticks(max(totals, default=0))
    top = ticks[-1]
    slot = frame.plot_width / max(len(labels), 1)
    bar = max(slot * 0.75, 1)
    colours = [PALETTE[index % len(PALETTE)] for index in range(len(series))]
    body = _axes(frame, labels, ticks, unit=unit)
    for index, label in enumerate(labels):
        base = 0.0
        x = frame.left + slot * index + (slot - bar) / 2
        for (name, values), colour in zip(series, colours, strict=True):
            value = values[index]
            if value <= 0:
                continue
            y_top, y_base = frame.y(base + value, top), frame.y(base, top)
            body.append(
                f'<rect x="{x:.1f}" y="{y_top:.1f}" width="{bar:.1f}" height="{y_base - y_top:.1f}" fill="{colour}">'
                f"<title>{escape(f'{label} · {name}: {value:,.0f}{unit}')}</title></rect>"
            )
            base += value
    body += _legend(frame, [name for name, _ in series], colours)
    return _svg(frame, title, body)


def bar_and_rate_chart(
    labels: Sequence[str], counts: Sequence[int], rates: Sequence[float], *, title: str, bar_name: str, rate_name: str
) -> str:
    """Bars for counts (left axis) and a line for a rate in 0..1 (right axis, percent)."""
    frame = Frame(right=48)
    ticks = nice_ticks(max(counts, default=0))
    top = ticks[-1]
    rate_top = max(nice_ticks(max(rates, default=0) * 100)[-1], 1)
    slot = frame.plot_width / max(len(labels), 1)
    bar = max(slot * 0.75, 1)
    body = _axes(frame, labels, ticks, right_axis=f"{rate_name} (max {rate_top:g}%)")
    for index, (label, count) in enumerate(zip(labels, counts, strict=True)):
        if count:
            x = frame.left + slot * index + (slot - bar) / 2
            y = frame.y(count, top)
            body.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{frame.y(0, top) - y:.1f}" '
                f'fill="{PALETTE[2]}"><title>{escape(f"{label} · {bar_name}: {count:,}")}</title></rect>'
            )
    for tick in (0, rate_top / 2, rate_top):
        y = frame.y(tick, rate_top)
        body.append(
            f'<text x="{frame.width - frame.right + 6}" y="{y + 4:.1f}" class="tick">{escape(f"{tick:g}%")}</text>'
        )
    points = [
        (frame.left + slot * (index + 0.5), frame.y(rate * 100, rate_top), label, rate)
        for index, (label, rate, count) in enumerate(zip(labels, rates, counts, strict=True))
        if count
    ]
    body += _polyline(points, PALETTE[3], lambda label, rate: f"{label} · {rate_name}: {rate:.1%}")
    body += _legend(frame, [bar_name, rate_name], [PALETTE[2], PALETTE[3]], line=[False, True])
    return _svg(frame, title, body)


def line_chart(
    labels: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]], *, title: str, unit: str = ""
) -> str:
    """One line per series; None values leave a gap (days without data)."""
    frame = Frame()
    values = [value for _, series_values in series for value in series_values if value is not None]
    ticks = nice_ticks(max(values, default=0))
    top = ticks[-1]
    slot = frame.plot_width / max(len(labels), 1)
    colours = [PALETTE[(index * 3) % len(PALETTE)] for index in range(len(series))]
    body = _axes(frame, labels, ticks, unit=unit)
    for (name, series_values), colour in zip(series, colours, strict=True):
        segment: list = []
        for index, (label, value) in enumerate(zip(labels, series_values, strict=True)):
            if value is None:
                body += _polyline(segment, colour, lambda lb, v, n=name: f"{lb} · {n}: {v:,.0f}{unit}")
                segment = []
                continue
            segment.append((frame.left + slot * (index + 0.5), frame.y(value, top), label, value))
        body += _polyline(segment, colour, lambda lb, v, n=name: f"{lb} · {n}: {v:,.0f}{unit}")
    body += _legend(frame, [name for name, _ in series], colours, line=[True] * len(series))
    return _svg(frame, title, body)


def _polyline(points: list[tuple[float, float, str, float]], colour: str, describe) -> list[str]:
    if not points:
        return []
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in points)
    parts = [f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>']
    for x, y, label, value in points:
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}"><title>{escape(describe(label, value))}</title>'
            "</circle>"
        )
    return parts


def horizontal_bar_chart(rows: Sequence[tuple[str, float, str]], *, title: str, unit: str = "") -> str:
    """A ranked list as bars: (label, value, link or "") per row, biggest first."""
    row_height, label_width = 24, 300
    frame = Frame(height=max(len(rows), 1) * row_height + 12, left=label_width, right=70, top=6, bottom=6)
    top = max((value for _, value, _ in rows), default=0) or 1
    body = []
    if not rows:
        body.append(f'<text x="{frame.width / 2}" y="20" text-anchor="middle" class="tick">No usage yet</text>')
    for index, (label, value, link) in enumerate(rows):
        y = frame.top + index * row_height
        width = frame.plot_width * value / top
        shown = label if len(label) <= 34 else label[:33] + "…"
        text = f'<text x="{label_width - 8}" y="{y + 15}" text-anchor="end" class="label">{escape(shown)}</text>'
        if link:
            text = f'<a href="{escape(link)}">{text}</a>'
        body.append(
            f"{text}"
            f'<rect x="{label_width}" y="{y + 3}" width="{max(width, 1):.1f}" height="{row_height - 8}" '
            f'fill="{PALETTE[0]}"><title>{escape(f"{label}: {value:,.0f}{unit}")}</title></rect>'
            f'<text x="{label_width + max(width, 1) + 6:.1f}" y="{y + 15}" class="tick">'
            f"{escape(compact(value) + unit)}</text>"
        )
    return _svg(frame, title, body)


def dashboard_charts(board: Dashboard) -> dict[str, str]:
    """The dashboard's charts as SVG strings, by name."""
    labels = [day.day.strftime("%b %d") for day in board.days]
    bot_series = [(bot, [day.tokens_by_bot.get(bot, 0) for day in board.days]) for bot in board.bots]
    return {
        "tokens": stacked_bar_chart(labels, bot_series or [("tokens", [0] * len(labels))], title="Tokens per day"),
        "replies": bar_and_rate_chart(
            labels,
            [day.replies for day in board.days],
            [day.error_rate for day in board.days],
            title="Replies and error rate per day",
            bar_name="replies",
            rate_name="error rate",
        ),
        "ratings": bar_and_rate_chart(
            labels,
            [day.rated for day in board.days],
            [day.down_share for day in board.days],
            title="Rated answers and the share rated down per day",
            bar_name="rated answers",
            rate_name="rated down",
        ),
        "ttft": line_chart(
            labels,
            [
                ("average", [day.ttft_avg_ms for day in board.days]),
                ("p95 (estimate)", [day.ttft_p95_ms for day in board.days]),
            ],
            title="Time to first token per day",
            unit=" ms",
        ),
    }
