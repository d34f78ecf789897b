"""Time each admin page against the database DATABASE_URL points at; print p50/p90 per page.

Fill a database first (see docs/admin.md), then:

    createdb -h 127.0.0.1 -U postgres coze_bench
    export DATABASE_URL=postgres://postgres@127.0.0.1:5432/coze_bench DJANGO_DEBUG=1
    python manage.py migrate
    python manage.py seed_chat_data            # 100k conversations, 500k replies, 1M messages
    python bench/admin_bench.py --runs 20

(A database seeded before the daily usage rollup existed needs `python manage.py
rebuild_daily_usage` once after `migrate`; the dashboard reads the rollup.)

Requests go through Django's test client (the whole stack: middleware, admin, templates,
database) logged in as a superuser (`admin-bench`, created if missing). Each page is requested
`--warmup` times untimed, then `--runs` times. Times are wall-clock per request in this process;
"queries" is the number of SQL statements one request ran. The dashboard is measured both fresh
(`refresh=1`: computed, not read from its cache; for 7, 30 and 90 days) and as staff usually get
it (cached up to a minute).
"""

import argparse
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cozeproject.settings")
os.environ.setdefault("DJANGO_DEBUG", "1")  # settings refuse to start without a secret key otherwise

import django

django.setup()

from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext, override_settings  # noqa: E402
from django.urls import reverse  # noqa: E402
from django.utils import timezone  # noqa: E402

from sessions_admin.admin import ReplyAdmin  # noqa: E402
from sessions_admin.models import ApiClient, ChatSession, Conversation, Feedback, Message, Reply  # noqa: E402

# No collectstatic for a benchmark: serve admin assets' URLs without the manifest.
PLAIN_STATIC_STORAGE = "django.contrib.staticfiles.storage.StaticFilesStorage"


def row_counts() -> dict[str, int]:
    return {
        "sessions": ChatSession.objects.count(),
        "conversations": Conversation.objects.count(),
        "messages": Message.objects.count(),
        "replies": Reply.objects.count(),
        "ratings": Feedback.objects.count(),
    }


def sample_targets() -> dict:
    """Real ids from the data, so searches and change pages hit something."""
    busiest_bot = Reply.objects.order_by("-pk").values_list("bot_id", flat=True).first()
    typical = Conversation.objects.filter(message_count__gte=8).order_by("-last_activity").first()
    longest = Conversation.objects.order_by("-message_count", "-pk").first()
    session = ChatSession.objects.order_by("-last_activity")[500:501].first() or ChatSession.objects.first()
    rare_text = (
        Message.objects.filter(content__contains="ORD-").order_by("-pk").values_list("content", flat=True).first() or ""
    )
    rare = rare_text[rare_text.find("ORD-") : rare_text.find("ORD-") + 10] if "ORD-" in rare_text else "refund"
    client = ApiClient.objects.order_by("pk").first()
    reply = Reply.objects.order_by("-pk").first()
    return {
        "bot": busiest_bot,
        "typical": typical or longest,
        "longest": longest,
        "session": session,
        "rare": rare,
        "client": client,
        "reply": reply,
    }


def change(model: str, pk: int) -> str:
    return reverse(f"admin:sessions_admin_{model}_change", args=[pk])


