"""Start-up: demo mode is announced, and its simulator started, before a server serves; operator
commands stay free of cozepy's authlib deprecation warning."""

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from django.conf import settings as django_settings

from chat import coze
from chat.coze import client as coze_client
from chat.simulator import SimulatorServer
from tests.test_workers import database_url, free_port

ROOT = Path(__file__).resolve().parent.parent
AUTHLIB_WARNING = re.compile(r"AuthlibDeprecationWarning|authlib\.jose module is deprecated")
DEMO_MODE_LINE = re.compile(r"DEMO MODE: .* simulator at (http://[\d.:]+)")


def demo_mode_env(**extra: str) -> dict[str, str]:
    """The environment of a fresh deployment without a Coze token: demo mode."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "COZE_", "CHAT_"))}
    env.pop("PYTHONWARNINGS", None)
    env.update(DJANGO_SETTINGS_MODULE="cozeproject.settings", DJANGO_DEBUG="1", **extra)
    return env


def run_manage(*args: str, stdin: str = "", **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=demo_mode_env(**extra_env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.django_db(transaction=True)
def test_a_server_process_announces_demo_mode_and_starts_its_simulator_before_serving(tmp_path):
    port = free_port()
    log_path = tmp_path / "server.log"
    env = demo_mode_env(DATABASE_URL=database_url(), REDIS_URL=django_settings.REDIS_URL)
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "cozeproject.asgi:application"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                assert process.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "the server did not start:\n" + log_path.read_text()
                time.sleep(0.1)
        # Served, and no chat turn yet: the log has said so, once, and the simulator is listening.
        announcements = DEMO_MODE_LINE.findall(log_path.read_text())
        assert health.json()["coze"] == "simulator"
        assert len(announcements) == 1, log_path.read_text()
        assert httpx.get(announcements[0] + "/_sim/stats").json()["total_streams"] == 0
        assert not AUTHLIB_WARNING.search(log_path.read_text())
    finally:
        process.kill()
        process.wait(10)


def test_management_commands_neither_warn_about_authlib_nor_start_the_simulator():
    result = run_manage("check")

    assert result.returncode == 0, result.stderr
    assert not AUTHLIB_WARNING.search(result.stderr), result.stderr
    assert "DEMO MODE" not in result.stderr


@pytest.mark.django_db(transaction=True)
def test_the_terminal_client_does_not_warn_about_authlib():
    result = run_manage("chat", "--direct", stdin="/quit\n", DATABASE_URL=database_url())

    assert result.returncode == 0, result.stderr
    assert "demo mode" in result.stdout
    assert not AUTHLIB_WARNING.search(result.stderr), result.stderr


def test_only_the_authlib_jose_warning_is_silenced():
    script = (
        "import django; django.setup()\n"
        "import chat.coze\n"
        "from authlib.deprecate import deprecate\n"
        "deprecate('some other authlib deprecation', stacklevel=2)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=demo_mode_env(), capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    assert "some other authlib deprecation" in result.stderr
    assert "authlib.jose module is deprecated" not in result.stderr


@pytest.fixture
def demo_mode(settings, monkeypatch):
    """Demo mode in this process, its simulator not started yet."""
    settings.COZE_API_TOKEN = ""
    settings.COZE_OAUTH_APP_ID = ""
    monkeypatch.setattr(coze_client, "_simulator", None)
    yield
    if coze_client._simulator is not None:
        coze_client._simulator.stop()


@pytest.mark.asyncio
async def test_demo_mode_starts_the_simulator_off_the_event_loop(demo_mode, monkeypatch):
    start = SimulatorServer.start
    started_on = []

    def start_and_record_thread(server, *args, **kwargs):
        started_on.append(threading.current_thread())
        return start(server, *args, **kwargs)

    monkeypatch.setattr(SimulatorServer, "start", start_and_record_thread)

    upstream = await coze.achat_open(
        bot_id=django_settings.COZE_BOT_ID,
        user_id="u",
        conversation_id=None,
        messages=coze.build_messages(message="demo", additional_messages=None),
    )
    try:
        events = [event async for event in upstream.events()]
    finally:
        await upstream.aclose()

    assert isinstance(events[-1], coze.UpstreamCompleted)
    assert len(started_on) == 1
    assert started_on[0] is not threading.current_thread()  # not the event loop's thread
    with socket.create_connection(("127.0.0.1", coze_client._simulator.port), timeout=5):
        pass


# --- configuration that would fail at runtime refuses to start, in one line -------------------

STRONG_SECRET_KEY = "production-secret-key-" + "0123456789abcdef" * 3


def production_env(**extra: str) -> dict[str, str]:
    """A production process's environment (no debug), with a good secret key and host names."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "COZE_", "CHAT_"))}
    env.pop("PYTHONWARNINGS", None)
    env.update(
        DJANGO_SETTINGS_MODULE="cozeproject.settings",
        DJANGO_SECRET_KEY=STRONG_SECRET_KEY,
        DJANGO_ALLOWED_HOSTS="chat.example.com",
        DATABASE_URL="sqlite:///:memory:",
    )
    env.update(extra)
    return env


