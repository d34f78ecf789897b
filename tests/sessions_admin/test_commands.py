"""clear_chat_sessions, mark_interrupted_replies (and its startup function), seed_chat_data."""

from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.sessions.models import Session as LoginSession
from django.core.management import CommandError, call_command
from django.db.models import Sum
from django.utils import timezone

from chat.turn.recovery import mark_interrupted_replies
from sessions_admin.models import ChatSession, Conversation, Feedback, Message, Reply
from tests.sessions_admin.factories import make_chat, make_conversation, make_session, make_turn

pytestmark = pytest.mark.django_db


def run(*args, **options) -> str:
    out = StringIO()
    call_command("clear_chat_sessions", *args, stdout=out, **options)
    return out.getvalue()


def counts() -> tuple[int, int, int, int]:
    return (
        ChatSession.objects.count(),
        Conversation.objects.count(),
        Message.objects.count(),
        Reply.objects.count(),
    )


def assert_no_orphans() -> None:
    assert not Conversation.objects.exclude(session__in=ChatSession.objects.all()).exists()
    assert not Reply.objects.exclude(session__in=ChatSession.objects.all()).exists()
    assert not Reply.objects.exclude(conversation__in=Conversation.objects.all()).exists()
    assert not Message.objects.exclude(conversation__in=Conversation.objects.all()).exists()
    assert not Message.objects.filter(reply__isnull=False).exclude(reply__in=Reply.objects.all()).exists()


@pytest.fixture
def chats(coze_deletions):
    old = timezone.now() - timedelta(days=40)
    a = make_chat(turns=2, session_id="alpha", coze_user_id="u1")[0]
    b = make_chat(turns=1, session_id="beta", coze_user_id="u2")[0]
    # An old session with two conversations (it was cleared once).
    c = make_session(session_id="gamma", coze_user_id="u1", last_activity=old)
    make_turn(make_conversation(c), started_at=old)
    make_turn(make_conversation(c), started_at=old, follow_ups=("more?",))
    ChatSession.objects.filter(pk=c.pk).update(last_activity=old)
    # Another owner's "alpha".
    d = make_chat(turns=1, session_id="alpha", browser="d" * 32, coze_user_id="u3")[0]
    return {"a": a, "b": b, "c": c, "d": d}


def test_refuses_without_a_filter_or_all(chats):
    with pytest.raises(CommandError, match="--all"):
        run("--noinput")
    assert counts() == (4, 5, 13, 6)


def test_rejects_bad_numbers(chats):
    with pytest.raises(CommandError):
        run("--idle-days", "0", "--noinput")
    with pytest.raises(CommandError):
        run("--all", "--batch-size", "0", "--noinput")


def test_dry_run_reports_and_deletes_nothing(chats):
    output = run("--session-id", "alpha", "--dry-run")

    assert output.strip().splitlines()[-1] == (
        "Would delete 2 sessions, 2 conversations, 6 messages, 3 replies; at Coze: 2 conversations. "
        "Dry run: nothing was deleted."
    )
    assert "  alpha  of anonymous browser dddddddd, last activity " in output and "browser:" not in output
    assert counts() == (4, 5, 13, 6)


def test_deletes_by_session_id_for_every_owner(chats):
    output = run("--session-id", "alpha", "--noinput")

    assert output.strip().splitlines()[-1] == (
        "Deleted 2 sessions, 2 conversations, 6 messages, 3 replies; at Coze: 2 conversations deleted."
    )
    assert set(ChatSession.objects.values_list("session_id", flat=True)) == {"beta", "gamma"}
    assert_no_orphans()


def test_deletes_by_coze_user_id(chats):
    run("--user-id", "u1", "--noinput")
    assert set(ChatSession.objects.values_list("session_id", flat=True)) == {"beta", "alpha"}
    assert ChatSession.objects.filter(coze_user_id="u1").count() == 0
    assert_no_orphans()


def test_deletes_idle_sessions_with_all_their_conversations(chats):
    output = run("--idle-days", "30", "--noinput")

    assert output.strip().splitlines()[-1] == (
        "Deleted 1 session, 2 conversations, 5 messages, 2 replies; at Coze: 2 conversations deleted."
    )
    assert not ChatSession.objects.filter(pk=chats["c"].pk).exists()
    assert ChatSession.objects.count() == 3
    assert_no_orphans()


def test_filters_combine(chats):
    run("--user-id", "u1", "--idle-days", "30", "--noinput")
    assert set(ChatSession.objects.values_list("session_id", flat=True)) == {"alpha", "beta"}
    assert ChatSession.objects.filter(session_id="alpha").count() == 2


