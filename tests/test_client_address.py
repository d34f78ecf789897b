"""The client's address, under every server the docs name, started as they start it: taken from
X-Forwarded-For only when the peer is a trusted proxy (CHAT_TRUSTED_PROXIES), read from the right,
for HTTP and WebSocket alike; and a 429 says "Too Many Requests" on each of them.

The wrong-key limit (CHAT_AUTH_FAILURES_PER_MINUTE) counts per address, so it shows which address
the server used: wrong keys that block one address answer 429 to every later wrong key from it.
"""

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import websockets.sync.client
from django.conf import settings as django_settings
from websockets.exceptions import ConnectionClosed

from tests.conftest import COZE_TEST_TOKEN
from tests.test_server_commands import documented_commands, procfile_commands
from tests.test_workers import database_url, free_port

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent
FAILURES_PER_MINUTE = 3
WRONG_KEY = "cz_" + "0" * 40


def server_command(server: str, port: int) -> list[str]:
    """The command line the Procfile (daphne) or the README (uvicorn) gives, on `port`; runserver as
    Django's docs have it."""
    if server == "daphne":
        words = shlex.split(procfile_commands()[0].replace("${PORT:-8000}", str(port)))
    elif server == "uvicorn":
        words = [*shlex.split(next(c for c in documented_commands() if c.startswith("uvicorn "))), "--port", str(port)]
    else:
        return [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"]
    assert words[0] == server
    return [sys.executable, "-m", server, *words[1:]]


class Server:
    """One server process with production settings, the wrong-key limit at FAILURES_PER_MINUTE."""

    def __init__(self, server: str, simulator, tmp_path: Path, **extra_env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws/chat/"
        self.log_path = tmp_path / f"{server}.log"
        env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "COZE_", "CHAT_"))}
        env.pop("FORWARDED_ALLOW_IPS", None)  # uvicorn's own trust list, were it on
        env.update(
            DJANGO_SETTINGS_MODULE="cozeproject.settings",
            DJANGO_SECRET_KEY="test-secret-key-for-client-address-" + "x" * 20,
            DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
            DATABASE_URL=database_url(),
            REDIS_URL="",  # each server counts failures in its own memory: nothing shared between tests
            COZE_API_TOKEN=COZE_TEST_TOKEN,
            COZE_BASE_URL=simulator.base_url,
            COZE_BOT_ID=django_settings.COZE_BOT_ID,
            CHAT_AUTH_FAILURES_PER_MINUTE=str(FAILURES_PER_MINUTE),
            CHAT_AUTH_BLOCKED_RATE="0",
            **extra_env,
        )
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            server_command(server, self.port), cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert self.process.poll() is None, self.log_path.read_text()
            assert time.monotonic() < deadline, "the server did not become healthy:\n" + self.log_path.read_text()
            time.sleep(0.1)

    def wrong_key(self, forwarded_for: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {WRONG_KEY}"}
        if forwarded_for is not None:
            headers["X-Forwarded-For"] = forwarded_for
        return httpx.get(self.url + "/api/sessions", headers=headers, timeout=10)

    def wrong_key_socket(self, forwarded_for: str) -> int:
        """Open a WebSocket with a wrong key; the code it is closed with."""
        headers = {"Authorization": f"Bearer {WRONG_KEY}", "X-Forwarded-For": forwarded_for}
        with websockets.sync.client.connect(self.ws_url, additional_headers=headers, open_timeout=10) as socket:
            with pytest.raises(ConnectionClosed) as closed:
                socket.recv(timeout=10)
        return closed.value.rcvd.code

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.log.close()


@pytest.fixture
def start_server(simulator, tmp_path):
    servers = []

    def start(server: str, **env: str) -> Server:
        servers.append(Server(server, simulator, tmp_path, **env))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


SERVERS = ["daphne", "uvicorn", "runserver"]


@pytest.mark.parametrize("server", SERVERS)
def test_a_forwarded_for_from_an_untrusted_peer_does_not_reset_the_wrong_key_limit(start_server, server):
    served = start_server(server)  # CHAT_TRUSTED_PROXIES unset: nobody's X-Forwarded-For counts

    # Each wrong key claims another address; all come from 127.0.0.1, which they block.
    statuses = [served.wrong_key(f"198.51.100.{n}").status_code for n in range(FAILURES_PER_MINUTE)]
    refused = served.wrong_key("198.51.100.200")

    assert statuses == [401] * FAILURES_PER_MINUTE
    assert refused.status_code == 429, refused.text
    assert refused.json()["code"] == "rate_limited"


@pytest.mark.parametrize("server", SERVERS)
def test_a_spoofed_forwarded_for_on_a_websocket_does_not_reset_the_wrong_key_limit(start_server, server):
    served = start_server(server)

    codes = [served.wrong_key_socket(f"198.51.100.{n}") for n in range(FAILURES_PER_MINUTE)]

    assert codes == [4401] * FAILURES_PER_MINUTE
    assert served.wrong_key("198.51.100.200").status_code == 429


@pytest.mark.parametrize("server", SERVERS)
def test_behind_a_trusted_proxy_the_rightmost_untrusted_address_is_the_client(start_server, server):
    served = start_server(server, CHAT_TRUSTED_PROXIES="127.0.0.1, 192.0.2.0/24")
    client = "203.0.113.7"

    # What the client wrote (left) differs each time; the address the proxies appended does not.
    statuses = [served.wrong_key(f"10.0.0.{n}, {client}").status_code for n in range(FAILURES_PER_MINUTE)]

    assert statuses == [401] * FAILURES_PER_MINUTE
    assert served.wrong_key(f"10.1.1.1, {client}").status_code == 429  # blocked, whatever it claims on the left
    assert served.wrong_key(f"{client}, 192.0.2.10").status_code == 429  # past a second trusted proxy
    assert served.wrong_key(f"{client}, 203.0.113.8").status_code == 401  # another client behind the proxy
    assert served.wrong_key().status_code == 401  # the proxy itself, without the header


@pytest.mark.parametrize("server", SERVERS)
def test_a_websocket_behind_a_trusted_proxy_counts_against_its_client_address(start_server, server):
    served = start_server(server, CHAT_TRUSTED_PROXIES="127.0.0.1")
    client = "203.0.113.9"

    codes = [served.wrong_key_socket(f"10.0.0.{n}, {client}") for n in range(FAILURES_PER_MINUTE)]

    assert codes == [4401] * FAILURES_PER_MINUTE
    assert served.wrong_key(client).status_code == 429
    assert served.wrong_key("203.0.113.10").status_code == 401


@pytest.mark.parametrize("server", SERVERS)
def test_a_429_says_too_many_requests_on_every_server(start_server, server):
    served = start_server(server)
    for _ in range(FAILURES_PER_MINUTE):
        served.wrong_key()

    refused = served.wrong_key()

    assert refused.status_code == 429
    assert refused.reason_phrase == "Too Many Requests"
