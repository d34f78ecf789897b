"""Coze's own API (docs/api.md §13) from Node: the official JS SDK (@coze/api 1.3.9, pinned in
tests/js) and a raw-HTTP voice server, each pointed at the gateway with only its base URL and token
changed. Needs `node` and `npm ci --prefix tests/js` (see tests/chat/test_js_sdk_smoke.py: CI fails
without them, a laptop skips and says why)."""

import json
import subprocess

import pytest

from sessions_admin.models import ChatSession, Reply
from tests.chat.coze_clients import bot
from tests.chat.test_js_sdk_smoke import JS_DIR, node_or_skip

pytestmark = pytest.mark.django_db(transaction=True)


def run_node(script: str, *args: str) -> subprocess.CompletedProcess:
    node = node_or_skip()
    return subprocess.run([node, str(JS_DIR / script), *args], capture_output=True, text=True, timeout=60)


def test_the_js_sdk_creates_a_conversation_and_streams_two_turns_through_the_gateway(asgi_server, api_key):
    result = run_node("smoke.mjs", asgi_server.url, api_key, bot())
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    first, second = summary["turns"]
    assert first["answer"] == "You said: Hello from Node"
    assert second["answer"] == "You said: And a second turn (turn 2; before that you said: Hello from Node)"
    for turn in (first, second):
        assert turn["events"][:2] == ["conversation.chat.created", "conversation.chat.in_progress"]
        assert turn["events"][-2:] == ["conversation.chat.completed", "done"]
    session = ChatSession.objects.get(session_id=summary["conversation_id"])
    assert session.coze_user_id == "js-smoke" and session.bot_id == bot()
    assert list(Reply.objects.values_list("transport", flat=True)) == ["coze", "coze"]


def test_the_js_sdk_through_the_gateway_to_coze_studio_gets_streams_it_can_parse(asgi_server, api_key, settings):
    """Straight against Studio the SDK fails on `conversation.stream.done` (test_js_sdk_smoke.py);
    through the gateway every stream ends with `done`."""
    from chat.simulator import SimulatorConfig, SimulatorServer
    from tests.conftest import COZE_TEST_TOKEN

    with SimulatorServer(SimulatorConfig(token=COZE_TEST_TOKEN, studio=True)) as studio:
        settings.COZE_BASE_URL = studio.base_url
        settings.COZE_PLATFORM = "studio"
        result = run_node("smoke.mjs", asgi_server.url, api_key, bot())
    assert result.returncode == 0, result.stderr
    assert all(turn["events"][-1] == "done" for turn in json.loads(result.stdout)["turns"])


def test_the_js_sdk_reports_a_wrong_key_as_an_authentication_error(asgi_server, api_key):
    result = run_node("smoke.mjs", asgi_server.url, "cz_" + "x" * 43, bot())
    assert result.returncode == 1
    assert "AuthenticationError" in result.stderr and "4100" in result.stderr


@pytest.mark.parametrize("form", ["urlencoded", "multipart"])
def test_an_older_voice_server_creates_by_form_then_polls_a_non_stream_chat(asgi_server, api_key, form):
    result = run_node("voice_form.mjs", asgi_server.url, api_key, bot(), form)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["conversation"]["meta_data"] == {"room": "kitchen"}
    assert summary["statuses"][0] == "in_progress" and summary["statuses"][-1] == "completed"
    assert summary["answer"] == "You said: Turn on the lights"
    session = ChatSession.objects.get(session_id=summary["conversation"]["id"])
    assert session.coze_user_id == "speaker-7" and session.meta_data == {"room": "kitchen"}
