"""`turn_start` and `turn_finish` keep one contract on every database: on PostgreSQL one function
call each (`cozeproject_turn_start`, `cozeproject_turn_finish`), elsewhere the same steps through
the ORM. Both are run here."""

import datetime

import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from django.utils import timezone

from chat.domain.errors import ChatError
from chat.domain.events import Usage
from chat.domain.inputs import ChatRequest, Owner
from chat.files import attachments
from chat.turn import records, store, store_orm
from chat.turn.records import Route, RouteChanged, TurnOutcome, TurnStart
from sessions_admin.models import ChatSession, Conversation, DailyUsage, Message, Reply
from sessions_admin.rollup import ttft_bucket

pytestmark = pytest.mark.django_db(transaction=True)

OWNER = Owner(key="client:store", api_client_id=None)
IMPLEMENTATIONS = ["orm", "postgresql"]


@pytest.fixture(params=IMPLEMENTATIONS)
def start(request):
    if request.param == "postgresql" and connection.vendor != "postgresql":
        pytest.skip("the function exists on PostgreSQL only")
    implementation = store._turn_start_pg if request.param == "postgresql" else store_orm.turn_start

    def call(message="hi", *, session_id="s1", bot_id="7000000000000000001", user_id=None, token="t1", expected=None):
        return implementation(
            TurnStart(
                owner=OWNER,
                chat_request=ChatRequest(message=message, session_id=session_id, user_id=user_id, resumable=True),
                session_id=session_id,
                bot_id=bot_id,
                transport="sse",
                worker_channel="worker-1",
                lock_token=token,
                attachments=attachments.ResolvedAttachments(),
                expected_route=expected,
            )
        )

    return call


def finish(turn, conversation_id="conv-1"):
    store_orm.turn_finish(
        turn=turn,
        outcome=TurnOutcome(
            status=Reply.Status.COMPLETED, answer_parts=["ok"], usage=Usage(1, 2, 3), conversation_id=conversation_id
        ),
    )


def test_a_first_turn_creates_the_session_its_conversation_reply_and_question(start):
    turn = start("hello", user_id="u-7")

    session = ChatSession.objects.get(pk=turn.session_pk)
    assert session.session_id == "s1" and session.coze_user_id == "u-7" and session.status == "busy"
    assert session.current_conversation_id == turn.conversation_pk and session.message_count == 1
    reply = Reply.objects.get(pk=turn.reply_pk)
    assert reply.status == "in_progress" and reply.transport == "sse" and reply.resumable
    assert reply.worker_channel == "worker-1" and reply.owner_key == OWNER.key
    question = Message.objects.get(reply=reply)
    assert (question.kind, question.role, question.content, question.content_type) == (
        "question",
        "user",
        "hello",
        "text",
    )
    assert turn.route == Route(coze_conversation_id="", bot_id="7000000000000000001", coze_user_id="u-7")
    assert turn.question == "hello" and turn.transcript_hash


def test_a_locked_session_is_busy_and_nothing_is_stored(start):
    start("first")

    with pytest.raises(ChatError) as busy:
        start("second", token="t2")

    assert busy.value.code == "session_busy"
    assert Reply.objects.count() == 1 and Message.objects.count() == 1


def test_the_next_turn_continues_the_conversation_with_the_sessions_user(start):
    first = start("first", user_id="u-1")
    finish(first)

    second = start("second", token="t2")

    assert second.conversation_pk == first.conversation_pk
    assert second.route == Route(coze_conversation_id="conv-1", bot_id="7000000000000000001", coze_user_id="u-1")
    assert ChatSession.objects.get().message_count == 3
    assert Conversation.objects.get().message_count == 3


def test_another_bot_starts_another_conversation(start):
    finish(start("first"))

    other = start("other bot", bot_id="7000000000000000002", token="t2")

    assert Conversation.objects.count() == 2
    assert other.route.coze_conversation_id == "" and ChatSession.objects.get().message_count == 1


def test_an_outdated_route_stores_nothing_and_says_where_the_session_is(start):
    finish(start("first"))

    with pytest.raises(RouteChanged) as changed:
        start("second", token="t2", expected=Route("conv-old", "7000000000000000001", "default_user"))

    assert changed.value.args[0].coze_conversation_id == "conv-1"
    assert Reply.objects.count() == 1 and ChatSession.objects.get().status == "active"


def test_a_retried_start_whose_commit_went_through_returns_the_same_turn(start):
    first = start("once")

    again = start("once")  # same lock token: the acknowledgement of the first was lost

    assert (again.reply_pk, again.conversation_pk, again.question) == (first.reply_pk, first.conversation_pk, "once")
    assert Reply.objects.count() == 1 and Message.objects.count() == 1


# --- the finish -----------------------------------------------------------------------------------


@pytest.fixture(params=IMPLEMENTATIONS)
def finish_with(request):
    """Store an outcome as `turn_finish` does, through the ORM steps or the PostgreSQL function."""
    if request.param == "postgresql":
        if connection.vendor != "postgresql":
            pytest.skip("the function exists on PostgreSQL only")
        return lambda turn, outcome: async_to_sync(store.turn_finish)(turn=turn, outcome=outcome)
    return lambda turn, outcome: store_orm.turn_finish(turn=turn, outcome=outcome)


def new_turn(message="hi", *, session_id="s1", token="t1"):
    return store_orm.turn_start(
        TurnStart(
            owner=OWNER,
            chat_request=ChatRequest(message=message, session_id=session_id),
            session_id=session_id,
            bot_id="7000000000000000001",
            transport="sse",
            worker_channel="worker-1",
            lock_token=token,
            attachments=attachments.ResolvedAttachments(),
        )
    )


