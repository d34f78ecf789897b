"""The turn's records stay whole whatever happens around them: the user's message is durable before
the first byte of the reply, a failing store stops the upstream chat and stores nothing half-way, a
turn cancelled while it is being stored leaves no lock behind, a clear is never undone, the end of
a turn is stored once however often it is retried, and the session lock follows the database's
clock."""

import asyncio
import contextlib
import datetime
import json
import threading

import httpx
import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from chat import coze
from chat.conversations.sessions import session_clear
from chat.domain import event_ids
from chat.domain.errors import ChatError
from chat.domain.events import CompletedEvent, ErrorEvent
from chat.domain.inputs import ChatRequest, Owner
from chat.turn import finish, records, service, store
from sessions_admin.models import ChatSession, Conversation, Message, Reply
from tests.conftest import auth, await_until, read_sse, wait_until
from tests.test_workers import database_url

pytestmark = pytest.mark.django_db(transaction=True)

OWNER = Owner(key="client:integrity")


def sim_stats(simulator) -> dict:
    return httpx.get(f"{simulator.base_url}/_sim/stats").json()


def async_sim_streams_above(simulator, count: int):
    async def check() -> bool:
        async with httpx.AsyncClient() as client:
            return (await client.get(f"{simulator.base_url}/_sim/stats")).json()["total_streams"] > count

    return check


def test_the_users_message_is_stored_before_the_first_byte_of_the_reply(asgi_server, api_key):
    body = {"message": "[sim:slow=500] durable first", "session_id": "durable"}
    with httpx.Client(base_url=asgi_server.url, timeout=30) as client:
        with client.stream("POST", "/api/chat/stream", json=body, headers=auth(api_key)) as response:
            # Keep the line iterator: dropping it would close the connection (and cancel the reply)
            # whenever the garbage collector finalizes it.
            lines = response.iter_lines()
            first_line = next(lines)
            # The first byte is here: the question, its reply record and the lock are committed.
            assert first_line.startswith("id: ")
            question = Message.objects.get(conversation__session__session_id="durable", kind="question")
            assert first_line == f"id: {event_ids.event_id(question.reply_id, 1)}"  # the reply's first event
            assert question.content == "[sim:slow=500] durable first"
            assert question.reply.status == "in_progress"
            session = ChatSession.objects.get(session_id="durable")
            assert session.status == "busy"


def test_a_store_that_fails_after_coze_was_called_stops_the_chat_and_stores_nothing(
    http, api_key, simulator, monkeypatch
):
    before = sim_stats(simulator)
    real_cancel = coze.achat_cancel
    cancelled = []

    async def failing_start(start):
        # Coze has the chat by now (the turn opens it while its start is stored); then storage fails.
        await await_until(async_sim_streams_above(simulator, before["total_streams"]))
        raise ChatError("service_unavailable", "The database is unavailable; retry shortly.")

    async def recording_cancel(*, conversation_id, chat_id):
        cancelled.append(chat_id)
        await real_cancel(conversation_id=conversation_id, chat_id=chat_id)

    real_start = store.turn_start
    monkeypatch.setattr(store, "turn_start", failing_start)
    monkeypatch.setattr(coze, "achat_cancel", recording_cancel)
    response = http.post(
        "/api/chat/stream", json={"message": "[sim:slow=50] lost?", "session_id": "s-fail"}, headers=auth(api_key)
    )

    assert response.status_code == 503
    assert response.json()["code"] == "service_unavailable"
    wait_until(lambda: cancelled)
    chat = simulator.app.state.chats[cancelled[0]]
    wait_until(lambda: chat.status == "canceled")
    assert chat.client_disconnected_at is not None  # the connection was closed, not left to the GC
    assert sim_stats(simulator)["open_streams"] == 0
    assert not ChatSession.objects.filter(session_id="s-fail").exists()
    assert not Reply.objects.exists() and not Message.objects.exists()

    monkeypatch.setattr(store, "turn_start", real_start)
    again = http.post("/api/chat", json={"message": "now?", "session_id": "s-fail"}, headers=auth(api_key))
    assert again.status_code == 200