def test_all_deletes_everything_in_small_batches_without_orphans(chats):
    extra = make_session(session_id="many")
    conversation = make_conversation(extra)
    for number in range(12):
        make_turn(conversation, question=f"q{number}", follow_ups=("f",))

    output = run("--all", "--noinput", "--batch-size", "2", "--chunk", "3")

    assert output.strip().splitlines()[-1] == (
        "Deleted 5 sessions, 6 conversations, 49 messages, 18 replies; at Coze: 6 conversations deleted."
    )
    assert counts() == (0, 0, 0, 0)
    assert_no_orphans()


def test_asks_for_confirmation_unless_noinput(chats, monkeypatch):
    answers = iter(["no", "yes"])
    prompts = []

    def fake_input(prompt):
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr("builtins.input", fake_input)

    assert "Cancelled: nothing was deleted." in run("--session-id", "beta")
    assert ChatSession.objects.filter(session_id="beta").exists()
    assert "Deleted 1 session," in run("--session-id", "beta")
    assert not ChatSession.objects.filter(session_id="beta").exists()
    assert "1 session, 1 conversation, 2 messages, 1 reply" in prompts[0]


def test_sessions_with_a_reply_in_progress_are_skipped_unless_asked(chats):
    busy = make_session(session_id="busy", locked_until=timezone.now() + timedelta(minutes=5))
    make_turn(make_conversation(busy), status=Reply.Status.IN_PROGRESS, answer=None)

    output = run("--all", "--noinput")

    assert output.strip().splitlines()[-1] == (
        "Deleted 4 sessions, 5 conversations, 13 messages, 6 replies (skipped 1 with a reply in progress); "
        "at Coze: 5 conversations deleted."
    )
    assert list(ChatSession.objects.values_list("session_id", flat=True)) == ["busy"]
    run("--all", "--noinput", "--include-busy")
    assert counts() == (0, 0, 0, 0)


def test_nothing_matching_still_ends_with_a_summary(chats):
    output = run("--session-id", "nope", "--noinput")
    assert output.strip().splitlines()[-1] == (
        "Deleted 0 sessions, 0 conversations, 0 messages, 0 replies: no matching sessions."
    )


def test_never_touches_django_login_sessions(chats):
    LoginSession.objects.create(session_key="k" * 32, session_data="x", expire_date=timezone.now() - timedelta(days=1))
    run("--all", "--noinput")
    assert LoginSession.objects.filter(session_key="k" * 32).exists()


# --- interrupted replies ----------------------------------------------------------------------


@pytest.fixture
def in_progress():
    now = timezone.now()
    live = make_session(session_id="live", locked_until=now + timedelta(minutes=2))
    live_reply = make_turn(make_conversation(live), status=Reply.Status.IN_PROGRESS, answer=None)
    expired = make_session(session_id="expired", locked_until=now - timedelta(seconds=1))
    expired_reply = make_turn(make_conversation(expired), status=Reply.Status.IN_PROGRESS, answer=None)
    unlocked = make_session(session_id="unlocked")
    unlocked_reply = make_turn(
        make_conversation(unlocked), status=Reply.Status.IN_PROGRESS, answer=None, started_at=now - timedelta(hours=2)
    )
    # A crashed reply, then a new live turn in the same session took over the (expired) lock.
    taken_over = make_session(session_id="taken", locked_until=now + timedelta(minutes=2))
    taken_conversation = make_conversation(taken_over)
    old_reply = make_turn(taken_conversation, status=Reply.Status.IN_PROGRESS, answer=None)
    new_reply = make_turn(taken_conversation, status=Reply.Status.IN_PROGRESS, answer=None)
    done = make_turn(make_conversation(make_session()), status=Reply.Status.COMPLETED)
    return {
        "live": live_reply,
        "expired": expired_reply,
        "unlocked": unlocked_reply,
        "old": old_reply,
        "new": new_reply,
        "done": done,
    }


def status(reply: Reply) -> str:
    return Reply.objects.get(pk=reply.pk).status


def test_mark_interrupted_replies_marks_only_replies_nobody_streams(in_progress):
    assert mark_interrupted_replies() == 3

    for name in ("expired", "unlocked", "old"):
        reply = Reply.objects.get(pk=in_progress[name].pk)
        assert reply.status == Reply.Status.INTERRUPTED, name
        assert reply.error_code == "interrupted" and reply.finished_at is not None
    for name, expected in (("live", "in_progress"), ("new", "in_progress"), ("done", "completed")):
        assert status(in_progress[name]) == expected, name
    # Expired locks are released; live ones stay.
    assert ChatSession.objects.get(session_id="expired").locked_until is None
    assert ChatSession.objects.get(session_id="live").locked_until is not None
    assert mark_interrupted_replies() == 0  # idempotent


def test_mark_interrupted_replies_older_than_narrows_the_selection(in_progress):
    assert mark_interrupted_replies(older_than=timedelta(hours=1)) == 1
    assert status(in_progress["unlocked"]) == Reply.Status.INTERRUPTED
    assert status(in_progress["expired"]) == Reply.Status.IN_PROGRESS


