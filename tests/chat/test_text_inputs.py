"""Invalid text is refused before anything leaves the building (docs/api.md §3, §4): a NUL, a stray
control character or a lone surrogate in any text field, on any transport, is `400 invalid` — in
the transport's own error shape — before Coze is called or anything is stored; a message of only
whitespace too. OpenAI `data:` images are uploaded to Coze only once the turn is admitted."""

import base64
import json
import threading

import httpx
import pytest
from websockets.sync.client import connect

from sessions_admin.models import ApiClient, ChatFile, ChatSession, Message, Reply
from tests.chat.limits_helpers import reset_counters
from tests.chat.test_files import png_bytes
from tests.conftest import auth, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

BOT = "7000000000000000001"
# As JSON spells them: NUL, ESC (a terminal escape), a form feed, a lone high surrogate.
BAD_TEXTS = ["a\\u0000b", "\\u001b[31mred", "page\\u000cbreak", "half \\ud83d a face"]
BLANKS = [" ", "\\n\\t  \\r\\n"]


@pytest.fixture(autouse=True)
def fresh_counters():
    reset_counters()
    yield
    reset_counters()


@pytest.fixture
def untouched(simulator):
    """Asserts, at the end of the test, that nothing was stored and Coze received nothing."""
    state = simulator.app.state
    before = (len(state.chats), len(state.files), len(state.conversations))
    yield
    assert (len(state.chats), len(state.files), len(state.conversations)) == before
    assert not Reply.objects.exists() and not Message.objects.exists() and not ChatSession.objects.exists()
    assert not ChatFile.objects.exists()


def raw_post(http: httpx.Client, path: str, key: str, body: str) -> httpx.Response:
    """POST `body` as it is: JSON whose escapes spell the characters under test."""
    headers = {**auth(key), "Content-Type": "application/json"}
    return http.post(path, content=body.encode(), headers=headers)


def assert_invalid(response: httpx.Response, field: str) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == "invalid" and field in body["detail"], body


def test_the_rule_names_what_it_refuses():
    from chat.domain.inputs import text_fault

    assert text_fault("tabs\tnew lines\ncarriage returns\r, emoji 😀, DEL \x7f and C1 \x85 pass") is None
    assert "NUL" in text_fault("a\x00")
    assert "U+001B" in text_fault("\x1b[0m")
    assert "lone surrogate" in text_fault("\udc00")


@pytest.mark.parametrize("text", BAD_TEXTS + BLANKS)
@pytest.mark.parametrize("path", ["/api/chat", "/api/chat/stream", "/chat"])
def test_our_chat_paths_refuse_invalid_or_blank_messages(http, api_key, untouched, path, text):
    assert_invalid(raw_post(http, path, api_key, f'{{"message": "{text}"}}'), "message")


@pytest.mark.parametrize(
    "body, field",
    [
        ('{"message": "hi", "user_id": "u\\u0000"}', "user_id"),
        ('{"message": "hi", "custom_variables": {"name": "x\\u0007"}}', "custom_variables.name"),
        ('{"message": "hi", "meta_data": {"k\\u0000": "v"}}', "meta_data.k"),
        ('{"additional_messages": [{"role": "user", "content": "  "}]}', "additional_messages[0].content"),
        ('{"additional_messages": [{"role": "user", "content": "\\ud800"}]}', "additional_messages[0].content"),
    ],
)
def test_every_text_field_is_held_to_the_rule(http, api_key, untouched, body, field):
    assert_invalid(raw_post(http, "/api/chat", api_key, body), field)


def test_the_earlier_services_coze_chat_path_refuses_them_too(http, api_key, untouched):
    body = '{"user_id": "u", "additional_messages": [{"role": "user", "content": "x\\u0000", "content_type": "text"}]}'
    assert_invalid(raw_post(http, "/api/coze-chat", api_key, body), "additional_messages[0].content")


@pytest.mark.parametrize("text", [BAD_TEXTS[0], BAD_TEXTS[3], BLANKS[0]])
def test_the_websocket_answers_an_error_frame(asgi_server, api_key, untouched, text):
    headers = {**auth(api_key), "Origin": asgi_server.url}
    with connect(f"{asgi_server.ws_url}/ws/chat/", additional_headers=headers, open_timeout=10) as socket:
        socket.send(f'{{"type": "chat", "message": "{text}"}}')
        frame = json.loads(socket.recv(timeout=10))
    assert frame["type"] == "error" and frame["code"] == "invalid" and "message" in frame["detail"]