def completed(answer="Hello!", **changes):
    fields = {
        "status": Reply.Status.COMPLETED,
        "answer_parts": [answer[:2], answer[2:]],
        "follow_ups": ["And then?", "Why?"],
        "usage": Usage(3, 4, 7),
        "chat_id": "chat-1",
        "conversation_id": "conv-1",
        "logid": "log-1",
        "message_id": "msg-1",
        "first_token_at": 0.0834,
        "duration": 1.2345,
    }
    return TurnOutcome(**{**fields, **changes})


def test_a_finish_stores_the_reply_its_messages_and_counters_and_releases_the_lock(finish_with):
    turn = new_turn("Hi there")

    finish_with(turn, completed())

    reply = Reply.objects.get(pk=turn.reply_pk)
    assert (reply.status, reply.coze_chat_id, reply.coze_logid, reply.error_code) == (
        "completed",
        "chat-1",
        "log-1",
        "",
    )
    assert (reply.input_tokens, reply.output_tokens, reply.total_tokens) == (3, 4, 7)
    assert (reply.time_to_first_token_ms, reply.duration_ms) == (83, 1234)
    assert reply.finished_at is not None
    assert [(m.role, m.kind, m.content, m.coze_message_id) for m in Message.objects.order_by("pk")] == [
        ("user", "question", "Hi there", ""),
        ("assistant", "answer", "Hello!", "msg-1"),
        ("assistant", "follow_up", "And then?", ""),
        ("assistant", "follow_up", "Why?", ""),
    ]
    conversation = Conversation.objects.get()
    assert (conversation.coze_conversation_id, conversation.message_count, conversation.total_tokens) == (
        "conv-1",
        2,
        7,
    )
    assert conversation.transcript_hash not in ("", turn.transcript_hash)
    session = ChatSession.objects.get()
    assert (session.lock_token, session.locked_until, session.status) == ("", None, "active")
    assert (session.message_count, session.input_tokens, session.output_tokens, session.total_tokens) == (2, 3, 4, 7)
    usage = DailyUsage.objects.get()
    assert (usage.day, usage.bot_id, usage.owner_key) == (
        timezone.localdate(reply.started_at),
        "7000000000000000001",
        OWNER.key,
    )
    assert (usage.replies, usage.failed, usage.total_tokens, usage.ttft_count, usage.ttft_sum_ms) == (1, 0, 7, 1, 83)
    assert getattr(usage, f"ttft_bucket_{ttft_bucket(83):02d}") == 1


def test_both_ways_reach_the_same_transcript_digest(finish_with):
    """The OpenAI path finds a resent history by this digest, whichever database stored the turn."""
    turn = new_turn("Hi there")

    finish_with(turn, completed())

    expected = records.new_transcript_hash(turn, "Hello!")
    assert Conversation.objects.get().transcript_hash == expected


def test_a_finish_that_is_retried_stores_nothing_twice(finish_with):
    turn = new_turn()
    finish_with(turn, completed())
    other = new_turn("next", token="t2")  # the session is locked again, by the next turn

    finish_with(turn, completed())

    assert Message.objects.filter(kind="answer").count() == 1
    assert DailyUsage.objects.get().replies == 1 and ChatSession.objects.get().total_tokens == 7
    assert ChatSession.objects.get().lock_token == other.lock_token  # not released: not this turn's


def test_a_failed_turn_without_an_answer_stores_its_error_and_counts_as_failed(finish_with):
    turn = new_turn()

    error = ChatError("upstream_error", "Coze refused.")
    finish_with(
        turn,
        TurnOutcome(status=Reply.Status.FAILED, error=error, logid="log-9", duration=0.5),
    )

    reply = Reply.objects.get()
    assert (reply.status, reply.error_code, reply.error_detail, reply.coze_logid) == (
        "failed",
        "upstream_error",
        "Coze refused.",
        "log-9",
    )
    assert reply.time_to_first_token_ms is None
    assert list(Message.objects.values_list("kind", flat=True)) == ["question"]
    assert Conversation.objects.get().message_count == 1 and ChatSession.objects.get().lock_token == ""
    usage = DailyUsage.objects.get()
    assert (usage.replies, usage.failed, usage.ttft_count) == (1, 1, 0)


def test_a_cancelled_partial_answer_is_stored_and_counted_as_cancelled(finish_with):
    turn = new_turn()

    finish_with(turn, completed("Hel", status=Reply.Status.CANCELLED, follow_ups=[], usage=Usage()))

    assert Message.objects.get(kind="answer").content == "Hel"
    assert DailyUsage.objects.get().cancelled == 1


def test_an_answer_to_a_cleared_session_is_stored_but_not_counted_on_it(finish_with):
    turn = new_turn()
    ChatSession.objects.update(current_conversation=None, message_count=0)  # cleared meanwhile

    finish_with(turn, completed())

    assert Message.objects.filter(kind="answer").count() == 1
    assert ChatSession.objects.get().message_count == 0


def test_a_lapsed_lock_taken_by_another_reply_is_not_released(finish_with):
    turn = new_turn()
    ChatSession.objects.update(lock_token="other", locked_until=timezone.now() + datetime.timedelta(minutes=1))

    finish_with(turn, completed())

    assert ChatSession.objects.get().lock_token == "other"
    assert Reply.objects.get().status == "completed"