ENTRY_POINTS = {
    "manage.py": lambda port: [sys.executable, "manage.py", "check"],
    "daphne": lambda port: [sys.executable, "-m", "daphne", "-p", str(port), "cozeproject.asgi:application"],
    "uvicorn": lambda port: [sys.executable, "-m", "uvicorn", "--port", str(port), "cozeproject.asgi:application"],
}


def start(entry_point: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Start an entry point; one that starts serving is stopped after 20 s (the test then fails)."""
    return subprocess.run(
        ENTRY_POINTS[entry_point](free_port()), cwd=ROOT, env=env, capture_output=True, text=True, timeout=20
    )


def refusal(result: subprocess.CompletedProcess) -> str:
    """The one line a refused start printed (and nothing else)."""
    lines = result.stderr.strip().splitlines() + result.stdout.strip().splitlines()
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1, "\n".join(lines)
    assert lines[0].startswith("cozeproject: configuration error: "), lines[0]
    return lines[0]


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_production_without_a_coze_token_refuses_to_start_in_one_line(entry_point):
    line = refusal(start(entry_point, production_env()))

    assert "COZE_API_TOKEN is not set" in line and "CHAT_DEMO=1" in line


def test_a_public_demo_is_chosen_with_chat_demo():
    chosen = start("manage.py", production_env(CHAT_DEMO="1"))
    both = start("manage.py", production_env(CHAT_DEMO="1", COZE_API_TOKEN="pat_x", COZE_BOT_ID="7"))

    assert chosen.returncode == 0, chosen.stderr
    assert "CHAT_DEMO=1 with COZE_API_TOKEN" in refusal(both)


@pytest.mark.parametrize(
    "secret_key",
    [
        "change-me",  # .env.example's placeholder
        "x" * 60,  # long, but one character
        "django-insecure-" + "0123456789abcdef" * 3,  # Django's generated development key
    ],
)
@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_production_with_a_weak_secret_key_refuses_to_start_in_one_line(entry_point, secret_key):
    line = refusal(start(entry_point, production_env(DJANGO_SECRET_KEY=secret_key, CHAT_DEMO="1")))

    assert "DJANGO_SECRET_KEY is too weak" in line


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_a_bad_value_is_one_line_naming_the_variable(entry_point):
    line = refusal(start(entry_point, production_env(CHAT_DEMO="1", CHAT_TRUSTED_PROXIES="*")))

    assert "CHAT_TRUSTED_PROXIES must be IP addresses or ranges" in line


def test_settings_do_not_log_a_missing_env_file():
    script = "import logging; logging.basicConfig(level=logging.INFO); import django; django.setup()"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=demo_mode_env(), capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    assert ".env" not in result.stderr, result.stderr


def test_an_unknown_redaction_kind_refuses_to_start_in_one_line():
    line = refusal(start("manage.py", production_env(CHAT_DEMO="1", CHAT_REDACT="emails,names")))

    assert "CHAT_REDACT: unknown names; choose from emails, phones, cards" in line
    assert start("manage.py", production_env(CHAT_DEMO="1", CHAT_REDACT="emails, phones,cards")).returncode == 0
