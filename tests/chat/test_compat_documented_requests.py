"""The earlier `/api/coze-chat` service's documented requests (docs/api.md §8), replayed as its users
sent them, checking what reached Coze on the wire.

Its curl sent `content_type: "text"` with `content` a JSON string of `[{"type":"text","text":…}]`;
its front-end sent the same list as a JSON array. Both meant the words, not the JSON.
"""

import json

import pytest

from chat.simulator import SimulatorConfig, SimulatorServer
from sessions_admin.models import Message
from tests.conftest import COZE_TEST_TOKEN, auth

pytestmark = pytest.mark.django_db(transaction=True)

BOT_ID = "7000000000000000001"


class ChatRecorder:
    """The simulator's ASGI app, keeping the JSON body of every `POST /v3/chat` it is sent."""

    def __init__(self, app):
        self.app = app
        self.chat_bodies: list[dict] = []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/v3/chat":
            return await self.app(scope, receive, send)
        messages, body = [], b""
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.chat_bodies.append(json.loads(body))

        async def replay():
            return messages.pop(0) if messages else await receive()

        return await self.app(scope, replay, send)


@pytest.fixture
def coze(coze_settings):
    """A simulator of its own whose chat requests are recorded, as the server's Coze."""
    server = SimulatorServer(SimulatorConfig(token=COZE_TEST_TOKEN))
    recorder = ChatRecorder(server.app)
    server.app = recorder
    coze_settings.COZE_BASE_URL = server.start()
    yield recorder
    server.stop()


def data_lines(response) -> list:
    lines = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    return [line if line == "[DONE]" else json.loads(line) for line in lines]


def answer(response) -> str:
    assert response.status_code == 200, response.text
    events = data_lines(response)
    assert events[-1] == "[DONE]" and events[-2]["type"] == "completed", events
    return "".join(event["content"] for event in events if isinstance(event, dict) and event["type"] == "delta")


def test_the_documented_curl_request_reaches_the_bot_as_its_text(http, api_key, coze):
    # curl -N -X POST …/api/coze-chat -H 'Content-Type: application/json' -d '<this body>'
    body = (
        r'{"user_id": "123456", "bot_id": "7000000000000000001", "stream": true, "additional_messages": '
        r'[{"role": "user", "content": "[{\"type\":\"text\",\"text\":\"你好\"}]", "content_type": "text"}]}'
    )
    response = http.post(
        "/api/coze-chat", content=body.encode(), headers={**auth(api_key), "Content-Type": "application/json"}
    )

    assert answer(response) == "You said: 你好"
    [sent] = coze.chat_bodies
    assert sent["user_id"] == "123456" and sent["bot_id"] == BOT_ID
    assert [(m["role"], m["content"], m["content_type"]) for m in sent["additional_messages"]] == [
        ("user", "你好", "text")
    ]
    stored = Message.objects.get(role="user")
    assert (stored.content, stored.content_type) == ("你好", "text")


def test_the_documented_front_end_request_reaches_the_bot_as_its_text(http, api_key, coze):
    # fetch('/api/coze-chat', {method: 'POST', headers: {'Content-Type': 'application/json'},
    #   body: JSON.stringify({user_id, bot_id, additional_messages: [{role: 'user',
    #   content: [{type: 'text', text: input}], content_type: 'text'}]})})
    body = {
        "user_id": "web-user",
        "bot_id": BOT_ID,
        "additional_messages": [
            {"role": "user", "content": [{"type": "text", "text": "你好"}], "content_type": "text"}
        ],
    }
    response = http.post("/api/coze-chat", json=body, headers=auth(api_key))

    assert answer(response) == "You said: 你好"
    [sent] = coze.chat_bodies
    assert [(m["content"], m["content_type"]) for m in sent["additional_messages"]] == [("你好", "text")]


def test_several_text_items_reach_the_bot_one_a_line(http, api_key, coze):
    items = [{"type": "text", "text": "first line"}, {"type": "text", "text": "second line"}]
    body = {"additional_messages": [{"role": "user", "content": json.dumps(items), "content_type": "text"}]}

    http.post("/api/coze-chat", json=body, headers=auth(api_key))

    [sent] = coze.chat_bodies
    assert sent["additional_messages"][0]["content"] == "first line\nsecond line"
    assert sent["additional_messages"][0]["content_type"] == "text"


@pytest.mark.parametrize("as_string", [True, False])
def test_a_list_with_an_image_reaches_the_bot_as_an_object_string(http, api_key, coze, as_string):
    items = [{"type": "text", "text": "这是什么?"}, {"type": "image", "file_url": "https://example.com/cat.png"}]
    content = json.dumps(items, ensure_ascii=False) if as_string else items
    body = {"user_id": "u", "additional_messages": [{"role": "user", "content": content, "content_type": "text"}]}

    response = http.post("/api/coze-chat", json=body, headers=auth(api_key))

    # The simulator names the images and files it was given, as its answer shows.
    assert answer(response) == "You said: 这是什么? [received: image https://example.com/cat.png]"
    [sent] = coze.chat_bodies
    message = sent["additional_messages"][0]
    assert message["content_type"] == "object_string"
    assert json.loads(message["content"]) == items


def test_text_that_only_looks_like_a_list_is_sent_as_written(http, api_key, coze):
    body = {"additional_messages": [{"role": "user", "content": "[1, 2, 3] sorted?", "content_type": "text"}]}

    assert answer(http.post("/api/coze-chat", json=body, headers=auth(api_key))) == "You said: [1, 2, 3] sorted?"
    [sent] = coze.chat_bodies
    assert sent["additional_messages"][0]["content"] == "[1, 2, 3] sorted?"
