"""prune_chat_data and the deletion engine it shares with clear_chat_sessions (sessions_admin.retention)."""

import re
from datetime import timedelta
from io import StringIO

import pytest
import redis
from django.core.management import CommandError, call_command
from django.db.models import Sum
from django.utils import timezone

from chat.resume.replay import KEY_PREFIX
from sessions_admin import feedback as fb
from sessions_admin import retention
from sessions_admin.models import (
    ApiClient,
    ChatFile,
    ChatSession,
    Conversation,
    DailyUsage,
    Feedback,
    FeedbackForward,
    Message,
    PrunedUsageDay,
    Reply,
)
from sessions_admin.rollup import usage_day
from tests.sessions_admin.factories import make_client, make_conversation, make_session, make_turn

pytestmark = pytest.mark.django_db


def prune(*args, **options) -> str:
    out, err = StringIO(), StringIO()
    call_command("prune_chat_data", *args, stdout=out, stderr=err, **options)
    return out.getvalue()


def last_line(output: str) -> str:
    return output.strip().splitlines()[-1]


def ago(days: float):
    return timezone.now() - timedelta(days=days)


def attach_file(message: Message, *, owner_key: str, uploaded_at, name: str = "scan.png") -> ChatFile:
    chat_file = ChatFile.objects.create(
        owner_key=owner_key,
        file_name=name,
        bytes=10,
        content_type="image/png",
        coze_file_id=f"file-{name}-{message.pk}",
        uploaded_at=uploaded_at,
    )
    chat_file.messages.add(message)
    return chat_file


def answer_of(reply: Reply) -> Message:
    return reply.messages.get(kind=Message.Kind.ANSWER)


@pytest.fixture
def world(settings, coze_deletions):
    """Owners with different windows, and records on both sides of them.

    CHAT_RETENTION_DAYS is 60; client "short" keeps 30 days; client "plain" has no window of its own.
    """
    settings.CHAT_RETENTION_DAYS = 60
    settings.CHAT_ORPHAN_FILE_HOURS = 24
    short = make_client("short")
    ApiClient.objects.filter(pk=short.pk).update(retention_days=30)
    plain = make_client("plain")
    w = {"short": short, "plain": plain, "coze": coze_deletions}

    # short: a session idle for 40 days goes whole, with its rating and the file it attached.
    idle = make_session(client=short, session_id="idle", last_activity=ago(40))
    idle_conversation = make_conversation(idle)
    idle_reply = make_turn(idle_conversation, started_at=ago(41))
    make_turn(idle_conversation, started_at=ago(40), follow_ups=("more?",))
    fb.feedback_set(owner_key=short.owner_key, message_id=answer_of(idle_reply).pk, rating="down", comment="bad")
    attach_file(idle_reply.messages.get(kind="question"), owner_key=short.owner_key, uploaded_at=ago(41))
    w["idle"], w["idle_conversation"] = idle, idle_conversation

    # short: a session in use. An old cleared conversation goes whole; in the current one the
    # 45-day-old turn goes and the recent ones stay.
    living = make_session(client=short, session_id="living", last_activity=ago(45))
    cleared = make_conversation(living)
    make_turn(cleared, started_at=ago(50))
    current = make_conversation(living)
    old_turn = make_turn(current, started_at=ago(45), question="old question", answer="old answer")
    fb.feedback_set(owner_key=short.owner_key, message_id=answer_of(old_turn).pk, rating="up")
    attach_file(old_turn.messages.get(kind="question"), owner_key=short.owner_key, uploaded_at=ago(45), name="old")
    recent = make_turn(current, started_at=ago(1), question="new question", answer="new answer")
    make_turn(current, started_at=ago(0.5))
    w.update(living=living, cleared=cleared, current=current, old_turn=old_turn, recent=recent)

    # Everyone else keeps 60 days: a browser's session idle for 70 days goes, one idle for 50 stays,
    # and so does a 50-day-old session of "plain".
    gone = make_session(browser="b" * 32, session_id="gone", last_activity=ago(70))
    make_turn(make_conversation(gone), started_at=ago(70))
    kept = make_session(browser="c" * 32, session_id="kept", last_activity=ago(50))
    make_turn(make_conversation(kept), started_at=ago(50))
    plain_session = make_session(client=plain, session_id="plain-50", last_activity=ago(50))
    make_turn(make_conversation(plain_session), started_at=ago(50))
    w.update(gone=gone, kept=kept, plain_session=plain_session)

    # A session past its window with a reply streaming right now: left alone.
    busy = make_session(browser="d" * 32, session_id="busy", last_activity=ago(70), locked_until=ago(-0.01))
    make_turn(make_conversation(busy), started_at=ago(70))
    w["busy"] = busy

    # Files never attached: one uploaded two days ago goes, one an hour ago stays.
    w["orphan_old"] = ChatFile.objects.create(
        owner_key="browser:" + "e" * 32,
        file_name="o1",
        bytes=1,
        content_type="text/plain",
        coze_file_id="o1",
        uploaded_at=ago(2),
    )
    w["orphan_new"] = ChatFile.objects.create(
        owner_key="browser:" + "e" * 32,
        file_name="o2",
        bytes=1,
        content_type="text/plain",
        coze_file_id="o2",
        uploaded_at=ago(1 / 24),
    )
    return w


