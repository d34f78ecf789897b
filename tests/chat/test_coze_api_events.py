"""The gateway's Coze stream is Coze's: for the same turn, the events' names, their order, and the
keys and value types of every data object equal what the simulator (speaking Coze's wire) sends
a client directly — the conversation id being the gateway's session id. Raw HTTP on both sides, so
nothing a client library tolerates hides a difference."""

import json

import httpx
import pytest

from tests.chat.coze_clients import bot
from tests.conftest import COZE_TEST_TOKEN, auth

pytestmark = pytest.mark.django_db(transaction=True)


def shape(value):
    """The keys and value types of a JSON value, all the way down."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    return type(value).__name__


def events_of(response: httpx.Response) -> list[tuple[str, object]]:
    """(event, data) pairs of a Coze stream, read exactly as cozepy's parser reads it: an `event:`
    and a `data:` line per event and nothing else."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events, current = [], {}
    for line in response.text.split("\n"):
        if not line.strip():
            if current:
                events.append(current)
                current = {}
            continue
        field, sep, value = line.partition(":")
        assert sep and field in ("event", "data") and field not in current, f"not Coze's framing: {line!r}"
        current[field] = value
    assert not current, "the stream ended inside an event"
    return [(event["event"], json.loads(event["data"]) if event["data"] else "") for event in events]


def chat_body(text: str, **extra) -> dict:
    return {
        "bot_id": bot(),
        "user_id": "shape-user",
        "stream": True,
        "additional_messages": [{"role": "user", "content": text, "content_type": "text"}],
        **extra,
    }


def direct(simulator, path: str, body: dict, **params) -> httpx.Response:
    return httpx.post(
        f"{simulator.base_url}{path}", json=body, params=params, headers=auth(COZE_TEST_TOKEN), timeout=30
    )


def gateway(server, key: str, path: str, body: dict, **params) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, params=params, headers=auth(key), timeout=30)


def assert_same_stream(ours, theirs, *, session_id: str):
    assert [name for name, _ in ours] == [name for name, _ in theirs]
    for (name, data), (_, expected) in zip(ours, theirs, strict=True):
        assert shape(data) == shape(expected), name
        if isinstance(data, dict) and "conversation_id" in data:
            assert data["conversation_id"] == session_id, name


@pytest.mark.parametrize("text", ["Hello there", "[sim:reasoning] Think first"], ids=["answer", "reasoning"])
def test_a_turns_events_are_the_ones_coze_sends(asgi_server, api_key, simulator, text):
    session_id = httpx.post(f"{asgi_server.url}/v1/conversation/create", json={}, headers=auth(api_key)).json()["data"][
        "id"
    ]
    ours = events_of(gateway(asgi_server, api_key, "/v3/chat", chat_body(text), conversation_id=session_id))
    theirs = events_of(direct(simulator, "/v3/chat", chat_body(text)))
    assert_same_stream(ours, theirs, session_id=session_id)
    assert ours[-1] == ("done", "[DONE]")
    # The same chat and message ids as Coze's: the gateway's chat id is Coze's own.
    chat_id = ours[0][1]["id"]
    assert httpx.get(f"{simulator.base_url}/_sim/chats/{chat_id}").json()["status"] == "completed"


def test_a_local_tools_pause_and_its_continuation_are_the_ones_coze_sends(asgi_server, api_key, simulator):
    session_id = httpx.post(
        f"{asgi_server.url}/v1/conversation/create", json={"bot_id": bot()}, headers=auth(api_key)
    ).json()["data"]["id"]
    text = "[sim:tool=get_weather,get_time] Oslo"
    ours = events_of(gateway(asgi_server, api_key, "/v3/chat", chat_body(text), conversation_id=session_id))
    theirs = events_of(direct(simulator, "/v3/chat", chat_body(text)))
    assert_same_stream(ours, theirs, session_id=session_id)
    assert [name for name, _ in ours][-2:] == ["conversation.chat.requires_action", "done"]

    def outputs(pause):
        calls = pause["required_action"]["submit_tool_outputs"]["tool_calls"]
        return {"stream": True, "tool_outputs": [{"tool_call_id": c["id"], "output": "fine"} for c in calls]}

    our_pause, their_pause = ours[-2][1], theirs[-2][1]
    ours = events_of(
        gateway(
            asgi_server,
            api_key,
            "/v3/chat/submit_tool_outputs",
            outputs(our_pause),
            conversation_id=session_id,
            chat_id=our_pause["id"],
        )
    )
    theirs = events_of(
        direct(
            simulator,
            "/v3/chat/submit_tool_outputs",
            outputs(their_pause),
            conversation_id=their_pause["conversation_id"],
            chat_id=their_pause["id"],
        )
    )
    assert_same_stream(ours, theirs, session_id=session_id)
    assert ours[0][0] == "conversation.chat.in_progress" and ours[-1] == ("done", "[DONE]")


def test_a_failed_chat_is_relayed_as_coze_sent_it(asgi_server, api_key, simulator):
    text = "[sim:chat_failed] Break half way"
    ours = events_of(gateway(asgi_server, api_key, "/v3/chat", chat_body(text)))
    theirs = events_of(direct(simulator, "/v3/chat", chat_body(text)))
    session_id = ours[0][1]["conversation_id"]
    assert_same_stream(ours, theirs, session_id=session_id)
    assert ours[-2][0] == "conversation.chat.failed" and ours[-2][1]["last_error"] == theirs[-2][1]["last_error"]


def test_an_upstream_error_event_is_relayed_and_the_stream_still_ends_with_done(asgi_server, api_key, simulator):
    text = "[sim:error_event] Then an error"
    ours = events_of(gateway(asgi_server, api_key, "/v3/chat", chat_body(text)))
    theirs = events_of(direct(simulator, "/v3/chat", chat_body(text)))
    # Coze ends such a stream after its `error`; the gateway always ends with `done`.
    assert theirs[-1][0] == "error" and ours[-1] == ("done", "[DONE]")
    assert_same_stream(ours[:-1], theirs, session_id=ours[0][1]["conversation_id"])
    assert ours[-2][1] == theirs[-1][1] == {"code": 4013, "msg": "model error"}
