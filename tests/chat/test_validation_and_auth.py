"""Every validation and authentication error of docs/api.md §3, on the sync and SSE endpoints."""

import json

import httpx
import pytest
from django.contrib.auth.models import User

from sessions_admin.models import ApiClient, Message
from tests.conftest import auth, read_sse, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

CHAT_PATHS = ["/api/chat", "/api/chat/stream"]

INVALID_BODIES = {
    "missing message": {},
    "empty message": {"message": ""},
    "message and additional_messages": {"message": "a", "additional_messages": [{"role": "user", "content": "b"}]},
    "message not a string": {"message": 42},
    "session id with a space": {"message": "hi", "session_id": "has space"},
    "session id too long": {"message": "hi", "session_id": "x" * 129},
    "session id empty": {"message": "hi", "session_id": ""},
    "session id with a slash": {"message": "hi", "session_id": "a/b"},
    "custom_variables not a map": {"message": "hi", "custom_variables": ["a"]},
    "custom_variables non-string value": {"message": "hi", "custom_variables": {"a": {"b": 1}}},
    "meta_data too many entries": {"message": "hi", "meta_data": {f"k{i}": "v" for i in range(17)}},
    "meta_data value too long": {"message": "hi", "meta_data": {"k": "v" * 513}},
    "unknown field": {"message": "hi", "mesage": "typo"},
    "additional_messages not a list": {"additional_messages": "hi"},
    "additional_messages bad role": {"additional_messages": [{"role": "system", "content": "x"}]},
    "additional_messages only assistant": {"additional_messages": [{"role": "assistant", "content": "x"}]},
    "user_id too long": {"message": "hi", "user_id": "u" * 129},
}


@pytest.mark.parametrize("path", CHAT_PATHS)
@pytest.mark.parametrize("case", INVALID_BODIES)
def test_invalid_bodies_answer_400_with_field_errors(http, api_key, path, case):
    response = http.post(path, json=INVALID_BODIES[case], headers=auth(api_key))

    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == "invalid" and body["detail"]
    assert body["errors"], body
    assert not Message.objects.exists()


@pytest.mark.parametrize("path", CHAT_PATHS)
def test_malformed_json_and_non_object_bodies_answer_400(http, api_key, path):
    headers = {**auth(api_key), "Content-Type": "application/json"}
    for raw in (b"{not json", b"[1, 2]", b'"just a string"', b"\xff\xfe"):
        response = http.post(path, content=raw, headers=headers)
        assert response.status_code == 400, raw
        assert response.json()["code"] == "invalid"


@pytest.mark.parametrize("path", [*CHAT_PATHS, "/chat", "/v1/chat/completions"])
def test_a_body_that_is_not_utf8_is_told_so_not_called_malformed_json(http, api_key, path):
    headers = {**auth(api_key), "Content-Type": "application/json"}
    latin1 = '{"message": "café"}'.encode("latin-1")

    response = http.post(path, content=latin1, headers=headers)
    malformed = http.post(path, content=b"{not json", headers=headers)

    assert response.status_code == 400 == malformed.status_code
    detail = response.json()["error"]["message"] if path.startswith("/v1/") else response.json()["detail"]
    assert "not UTF-8" in detail and "Malformed" not in detail, detail
    assert "UTF-8" not in malformed.text


@pytest.mark.parametrize("path", CHAT_PATHS)
def test_non_json_body_answers_415(http, api_key, path):
    response = http.post(path, content=b"message=hi", headers={**auth(api_key), "Content-Type": "text/plain"})

    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"


@pytest.mark.parametrize("path", CHAT_PATHS)
def test_oversized_body_and_message_answer_413(http, api_key, path, settings):
    big = http.post(path, json={"message": "x" * (1024 * 1024 + 10)}, headers=auth(api_key))
    assert big.status_code == 413
    assert big.json()["code"] == "payload_too_large"

    settings.CHAT_MAX_MESSAGE_CHARS = 10
    long_message = http.post(path, json={"message": "x" * 11}, headers=auth(api_key))
    assert long_message.status_code == 413
    assert long_message.json()["code"] == "payload_too_large"
    exactly = http.post("/api/chat", json={"message": "x" * 10}, headers=auth(api_key))
    assert exactly.status_code == 200


@pytest.mark.parametrize("path", CHAT_PATHS)
def test_bot_outside_the_allow_list_answers_403(http, api_key, path, settings):
    response = http.post(path, json={"message": "hi", "bot_id": "123"}, headers=auth(api_key))
    assert response.status_code == 403
    assert response.json()["code"] == "bot_not_allowed"

    settings.COZE_ALLOWED_BOT_IDS = [settings.COZE_BOT_ID, "123"]
    allowed = http.post(path, json={"message": "hi", "bot_id": "123"}, headers=auth(api_key))
    assert allowed.status_code == 200