# idle: a session, its conversation, 5 messages, 2 replies, a rating and a file; living: its old
# conversation (2 messages, a reply) and its old turn (2 messages, a reply, a rating, a file);
# gone: a session, its conversation, 2 messages, a reply; and the orphan file.
EXPECTED = "2 sessions, 3 conversations, 11 messages, 5 replies, 2 ratings, 3 files"


def test_prune_deletes_each_record_past_its_owners_window(world):
    output = prune("--noinput")

    assert "Keeping API client short: 30 days" in output
    assert "Keeping every other owner (CHAT_RETENTION_DAYS): 60 days" in output
    assert last_line(output) == (
        f"Deleted {EXPECTED} (left 1 session with a reply streaming); at Coze: 3 conversations and 1 turn deleted."
    )
    assert set(ChatSession.objects.values_list("session_id", flat=True)) == {"living", "kept", "plain-50", "busy"}
    assert set(Conversation.objects.filter(session=world["living"]).values_list("pk", flat=True)) == {
        world["current"].pk
    }
    living_messages = Message.objects.filter(conversation__session=world["living"]).values_list("content", flat=True)
    assert set(living_messages) == {"new question", "new answer", "hello", "hi there"}
    assert not Reply.objects.filter(pk=world["old_turn"].pk).exists()
    assert not Feedback.objects.exists() and not FeedbackForward.objects.exists()
    assert set(ChatFile.objects.values_list("coze_file_id", flat=True)) == {"o2"}
    # No orphans anywhere.
    assert not Message.objects.exclude(conversation__in=Conversation.objects.all()).exists()
    assert not Reply.objects.exclude(conversation__in=Conversation.objects.all()).exists()
    assert not ChatFile.messages.through.objects.exclude(message__in=Message.objects.all()).exists()


def test_message_counts_follow_what_is_left_and_token_totals_keep_the_history(world):
    before = ChatSession.objects.get(pk=world["living"].pk)
    prune("--noinput")
    living = ChatSession.objects.get(pk=world["living"].pk)
    current = Conversation.objects.get(pk=world["current"].pk)
    assert (before.message_count, living.message_count, current.message_count) == (6, 4, 4)
    assert living.total_tokens == before.total_tokens


def test_coze_is_told_to_delete_whole_conversations_and_single_turns(world):
    old_turn = world["old_turn"]
    answer_id = answer_of(old_turn).coze_message_id
    gone = Conversation.objects.get(session=world["gone"]).coze_conversation_id
    prune("--noinput")
    conversations = [coze_id for sent in world["coze"] for coze_id in sent.conversations]
    turns = [turn for sent in world["coze"] for turn in sent.turns]
    assert sorted(conversations) == sorted(
        [world["idle_conversation"].coze_conversation_id, world["cleared"].coze_conversation_id, gone]
    )
    assert turns == [
        retention.CozeTurn(
            conversation_id=world["current"].coze_conversation_id,
            chat_id=old_turn.coze_chat_id,
            message_ids=(answer_id,),
        )
    ]


def test_the_dry_run_says_what_it_would_delete_by_kind_and_deletes_nothing(world):
    before = {model: model.objects.count() for model in (ChatSession, Conversation, Message, Reply, Feedback, ChatFile)}
    output = prune("--dry-run")
    assert last_line(output) == (
        f"Would delete {EXPECTED} (left 1 session with a reply streaming); at Coze: 3 conversations and 1 turn. "
        "Dry run: nothing was deleted."
    )
    assert {model: model.objects.count() for model in before} == before
    assert world["coze"] == []


