"""The replay buffers of resumable replies stay bounded (docs/api.md §9): many replies whose
clients never come back are all completed and stored, while the worker's memory keeps at most
CHAT_RESUME_MAX_REPLIES of them, each with at most CHAT_RESUME_MAX_EVENTS events and
CHAT_RESUME_MAX_CHARS characters; a resume of what was dropped gets the stored reply."""

import contextlib
import json

import pytest
from channels.db import database_sync_to_async  # closes its connection, unlike sync_to_async

from chat.domain import event_ids
from chat.domain.inputs import ChatRequest, Owner
from chat.resume import replay, resuming
from chat.turn import service
from sessions_admin.models import Message, Reply
from tests.conftest import await_until

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]

ANSWER = "長い答え — a long answer 🧵\n" * 12  # ~350 characters, ~140 deltas


async def abandon(owner: Owner, session_id: str) -> None:
    """Start a resumable reply, read its first two events, then go away."""
    events = service.achat_events(
        owner=owner,
        chat_request=ChatRequest(message="[sim:slow=2][sim:echo]" + ANSWER, session_id=session_id, resumable=True),
        transport="sse",
    )
    async with contextlib.aclosing(events):
        await anext(events)
        await anext(events)


async def entries_of(owner: Owner, session_id: str, after_id: int) -> list:
    events = await resuming.aopen_reply_stream(owner=owner, session_id=session_id, after_id=after_id, heartbeat=15)
    return [entry async for entry in events]


async def test_memory_stays_bounded_with_many_abandoned_resumable_replies(settings):
    settings.REDIS_URL = ""
    settings.CHAT_RESUME_MAX_REPLIES = 4
    settings.CHAT_RESUME_MAX_EVENTS = 40
    settings.CHAT_RESUME_MAX_CHARS = 1000
    for pk in list(replay.memory._buffers):
        replay.memory._evict(pk)
    owner = Owner(key="test:bounded")

    for index in range(12):
        await abandon(owner, f"bounded-{index}")
        stats = replay.memory.stats()
        assert stats["replies"] <= 4 and stats["events"] <= 4 * 40 and stats["chars"] <= 4 * 1000

    completed = database_sync_to_async(lambda: Reply.objects.filter(status="completed").count())
    await await_until(lambda: _equals(completed, 12), timeout=30)
    answers = await database_sync_to_async(
        lambda: list(Message.objects.filter(kind="answer").values_list("content", flat=True))
    )()
    assert answers == [ANSWER] * 12  # every reply ran to its end and was stored, with nobody reading
    assert len(replay.memory) == 4
    for buffer in replay.memory._buffers.values():
        assert len(buffer.events) <= 40 and buffer.chars <= 1000 and buffer.ended_at is not None

    # A kept reply replays its last events as they were; from before them, or for a dropped
    # reply, a resume gets the stored reply.
    last = await entries_of(owner, "bounded-11", 0)
    assert [entry.type for entry in last] == ["session", "delta", "completed", "done"]
    kept_pk = max(replay.memory._buffers)
    tail_from = replay.memory._buffers[kept_pk].first_id
    tail = await entries_of(owner, "bounded-11", event_ids.event_id(kept_pk, tail_from - 1))
    assert [entry.id for entry in tail] == [
        event_ids.event_id(kept_pk, number) for number in range(tail_from, tail_from + len(tail))
    ]
    assert tail[-1].type == "done" and tail[-2].type == "completed"
    dropped_pk = await database_sync_to_async(lambda: Reply.objects.get(session__session_id="bounded-0").pk)()
    dropped = await entries_of(owner, "bounded-0", event_ids.event_id(dropped_pk, 3))
    assert [entry.type for entry in dropped] == ["session", "delta", "completed", "done"]
    ids = [entry.id for entry in dropped]
    assert ids[0] == event_ids.event_id(dropped_pk, 3) + 1 and ids == sorted(set(ids))
    assert {event_ids.parse(entry_id).reply_pk for entry_id in ids} == {dropped_pk}
    # Events 2 and 3 were the answer's first deltas (1 and 2 characters): the rest follows them.
    assert json.loads(dropped[1].json)["content"] == ANSWER[3:]


async def _equals(count, expected: int) -> bool:
    return await count() == expected
