"""Database and Redis outages, crashed lock holders, vanished sync clients, and secrets."""

import logging
import os
import subprocess
import sys
import threading
from datetime import timedelta

import httpx
import psycopg
import pytest
from django.db import connection, connections
from django.utils import timezone

from chat.runtime.db import close_db_threads
from sessions_admin.models import ApiClient, ChatSession, Message, Reply
from tests.conftest import COZE_TEST_TOKEN, auth, wait_until
from tests.test_workers import database_url

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def broken_database():
    """Make every new database connection fail, as if the server went away; restore after."""
    settings_dict = connections.settings["default"]
    saved = dict(settings_dict)

    def break_it():
        if connection.vendor == "sqlite":
            settings_dict["NAME"] = "/nonexistent-directory/cozeproject.sqlite3"
        else:
            settings_dict["PORT"] = "1"
        close_db_threads()

    def restore():
        settings_dict.clear()
        settings_dict.update(saved)
        close_db_threads()

    yield break_it, restore
    restore()


def test_database_outage_answers_503_and_recovers_without_restart(http, api_key, broken_database):
    break_it, restore = broken_database
    assert http.post("/api/chat", json={"message": "before"}, headers=auth(api_key)).status_code == 200

    break_it()
    for path in ("/api/chat", "/api/chat/stream"):
        response = http.post(path, json={"message": "during"}, headers=auth(api_key))
        assert response.status_code == 503, response.text
        assert response.json()["code"] == "service_unavailable"
    health = http.get("/health")
    assert health.status_code == 503
    assert health.json()["database"] == "unavailable" and health.json()["channel_layer"] == "ok"

    restore()
    assert http.post("/api/chat", json={"message": "after"}, headers=auth(api_key)).status_code == 200
    assert http.get("/health").status_code == 200


@pytest.mark.skipif(os.environ.get("DATABASE_URL", "").startswith("postgres") is False, reason="needs PostgreSQL")
def test_connections_killed_by_postgres_are_replaced_transparently(http, api_key):
    assert http.post("/api/chat", json={"message": "warm up"}, headers=auth(api_key)).status_code == 200
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )

    response = http.post("/api/chat", json={"message": "after a database restart"}, headers=auth(api_key))

    assert response.status_code == 200, response.text


ANSWER_PAUSE_LOCK = 4_242_425  # the advisory lock a paused answer insert waits for


@pytest.mark.skipif(os.environ.get("DATABASE_URL", "").startswith("postgres") is False, reason="needs PostgreSQL")
def test_a_backend_killed_in_the_middle_of_the_finish_statement_is_retried_and_the_turn_stored(asgi_server, api_key):
    """The finish (one function call) is paused inside, at its answer's insert, by a trigger of the
    test database waiting for an advisory lock held here; its backend is terminated right there,
    then the lock let go: the statement is resent on a fresh connection and the turn is stored once."""
    holder = psycopg.connect(database_url(), autocommit=True)
    holder.execute("SELECT pg_advisory_lock(%s)", (ANSWER_PAUSE_LOCK,))
    holder.execute(
        "CREATE FUNCTION test_pause_answer() RETURNS trigger LANGUAGE plpgsql AS "
        f"$$ BEGIN PERFORM pg_advisory_lock_shared({ANSWER_PAUSE_LOCK}); "
        f"PERFORM pg_advisory_unlock_shared({ANSWER_PAUSE_LOCK}); RETURN NEW; END $$"
    )
    holder.execute(
        "CREATE TRIGGER test_pause_answer BEFORE INSERT ON sessions_admin_message "
        "FOR EACH ROW WHEN (NEW.kind = 'answer') EXECUTE FUNCTION test_pause_answer()"
    )

    def paused_backends() -> list[tuple[int, str]]:
        return holder.execute(
            "SELECT pid, query FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
        ).fetchall()

    answers = []
    try:
        chat = threading.Thread(
            target=lambda: answers.append(
                httpx.post(
                    asgi_server.url + "/api/chat",
                    json={"message": "stored despite a killed backend", "session_id": "killed"},
                    headers=auth(api_key),
                    timeout=30,
                )
            )
        )
        chat.start()
        [(first_pid, query)] = wait_until(paused_backends)
        assert "cozeproject_turn_finish" in query  # paused in the middle of the finish's statement

        holder.execute("SELECT pg_terminate_backend(%s)", (first_pid,))

        # The finish is sent again on a fresh connection, and pauses at the same place.
        [(_, query)] = wait_until(lambda: [row for row in paused_backends() if row[0] != first_pid])
        assert "cozeproject_turn_finish" in query
        holder.execute("SELECT pg_advisory_unlock(%s)", (ANSWER_PAUSE_LOCK,))
        chat.join(30)
    finally:
        holder.execute("SELECT pg_advisory_unlock_all()")
        holder.execute("DROP TRIGGER IF EXISTS test_pause_answer ON sessions_admin_message")
        holder.execute("DROP FUNCTION IF EXISTS test_pause_answer()")
        holder.close()

    assert answers and answers[0].status_code == 200, answers and answers[0].text
    assert answers[0].json()["response"] == "You said: stored despite a killed backend"
    reply = Reply.objects.get(session__session_id="killed")
    assert reply.status == "completed"
    assert Message.objects.filter(reply=reply, kind="answer").count() == 1
    assert ChatSession.objects.get(session_id="killed").status == "active"