@pytest.mark.parametrize("path", [*CHAT_PATHS, "/api/sessions"])
def test_missing_or_wrong_api_key_answers_401(http, api_key, path):
    method = "GET" if path == "/api/sessions" else "POST"
    deactivated_client, deactivated_key = ApiClient.create_with_key(name="old")
    ApiClient.objects.filter(pk=deactivated_client.pk).update(is_active=False)
    for headers in ({}, auth("cz_wrong"), {"Authorization": "Basic abc"}, auth(deactivated_key)):
        response = http.request(method, path, json={"message": "hi"}, headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.json()["code"] == "unauthenticated"
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_additional_messages_with_object_string_content_are_sent_to_coze(http, api_key):
    content = [{"type": "text", "text": "from a list"}]
    body = {"additional_messages": [{"role": "user", "content": content, "content_type": "object_string"}]}

    response = http.post("/api/chat", json=body, headers=auth(api_key))

    assert response.status_code == 200, response.text
    assert response.json()["response"] == "You said: from a list"
    assert json.loads(Message.objects.get(role="user").content) == content


def test_logged_in_browser_session_chats_with_csrf(asgi_server):
    User.objects.create_user("ada", password="pw-for-tests-only")
    with httpx.Client(base_url=asgi_server.url, timeout=30) as browser:
        page = browser.get("/")
        token = page.cookies["csrftoken"]
        login = browser.post(
            "/accounts/login/",
            data={"username": "ada", "password": "pw-for-tests-only", "csrfmiddlewaretoken": token},
            headers={"Referer": asgi_server.url + "/accounts/login/"},
        )
        assert login.status_code in (200, 302)
        assert "sessionid" in browser.cookies
        token = browser.cookies["csrftoken"]

        without_csrf = browser.post("/api/chat", json={"message": "hi"})
        assert without_csrf.status_code == 403
        stream_without_csrf = browser.post("/api/chat/stream", json={"message": "hi"})
        assert stream_without_csrf.status_code == 403

        headers = {"X-CSRFToken": token, "Referer": asgi_server.url + "/"}
        sync = browser.post("/api/chat", json={"message": "hi", "session_id": "web"}, headers=headers)
        assert sync.status_code == 200, sync.text
        stream = browser.post("/api/chat/stream", json={"message": "again", "session_id": "web"}, headers=headers)
        events = read_sse(stream)
        assert events[-2]["data"]["content"] == "You said: again (turn 2; before that you said: hi)"
        assert browser.get("/api/sessions").json()["count"] == 1


def test_anonymous_browsers_chat_only_when_allowed_and_each_owns_its_sessions(asgi_server, settings):
    def new_browser():
        browser = httpx.Client(base_url=asgi_server.url, timeout=30)
        browser.get("/")
        return browser, {"X-CSRFToken": browser.cookies["csrftoken"], "Referer": asgi_server.url + "/"}

    browser, headers = new_browser()
    denied = browser.post("/api/chat", json={"message": "hi"}, headers=headers)
    assert denied.status_code == 401

    settings.CHAT_ALLOW_ANONYMOUS = True
    first, first_headers = new_browser()
    second, second_headers = new_browser()
    try:
        assert (
            first.post("/api/chat", json={"message": "a", "session_id": "s"}, headers=first_headers).status_code == 200
        )
        assert second.get("/api/sessions/s").status_code == 404
        assert (
            second.post("/api/chat", json={"message": "b", "session_id": "s"}, headers=second_headers).json()[
                "response"
            ]
            == "You said: b"
        )
        assert first.get("/api/sessions/s/messages").json()["results"][0]["content"] == "a"
    finally:
        for client in (first, second, browser):
            client.close()


def test_a_deactivated_key_stops_working_within_the_key_cache_time(http, api_key, monkeypatch):
    from chat.access import auth as chat_auth

    monkeypatch.setattr(chat_auth, "KEY_CACHE_SECONDS", 0.3)
    assert http.post("/api/chat/stream", json={"message": "hi"}, headers=auth(api_key)).status_code == 200
    ApiClient.objects.update(is_active=False)

    # Refused once the cached key has expired (polled, with a bound well past the cache time).
    wait_until(
        lambda: http.post("/api/chat/stream", json={"message": "hi"}, headers=auth(api_key)).status_code == 401,
        timeout=5,
    )