@pytest.mark.asyncio
async def test_a_turn_cancelled_while_its_start_is_stored_leaves_the_session_free(monkeypatch):
    real_start = store.turn_start
    started, caller_gone = asyncio.Event(), asyncio.Event()

    async def slow_start(start):
        started.set()
        await asyncio.wait_for(caller_gone.wait(), 10)  # the store is still running when its caller goes away
        return await real_start(start)

    monkeypatch.setattr(store, "turn_start", slow_start)
    request = ChatRequest(message="[sim:slow=50] cancelled early", session_id="early")
    consumer = asyncio.ensure_future(_collect(request))
    await asyncio.wait_for(started.wait(), 5)
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    caller_gone.set()

    reply = await _await_db(lambda: Reply.objects.exclude(status="in_progress").first())
    assert reply.status == "cancelled"
    session = await asyncio.to_thread(ChatSession.objects.get, session_id="early")
    assert session.status == "active" and not session.lock_token

    monkeypatch.setattr(store, "turn_start", real_start)
    completed = await service.achat_send(
        owner=OWNER, chat_request=ChatRequest(message="next", session_id="early"), transport="sync"
    )
    assert completed.content.startswith("You said: next")


async def _collect(request: ChatRequest) -> list:
    return [event async for event in service.achat_events(owner=OWNER, chat_request=request, transport="sse")]


