"""`turn_start` keeps one contract on every database: on PostgreSQL one function call
(`cozeproject_turn_start`), elsewhere the same steps through the ORM. Both are run here."""

import pytest
from django.db import connection

from chat import files, turn_store
from chat.errors import ChatError
from chat.events import Usage
from chat.inputs import ChatRequest, Owner
from chat.turn_store import Route, RouteChanged, TurnOutcome
from sessions_admin.models import ChatSession, Conversation, Message, Reply

pytestmark = pytest.mark.django_db(transaction=True)

OWNER = Owner(key="client:store", api_client_id=None)
IMPLEMENTATIONS = ["orm", "postgresql"]


@pytest.fixture(params=IMPLEMENTATIONS)
def start(request):
    if request.param == "postgresql" and connection.vendor != "postgresql":
        pytest.skip("the function exists on PostgreSQL only")
    implementation = turn_store._turn_start_pg if request.param == "postgresql" else turn_store._turn_start_orm

    def call(message="hi", *, session_id="s1", bot_id="7000000000000000001", user_id=None, token="t1", expected=None):
        return implementation(
            owner=OWNER,
            chat_request=ChatRequest(message=message, session_id=session_id, user_id=user_id, resumable=True),
            session_id=session_id,
            bot_id=bot_id,
            transport="sse",
            worker_channel="worker-1",
            lock_token=token,
            attachments=files.ResolvedAttachments(),
            expected_route=expected,
        )

    return call


def finish(turn, conversation_id="conv-1"):
    turn_store.turn_finish.__wrapped__(
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
