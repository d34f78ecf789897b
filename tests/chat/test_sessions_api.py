"""The session API (docs/api.md §6) and per-owner isolation."""

import pytest

from sessions_admin.models import ChatSession, Conversation, Message, Reply
from tests.conftest import auth

pytestmark = pytest.mark.django_db(transaction=True)


def chat(http, key, message, session_id):
    response = http.post("/api/chat", json={"message": message, "session_id": session_id}, headers=auth(key))
    assert response.status_code == 200, response.text
    return response.json()


def test_session_info_after_two_turns_has_counts_and_usage(http, api_key):
    first = chat(http, api_key, "one", "info")
    second = chat(http, api_key, "two", "info")

    info = http.get("/api/sessions/info", headers=auth(api_key)).json()

    assert info["session_id"] == "info"
    assert info["conversation_id"] == first["conversation_id"]
    assert info["user_id"] == "default_user"
    assert info["bot_id"]
    assert info["message_count"] == 4
    assert info["status"] == "active"
    total = first["usage"]["total_tokens"] + second["usage"]["total_tokens"]
    assert info["usage"]["total_tokens"] == total
    assert info["usage"]["input_tokens"] + info["usage"]["output_tokens"] == total
    assert info["created_at"] <= info["last_activity"]
    assert info["title"] == "one"


def test_session_title_is_the_start_of_the_first_question(http, api_key):
    chat(http, api_key, "A question that is long enough to be cut. " * 4, "titled")

    page = http.get("/api/sessions", headers=auth(api_key)).json()

    assert page["results"][0]["title"] == ("A question that is long enough to be cut. " * 4)[:80]
    http.post("/api/sessions/titled/clear", headers=auth(api_key))
    assert http.get("/api/sessions/titled", headers=auth(api_key)).json()["title"] is None


def test_sessions_are_listed_newest_activity_first_and_paginated(http, api_key):
    for session_id in ("a", "b", "c"):
        chat(http, api_key, "hi", session_id)
    chat(http, api_key, "again", "a")

    page = http.get("/api/sessions", headers=auth(api_key)).json()

    assert page["count"] == 3
    assert [item["session_id"] for item in page["results"]] == ["a", "c", "b"]
    assert "next" in page and "previous" in page


def test_messages_are_the_current_conversation_oldest_first(http, api_key):
    reply = chat(http, api_key, "question", "msgs")

    page = http.get("/api/sessions/msgs/messages", headers=auth(api_key)).json()

    items = page["results"]
    assert [(item["role"], item["type"], item["content"]) for item in items] == [
        ("user", "question", "question"),
        ("assistant", "answer", "You said: question"),
        ("assistant", "follow_up", "Tell me more"),
        ("assistant", "follow_up", "What else can you do?"),
    ]
    assert {item["chat_id"] for item in items} == {reply["chat_id"]}
    assert items[1]["status"] == "completed"


def test_clear_starts_a_new_conversation_and_keeps_the_old_one(http, api_key):
    before = chat(http, api_key, "remember me", "clr")

    cleared = http.post("/api/sessions/clr/clear", headers=auth(api_key))
    assert cleared.status_code == 200
    assert cleared.json()["session_id"] == "clr" and cleared.json()["cleared_at"] and cleared.json()["message"]
    info = http.get("/api/sessions/clr", headers=auth(api_key)).json()
    assert info["message_count"] == 0 and info["conversation_id"] is None
    assert http.get("/api/sessions/clr/messages", headers=auth(api_key)).json()["results"] == []

    after = chat(http, api_key, "do you remember?", "clr")

    assert after["conversation_id"] != before["conversation_id"]
    assert after["response"] == "You said: do you remember?"  # no memory of the first turn
    assert Conversation.objects.filter(session__session_id="clr").count() == 2
    assert http.get("/api/sessions/clr", headers=auth(api_key)).json()["message_count"] == 2


def test_delete_removes_the_session_and_everything_under_it(http, api_key):
    chat(http, api_key, "bye", "del")

    response = http.delete("/api/sessions/del", headers=auth(api_key))

    assert response.status_code == 204
    assert not ChatSession.objects.exists()
    assert not Conversation.objects.exists() and not Message.objects.exists() and not Reply.objects.exists()
    assert http.get("/api/sessions/del", headers=auth(api_key)).status_code == 404


def test_two_owners_can_use_the_same_session_id_without_seeing_each_other(http, api_key, other_api_key):
    mine = chat(http, api_key, "mine", "s1")
    theirs = chat(http, other_api_key, "theirs", "s1")

    assert mine["conversation_id"] != theirs["conversation_id"]
    assert theirs["response"] == "You said: theirs"
    assert http.get("/api/sessions", headers=auth(api_key)).json()["count"] == 1
    messages = http.get("/api/sessions/s1/messages", headers=auth(other_api_key)).json()["results"]
    assert messages[0]["content"] == "theirs"


def test_another_owners_session_and_chat_answer_404(http, api_key, other_api_key):
    reply = chat(http, api_key, "private", "secret-session")

    for method, path in [
        ("GET", "/api/sessions/secret-session"),
        ("GET", "/api/sessions/secret-session/messages"),
        ("POST", "/api/sessions/secret-session/clear"),
        ("DELETE", "/api/sessions/secret-session"),
        ("POST", f"/api/chats/{reply['chat_id']}/cancel"),
    ]:
        response = http.request(method, path, headers=auth(other_api_key))
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["code"] == "not_found"
    assert ChatSession.objects.filter(session_id="secret-session").exists()


def test_cancel_of_a_finished_chat_reports_its_status(http, api_key):
    reply = chat(http, api_key, "done already", "fin")

    response = http.post(f"/api/chats/{reply['chat_id']}/cancel", headers=auth(api_key))

    assert response.status_code == 200
    assert response.json() == {"chat_id": reply["chat_id"], "status": "completed"}