async def _await_db(query, timeout: float = 5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await asyncio.to_thread(query)
        if value:
            return value
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


PAUSE_LOCK = 4_242_424  # the advisory lock a paused PostgreSQL turn_start waits for


class TurnStartPausedInPostgres:
    """Pauses PostgreSQL's turn_start function inside its transaction, with the session row locked
    and marked busy: a BEFORE INSERT trigger on replies (the test database's, not the product's)
    waits for an advisory lock held here, in a connection of its own, until `release`."""

    def __init__(self):
        self.conn = psycopg.connect(database_url(), autocommit=True)
        self.conn.execute("SELECT pg_advisory_lock(%s)", (PAUSE_LOCK,))
        self.conn.execute(
            "CREATE FUNCTION test_pause_turn_start() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN PERFORM pg_advisory_lock({PAUSE_LOCK}); PERFORM pg_advisory_unlock({PAUSE_LOCK}); "
            "RETURN NEW; END $$"
        )
        self.conn.execute(
            "CREATE TRIGGER test_pause_turn_start BEFORE INSERT ON sessions_admin_reply "
            "FOR EACH ROW EXECUTE FUNCTION test_pause_turn_start()"
        )

    def waiting(self, condition: str) -> int:
        """How many backends of this database wait as `condition` (a pg_stat_activity filter) says."""
        query = f"SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND {condition}"
        return self.conn.execute(query).fetchone()[0]

    def release(self) -> None:
        self.conn.execute("SELECT pg_advisory_unlock(%s)", (PAUSE_LOCK,))

    def close(self) -> None:
        self.conn.execute("DROP TRIGGER IF EXISTS test_pause_turn_start ON sessions_admin_reply")
        self.conn.execute("DROP FUNCTION IF EXISTS test_pause_turn_start()")
        self.conn.close()


@pytest.mark.asyncio
async def test_a_clear_that_succeeds_is_never_undone_by_a_turn_starting_at_the_same_time(monkeypatch):
    first = await service.achat_send(
        owner=OWNER, chat_request=ChatRequest(message="remember this", session_id="race"), transport="sync"
    )
    postgres = connection.vendor == "postgresql"
    with contextlib.ExitStack() as stack:
        if postgres:
            # The turn's start is one SQL function: pause it inside, then see the clear wait on its lock.
            pause = await asyncio.to_thread(TurnStartPausedInPostgres)
            stack.callback(pause.close)
            go = pause.release
            paused = "wait_event_type = 'Lock' AND wait_event = 'advisory'"
            clear_waits = "wait_event_type = 'Lock' AND query LIKE 'UPDATE \"sessions_admin_chatsession\"%'"
        else:
            inside, released = threading.Event(), threading.Event()
            real_route = records.route_of

            def pausing_route(**kwargs):
                # Inside turn_start's transaction, after it read the session: let a clear run into it now.
                if not inside.is_set():
                    inside.set()
                    released.wait(5)
                return real_route(**kwargs)

            # The route is known from the first turn, so the first `route_of` call is inside turn_start.
            monkeypatch.setattr(records, "route_of", pausing_route)
            go = released.set
        turn = asyncio.ensure_future(
            service.achat_send(
                owner=OWNER, chat_request=ChatRequest(message="second", session_id="race"), transport="sync"
            )
        )
        if postgres:
            await asyncio.to_thread(wait_until, lambda: pause.waiting(paused) == 1)
        else:
            assert await asyncio.to_thread(inside.wait, 5)
        clearing = asyncio.ensure_future(asyncio.to_thread(_clear_or_busy, "race"))
        if postgres:
            await asyncio.to_thread(wait_until, lambda: pause.waiting(clear_waits) == 1)
        else:
            await asyncio.wait([clearing], timeout=0.2)  # SQLite's lock wait is not observable: a bound
        go()
        cleared = await clearing
        await turn

    if postgres:
        # It waited for the start's transaction and then found the session busy (session_clear's rule).
        assert cleared is False

    third = await service.achat_send(
        owner=OWNER, chat_request=ChatRequest(message="third", session_id="race"), transport="sync"
    )
    if cleared:
        assert third.conversation_id != first.conversation_id
    else:
        assert third.conversation_id == first.conversation_id


def _clear_or_busy(session_id: str) -> bool:
    try:
        session_clear(owner=OWNER, session_id=session_id)
    except ChatError as error:
        assert error.code == "session_busy"
        return False
    finally:
        connection.close()  # this thread's: the test database is dropped at the end
    return True


def test_a_failed_finish_tells_the_client_and_is_stored_once_on_retry(http, api_key, monkeypatch):
    real_finish = store.turn_finish
    calls = []

    async def flaky_finish(*, turn, outcome):
        calls.append(outcome.status)
        if len(calls) == 1:
            # The commit went through but its acknowledgement was lost: storage "failed".
            await real_finish(turn=turn, outcome=outcome)
            raise ChatError("service_unavailable", "The database is unavailable; retry shortly.")
        await real_finish(turn=turn, outcome=outcome)

    monkeypatch.setattr(store, "turn_finish", flaky_finish)
    monkeypatch.setattr(finish, "FINISH_RETRY_DELAYS", (0.05, 0.05))
    response = http.post("/api/chat/stream", json={"message": "store me", "session_id": "s-ack"}, headers=auth(api_key))
    events = read_sse(response)

    kinds = [event["event"] for event in events]
    assert "completed" not in kinds
    assert events[-2]["data"]["code"] == "service_unavailable"
    wait_until(lambda: len(calls) >= 2)
    reply = Reply.objects.get()
    assert reply.status == "completed"
    assert Message.objects.filter(reply=reply, kind="answer").count() == 1
    assert Conversation.objects.get().message_count == 2
    assert ChatSession.objects.get(session_id="s-ack").status == "active"


@pytest.mark.asyncio
async def test_the_session_lock_follows_the_database_clock_not_the_workers(monkeypatch):
    request = ChatRequest(message="[sim:slow=30] hold the lock", session_id="skew")
    events = service.achat_events(owner=OWNER, chat_request=request, transport="sse")
    assert (await anext(events)).type == "session"

    # Another worker whose clock runs an hour ahead must still see the lock held.
    skewed = timezone.now() + datetime.timedelta(hours=1)
    monkeypatch.setattr(timezone, "now", lambda: skewed)
    with pytest.raises(ChatError) as busy:
        await service.achat_send(
            owner=OWNER, chat_request=ChatRequest(message="steal", session_id="skew"), transport="sync"
        )
    assert busy.value.code == "session_busy"
    await events.aclose()


@pytest.mark.asyncio
async def test_a_stale_route_from_another_workers_clear_is_caught_and_the_turn_starts_in_order():
    first = await service.achat_send(
        owner=OWNER, chat_request=ChatRequest(message="old context", session_id="stale"), transport="sync"
    )
    # Another worker clears the session; this worker still remembers the old conversation.
    await asyncio.to_thread(
        lambda: ChatSession.objects.filter(session_id="stale").update(current_conversation=None, message_count=0)
    )

    events = [
        event
        async for event in service.achat_events(
            owner=OWNER, chat_request=ChatRequest(message="fresh", session_id="stale"), transport="sse"
        )
    ]

    completed = next(event for event in events if isinstance(event, CompletedEvent))
    assert not any(isinstance(event, ErrorEvent) for event in events)
    assert completed.conversation_id != first.conversation_id
    assert completed.content == "You said: fresh"
    assert json.dumps(completed.as_dict())