def test_channel_layer_outage_shows_in_health_and_chat_still_works(http, api_key, settings):
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": ["redis://127.0.0.1:1"]}}
    }

    health = http.get("/health")

    assert health.status_code == 503
    assert health.json()["channel_layer"] == "unavailable" and health.json()["database"] == "ok"
    assert http.post("/api/chat", json={"message": "still fine"}, headers=auth(api_key)).status_code == 200


def test_a_lock_left_by_a_crashed_worker_expires(http, api_key):
    assert (
        http.post("/api/chat", json={"message": "one", "session_id": "crash"}, headers=auth(api_key)).status_code == 200
    )
    session = ChatSession.objects.get(session_id="crash")
    ChatSession.objects.filter(pk=session.pk).update(
        lock_token="dead-worker", locked_until=timezone.now() + timedelta(seconds=60)
    )
    busy = http.post("/api/chat", json={"message": "two", "session_id": "crash"}, headers=auth(api_key))
    assert busy.status_code == 409 and busy.json()["code"] == "session_busy"

    ChatSession.objects.filter(pk=session.pk).update(locked_until=timezone.now() - timedelta(seconds=1))

    again = http.post("/api/chat", json={"message": "three", "session_id": "crash"}, headers=auth(api_key))
    assert again.status_code == 200


def test_sync_client_that_hangs_up_cancels_the_reply_and_closes_upstream(asgi_server, api_key, simulator):
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            asgi_server.url + "/api/chat",
            json={"message": "[sim:slow=100] I will not wait for this", "session_id": "gone"},
            headers=auth(api_key),
            timeout=httpx.Timeout(10, read=0.8),
        )

    reply = wait_until(lambda: Reply.objects.exclude(status="in_progress").filter(session__session_id="gone").first())
    assert reply.status == "cancelled"
    assert Message.objects.filter(reply=reply, kind="answer").exists()
    chat = httpx.get(f"{simulator.base_url}/_sim/chats/{reply.coze_chat_id}").json()
    assert chat["client_disconnected_at"] is not None


def test_the_coze_token_and_api_keys_never_reach_logs_responses_or_the_database(http, api_key, caplog):
    caplog.set_level(logging.DEBUG)
    bodies = []
    for message in ("hello", "[sim:auth_failed]", "[sim:server_error]", "[sim:error_event] x", "[sim:garbage]"):
        bodies.append(http.post("/api/chat", json={"message": message}, headers=auth(api_key)).text)
        bodies.append(http.post("/api/chat/stream", json={"message": message}, headers=auth(api_key)).text)
    bodies.append(http.get("/health").text)

    everything = "\n".join(bodies) + caplog.text
    assert COZE_TEST_TOKEN not in everything
    assert api_key not in everything
    dump = repr([list(model.objects.values_list()) for model in (ApiClient, ChatSession, Reply, Message)])
    assert COZE_TEST_TOKEN not in dump and api_key not in dump


def run_settings(env: dict) -> subprocess.CompletedProcess:
    base = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "COZE_"))}
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env={**base, "DJANGO_SETTINGS_MODULE": "cozeproject.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_production_refuses_to_start_without_a_secret_key_or_with_debug_on_public_hosts():
    no_key = run_settings({"DJANGO_DEBUG": "0"})
    assert no_key.returncode != 0 and "DJANGO_SECRET_KEY" in no_key.stderr

    public_debug = run_settings({"DJANGO_DEBUG": "1", "DJANGO_ALLOWED_HOSTS": "chat.example.com"})
    assert public_debug.returncode != 0 and "DJANGO_DEBUG=1 with public" in public_debug.stderr

    bad_number = run_settings({"DJANGO_DEBUG": "1", "CHAT_SSE_HEARTBEAT": "soon"})
    assert bad_number.returncode != 0 and "CHAT_SSE_HEARTBEAT" in bad_number.stderr

    token_without_bot = run_settings({"DJANGO_DEBUG": "1", "COZE_API_TOKEN": "pat_x"})
    assert token_without_bot.returncode != 0 and "COZE_BOT_ID" in token_without_bot.stderr

    fine = run_settings(
        {
            "DJANGO_SECRET_KEY": "production-secret-key-" + "0123456789abcdef" * 3,
            "DJANGO_ALLOWED_HOSTS": "chat.example.com",
            "CHAT_DEMO": "1",
        }
    )
    assert fine.returncode == 0, fine.stderr


def test_responses_carry_security_headers(http):
    response = http.get("/")

    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "same-origin"
