"""Resuming over the WebSocket (docs/api.md §9): every frame carries its id, a resumable reply
outlives its socket, and a `resume` frame on a new socket continues after the last id seen."""

import pytest
from channels.db import database_sync_to_async

from chat.domain import event_ids
from sessions_admin.models import Reply
from tests.chat.test_resume import TRICKY
from tests.chat.test_websocket import communicator_for, receive_until_done

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


async def test_a_resumable_reply_outlives_its_socket_and_resumes_on_another(api_key, backend):
    first = communicator_for(api_key)
    await first.connect()
    await first.send_json_to(
        {"type": "chat", "message": "[sim:slow=40][sim:echo]" + TRICKY, "session_id": "ws-r", "resumable": True}
    )
    seen = [await first.receive_json_from(timeout=10) for _ in range(4)]
    await first.disconnect()

    second = communicator_for(api_key)
    await second.connect()
    await second.send_json_to({"type": "resume", "session_id": "ws-r", "last_event_id": seen[-1]["id"]})
    rest = await receive_until_done(second)
    await second.send_json_to({"type": "resume", "session_id": "ws-r", "last_event_id": 0})
    everything = await receive_until_done(second)
    await second.disconnect()

    reply = await database_sync_to_async(Reply.objects.get)()
    ids = [frame["id"] for frame in seen + rest]
    assert ids == [event_ids.event_id(reply.pk, number) for number in range(1, len(seen) + len(rest) + 1)]
    assert rest[-1] == {"type": "done", "id": ids[-1]}
    text = "".join(frame["content"] for frame in seen + rest if frame["type"] == "delta")
    assert text == rest[-2]["content"] == TRICKY
    assert everything == seen + rest
    assert reply.status == "completed" and reply.transport == "websocket"


async def test_resuming_someone_elses_or_a_bad_session_over_the_socket(api_key, other_api_key, backend):
    owner = communicator_for(api_key)
    await owner.connect()
    await owner.send_json_to({"type": "chat", "message": "mine", "session_id": "ws-mine", "resumable": True})
    frames = await receive_until_done(owner)
    await owner.disconnect()
    assert frames[-2]["type"] == "completed" and frames[-1]["id"] == frames[-2]["id"] + 2

    other = communicator_for(other_api_key)
    await other.connect()
    await other.send_json_to({"type": "resume", "session_id": "ws-mine", "last_event_id": 0})
    assert await receive_until_done(other) == [
        {"type": "error", "code": "not_found", "detail": "No such session.", "retryable": False, "id": 1},
        {"type": "done", "id": 2},
    ]
    await other.send_json_to({"type": "resume", "session_id": "ws-mine", "last_event_id": -1})
    assert (await other.receive_json_from())["code"] == "invalid"
    await other.disconnect()
    # The owner naming an id of no reply of that session (an old one, gone): an error frame, `gone`.
    owner = communicator_for(api_key)
    await owner.connect()
    await owner.send_json_to({"type": "resume", "session_id": "ws-mine", "last_event_id": 3})
    gone = await receive_until_done(owner)
    await owner.disconnect()
    assert [(frame["type"], frame.get("code"), frame["id"]) for frame in gone] == [
        ("error", "gone", 1),
        ("done", None, 2),
    ]


async def test_cancel_frame_stops_a_reply_followed_after_a_resume(api_key, backend):
    first = communicator_for(api_key)
    await first.connect()
    await first.send_json_to(
        {"type": "chat", "message": "[sim:slow=100] a long one", "session_id": "ws-stop", "resumable": True}
    )
    seen = [await first.receive_json_from(timeout=10) for _ in range(2)]
    await first.disconnect()
    second = communicator_for(api_key)
    await second.connect()
    await second.send_json_to({"type": "resume", "session_id": "ws-stop", "last_event_id": seen[-1]["id"]})
    await second.receive_json_from(timeout=10)

    await second.send_json_to({"type": "cancel"})
    rest = await receive_until_done(second)
    await second.disconnect()

    assert rest[-2]["type"] == "error" and rest[-2]["code"] == "cancelled"
    assert (await database_sync_to_async(Reply.objects.get)()).status == "cancelled"


async def test_a_turn_refused_before_its_reply_existed_is_error_1_then_done_2(api_key):
    running = communicator_for(api_key)
    await running.connect()
    await running.send_json_to({"type": "chat", "message": "[sim:slow=100] a long one", "session_id": "taken"})
    assert (await running.receive_json_from(timeout=10))["type"] == "session"
    communicator = communicator_for(api_key)
    await communicator.connect()
    await communicator.send_json_to({"type": "chat", "message": "me too", "session_id": "taken"})
    frames = await receive_until_done(communicator)
    await running.disconnect()
    await communicator.send_json_to({"type": "chat", "message": "[sim:busy] no", "session_id": "coze-busy"})
    refused_by_coze = await receive_until_done(communicator)
    await communicator.disconnect()

    # Refused by the session's lock: no reply of its own, so ids that name none.
    assert [(frame["type"], frame["id"]) for frame in frames] == [("error", 1), ("done", 2)]
    assert frames[0]["code"] == "session_busy"
    # Refused by Coze once its reply was stored (failed): the ids name that reply.
    reply = await database_sync_to_async(Reply.objects.get)(session__session_id="coze-busy")
    assert [(frame["type"], frame["id"]) for frame in refused_by_coze] == [
        ("error", event_ids.event_id(reply.pk, 1)),
        ("done", event_ids.event_id(reply.pk, 2)),
    ]
    assert refused_by_coze[0]["code"] == "session_busy" and reply.status == "failed"
