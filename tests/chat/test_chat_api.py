"""POST /api/chat: the whole reply, through the real ASGI app, cozepy and the simulator."""

import pytest

from sessions_admin.models import ChatSession, Message, Reply
from tests.conftest import auth

pytestmark = pytest.mark.django_db(transaction=True)


def test_chat_returns_the_whole_reply_with_ids_and_usage(http, api_key):
    response = http.post("/api/chat", json={"message": "hello there"}, headers=auth(api_key))

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["response"] == "You said: hello there"
    assert body["session_id"]
    assert body["conversation_id"].isdigit() and body["chat_id"].isdigit()
    assert body["follow_ups"] == ["Tell me more", "What else can you do?"]
    assert body["usage"]["total_tokens"] == body["usage"]["input_tokens"] + body["usage"]["output_tokens"] > 0
    assert body["timestamp"]


def test_second_turn_continues_the_same_coze_conversation(http, api_key):
    first = http.post("/api/chat", json={"message": "my name is Ada", "session_id": "s1"}, headers=auth(api_key))
    second = http.post("/api/chat", json={"message": "what is my name?", "session_id": "s1"}, headers=auth(api_key))

    assert first.status_code == second.status_code == 200
    assert second.json()["conversation_id"] == first.json()["conversation_id"]
    assert second.json()["response"] == "You said: what is my name? (turn 2; before that you said: my name is Ada)"


def test_turn_is_stored_with_usage_timing_and_transport(http, api_key):
    body = http.post("/api/chat", json={"message": "store me", "session_id": "keep"}, headers=auth(api_key)).json()

    session = ChatSession.objects.get(session_id="keep")
    reply = Reply.objects.get(coze_chat_id=body["chat_id"])
    assert reply.status == Reply.Status.COMPLETED
    assert reply.transport == Reply.Transport.SYNC
    assert reply.total_tokens == body["usage"]["total_tokens"]
    assert reply.duration_ms is not None and reply.time_to_first_token_ms is not None
    assert reply.coze_logid
    messages = list(Message.objects.filter(conversation__session=session).order_by("pk"))
    assert [(m.role, m.kind, m.content) for m in messages] == [
        ("user", "question", "store me"),
        ("assistant", "answer", "You said: store me"),
        ("assistant", "follow_up", "Tell me more"),
        ("assistant", "follow_up", "What else can you do?"),
    ]
    assert session.message_count == 2
    assert session.total_tokens == reply.total_tokens
    assert session.status == "active"