def test_usage_rollups_stay_and_the_days_are_marked_as_not_rebuildable(world):
    tokens_before = DailyUsage.objects.aggregate(tokens=Sum("total_tokens"), replies=Sum("replies"))
    old_day = usage_day(world["old_turn"].started_at)
    prune("--noinput")
    assert DailyUsage.objects.aggregate(tokens=Sum("total_tokens"), replies=Sum("replies")) == tokens_before
    assert PrunedUsageDay.objects.aggregate(total=Sum("replies_deleted"))["total"] == 5
    assert PrunedUsageDay.objects.get(day=old_day).replies_deleted >= 1


def test_a_session_left_with_no_message_goes(world):
    # In use by its activity time, but every message of it is past the window.
    stale = make_session(client=world["short"], session_id="stale", last_activity=ago(2))
    make_turn(make_conversation(stale), started_at=ago(40))
    ChatSession.objects.filter(pk=stale.pk).update(last_activity=ago(2))
    prune("--noinput")
    assert not ChatSession.objects.filter(pk=stale.pk).exists()
    assert ChatSession.objects.filter(pk=world["living"].pk).exists()


def test_client_narrows_the_run_to_that_clients_records(world):
    output = prune("--client", "short", "--noinput")
    assert "API client short: 30 days" in output and "other owner" not in output
    assert set(ChatSession.objects.values_list("session_id", flat=True)) == {
        "living",
        "gone",
        "kept",
        "plain-50",
        "busy",
    }
    # Only that client's files, orphans included.
    assert set(ChatFile.objects.values_list("coze_file_id", flat=True)) == {"o1", "o2"}


def test_days_replaces_the_windows_for_the_run(world):
    prune("--days", "48", "--noinput")
    # 48 days for everyone: the 50-day-old sessions go too; the 40-day-old session and the
    # 45-day-old turn stay.
    assert set(ChatSession.objects.values_list("session_id", flat=True)) == {"idle", "living", "busy"}
    assert not Conversation.objects.filter(pk=world["cleared"].pk).exists()
    assert Reply.objects.filter(pk=world["old_turn"].pk).exists()


def test_a_client_without_a_window_or_an_unknown_name_is_refused(world, settings):
    settings.CHAT_RETENTION_DAYS = None
    with pytest.raises(CommandError, match="no retention window"):
        prune("--client", "plain", "--noinput")
    with pytest.raises(CommandError, match="No API client is named"):
        prune("--client", "nobody", "--noinput")
    with pytest.raises(CommandError, match="at least 1"):
        prune("--days", "0", "--noinput")


def test_without_any_window_only_files_never_attached_go(world, settings):
    settings.CHAT_RETENTION_DAYS = None
    ApiClient.objects.update(retention_days=None)
    sessions = ChatSession.objects.count()
    output = prune("--noinput")
    assert "No retention window is set" in output
    assert last_line(output) == "Deleted 0 sessions, 0 conversations, 0 messages, 0 replies, 1 file."
    assert ChatSession.objects.count() == sessions
    assert set(ChatFile.objects.filter(messages__isnull=True).values_list("coze_file_id", flat=True)) == {"o2"}


def test_it_asks_before_deleting_unless_noinput(world, monkeypatch):
    monkeypatch.setattr("builtins.input", lambda prompt: "no")
    assert last_line(prune()) == "Cancelled: nothing was deleted."
    assert ChatSession.objects.filter(session_id="idle").exists()


def test_in_demo_mode_nothing_is_sent_to_coze_and_that_is_said_plainly(world, monkeypatch, settings):
    monkeypatch.undo()  # the engine's own send_coze_deletions, as shipped
    settings.COZE_API_TOKEN = settings.COZE_OAUTH_APP_ID = ""
    assert last_line(prune("--noinput")).endswith(
        "at Coze: 3 conversations and 1 turn (not sent: demo mode, no Coze to delete them at)."
    )


def test_a_failing_coze_call_is_counted_and_the_local_deletion_stands(world, monkeypatch):
    def broken(deletions):
        raise RuntimeError("Coze is down")

    monkeypatch.setattr(retention, "send_coze_deletions", broken)
    output = prune("--noinput")
    assert last_line(output).endswith(
        "at Coze: 3 conversations and 1 turn (0 deleted, 4 failed and kept to retry, see the log)."
    )
    assert not ChatSession.objects.filter(session_id="idle").exists()