@pytest.mark.parametrize("text", [BAD_TEXTS[0], BAD_TEXTS[1], BLANKS[1]])
def test_the_openai_path_refuses_them_in_openais_shape(http, api_key, untouched, text):
    body = f'{{"model": "{BOT}", "messages": [{{"role": "user", "content": "{text}"}}]}}'
    response = raw_post(http, "/v1/chat/completions", api_key, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid" and error["type"] == "invalid_request_error"
    # In an earlier message too, and in a text part.
    parts = [{"type": "text", "text": "ok"}]
    body = (
        f'{{"model": "{BOT}", "messages": [{{"role": "system", "content": "be \\u0000 kind"}}, '
        f'{{"role": "user", "content": {json.dumps(parts)}}}]}}'
    )
    assert raw_post(http, "/v1/chat/completions", api_key, body).json()["error"]["code"] == "invalid"


def coze_chat(text: str) -> str:
    return (
        f'{{"bot_id": "{BOT}", "user_id": "u", "stream": true, '
        f'"additional_messages": [{{"role": "user", "content": "{text}", "content_type": "text"}}]}}'
    )


@pytest.mark.parametrize("text", [BAD_TEXTS[0], BAD_TEXTS[2], BAD_TEXTS[3], BLANKS[0]])
def test_cozes_api_refuses_them_with_code_4000(http, api_key, untouched, text):
    response = raw_post(http, "/v3/chat", api_key, coze_chat(text))
    assert response.status_code == 400, response.text
    assert response.json()["code"] == 4000


def test_cozes_form_bodies_and_query_strings_are_held_to_the_rule(http, api_key, untouched):
    form = {"bot_id": BOT, "meta_data": '{"k": "v\\u0000"}'}
    created = http.post("/v1/conversation/create", data=form, headers=auth(api_key))
    assert created.status_code == 400 and created.json()["code"] == 4000, created.text
    form = {"bot_id": BOT + "\x00"}
    created = http.post("/v1/conversation/create", data=form, headers=auth(api_key))
    assert created.status_code == 400 and created.json()["code"] == 4000, created.text
    retrieved = http.get("/v1/conversation/retrieve?conversation_id=a%00b", headers=auth(api_key))
    assert retrieved.status_code == 400 and retrieved.json()["code"] == 4000 and "query" in retrieved.json()["msg"]
    listed = http.get("/api/sessions?cursor=%1b", headers=auth(api_key))
    assert_invalid(listed, "query.cursor")
    session = http.get("/api/sessions/a%00b", headers=auth(api_key))
    assert_invalid(session, "path")


@pytest.mark.parametrize("path", ["/api/files", "/v1/files/upload"])
def test_an_upload_name_never_carries_a_control_character(http, api_key, simulator, path):
    # By hand: httpx would percent-encode the name. Django's multipart parser drops control
    # characters from file names as it parses them, so the name is stored and sent without it.
    body = (
        b"--b0undary\r\n"
        b'Content-Disposition: form-data; name="file"; filename="a\x07\x1b.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + png_bytes() + b"\r\n--b0undary--\r\n"
    )
    headers = {**auth(api_key), "Content-Type": "multipart/form-data; boundary=b0undary"}
    response = http.post(path, content=body, headers=headers)
    assert response.status_code in (200, 201), response.text
    chat_file = ChatFile.objects.get()
    assert chat_file.file_name == "a.png" and simulator.app.state.files[chat_file.coze_file_id].file_name == "a.png"


def test_tabs_and_new_lines_are_text(http, api_key):
    response = raw_post(http, "/api/chat", api_key, '{"message": "col\\tcol\\r\\nnext line"}')
    assert response.status_code == 200, response.text
    assert Message.objects.get(kind="question").content == "col\tcol\r\nnext line"


# --- OpenAI data: images are uploaded only for an admitted turn ----------------------------------


def image_completion(**extra) -> dict:
    png = base64.b64encode(png_bytes()).decode()
    content = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
    ]
    return {"model": BOT, "messages": [{"role": "user", "content": content}], **extra}


def test_a_refused_image_turn_uploads_nothing_and_stores_nothing(http, simulator):
    files_at_coze = lambda: len(simulator.app.state.files)  # noqa: E731
    before = files_at_coze()
    # Over its budget: refused at admission.
    _, spent_key = ApiClient.create_with_key(name="spent", daily_token_budget=1)
    assert http.post("/api/chat", json={"message": "spend it"}, headers=auth(spent_key)).status_code == 200
    assert files_at_coze() == before
    refused = http.post("/v1/chat/completions", json=image_completion(), headers=auth(spent_key))
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "quota_exceeded"
    # Over its rate.
    _, slow_key = ApiClient.create_with_key(name="slow", rate_limit_per_minute=1)
    assert http.post("/api/chat", json={"message": "one"}, headers=auth(slow_key)).status_code == 200
    refused = http.post("/v1/chat/completions", json=image_completion(), headers=auth(slow_key))
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"

    assert files_at_coze() == before and not ChatFile.objects.exists()
    assert Reply.objects.count() == 2  # the two turns that spent; nothing of the refused ones


def test_an_image_turn_for_a_busy_session_uploads_nothing(http, asgi_server, api_key, simulator):
    running = threading.Event()

    def long_turn():
        with httpx.Client(base_url=asgi_server.url, timeout=30) as other:
            body = {"message": "[sim:slow=50] a long answer", "session_id": "busy"}
            with other.stream("POST", "/api/chat/stream", json=body, headers=auth(api_key)) as stream:
                for line in stream.iter_lines():
                    if line.startswith("data:") and '"delta"' in line:
                        running.set()

    thread = threading.Thread(target=long_turn)
    thread.start()
    try:
        assert running.wait(10)
        before = len(simulator.app.state.files)
        refused = http.post(
            "/v1/chat/completions", json=image_completion(), headers={**auth(api_key), "X-Session-Id": "busy"}
        )
        assert refused.status_code == 409, refused.text
        assert len(simulator.app.state.files) == before and not ChatFile.objects.exists()
        assert Reply.objects.count() == 1  # the running one
    finally:
        thread.join(30)


def test_an_admitted_image_turn_uploads_its_image(http, api_key, simulator):
    before = len(simulator.app.state.files)
    answer = http.post("/v1/chat/completions", json=image_completion(), headers=auth(api_key))
    assert answer.status_code == 200, answer.text
    wait_until(lambda: Reply.objects.filter(status="completed").exists())
    assert len(simulator.app.state.files) == before + 1
    assert ChatFile.objects.get().coze_file_id in simulator.app.state.files
