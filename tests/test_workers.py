"""Several real server processes sharing the database (and Redis): the session lock, cancels and
rate limits hold between them; SIGTERM interrupts replies in flight cleanly."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis
from django.conf import settings as django_settings
from django.db import connection

from sessions_admin.models import Reply
from tests.conftest import COZE_TEST_TOKEN, auth, needs_redis, wait_until  # noqa: F401 - needs_redis for others

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent


def database_url() -> str:
    """The URL of the database the tests run on (the test database), for the server processes."""
    params = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{params['NAME']}"
    password = f":{params['PASSWORD']}" if params.get("PASSWORD") else ""
    host, port = params["HOST"] or "127.0.0.1", params["PORT"] or 5432
    return f"postgres://{params['USER']}{password}@{host}:{port}/{params['NAME']}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`daphne cozeproject.asgi:application` in its own process, configured like production."""

    def __init__(self, simulator, tmp_path: Path, name: str, server: str = "daphne", **extra_env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / f"{name}.log"
        env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "COZE_", "CHAT_"))}
        env.update(
            DJANGO_SETTINGS_MODULE="cozeproject.settings",
            DJANGO_SECRET_KEY="test-secret-key-for-worker-processes-" + "x" * 20,
            DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
            DATABASE_URL=database_url(),
            REDIS_URL=django_settings.REDIS_URL,
            COZE_API_TOKEN=COZE_TEST_TOKEN,
            COZE_BASE_URL=simulator.base_url,
            COZE_BOT_ID=django_settings.COZE_BOT_ID,
            CHAT_RATE_LIMIT_PER_MINUTE="0",
            CHAT_MAX_CONCURRENT_STREAMS="0",
        )
        env.update(extra_env)
        self.log = open(self.log_path, "w")
        command = {
            "daphne": ["-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port)],
            # uvicorn sends the ASGI lifespan events, where the start-up hooks run (chat/turn/lifecycle.py).
            # --no-proxy-headers as documented: the application decides the client's address.
            "uvicorn": [
                *["-m", "uvicorn", "--host", "127.0.0.1", "--port", str(self.port)],
                *["--lifespan", "on", "--no-proxy-headers"],
            ],
        }[server]
        self.process = subprocess.Popen(
            [sys.executable, *command, "cozeproject.asgi:application"],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert self.process.poll() is None, self.log_path.read_text()
            assert time.monotonic() < deadline, "server process did not become healthy:\n" + self.log_path.read_text()
            time.sleep(0.1)

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.log.close()


@pytest.fixture
def start_worker(simulator, tmp_path):
    workers = []

    def start(name: str, server: str = "daphne", **env) -> ServerProcess:
        worker = ServerProcess(simulator, tmp_path, name, server, **env)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


def open_stream(url: str, key: str, body: dict):
    """Start an SSE reply; returns (client, lines iterator, session event) after the first delta."""
    client = httpx.Client(timeout=30)
    response = client.send(
        client.build_request("POST", url + "/api/chat/stream", json=body, headers=auth(key)), stream=True
    )
    assert response.status_code == 200, response.read()
    lines = response.iter_lines()
    session = None
    for line in lines:
        if line.startswith("data: {"):
            data = json.loads(line[6:])
            if data["type"] == "session":
                session = data
            elif data["type"] == "delta":
                break
    return client, lines, session


def read_rest(lines) -> list[str]:
    rest: list[str] = []
    reader = threading.Thread(target=lambda: rest.extend(lines), daemon=True)
    reader.start()
    return rest, reader


def test_the_session_lock_holds_between_worker_processes(start_worker, api_key):
    first, second = start_worker("a"), start_worker("b")
    client, lines, _ = open_stream(first.url, api_key, {"message": "[sim:slow=60] long", "session_id": "shared"})
    rest, reader = read_rest(lines)

    busy = httpx.post(
        second.url + "/api/chat", json={"message": "me too", "session_id": "shared"}, headers=auth(api_key), timeout=30
    )

    assert busy.status_code == 409 and busy.json()["code"] == "session_busy"
    reader.join(30)
    client.close()
    assert any('"type":"completed"' in line for line in rest)
    after = httpx.post(
        second.url + "/api/chat", json={"message": "now", "session_id": "shared"}, headers=auth(api_key), timeout=30
    )
    assert after.status_code == 200


def test_a_cancel_sent_to_one_worker_stops_a_reply_streaming_from_another(start_worker, api_key, simulator, redis_url):
    first, second = start_worker("a"), start_worker("b")
    client, lines, session = open_stream(first.url, api_key, {"message": "[sim:slow=100] cancel me elsewhere"})
    rest, reader = read_rest(lines)

    cancel = httpx.post(f"{second.url}/api/chats/{session['chat_id']}/cancel", headers=auth(api_key), timeout=30)

    assert cancel.status_code == 200 and cancel.json()["status"] == "cancelled"
    reader.join(10)
    client.close()
    assert rest[-1] == "data: [DONE]" or "data: [DONE]" in rest
    assert any('"code":"cancelled"' in line for line in rest)
    chat = wait_until(
        lambda: (
            (c := httpx.get(f"{simulator.base_url}/_sim/chats/{session['chat_id']}").json())["client_disconnected_at"]
            and c
        ),
        timeout=2,
    )
    assert chat["status"] == "canceled"
    assert wait_until(lambda: Reply.objects.get(coze_chat_id=session["chat_id"]).status == "cancelled")


def test_rate_limits_are_shared_between_workers(start_worker, api_key, redis_url):
    client = redis.from_url(redis_url)
    stale = list(client.scan_iter("cozeproject:*"))
    if stale:
        client.delete(*stale)
    first = start_worker("a", CHAT_RATE_LIMIT_PER_MINUTE="4")
    second = start_worker("b", CHAT_RATE_LIMIT_PER_MINUTE="4")

    statuses = [
        httpx.post(worker.url + "/api/chat", json={"message": "hi"}, headers=auth(api_key), timeout=30).status_code
        for worker in (first, second, first, second, first, second)
    ]

    assert statuses[:4] == [200, 200, 200, 200]
    assert statuses[4:] == [429, 429]


@pytest.mark.parametrize("server", ["daphne", "uvicorn"])
def test_sigterm_interrupts_replies_in_flight_and_stores_them(start_worker, api_key, server):
    worker = start_worker("a", server)
    client, lines, session = open_stream(worker.url, api_key, {"message": "[sim:slow=100] interrupted by a deploy"})
    rest, reader = read_rest(lines)

    worker.process.send_signal(signal.SIGTERM)

    reader.join(15)
    client.close()
    error = next(json.loads(line[6:]) for line in rest if line.startswith("data: {") and '"type":"error"' in line)
    assert error["code"] == "interrupted" and error["retryable"] is True
    assert "data: [DONE]" in rest
    reply = Reply.objects.get(coze_chat_id=session["chat_id"])
    assert reply.status == "interrupted"
    assert reply.messages.filter(kind="answer").exists()
    assert worker.process.wait(15) is not None


def _stream_until_session(url: str, key: str, body: dict):
    """Start an SSE reply and return (client, lines, session event) as soon as its `session` event
    arrives: the chat id is then the client's, while the worker may not have recorded it yet."""
    client = httpx.Client(timeout=30)
    response = client.send(
        client.build_request("POST", url + "/api/chat/stream", json=body, headers=auth(key)), stream=True
    )
    assert response.status_code == 200, response.read()
    lines = response.iter_lines()
    for line in lines:
        if line.startswith("data: {") and json.loads(line[6:])["type"] == "session":
            return client, lines, json.loads(line[6:])
    raise AssertionError("the stream ended without a session event")


CANCEL_ROUNDS = 12
RECORD_DELAY_SECONDS = 0.5


@pytest.fixture
def slow_chat_id_records():
    """A database that takes RECORD_DELAY_SECONDS to record a reply's Coze chat id (a trigger on the
    test database): a client holding the id from the stream asks another worker before it is there."""
    if connection.vendor != "postgresql":
        pytest.skip("the delaying trigger is PostgreSQL's")
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION test_slow_chat_id() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN PERFORM pg_sleep({RECORD_DELAY_SECONDS}); RETURN NEW; END $$"
        )
        cursor.execute(
            "CREATE TRIGGER test_slow_chat_id BEFORE UPDATE OF coze_chat_id ON sessions_admin_reply "
            "FOR EACH ROW WHEN (OLD.coze_chat_id = '' AND NEW.coze_chat_id <> '') EXECUTE FUNCTION test_slow_chat_id()"
        )
    yield
    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER test_slow_chat_id ON sessions_admin_reply")
        cursor.execute("DROP FUNCTION test_slow_chat_id()")


def test_no_cancel_sent_across_workers_is_lost(start_worker, api_key, simulator, redis_url, slow_chat_id_records):
    """Each cancel goes to B the moment the client has the chat id from A's stream, before A has
    recorded it; every one reaches the upstream and stores the reply as cancelled."""
    first, second = start_worker("a"), start_worker("b")
    for round_ in range(CANCEL_ROUNDS):
        client, lines, session = _stream_until_session(
            first.url, api_key, {"message": "[sim:slow=100] cancel me at once", "session_id": f"race-{round_}"}
        )
        rest, reader = read_rest(lines)

        cancel = httpx.post(f"{second.url}/api/chats/{session['chat_id']}/cancel", headers=auth(api_key), timeout=30)

        assert (cancel.status_code, cancel.json().get("status")) == (200, "cancelled"), (round_, cancel.text)
        reader.join(10)
        client.close()
        assert any('"code":"cancelled"' in line for line in rest), round_
        chat = httpx.get(f"{simulator.base_url}/_sim/chats/{session['chat_id']}").json()
        assert chat["status"] == "canceled" and chat["client_disconnected_at"], round_
        assert Reply.objects.get(coze_chat_id=session["chat_id"]).status == "cancelled", round_


def _bzpopmins(monitor_client, channel: str, count: int, timeout: float) -> None:
    """Wait (bounded) until Redis has received `count` BZPOPMIN commands on the worker's channel."""
    seen = 0
    deadline = time.monotonic() + timeout
    with monitor_client.monitor() as monitor:
        while seen < count:
            assert time.monotonic() < deadline, f"saw {seen} of {count} BZPOPMIN on {channel}"
            command = monitor.next_command()["command"]
            if command.upper().startswith("BZPOPMIN") and channel in command:
                seen += 1


def test_an_idle_cancel_listener_logs_no_warning(start_worker, api_key, redis_url):
    """The listener's blocking pop lasts 5 s; redis-py's default socket timeout (5 s) cut it and the
    listener logged a traceback every ~6 s. Idle through two whole pops, it says nothing."""
    worker = start_worker("a")
    answer = httpx.post(
        worker.url + "/api/chat", json={"message": "start the listener"}, headers=auth(api_key), timeout=30
    )
    assert answer.status_code == 200
    channel = Reply.objects.get().worker_channel.split("!", 1)[0]  # the process's prefix, the key's name

    # The first pop started with the turn; the third starts only after two have timed out (or failed).
    _bzpopmins(redis.from_url(redis_url, socket_timeout=20), channel, count=3, timeout=20)

    log = worker.log_path.read_text()
    assert " WARNING " not in log, log  # the logging format: "<date> <time> WARNING <logger> …"
