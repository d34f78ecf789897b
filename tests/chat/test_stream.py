"""POST /api/chat/stream: Server-Sent Events read from the real stream of the ASGI app."""

import pytest

from sessions_admin.models import Message, Reply
from tests.conftest import stream_chat

pytestmark = pytest.mark.django_db(transaction=True)

TRICKY = 'CJK 你好，世界 — emoji 👩‍👩‍👧‍👦🏳️‍🌈 — "quotes" \\ back\\slash\r\nCRLF\nLF  trailing spaces  '  # noqa: RUF001 - the point is tricky text


def test_stream_sends_session_deltas_follow_ups_completed_then_done(http, api_key):
    response, events = stream_chat(http, api_key, {"message": "stream please"})

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    kinds = [event["event"] for event in events]
    assert kinds[0] == "session"
    assert kinds[-2:] == ["completed", "done"]
    assert events[-1]["data"] == "[DONE]"
    assert kinds.count("follow_up") == 2 and "delta" in kinds
    ids = [int(event["id"]) for event in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for event in events[:-1]:
        assert event["data"]["type"] == event["event"]
    session = events[0]["data"]
    completed = events[-2]["data"]
    assert completed["conversation_id"] == session["conversation_id"]
    assert completed["session_id"] == session["session_id"]
    assert completed["content"] == "You said: stream please"
    assert completed["token_count"] == completed["usage"]["total_tokens"] > 0


def test_deltas_concatenate_to_completed_content_byte_for_byte(http, api_key):
    _, events = stream_chat(http, api_key, {"message": "[sim:echo]" + TRICKY})

    deltas = [event["data"]["content"] for event in events if event.get("event") == "delta"]
    completed = next(event["data"] for event in events if event.get("event") == "completed")
    assert len(deltas) > 10
    assert "".join(deltas) == completed["content"] == TRICKY
    answer = Message.objects.get(kind="answer")
    assert answer.content == TRICKY


def test_reasoning_is_streamed_before_the_answer(http, api_key):
    _, events = stream_chat(http, api_key, {"message": "[sim:reasoning] think first"})

    kinds = [event["event"] for event in events]
    assert "reasoning" in kinds
    assert kinds.index("reasoning") < kinds.index("delta")
    reasoning = "".join(event["data"]["content"] for event in events if event["event"] == "reasoning")
    assert reasoning == "Let me think about that."


def test_heartbeat_pings_while_coze_is_silent(http, api_key, settings):
    settings.CHAT_SSE_HEARTBEAT = 0.1

    _, events = stream_chat(http, api_key, {"message": "[sim:first_delay=600] slow start"})

    pings = [event for event in events if event.get("comment") == "ping"]
    assert len(pings) >= 3
    assert events[-1]["data"] == "[DONE]"


def test_stream_continues_the_conversation_of_the_session(http, api_key):
    _, first = stream_chat(http, api_key, {"message": "one", "session_id": "multi"})
    _, second = stream_chat(http, api_key, {"message": "two", "session_id": "multi"})

    assert first[0]["data"]["conversation_id"] == second[0]["data"]["conversation_id"]
    assert second[-2]["data"]["content"] == "You said: two (turn 2; before that you said: one)"
    assert Reply.objects.filter(transport="sse", status="completed").count() == 2