def test_progress_bar_on_a_terminal():
    from sessions_admin.progress import ProgressBar

    class Terminal(StringIO):
        def isatty(self):
            return True

    out = Terminal()
    bar = ProgressBar(out, label="turns", total=200, unit="replies")
    bar.update(100)
    bar.last -= 1
    bar.update(100)
    bar.close()
    assert re.search(r"\rturns \[#{30}\] 100% 200/200 replies \(\d+ s\)\n$", out.getvalue()), out.getvalue()


@pytest.mark.redis
def test_replay_buffers_of_deleted_replies_go_from_redis(world, settings, redis_url):
    client = redis.from_url(settings.REDIS_URL)
    # One reply goes as a turn of a session in use, one with its whole session; one stays.
    doomed = [world["old_turn"].pk, Reply.objects.filter(session=world["idle"]).first().pk]
    kept = world["recent"].pk
    keys = [f"{KEY_PREFIX}{pk}" for pk in [*doomed, kept]]
    for key in keys:
        client.xadd(key, {"t": "delta", "d": "{}"}, id="1-0")
    try:
        dry = prune("--dry-run")
        assert "3 files, 2 replay buffers" in last_line(dry)
        output = prune("--noinput")
        assert "2 ratings, 3 files, 2 replay buffers" in last_line(output)
        assert [bool(client.exists(key)) for key in keys] == [False, False, True]
    finally:
        client.delete(*keys)


def test_the_engine_knows_every_table_that_references_what_it_deletes():
    """A new model pointing at a message, reply, conversation or session must be deleted first by
    the engine (its deletes are plain SQL, so nothing else would)."""
    for model, known in retention.REFERENCES.items():
        found = set()
        for relation in model._meta.related_objects:
            if relation.many_to_many:
                found.add((relation.through, f"{model._meta.model_name}_id"))
            elif relation.field.column != "current_conversation_id":  # set to NULL first
                found.add((relation.related_model, relation.field.column))
        missing = {(related.__name__, column) for related, column in found - set(known)}
        assert not missing, f"{model.__name__} is referenced by {missing}, unknown to the deletion engine"


def test_create_api_key_takes_a_retention_window():
    out = StringIO()
    call_command("create_api_key", "archive", "--retention-days", "30", stdout=out)
    assert ApiClient.objects.get(name="archive").retention_days == 30
    call_command("create_api_key", "default", stdout=StringIO())
    assert ApiClient.objects.get(name="default").retention_days is None
    with pytest.raises(CommandError):
        call_command("create_api_key", "never", "--retention-days", "0", stdout=StringIO())


def test_staff_edit_a_clients_retention_window_in_admin(staff_client):
    from django.urls import reverse

    client = make_client("team-r")
    url = reverse("admin:sessions_admin_apiclient_change", args=[client.pk])
    assert 'name="retention_days"' in staff_client.get(url).content.decode()
    form = {"name": "team-r", "is_active": "on", "allowed_bot_ids": ""}
    assert staff_client.post(url, {**form, "retention_days": "14"}).status_code == 302
    client.refresh_from_db()
    assert client.retention_days == 14
    refused = staff_client.post(url, {**form, "retention_days": "0"})
    assert refused.status_code == 200 and "greater than or equal to 1" in refused.content.decode()


@pytest.mark.django_db(transaction=True)
def test_each_deletion_commits_with_every_foreign_key_holding(settings, coze_deletions):
    """Committed for real (the other tests roll back, and the foreign keys are checked at commit)."""
    settings.CHAT_RETENTION_DAYS = 30
    client = make_client("committed")
    for age in (40, 2):
        session = make_session(client=client, last_activity=ago(age))
        cleared = make_conversation(session)
        make_turn(cleared, started_at=ago(age + 5))
        current = make_conversation(session)
        old = make_turn(current, started_at=ago(age + 1))
        fb.feedback_set(owner_key=client.owner_key, message_id=answer_of(old).pk, rating="down")
        attach_file(old.messages.get(kind="question"), owner_key=client.owner_key, uploaded_at=ago(age + 1))
        make_turn(current, started_at=ago(age))
    prune("--noinput")
    assert ChatSession.objects.count() == 1 and Conversation.objects.count() == 2
    call_command("clear_chat_sessions", "--all", "--noinput", stdout=StringIO())
    assert not ChatSession.objects.exists() and not Message.objects.exists() and not Feedback.objects.exists()
