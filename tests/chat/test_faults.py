"""Every upstream fault ends in a defined answer on all three transports, and the turn is stored."""

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from cozeproject.asgi import application
from sessions_admin.models import ChatSession, Message, Reply
from tests.conftest import COZE_TEST_TOKEN, auth, await_until, stream_chat

pytestmark = pytest.mark.django_db(transaction=True)

# directive -> (code, HTTP status, Retry-After)
REFUSALS = {
    "[sim:auth_failed]": ("upstream_auth_failed", 502, None),
    "[sim:no_permission]": ("upstream_auth_failed", 502, None),
    "[sim:rate_limited]": ("upstream_rate_limited", 429, "2"),
    "[sim:http429]": ("upstream_rate_limited", 429, "3"),
    "[sim:daily_limit]": ("upstream_rate_limited", 429, None),
    "[sim:system_busy]": ("upstream_rate_limited", 429, None),
    "[sim:busy]": ("session_busy", 409, None),
    "[sim:bad_param]": ("upstream_error", 502, None),
    "[sim:server_error]": ("upstream_error", 502, None),
    "[sim:garbage]": ("upstream_error", 502, None),
}

# directive -> (code, retryable); these fail after some of the answer streamed.
MID_STREAM = {
    "[sim:chat_failed]": ("upstream_error", True),
    "[sim:error_event]": ("upstream_error", True),
    "[sim:drop]": ("upstream_error", True),
    "[sim:silence=3]": ("upstream_timeout", True),
}


@pytest.fixture
def short_idle_timeout(settings):
    settings.COZE_STREAM_IDLE_TIMEOUT = 0.5


@pytest.mark.parametrize("directive", REFUSALS)
def test_refusal_before_the_stream_is_a_json_error_on_sync_and_sse(http, api_key, directive):
    code, status, retry_after = REFUSALS[directive]
    for path in ("/api/chat", "/api/chat/stream"):
        response = http.post(path, json={"message": f"{directive} hi"}, headers=auth(api_key))

        assert response.status_code == status, (path, response.text)
        assert response.headers["content-type"] == "application/json"
        assert response.json()["code"] == code
        assert response.json()["detail"]
        if retry_after is not None:
            assert response.headers["retry-after"] == retry_after
        elif code == "upstream_rate_limited":
            assert int(response.headers["retry-after"]) > 0
        assert COZE_TEST_TOKEN not in response.text
    failed = Reply.objects.filter(status="failed", error_code=code)
    assert failed.count() == 2
    # The user's message was stored before the upstream call, and the session is free again.
    assert Message.objects.filter(role="user", content=f"{directive} hi").count() == 2
    assert all(session.status == "active" for session in ChatSession.objects.all())


def test_unreachable_coze_is_upstream_unavailable(http, api_key, settings):
    settings.COZE_BASE_URL = "http://127.0.0.1:9"
    for path in ("/api/chat", "/api/chat/stream"):
        response = http.post(path, json={"message": "anyone there?"}, headers=auth(api_key))
        assert response.status_code == 503
        assert response.json()["code"] == "upstream_unavailable"


@pytest.mark.parametrize("directive", MID_STREAM)
def test_mid_stream_failure_is_an_error_event_and_the_partial_answer_is_stored(
    http, api_key, directive, short_idle_timeout
):
    code, retryable = MID_STREAM[directive]
    response, events = stream_chat(http, api_key, {"message": f"{directive} tell me a long story", "session_id": "f"})

    assert response.status_code == 200
    kinds = [event.get("event") for event in events if "event" in event]
    assert kinds[0] == "session" and "delta" in kinds
    assert kinds[-2:] == ["error", "done"]
    error = events[-2]["data"]
    assert error == {"type": "error", "code": code, "detail": error["detail"], "retryable": retryable}
    partial = "".join(event["data"]["content"] for event in events if event.get("event") == "delta")
    reply = Reply.objects.get()
    assert reply.status == "failed" and reply.error_code == code
    assert Message.objects.get(kind="answer").content == partial
    assert partial and partial in f"You said: {directive} tell me a long story"
    # The session is usable again at once.
    again = http.post("/api/chat", json={"message": "still there?", "session_id": "f"}, headers=auth(api_key))
    assert again.status_code == 200


@pytest.mark.parametrize("directive", MID_STREAM)
def test_mid_stream_failure_on_sync_chat_is_a_json_error(http, api_key, directive, short_idle_timeout):
    code, _ = MID_STREAM[directive]
    response = http.post("/api/chat", json={"message": f"{directive} tell me"}, headers=auth(api_key))

    assert response.json()["code"] == code
    assert response.status_code == {"upstream_error": 502, "upstream_timeout": 504}[code]
    assert Reply.objects.get().status == "failed"


async def ws_turn(key: str, body: dict) -> list[dict]:
    communicator = WebsocketCommunicator(
        application, "/ws/chat/", headers=[(b"authorization", f"Bearer {key}".encode())]
    )
    connected, _ = await communicator.connect()
    assert connected
    await communicator.send_json_to({"type": "chat", **body})
    frames = []
    while not frames or frames[-1]["type"] != "done":
        frames.append(await communicator.receive_json_from(timeout=10))
    await communicator.disconnect()
    return frames


@pytest.mark.asyncio
@pytest.mark.parametrize("directive", [*REFUSALS, *MID_STREAM])
async def test_every_fault_is_an_error_frame_on_the_websocket(api_key, directive, short_idle_timeout):
    code = (REFUSALS.get(directive) or MID_STREAM.get(directive))[0]

    frames = await ws_turn(api_key, {"message": f"{directive} hi"})

    assert frames[-1] == {"type": "done", "id": frames[-2]["id"] + 2}  # every frame carries its (reply's) id
    error = frames[-2]
    assert error["type"] == "error" and error["code"] == code
    assert COZE_TEST_TOKEN not in json.dumps(frames)
    reply = await sync_to_async(Reply.objects.get)()
    assert reply.status == "failed" and reply.error_code == code


@pytest.mark.asyncio
async def test_two_turns_at_once_on_one_session_answer_session_busy(api_key):
    slow = ws_turn(api_key, {"message": "[sim:slow=50] long one", "session_id": "same"})
    first = asyncio.create_task(slow)
    # The first turn holds the session (polled, with a bound).
    await await_until(
        sync_to_async(lambda: Reply.objects.filter(session__session_id="same", status="in_progress").exists())
    )

    frames = await ws_turn(api_key, {"message": "me too", "session_id": "same"})

    assert frames[-2]["code"] == "session_busy"
    assert (await first)[-2]["type"] == "completed"
