"""Coze's own API (docs/api.md §13): errors in Coze's shape with the statuses of §3, Coze's paths
that are not served, limits and budgets, Bearer only (no session cookie), CORS for the JS SDK in a
browser, and uploads' limits."""

import httpx
import pytest
from cozepy import ChatEventType, CozeAPIError
from django.test import Client

from sessions_admin.models import ApiClient, Reply
from tests.chat.coze_clients import bot, gateway_coze, question, stream_turn
from tests.chat.limits_helpers import reset_counters
from tests.chat.test_files import png_bytes
from tests.conftest import auth
from tests.sessions_admin.factories import make_user

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fresh_counters():
    reset_counters()
    yield
    reset_counters()


def chat_body(text: str = "hi", **extra) -> dict:
    return {
        "bot_id": bot(),
        "user_id": "u",
        "stream": True,
        "additional_messages": [{"role": "user", "content": text, "content_type": "text"}],
        **extra,
    }


def assert_coze_error(response: httpx.Response, status: int, code: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code and isinstance(body["msg"], str) and body["msg"], body
    assert response.headers["x-tt-logid"] and body["detail"]["logid"] == response.headers["x-tt-logid"]
    return body


def test_keys_are_checked_and_errors_are_cozes_shape(http, api_key):
    assert_coze_error(http.post("/v3/chat", json=chat_body()), 401, 4100)
    assert_coze_error(http.post("/v3/chat", json=chat_body(), headers=auth("wrong")), 401, 4100)
    assert_coze_error(http.post("/v1/conversation/create", json={}, headers={"Authorization": "Basic x"}), 401, 4100)
    body = assert_coze_error(http.post("/v3/chat", content=b"{not json", headers=auth(api_key)), 400, 4000)
    assert "JSON" in body["msg"]
    body = assert_coze_error(http.post("/v3/chat", json={"stream": True}, headers=auth(api_key)), 400, 4000)
    assert "bot_id" in body["msg"]
    body = assert_coze_error(
        http.post("/v3/chat", json=chat_body(additional_messages=[]), headers=auth(api_key)), 400, 4000
    )
    assert "additional_messages" in body["msg"]
    body = assert_coze_error(
        http.post("/v3/chat", json={**chat_body(), "custom_variables": {"k": 1}}, headers=auth(api_key)), 400, 4000
    )
    assert "custom_variables" in body["msg"]
    body = assert_coze_error(http.get("/v3/chat", headers=auth(api_key)), 405, 4000)
    assert "POST" in body["msg"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/workflow/run"),
        ("GET", "/v1/bot/get_online_info"),
        ("POST", "/v3/chat/"),
        ("GET", "/v3/anything/else"),
        ("POST", "/v1/audio/speech"),
    ],
)
def test_cozes_paths_that_are_not_served_answer_404_with_code_4000(http, api_key, method, path):
    response = http.request(method, path, headers=auth(api_key))
    body = assert_coze_error(response, 404, 4000)
    assert path in body["msg"]


def test_cozepy_reports_an_unserved_path_as_its_api_error(asgi_server, api_key):
    with pytest.raises(CozeAPIError) as raised:
        gateway_coze(asgi_server, api_key).workflows.runs.create(workflow_id="7400000000000000123")
    assert raised.value.code == 4000


def test_the_openai_paths_keep_their_own_errors(http, api_key):
    response = http.get("/v1/models", headers=auth("wrong"))
    assert response.status_code == 401 and "error" in response.json()


def test_a_session_cookie_opens_no_coze_path(asgi_server, settings):
    """Bearer only: a staff login's cookie (with its CSRF token) can't be ridden from a form."""
    settings.CHAT_ALLOW_ANONYMOUS = True
    browser = Client()
    browser.force_login(make_user("staffer", superuser=True))
    cookies = {name: morsel.value for name, morsel in browser.cookies.items()}
    with httpx.Client(base_url=asgi_server.url, cookies=cookies) as http:
        http.get("/")  # the chat page sets a CSRF cookie
        headers = {"X-CSRFToken": http.cookies.get("csrftoken", "")}
        form = {"bot_id": bot()}
        assert_coze_error(http.post("/v1/conversation/create", data=form, headers=headers), 401, 4100)
        assert_coze_error(http.post("/v3/chat", json=chat_body(), headers=headers), 401, 4100)
        assert http.get("/api/sessions").status_code == 200  # the cookie is good where cookies count
    assert not Reply.objects.exists()


def test_a_busy_conversation_is_4016(asgi_server, api_key):
    coze = gateway_coze(asgi_server, api_key)
    conversation = coze.conversations.create(bot_id=bot())
    stream = coze.chat.stream(
        bot_id=bot(),
        user_id="u",
        conversation_id=conversation.id,
        additional_messages=question("[sim:slow=50] a long one"),
    )
    next(iter(stream))  # created: the reply runs
    with pytest.raises(CozeAPIError) as busy:
        stream_turn(coze, "me too", user_id="u", conversation_id=conversation.id)
    assert busy.value.code == 4016
    with pytest.raises(CozeAPIError) as busy:
        coze.conversations.clear(conversation_id=conversation.id)
    assert busy.value.code == 4016
    assert list(stream)[-1].event == ChatEventType.CONVERSATION_CHAT_COMPLETED


