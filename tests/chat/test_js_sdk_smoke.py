"""The official JS SDK (@coze/api, pinned in tests/js) against `python -m chat.simulator`.

`tests/js/smoke.mjs` creates a conversation without a bot and streams two turns in it. Needs
`node` and `npm ci --prefix tests/js`: on a laptop without them these tests skip and say why; in
CI (`CI` set, as `.ci/run` does) they fail instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
JS_DIR = ROOT / "tests" / "js"
TOKEN = "js-smoke-token"
BOT = "7400000000000000001"  # smoke.mjs's default bot


def node_or_skip() -> str:
    node = shutil.which("node")
    if node is None:
        missing = "node is not installed"
    elif not (JS_DIR / "node_modules" / "@coze" / "api").is_dir():
        missing = "tests/js has no node_modules: run `npm ci --prefix tests/js`"
    else:
        return node
    if os.environ.get("CI"):
        pytest.fail(f"{missing}; CI runs the JS SDK tests")
    pytest.skip(missing)


def run_simulator(*options: str) -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "chat.simulator", "--port", "0", "--token", TOKEN, *options],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        base_url = process.stdout.readline().strip()
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(f"{base_url}/_sim/stats")
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def simulator_url() -> Iterator[str]:
    yield from run_simulator()


@pytest.fixture(scope="module")
def studio_url() -> Iterator[str]:
    yield from run_simulator("--studio")


def smoke(node: str, base_url: str, token: str = TOKEN) -> subprocess.CompletedProcess:
    return subprocess.run(
        [node, str(JS_DIR / "smoke.mjs"), base_url, token],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_js_sdk_creates_a_conversation_and_streams_two_turns(simulator_url):
    node = node_or_skip()
    result = smoke(node, simulator_url)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    first, second = summary["turns"]
    assert first["answer"] == "You said: Hello from Node"
    assert second["answer"] == "You said: And a second turn (turn 2; before that you said: Hello from Node)"
    for turn in (first, second):
        assert turn["events"][:2] == ["conversation.chat.created", "conversation.chat.in_progress"]
        assert turn["events"][-2:] == ["conversation.chat.completed", "done"]

    # What the simulator saw: the conversation took the bot of its first chat, the SDK's user.
    conversation = httpx.get(f"{simulator_url}/_sim/conversations/{summary['conversation_id']}").json()
    assert conversation["bot_id"] == BOT
    chat = httpx.get(f"{simulator_url}/_sim/chats/{first['chat_id']}").json()
    assert chat["user_id"] == "js-smoke" and chat["stream"] is True


def test_js_sdk_reports_a_wrong_token_as_an_authentication_error(simulator_url):
    node = node_or_skip()
    result = smoke(node, simulator_url, token="wrong")
    assert result.returncode == 1
    assert "AuthenticationError" in result.stderr and "4100" in result.stderr


def test_js_sdk_cannot_parse_studios_end_of_stream(studio_url):
    # Studio ends a stream with conversation.stream.done and an empty data line, which the SDK
    # tries to parse as JSON: a Studio upstream's streams must reach JS clients ending in `done`.
    node = node_or_skip()
    result = smoke(node, studio_url)
    assert result.returncode == 1
    assert "Could not parse message into JSON" in result.stderr
