"""WebSocket `ws/chat/` through the ASGI application with Channels' WebsocketCommunicator."""

import asyncio

import httpx
import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from cozeproject.asgi import application
from sessions_admin.models import Reply
from tests.conftest import await_until

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


def communicator_for(key: str | None = None, origin: str | None = None) -> WebsocketCommunicator:
    headers = []
    if key:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    if origin:
        headers.append((b"origin", origin.encode()))
    return WebsocketCommunicator(application, "/ws/chat/", headers=headers)


async def upstream_closed(simulator, chat_id: str) -> dict:
    """The simulator saw the gateway close the upstream HTTP stream (polled, up to 5 s)."""
    async with httpx.AsyncClient(base_url=simulator.base_url) as sim:

        async def closed():
            chat = (await sim.get(f"/_sim/chats/{chat_id}")).json()
            return chat if chat["client_disconnected_at"] is not None else None

        return await await_until(closed, timeout=5.0)


async def receive_until_done(communicator) -> list[dict]:
    frames = []
    while not frames or frames[-1]["type"] != "done":
        frames.append(await communicator.receive_json_from(timeout=10))
    return frames


async def test_one_socket_carries_many_turns_with_context(api_key):
    communicator = communicator_for(api_key)
    assert (await communicator.connect())[0]

    await communicator.send_json_to({"type": "chat", "message": "first", "session_id": "ws"})
    first = await receive_until_done(communicator)
    await communicator.send_json_to({"type": "chat", "message": "second", "session_id": "ws"})
    second = await receive_until_done(communicator)
    await communicator.disconnect()

    assert [frame["type"] for frame in first][:1] == ["session"]
    assert first[-2]["type"] == "completed" and second[-2]["type"] == "completed"
    assert second[-2]["content"] == "You said: second (turn 2; before that you said: first)"
    deltas = "".join(frame["content"] for frame in second if frame["type"] == "delta")
    assert deltas == second[-2]["content"]
    assert second[0]["conversation_id"] == first[0]["conversation_id"]
    assert await sync_to_async(Reply.objects.filter(transport="websocket", status="completed").count)() == 2


async def test_ping_gets_pong_and_bad_frames_get_errors_while_the_socket_stays_open(api_key):
    communicator = communicator_for(api_key)
    await communicator.connect()

    await communicator.send_json_to({"type": "ping"})
    assert await communicator.receive_json_from() == {"type": "pong"}
    await communicator.send_to(text_data="not json {")
    assert (await communicator.receive_json_from())["code"] == "invalid"
    await communicator.send_json_to({"type": "dance"})
    assert (await communicator.receive_json_from())["code"] == "invalid"
    await communicator.send_json_to({"type": "chat"})
    assert (await communicator.receive_json_from())["code"] == "invalid"
    await communicator.send_json_to({"type": "chat", "message": "hi", "session_id": "bad id!"})
    assert (await communicator.receive_json_from())["code"] == "invalid"
    await communicator.send_json_to({"type": "chat", "message": "hi", "bot_id": "999"})
    assert (await communicator.receive_json_from())["code"] == "bot_not_allowed"
    await communicator.send_json_to({"type": "chat", "message": "x" * 40_000})
    assert (await communicator.receive_json_from())["code"] == "payload_too_large"
    await communicator.send_to(text_data="x" * (1024 * 1024 + 1))
    assert (await communicator.receive_json_from())["code"] == "payload_too_large"

    await communicator.send_json_to({"type": "chat", "message": "still open?"})
    frames = await receive_until_done(communicator)
    assert frames[-2]["type"] == "completed"
    await communicator.disconnect()


async def test_unauthenticated_socket_is_closed_with_4401():
    for key in (None, "cz_not-a-real-key"):
        communicator = communicator_for(key)
        connected, _ = await communicator.connect()
        assert connected
        assert await communicator.receive_output() == {"type": "websocket.close", "code": 4401}


async def test_browser_origin_must_be_allowed(api_key):
    foreign = communicator_for(api_key, origin="https://evil.example")
    connected, _ = await foreign.connect()
    assert not connected

    local = communicator_for(api_key, origin="http://localhost:8000")
    connected, _ = await local.connect()
    assert connected
    await local.disconnect()


async def test_cancel_frame_stops_the_reply_and_closes_the_upstream_stream(api_key, simulator):
    communicator = communicator_for(api_key)
    await communicator.connect()
    await communicator.send_json_to({"type": "chat", "message": "[sim:slow=100] a long answer to cancel"})
    session = await communicator.receive_json_from(timeout=10)
    assert session["type"] == "session"
    await communicator.receive_json_from(timeout=10)  # the first delta

    await communicator.send_json_to({"type": "cancel"})
    frames = await receive_until_done(communicator)
    await communicator.disconnect()

    assert frames[-2] == {
        "type": "error",
        "code": "cancelled",
        "detail": frames[-2]["detail"],
        "retryable": False,
        "id": frames[-1]["id"] - 2,
    }
    chat = await upstream_closed(simulator, session["chat_id"])
    assert chat["status"] == "canceled"  # Coze's cancel was called too
    reply = await sync_to_async(Reply.objects.get)(coze_chat_id=session["chat_id"])
    assert reply.status == "cancelled"


async def test_client_dropping_the_socket_cancels_and_stores_the_partial_reply(api_key, simulator):
    communicator = communicator_for(api_key)
    await communicator.connect()
    await communicator.send_json_to({"type": "chat", "message": "[sim:slow=100] drop me midway"})
    session = await communicator.receive_json_from(timeout=10)
    delta = await communicator.receive_json_from(timeout=10)

    await communicator.disconnect()

    reply = await sync_to_async(Reply.objects.get)(coze_chat_id=session["chat_id"])
    assert reply.status == "cancelled"
    answer = await sync_to_async(lambda: reply.messages.get(kind="answer").content)()
    assert answer.startswith(delta["content"])
    await upstream_closed(simulator, session["chat_id"])


async def test_replies_run_in_their_own_task_so_ping_is_answered_mid_reply(api_key):
    communicator = communicator_for(api_key)
    await communicator.connect()
    await communicator.send_json_to({"type": "chat", "message": "[sim:slow=200] slow"})
    assert (await communicator.receive_json_from(timeout=10))["type"] == "session"

    await communicator.send_json_to({"type": "ping"})
    frames = []
    while True:
        frame = await communicator.receive_json_from(timeout=10)
        frames.append(frame)
        if frame["type"] == "pong":
            break
    assert all(frame["type"] != "completed" for frame in frames)
    await asyncio.wait_for(receive_until_done(communicator), 30)
    await communicator.disconnect()
