"""The daily usage rollup: recorded as replies end, rebuilt from replies, kept when sessions go."""

import threading
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, connections
from django.db.models import Sum
from django.utils import timezone

from sessions_admin import dashboard, rollup
from sessions_admin.models import TTFT_BUCKET_BOUNDS_MS, TTFT_BUCKET_FIELDS, DailyUsage, Reply
from tests.conftest import auth
from tests.sessions_admin.factories import make_client, make_conversation, make_session, make_turn

pytestmark = pytest.mark.django_db


def rollup_rows() -> dict[tuple, dict]:
    fields = [*rollup.KEY_FIELDS, *rollup.COUNTER_FIELDS]
    return {(row["day"], row["bot_id"], row["owner_key"]): row for row in DailyUsage.objects.values(*fields)}


def rebuild(*args) -> str:
    out = StringIO()
    call_command("rebuild_daily_usage", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def mixed():
    """Replies of two owners and two bots over several days, ending every way."""
    now = timezone.now()
    acme = make_conversation(make_session(client=make_client("acme"), bot_id="bot-a"))
    anon = make_conversation(make_session(browser="e" * 32, bot_id="bot-b"))
    for days_ago in (40, 3, 3, 0):
        make_turn(acme, started_at=now - timedelta(days=days_ago), ttft_ms=100 * (days_ago + 1))
    make_turn(acme, status=Reply.Status.FAILED, input_tokens=0, output_tokens=0, ttft_ms=None, started_at=now)
    make_turn(anon, status=Reply.Status.CANCELLED, input_tokens=0, output_tokens=3, ttft_ms=40, started_at=now)
    make_turn(anon, status=Reply.Status.INTERRUPTED, input_tokens=0, output_tokens=2, ttft_ms=90_000, started_at=now)
    make_turn(anon, status=Reply.Status.IN_PROGRESS, answer=None, ttft_ms=None, started_at=now)
    return {"acme": acme, "anon": anon, "now": now}


def test_each_ended_reply_is_counted_in_its_day_bot_and_owner_row(mixed):
    rows = rollup_rows()
    today = rollup.usage_day(mixed["now"])
    acme_today = rows[(today, "bot-a", mixed["acme"].session.owner_key)]
    statuses = ("replies", "failed", "cancelled", "interrupted")
    assert [acme_today[name] for name in statuses] == [2, 1, 0, 0]
    assert (acme_today["input_tokens"], acme_today["output_tokens"], acme_today["total_tokens"]) == (10, 20, 30)
    assert (acme_today["ttft_count"], acme_today["ttft_sum_ms"]) == (1, 100)
    assert acme_today[TTFT_BUCKET_FIELDS[rollup.ttft_bucket(100)]] == 1
    anon_today = rows[(today, "bot-b", mixed["anon"].session.owner_key)]
    # The reply still in progress isn't counted yet.
    assert [anon_today[name] for name in statuses] == [2, 0, 1, 1]
    assert anon_today["ttft_bucket_00"] == 1 and anon_today[TTFT_BUCKET_FIELDS[-1]] == 1  # 40 ms; 90 s
    three_days_ago = rows[(rollup.usage_day(mixed["now"] - timedelta(days=3)), "bot-a", acme_today["owner_key"])]
    assert three_days_ago["replies"] == 2 and three_days_ago["ttft_sum_ms"] == 800
    assert DailyUsage.objects.aggregate(replies=Sum("replies"))["replies"] == 7


def test_histogram_buckets_are_log_spaced_and_cover_every_time():
    assert len(TTFT_BUCKET_FIELDS) == len(TTFT_BUCKET_BOUNDS_MS) + 1 == 20
    assert TTFT_BUCKET_BOUNDS_MS[:4] == (50, 71, 100, 141) and TTFT_BUCKET_BOUNDS_MS[-1] == 25600
    assert [rollup.ttft_bucket(ms) for ms in (0, 49, 50, 70, 71, 25599, 25600, 10**9)] == [0, 0, 1, 1, 2, 18, 19, 19]


def test_recording_a_reply_still_in_progress_or_gone_does_nothing(mixed):
    before = rollup_rows()
    in_progress = Reply.objects.get(status=Reply.Status.IN_PROGRESS)
    rollup.record_reply(reply_pk=in_progress.pk)
    rollup.record_reply(reply_pk=10**9)
    assert rollup_rows() == before


def test_days_are_calendar_days_in_time_zone(settings):
    settings.TIME_ZONE = "Asia/Shanghai"  # UTC+8: 20:00 UTC is the next day there
    conversation = make_conversation(make_session())
    make_turn(conversation, started_at=datetime(2026, 3, 1, 20, 0, tzinfo=UTC))
    assert list(DailyUsage.objects.values_list("day", flat=True)) == [datetime(2026, 3, 2).date()]
    rebuild()
    assert list(DailyUsage.objects.values_list("day", flat=True)) == [datetime(2026, 3, 2).date()]


def test_rebuild_recomputes_exactly_what_was_recorded_reply_by_reply(mixed):
    recorded = rollup_rows()
    DailyUsage.objects.all().delete()

    output = rebuild()

    assert rollup_rows() == recorded
    assert "Rebuilt 41 days: 4 rows counting 7 replies (before: 0)" in output


def test_rebuild_of_the_last_days_leaves_older_days_alone(mixed):
    old_day = rollup.usage_day(mixed["now"] - timedelta(days=40))
    DailyUsage.objects.filter(day=old_day).update(replies=99)
    DailyUsage.objects.exclude(day=old_day).update(replies=0)

    output = rebuild("--days", "7")

    assert "Rebuilt 7 days" in output and "counting 6 replies" in output
    assert DailyUsage.objects.get(day=old_day).replies == 99
    assert DailyUsage.objects.exclude(day=old_day).aggregate(replies=Sum("replies"))["replies"] == 6


def test_rebuild_dry_run_writes_nothing_and_bad_days_are_refused(mixed):
    DailyUsage.objects.all().delete()
    assert "Would rebuild 41 days: 4 rows counting 7 replies" in rebuild("--dry-run")
    assert not DailyUsage.objects.exists()
    with pytest.raises(CommandError, match="--days"):
        rebuild("--days", "0")


def test_usage_outlives_deleted_sessions_and_a_rebuild(mixed, coze_deletions):
    before = dashboard.usage_dashboard(days=7)
    recorded = rollup_rows()
    call_command("clear_chat_sessions", "--all", "--noinput", "--include-busy", stdout=StringIO())
    assert not Reply.objects.exists()

    kept = dashboard.usage_dashboard(days=7)
    assert (kept.replies, kept.tokens) == (before.replies, before.tokens) == (6, 95)
    assert [entry.key for entry in kept.top_owners] == [entry.key for entry in before.top_owners]
    assert kept.top_sessions == []  # the sessions themselves are gone

    # The days whose replies went can't be recomputed: a rebuild, whole or of the last days, keeps them.
    output = rebuild()
    assert (
        "Rebuilt 1 day: 2 rows counting 4 replies (before: 4); kept as they are: 1 day with deleted replies" in output
    )
    assert (
        "Rebuilt 41 days: 4 rows counting 7 replies (before: 7); kept as they are: 3 days with deleted replies"
        in rebuild("--days", "41")
    )
    assert rollup_rows() == recorded
    assert dashboard.usage_dashboard(days=90).replies == 7


def test_a_rebuild_keeps_rows_whose_replies_were_deleted_some_other_way(mixed):
    recorded = rollup_rows()
    # Deleted without the deletion engine (no day noted), as a plain ORM delete would.
    mixed["anon"].session.delete()
    Reply.objects.filter(session=mixed["acme"].session, status=Reply.Status.FAILED).delete()

    output = rebuild("--days", "7")

    assert "kept as they are: 2 rows counting deleted replies" in output
    assert rollup_rows() == recorded


def test_a_rebuild_leaves_a_day_the_deletion_engine_noted_even_when_the_counts_would_match(mixed, coze_deletions):
    from sessions_admin.retention import DeletionEngine

    acme = mixed["acme"]
    recorded = rollup_rows()
    failed = Reply.objects.get(session=acme.session, status=Reply.Status.FAILED)
    DeletionEngine().turns([failed.pk])
    # A reply of the same day, bot and owner the rollup never saw (changed outside the chat
    # service): as many replies are stored as the row counts, but not the same ones.
    unseen = make_turn(acme, started_at=mixed["now"], status=Reply.Status.IN_PROGRESS)
    Reply.objects.filter(pk=unseen.pk).update(status=Reply.Status.COMPLETED)

    output = rebuild("--days", "1")

    assert "kept as they are: 1 day with deleted replies" in output
    assert rollup_rows() == recorded


def test_a_rebuild_still_corrects_rows_that_count_too_few(mixed):
    DailyUsage.objects.update(replies=0, total_tokens=0)
    rebuild()
    assert DailyUsage.objects.aggregate(replies=Sum("replies"))["replies"] == 7


def test_seed_chat_data_fills_the_rollup():
    call_command(
        "seed_chat_data",
        "--conversations=20",
        "--replies=80",
        "--messages=170",
        "--sessions=15",
        "--clients=2",
        "--users=2",
        stdout=StringIO(),
    )
    ended = Reply.objects.exclude(status=Reply.Status.IN_PROGRESS)
    assert DailyUsage.objects.aggregate(replies=Sum("replies"))["replies"] == ended.count()
    assert (
        DailyUsage.objects.aggregate(tokens=Sum("total_tokens"))["tokens"]
        == ended.aggregate(tokens=Sum("total_tokens"))["tokens"]
    )
    recorded = rollup_rows()
    rebuild()
    assert rollup_rows() == recorded


@pytest.mark.django_db(transaction=True)
def test_a_chat_turn_is_counted_when_it_ends(http, api_key):
    body = http.post("/api/chat", json={"message": "count me"}, headers=auth(api_key)).json()

    reply = Reply.objects.get(coze_chat_id=body["chat_id"])
    row = DailyUsage.objects.get()
    assert (row.day, row.bot_id, row.owner_key) == (rollup.usage_day(reply.started_at), reply.bot_id, reply.owner_key)
    assert (row.replies, row.failed, row.total_tokens) == (1, 0, body["usage"]["total_tokens"])
    assert (row.ttft_count, row.ttft_sum_ms) == (1, reply.time_to_first_token_ms)
    assert sum(row.ttft_buckets) == 1

    failed = http.post("/api/chat", json={"message": "[sim:server_error] hi"}, headers=auth(api_key))
    assert failed.status_code == 502
    row.refresh_from_db()
    assert (row.replies, row.failed) == (2, 1)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="concurrent writers need PostgreSQL")
@pytest.mark.django_db(transaction=True)
def test_concurrent_replies_of_one_owner_and_day_lose_no_counts():
    conversation = make_conversation(make_session())
    replies = [make_turn(conversation) for _ in range(24)]
    DailyUsage.objects.all().delete()
    barrier = threading.Barrier(6)

    def worker(chunk):
        try:
            barrier.wait()
            for reply in chunk:
                rollup.record_reply(reply_pk=reply.pk)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(replies[index::6],)) for index in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    row = DailyUsage.objects.get()
    assert (row.replies, row.total_tokens) == (24, 24 * 30)


def test_replies_marked_interrupted_after_a_crash_are_counted_once():
    from chat.turn.recovery import mark_interrupted_replies

    conversation = make_conversation(make_session(client=make_client("crashy"), bot_id="bot-c"))
    make_turn(conversation, status=Reply.Status.IN_PROGRESS, ttft_ms=None)

    assert mark_interrupted_replies() == 1
    assert mark_interrupted_replies() == 0

    row = DailyUsage.objects.get(bot_id="bot-c")
    assert (row.replies, row.interrupted) == (1, 1)
