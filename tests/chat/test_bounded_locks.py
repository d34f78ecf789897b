"""No statement waits on a row lock unboundedly (CHAT_DB_LOCK_TIMEOUT): a session whose row another
transaction holds answers `409 session_busy` at once, and the worker's other sessions go on."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest
from django.conf import settings
from django.db import connection
from django.db.models.functions import Now

from sessions_admin.models import ChatSession, Message, Reply
from tests.conftest import auth, wait_until

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks and lock_timeout are PostgreSQL's"),
]


def outside_connection() -> psycopg.Connection:
    """A connection of another program (a stuck worker, a staff member's psql): not the server's."""
    params = connection.get_connection_params()
    for django_only in ("cursor_factory", "context", "server_side_binding", "prepare_threshold"):
        params.pop(django_only, None)
    return psycopg.connect(**{key: value for key, value in params.items() if value is not None})


@pytest.fixture
def held_session(http, api_key):
    """The session "held", its row locked by an open transaction elsewhere until the test ends."""
    first = http.post("/api/chat", json={"message": "hi", "session_id": "held"}, headers=auth(api_key))
    assert first.status_code == 200
    holder = outside_connection()
    holder.execute("SELECT id FROM sessions_admin_chatsession WHERE session_id = 'held' FOR UPDATE")
    yield holder
    holder.rollback()
    holder.close()


def test_a_session_locked_elsewhere_is_busy_at_once_and_other_sessions_go_on(asgi_server, api_key, held_session):
    # More turns on the held session than the worker has connections for its turns: were any of
    # them to wait for the row, they would hold every connection and stall everyone.
    crowd = settings.CHAT_DB_THREADS * 2

    def turn_on_held_session(_) -> tuple[int, str, float]:
        started = time.monotonic()
        response = httpx.post(
            asgi_server.url + "/api/chat",
            json={"message": "me too", "session_id": "held"},
            headers=auth(api_key),
            timeout=30,
        )
        return response.status_code, response.json()["code"], time.monotonic() - started

    with ThreadPoolExecutor(crowd) as pool:
        crowded = pool.map(turn_on_held_session, range(crowd))
        unrelated_started = time.monotonic()
        unrelated = httpx.post(
            asgi_server.url + "/api/chat",
            json={"message": "[sim:echo]unrelated", "session_id": "free"},
            headers=auth(api_key),
            timeout=30,
        )
        unrelated_took = time.monotonic() - unrelated_started
        answers = list(crowded)

    assert unrelated.status_code == 200 and unrelated.json()["response"] == "unrelated"
    assert unrelated_took < 3
    assert [(status, code) for status, code, _ in answers] == [(409, "session_busy")] * crowd
    # At once: the start takes the session's row with NOWAIT; nothing waits out even the lock timeout.
    assert max(took for _, _, took in answers) < 3
    # All of that while the row was still held: the lock was never taken from its holder.
    assert held_session.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS


def test_clear_and_delete_of_a_session_locked_elsewhere_are_busy_not_stuck(http, api_key, held_session):
    results: dict[str, httpx.Response] = {}

    def call(name: str, method: str, path: str) -> None:
        results[name] = http.request(method, path, headers=auth(api_key))

    threads = [
        threading.Thread(target=call, args=("clear", "POST", "/api/sessions/held/clear")),
        threading.Thread(target=call, args=("delete", "DELETE", "/api/sessions/held")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert {name: (r.status_code, r.json()["code"]) for name, r in results.items()} == {
        "clear": (409, "session_busy"),
        "delete": (409, "session_busy"),
    }
    assert ChatSession.objects.filter(session_id="held").exists()


def test_a_finish_held_up_by_a_locked_row_is_stored_whole_once_free_not_ended_as_crashed(
    asgi_server, api_key, settings
):
    settings.CHAT_SESSION_LOCK_TTL = 1  # the lease lapses while the row is held; recovery sweeps every 1/3 s
    body = {"message": "[sim:slow=30][sim:echo]whole answer", "session_id": "late"}
    with httpx.Client(base_url=asgi_server.url, timeout=30) as client:
        with client.stream("POST", "/api/chat/stream", json=body, headers=auth(api_key)) as response:
            lines = response.iter_lines()
            assert '"type":"session"' in next(line for line in lines if line.startswith("data: "))
            holder = outside_connection()
            holder.execute("SELECT id FROM sessions_admin_chatsession WHERE session_id = 'late' FOR UPDATE")
            rest = list(lines)
    # The finish could not lock the session: the client was told so, and it is being retried.
    assert any('"code":"service_unavailable"' in line for line in rest)
    reply = Reply.objects.get(session__session_id="late")
    assert reply.status == "in_progress"
    # The lease lapses while the row is held (the heartbeat skips a held row).
    wait_until(lambda: ChatSession.objects.filter(session_id="late", locked_until__lt=Now()).exists(), timeout=10)
    holder.rollback()
    holder.close()

    stored = wait_until(lambda: Reply.objects.exclude(status="in_progress").filter(pk=reply.pk).first(), timeout=15)

    assert stored.status == "completed"
    assert Message.objects.get(reply=stored, kind="answer").content == "whole answer"