def pages(targets: dict) -> list[tuple[str, str]]:
    conversations = reverse("admin:sessions_admin_conversation_changelist")
    sessions = reverse("admin:sessions_admin_chatsession_changelist")
    replies = reverse("admin:sessions_admin_reply_changelist")
    dashboard = reverse("admin:sessions_admin_reply_dashboard")
    export = reverse("admin:sessions_admin_reply_export")
    # As the admin's own "Past 7 days" filter link writes it.
    midnight = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    week_ago = urlencode({"gte": (midnight - timedelta(days=7)).isoformat(" ")})[4:]
    tokens_column = ReplyAdmin.list_display.index("tokens")
    client = targets["client"]
    owner = f"owner={client.owner_key}" if client else "owner=browsers"
    items = [
        ("conversations: list", conversations),
        ("conversations: page 5", f"{conversations}?p=5"),
        ("conversations: filter bot", f"{conversations}?bot={targets['bot']}"),
        ("conversations: filter owner", f"{conversations}?{owner}"),
        ("conversations: filter status=failed", f"{conversations}?status=failed"),
        ("conversations: filter past 7 days", f"{conversations}?last_activity__gte={week_ago}"),
        ("conversations: filter rating=down", f"{conversations}?rating=down"),
        ("conversations: filter rating=up", f"{conversations}?rating=up"),
        ("conversations: filter a reply completed", f"{conversations}?reply_status=completed"),
        ("conversations: filter a reply interrupted", f"{conversations}?reply_status=interrupted"),
        ("conversations: filter a reply requires_action", f"{conversations}?reply_status=requires_action"),
        ("conversations: rating=down + a reply failed", f"{conversations}?rating=down&reply_status=failed"),
        ("conversations: search session id", f"{conversations}?q={targets['session'].session_id}"),
        ("conversations: search message text", f"{conversations}?q={targets['rare']}"),
        ("conversations: search common word", f"{conversations}?q=refund"),
        ("conversation transcript (typical)", change("conversation", targets["typical"].pk)),
        ("conversation transcript (longest, p1)", change("conversation", targets["longest"].pk)),
        ("sessions: list", sessions),
        ("session: change page", change("chatsession", targets["session"].pk)),
        ("usage: list with totals", replies),
        ("usage: filter status=failed", f"{replies}?status__exact=failed"),
        ("usage: filter bot + owner", f"{replies}?bot={targets['bot']}&{owner}"),
        ("usage: filter past 7 days", f"{replies}?started_at__gte={week_ago}"),
        ("usage: sort by tokens desc", f"{replies}?o=-{tokens_column}"),
        ("usage: reply page", change("reply", targets["reply"].pk)),
        ("dashboard (fresh, 7 days)", f"{dashboard}?days=7&refresh=1"),
        ("dashboard (fresh, 30 days)", f"{dashboard}?refresh=1"),
        ("dashboard (fresh, 90 days)", f"{dashboard}?days=90&refresh=1"),
        ("dashboard (cached)", dashboard),
        ("CSV export: first bytes", export),
        ("API clients: list", reverse("admin:sessions_admin_apiclient_changelist")),
    ]
    return items


def timed_get(client: Client, url: str, *, show_queries: bool = False) -> tuple[float, int, int]:
    with CaptureQueriesContext(connection) as queries:
        started = time.perf_counter()
        response = client.get(url)
        if response.streaming:
            next(iter(response.streaming_content))  # the header and the first page of rows
            response.close()
        else:
            _ = response.content
        elapsed = (time.perf_counter() - started) * 1000
    if show_queries:
        for query in queries.captured_queries:
            print(f"    {float(query['time']) * 1000:7.1f} ms  {query['sql'][:300]}", file=sys.stderr)
    return elapsed, response.status_code, len(queries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--only", default="", help="Only pages whose name contains this text.")
    parser.add_argument("--queries", action="store_true", help="Print each page's SQL with its time (once).")
    args = parser.parse_args()

    database = settings.DATABASES["default"]
    print(f"Database: {database['ENGINE'].rsplit('.', 1)[-1]} {database.get('NAME')}")
    counts = row_counts()
    print("Rows: " + ", ".join(f"{count:,} {name}" for name, count in counts.items()))
    User = get_user_model()
    user = User.objects.filter(username="admin-bench").first()
    if user is None:
        user = User.objects.create_superuser("admin-bench", "admin-bench@example.com", None)
    targets = sample_targets()
    load_before = os.getloadavg()

    with override_settings(
        ALLOWED_HOSTS=["testserver"],
        DEBUG=False,
        STORAGES={**settings.STORAGES, "staticfiles": {"BACKEND": PLAIN_STATIC_STORAGE}},
    ):
        client = Client()
        client.force_login(user)
        results = []
        for name, url in pages(targets):
            if args.only and args.only not in name:
                continue
            for _ in range(args.warmup):
                timed_get(client, url)
            if args.queries:
                print(f"  {name}: {url}", file=sys.stderr)
                timed_get(client, url, show_queries=True)
            times, statuses, queries = [], set(), 0
            for _ in range(args.runs):
                elapsed, status, queries = timed_get(client, url)
                times.append(elapsed)
                statuses.add(status)
            times.sort()
            p90 = times[min(len(times) - 1, round(0.9 * (len(times) - 1)))]
            results.append((name, statistics.median(times), p90, queries, ",".join(map(str, sorted(statuses)))))
            print(f"  {name:<40} p50 {results[-1][1]:7.1f} ms", file=sys.stderr)

    width = max(len(name) for name, *_ in results)
    print()
    print(f"| {'page':<{width}} | p50 ms | p90 ms | queries | status |")
    print(f"|{'-' * (width + 2)}|-------:|-------:|--------:|-------:|")
    for name, p50, p90, queries, status in results:
        print(f"| {name:<{width}} | {p50:6.1f} | {p90:6.1f} | {queries:7d} | {status:>6} |")
    print(f"\n{args.runs} runs per page after {args.warmup} warm-up requests; p90 is the nearest-rank 90th percentile.")
    load_after = os.getloadavg()
    print(
        f"Load average (1 min) before/after: {load_before[0]:.1f}/{load_after[0]:.1f} on {os.cpu_count()} CPUs "
        "(other work on the machine inflates the numbers)."
    )


if __name__ == "__main__":
    main()
