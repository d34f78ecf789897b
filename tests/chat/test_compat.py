"""The earlier FastAPI services' paths (docs/api.md §8), replayed as their clients sent them."""

import json

import pytest

from sessions_admin.models import Reply
from tests.conftest import auth

pytestmark = pytest.mark.django_db(transaction=True)


def data_lines(response) -> list:
    lines = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    return [line if line == "[DONE]" else json.loads(line) for line in lines]


def test_legacy_chat_returns_the_whole_reply_and_keeps_context(http, api_key):
    first = http.post(
        "/chat", json={"message": "hello", "session_id": "legacy", "user_id": "u1"}, headers=auth(api_key)
    )
    second = http.post(
        "/chat", json={"message": "again", "session_id": "legacy", "stream": False}, headers=auth(api_key)
    )

    assert first.status_code == second.status_code == 200, first.text
    assert first.json()["response"] == "You said: hello"
    assert first.json()["session_id"] == "legacy" and first.json()["timestamp"]
    assert second.json()["response"] == "You said: again (turn 2; before that you said: hello)"
    assert set(Reply.objects.values_list("transport", flat=True)) == {"compat"}


def test_legacy_stream_sends_numbered_chunks_then_complete(http, api_key):
    response = http.post("/chat/stream", json={"message": "[sim:echo]héllo 👋 wörld"}, headers=auth(api_key))

    assert response.status_code == 200
    events = data_lines(response)
    chunks = [event for event in events if event["type"] == "chunk"]
    assert [chunk["data"]["chunk_index"] for chunk in chunks] == list(range(len(chunks)))
    complete = events[-1]
    assert complete == {
        "type": "complete",
        "data": {"total_chunks": len(chunks), "full_content": "héllo 👋 wörld"},
    }
    assert "".join(chunk["data"]["content"] for chunk in chunks) == "héllo 👋 wörld"


def test_legacy_stream_reports_errors_in_its_own_format(http, api_key):
    response = http.post("/chat/stream", json={"message": "[sim:error_event] oops"}, headers=auth(api_key))

    events = data_lines(response)
    assert events[-1]["type"] == "error" and events[-1]["data"]["message"]


def test_legacy_session_info_and_clear(http, api_key):
    http.post("/chat", json={"message": "hi", "session_id": "old"}, headers=auth(api_key))

    info = http.get("/session/old/info", headers=auth(api_key))
    assert info.status_code == 200 and info.json()["message_count"] == 2
    cleared = http.post("/session/old/clear", headers=auth(api_key))
    assert cleared.status_code == 200 and cleared.json()["session_id"] == "old"
    assert http.get("/session/old/info", headers=auth(api_key)).json()["message_count"] == 0


def test_coze_chat_streams_delta_completed_and_done(http, api_key):
    body = {
        "user_id": "legacy-user",
        "bot_id": "7000000000000000001",
        "additional_messages": [
            {
                "role": "user",
                "content": json.dumps([{"type": "text", "text": "multi part"}]),
                "content_type": "object_string",
            }
        ],
    }
    response = http.post("/api/coze-chat", json=body, headers=auth(api_key))

    assert response.status_code == 200
    events = data_lines(response)
    assert events[-1] == "[DONE]"
    completed = events[-2]
    assert completed["type"] == "completed" and completed["token_count"] > 0 and completed["conversation_id"]
    deltas = "".join(event["content"] for event in events if isinstance(event, dict) and event["type"] == "delta")
    assert deltas == "You said: multi part"


def test_coze_chat_accepts_content_as_a_json_list_and_continues_by_conversation_id(http, api_key):
    content_list = [{"type": "text", "text": "first"}]
    first = data_lines(
        http.post(
            "/api/coze-chat",
            json={"user_id": "u", "additional_messages": [{"role": "user", "content": content_list}]},
            headers=auth(api_key),
        )
    )
    conversation_id = first[-2]["conversation_id"]
    as_string = json.dumps([{"type": "text", "text": "second"}])

    second = data_lines(
        http.post(
            "/api/coze-chat",
            json={
                "user_id": "u",
                "conversation_id": conversation_id,
                "stream": True,
                "additional_messages": [{"role": "user", "content": as_string, "type": "question"}],
            },
            headers=auth(api_key),
        )
    )

    assert second[-2]["conversation_id"] == conversation_id
    text = "".join(event["content"] for event in second if isinstance(event, dict) and event["type"] == "delta")
    assert text == "You said: second (turn 2; before that you said: first)"


def test_compat_paths_keep_owners_apart(http, api_key, other_api_key):
    first = data_lines(
        http.post(
            "/api/coze-chat", json={"additional_messages": [{"role": "user", "content": "x"}]}, headers=auth(api_key)
        )
    )
    http.post("/chat", json={"message": "mine", "session_id": "private"}, headers=auth(api_key))

    assert http.get("/session/private/info", headers=auth(other_api_key)).status_code == 404
    assert http.post("/session/private/clear", headers=auth(other_api_key)).status_code == 404
    stolen = http.post(
        "/api/coze-chat",
        json={
            "conversation_id": first[-2]["conversation_id"],
            "additional_messages": [{"role": "user", "content": "y"}],
        },
        headers=auth(other_api_key),
    )
    assert stolen.status_code == 404
    assert http.post("/chat", json={"message": "hi"}).status_code == 401