def test_mark_interrupted_replies_command_and_dry_run(in_progress):
    out = StringIO()
    call_command("mark_interrupted_replies", "--dry-run", stdout=out)
    assert "Would mark 3 replies" in out.getvalue()
    assert status(in_progress["expired"]) == Reply.Status.IN_PROGRESS

    out = StringIO()
    call_command("mark_interrupted_replies", stdout=out)
    assert out.getvalue().startswith("Marked 3 replies as interrupted")

    with pytest.raises(CommandError):
        call_command("mark_interrupted_replies", "--older-than-minutes", "-1")


def test_interrupted_replies_show_as_cut_off_in_the_transcript(in_progress, staff_client):
    from django.urls import reverse

    mark_interrupted_replies()
    page = reverse("admin:sessions_admin_conversation_change", args=[in_progress["expired"].conversation_id])
    assert "cut off: interrupted" in staff_client.get(page).content.decode()


# --- seed_chat_data ---------------------------------------------------------------------------


def test_seed_chat_data_fills_consistent_records_at_the_requested_scale():
    out = StringIO()
    call_command(
        "seed_chat_data",
        "--conversations=40",
        "--replies=150",
        "--messages=320",
        "--sessions=30",
        "--clients=2",
        "--users=2",
        "--chunk=7",
        stdout=out,
    )

    assert "Seeded 30 sessions, 40 conversations, 150 replies" in out.getvalue()
    assert (ChatSession.objects.count(), Conversation.objects.count(), Reply.objects.count()) == (30, 40, 150)
    assert 290 <= Message.objects.count() <= 320  # exact unless a few sessions end mid-reply
    assert Reply.objects.filter(started_at__gt=timezone.now()).count() == 0
    for session in ChatSession.objects.all():
        replies = Reply.objects.filter(session=session).aggregate(total=Sum("total_tokens"))["total"]
        assert session.total_tokens == replies
        assert session.current_conversation.session_id == session.pk
        current = session.current_conversation
        assert session.message_count == current.message_count
        assert current.message_count == Message.objects.filter(conversation=current).exclude(kind="follow_up").count()
    assert_no_orphans()
    # The new rows get ids after the seeded ones.
    make_chat(turns=1)


def test_seed_chat_data_rates_answers_like_the_api_would_and_adds_to_an_earlier_seed():
    shape = ["--conversations=20", "--replies=60", "--messages=130", "--clients=1", "--users=1"]
    call_command("seed_chat_data", *shape, "--ratings=1", stdout=StringIO())
    answers = Message.objects.filter(kind="answer").count()
    ratings = Feedback.objects.select_related("message")
    assert ratings.count() == answers > 0
    for rating in ratings:
        assert rating.message.kind == "answer" and rating.conversation_id == rating.message.conversation_id
        assert rating.answered_at == rating.message.created_at <= rating.created_at
    assert {"up", "down"} == set(ratings.values_list("rating", flat=True))

    out = StringIO()
    call_command("seed_chat_data", *shape, "--ratings=0", stdout=out)  # the same seed again: new rows
    assert "Seeded 17 sessions, 20 conversations, 60 replies" in out.getvalue() and ", 0 ratings" in out.getvalue()
    assert Conversation.objects.count() == 40 and Feedback.objects.count() == answers
    assert_no_orphans()


def test_seed_chat_data_refuses_impossible_shapes():
    with pytest.raises(CommandError):
        call_command("seed_chat_data", "--conversations=10", "--replies=5", stdout=StringIO())
    with pytest.raises(CommandError):
        call_command("seed_chat_data", "--conversations=10", "--replies=20", "--messages=10", stdout=StringIO())
    with pytest.raises(CommandError, match="--ratings"):
        call_command("seed_chat_data", "--conversations=10", "--ratings=1.5", stdout=StringIO())


@pytest.mark.django_db(transaction=True)
def test_seed_chat_data_on_its_own_rebuilds_every_index_it_dropped():
    from django.db import connection

    def indexes() -> set[str]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename LIKE 'sessions_admin_%%'")
            return {row[0] for row in cursor.fetchall()}

    def foreign_keys() -> set[tuple]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT conname, pg_get_constraintdef(oid), convalidated FROM pg_constraint "
                "WHERE contype = 'f' AND conrelid::regclass::text LIKE 'sessions_admin_%%'"
            )
            return set(cursor.fetchall())

    if connection.vendor != "postgresql":
        pytest.skip("indexes are dropped and rebuilt on PostgreSQL only")
    before, keys = indexes(), foreign_keys()
    out = StringIO()
    call_command("seed_chat_data", "--conversations=10", "--replies=30", "--messages=60", stdout=out)
    assert "two at a time" in out.getvalue() and "foreign keys validated" in out.getvalue()
    assert indexes() == before and "message_content_trgm" in before
    # Dropped for the load, back and validated, as they were.
    assert foreign_keys() == keys and all(validated for _, _, validated in keys)
    assert Message.objects.filter(content__icontains="order").exists()