def test_over_the_rate_is_4020_and_over_the_budget_4011_both_with_retry_after(http, asgi_server):
    _, key = ApiClient.create_with_key(name="limited", rate_limit_per_minute=2)
    assert http.post("/v3/chat", json=chat_body(stream=False), headers=auth(key)).status_code == 200
    assert http.post("/v3/chat", json=chat_body(stream=False), headers=auth(key)).status_code == 200
    refused = http.post("/v3/chat", json=chat_body(), headers=auth(key))
    assert_coze_error(refused, 429, 4020)
    assert int(refused.headers["Retry-After"]) >= 1

    _, key = ApiClient.create_with_key(name="budgeted", daily_token_budget=1)
    stream_turn(gateway_coze(asgi_server, key), "spend it", user_id="u")
    refused = http.post("/v3/chat", json=chat_body(), headers=auth(key))
    assert_coze_error(refused, 429, 4011)
    assert int(refused.headers["Retry-After"]) >= 1


def test_upstream_refusals_and_failures(asgi_server, api_key):
    coze = gateway_coze(asgi_server, api_key)
    with pytest.raises(CozeAPIError) as refused:  # Coze refused the chat: its code, our status
        stream_turn(coze, "[sim:bad_param] x", user_id="u")
    assert refused.value.code == 4000
    with pytest.raises(CozeAPIError) as refused:  # Coze refused the server's token: not the client's 4100
        stream_turn(coze, "[sim:auth_failed] x", user_id="u")
    assert refused.value.code == 5000

    # Coze failed the chat mid-way: relayed as Coze sent it, and stored failed.
    failed = [
        e for e in coze.chat.stream(bot_id=bot(), user_id="u", additional_messages=question("[sim:chat_failed] x"))
    ]
    assert failed[-1].event == ChatEventType.CONVERSATION_CHAT_FAILED
    assert (failed[-1].chat.last_error.code, failed[-1].chat.last_error.msg) == (5000, "internal error")
    # The connection to Coze broke mid-stream: an `error` event, which cozepy raises.
    with pytest.raises(Exception, match="error event") as broken:
        stream_turn(coze, "[sim:drop] x", user_id="u")
    assert '"code":5000' in str(broken.value)
    statuses = list(Reply.objects.order_by("pk").values_list("status", flat=True))
    assert statuses == [Reply.Status.FAILED] * len(statuses) and len(statuses) >= 2


def test_uploads_take_the_limits_and_types_of_the_gateways_own(http, api_key, settings):
    settings.CHAT_MAX_UPLOAD_BYTES = 1000
    files = {"file": ("big.png", png_bytes(40, 40) + b"\0" * 2000, "image/png")}
    assert_coze_error(http.post("/v1/files/upload", files=files, headers=auth(api_key)), 413, 4000)
    files = {"file": ("tool.exe", b"MZ\x90\x00" + b"\0" * 10, "application/x-msdownload")}
    assert_coze_error(http.post("/v1/files/upload", files=files, headers=auth(api_key)), 415, 4000)
    assert_coze_error(http.post("/v1/files/upload", json={}, headers=auth(api_key)), 415, 4000)
    # Over the upload limit by its declared length: refused before the body is read.
    big = b"x" * (settings.CHAT_MAX_UPLOAD_BYTES + settings.CHAT_UPLOAD_BODY_OVERHEAD + 1)
    response = http.post(
        "/v1/files/upload", content=big, headers={**auth(api_key), "Content-Type": "multipart/form-data; boundary=x"}
    )
    assert response.status_code == 413 and response.json()["code"] == 4000
    # Any other Coze path has the 1 MiB body limit, also answered in Coze's shape.
    response = http.post("/v3/chat", content=b"{" + b" " * (1024 * 1024 + 1), headers=auth(api_key))
    assert response.status_code == 413 and response.json()["code"] == 4000


def test_cors_lets_a_page_on_an_allowed_origin_use_the_js_sdks_headers(asgi_server, api_key, settings):
    settings.CORS_ALLOWED_ORIGINS = ["https://voice.example.com"]
    origin = {"Origin": "https://voice.example.com"}
    preflight = httpx.options(
        f"{asgi_server.url}/v3/chat",
        headers={
            **origin,
            "Access-Control-Request-Method": "POST",
            # What @coze/api 1.3.9 sends from a browser (lower-cased and sorted by the browser).
            "Access-Control-Request-Headers": "authorization,content-type,x-coze-client-user-agent",
        },
    )
    assert preflight.status_code == 200
    allowed = preflight.headers["access-control-allow-headers"].lower()
    assert {"authorization", "content-type", "x-coze-client-user-agent"} <= {h.strip() for h in allowed.split(",")}
    response = httpx.post(
        f"{asgi_server.url}/v1/conversation/create",
        json={},
        headers={**auth(api_key), **origin, "X-Coze-Client-User-Agent": '{"version":"1.3.9","browser":"chrome"}'},
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "https://voice.example.com"
    assert "x-tt-logid" in response.headers["access-control-expose-headers"].lower()
    denied = httpx.options(
        f"{asgi_server.url}/v3/chat",
        headers={"Origin": "https://evil.example.com", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in denied.headers
