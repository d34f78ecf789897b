"""The error contract at the edges (docs/api.md §3): every error under the API's paths is JSON
`{"detail", "code"}` — also the ones Django answers itself (no route, wrong method, disallowed
Host, unexpected exception, CSRF) — while the chat page, login and admin keep Django's HTML pages.
Who gets 401 and who gets a CSRF 403. Replayed over a real ASGI server."""

import json
import logging
import os
import subprocess
import sys

import httpx
import pytest

from chat.turn import service
from tests.conftest import auth

pytestmark = pytest.mark.django_db(transaction=True)


def assert_json_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers["content-type"]
    body = response.json()
    assert body["code"] == code and set(body) == {"detail", "code"}, body
    assert body["detail"] and "<Http" not in body["detail"] and " object at 0x" not in body["detail"], body
    return body


# --- 405 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/api/chat/stream", "POST"),
        ("PUT", "/api/chat/stream", "POST"),
        ("GET", "/api/coze-chat", "POST"),
        ("GET", "/chat", "POST"),
        ("GET", "/chat/stream", "POST"),
        ("POST", "/session/s1/info", "GET"),
        ("GET", "/session/s1/clear", "POST"),
        ("POST", "/health", "GET"),
        ("POST", "/metrics", "GET"),
    ],
)
def test_a_wrong_method_answers_json_405_with_allow(http, api_key, method, path, allowed):
    response = http.request(method, path, headers=auth(api_key))

    body = assert_json_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == allowed
    assert method in body["detail"] and allowed in body["detail"]


def test_drf_views_answer_405_the_same_way(http, api_key):
    response = http.get("/api/chat", headers=auth(api_key))

    assert_json_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["allow"]


# --- 404 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/nothing-here"),
        ("POST", "/api/chat/stream/"),
        ("GET", "/api/chat/stream/"),
        ("POST", "/api/chat/"),
        ("GET", "/api/sessions/s1/nope"),
        ("GET", "/v1/chat/completions/nope"),  # OpenAI-compatible paths keep this shape; other /v1 paths are Coze's
        ("GET", "/session/s1"),
        ("POST", "/chat/"),
        ("GET", "/health/extra"),
    ],
)
def test_an_unknown_api_path_answers_json_404(http, api_key, method, path):
    response = http.request(method, path, headers=auth(api_key))

    body = assert_json_error(response, 404, "not_found")
    assert path in body["detail"]


def test_pages_keep_djangos_html_404(http):
    response = http.get("/no-such-page")

    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")


def test_a_missing_slash_on_the_docs_still_redirects(http):
    """CommonMiddleware's APPEND_SLASH stays on: it only ever adds a slash that leads somewhere."""
    response = http.get("/api/docs")

    assert response.status_code == 301 and response.headers["location"] == "/api/docs/"


# --- 400: disallowed Host -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/sessions"), ("POST", "/api/chat"), ("GET", "/health"), ("POST", "/chat"), ("GET", "/v1/models")],
)
def test_a_disallowed_host_answers_json_400(http, api_key, method, path, caplog):
    response = http.request(method, path, json={"message": "hi"}, headers={**auth(api_key), "Host": "evil.example"})

    body = assert_json_error(response, 400, "invalid")
    assert "Host" in body["detail"]
    assert any(record.name == "django.security.DisallowedHost" for record in caplog.records)


def test_a_disallowed_host_on_an_api_key_stream_answers_json_400(http, api_key):
    response = http.post("/api/chat/stream", json={"message": "hi"}, headers={**auth(api_key), "Host": "evil.example"})

    assert_json_error(response, 400, "invalid")


def test_pages_keep_djangos_html_400_for_a_disallowed_host(http):
    response = http.get("/", headers={"Host": "evil.example"})

    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/html")


# --- 500 ------------------------------------------------------------------------------------------


def broken(*args, **kwargs):
    raise RuntimeError("a bug in the chat service")


async def abroken(*args, **kwargs):
    raise RuntimeError("a bug in the chat service")


def django_request_errors(caplog, path: str) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.name == "django.request" and record.levelno == logging.ERROR and path in record.getMessage()
    ]


@pytest.mark.parametrize("path", ["/chat", "/api/chat"])
def test_an_unexpected_exception_answers_json_500_and_is_logged(http, api_key, monkeypatch, caplog, path):
    monkeypatch.setattr(service, "achat_send", abroken)

    response = http.post(path, json={"message": "hi"}, headers=auth(api_key))

    body = assert_json_error(response, 500, "internal_error")
    assert "a bug" not in body["detail"]
    [record] = django_request_errors(caplog, path)
    assert record.exc_info is not None or "Internal Server Error" in record.getMessage()


def test_an_unexpected_exception_in_an_api_key_stream_answers_json_500(http, api_key, monkeypatch, caplog):
    def broken_events(*args, **kwargs):
        raise RuntimeError("a bug in the chat service")

    monkeypatch.setattr(service, "achat_events", broken_events)

    response = http.post("/api/chat/stream", json={"message": "hi"}, headers=auth(api_key))

    assert_json_error(response, 500, "internal_error")
    assert django_request_errors(caplog, "/api/chat/stream")


def test_pages_keep_djangos_html_500(http, monkeypatch):
    from chat.transports import sse

    monkeypatch.setattr(sse, "render", broken)

    response = http.get("/")

    assert response.status_code == 500
    assert response.headers["content-type"].startswith("text/html")


# --- 401 or CSRF 403 ------------------------------------------------------------------------------


@pytest.mark.parametrize("anonymous_allowed", [True, False])
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/chat", {"message": "hi"}),
        ("/api/chat/stream", {"message": "hi"}),
        ("/chat", {"message": "hi"}),
        ("/chat/stream", {"message": "hi"}),
        ("/api/coze-chat", {"additional_messages": [{"role": "user", "content": "hi"}]}),
        ("/api/sessions/s1/clear", None),
        ("/session/s1/clear", None),
    ],
)
def test_a_caller_without_key_or_cookie_gets_401_with_www_authenticate(http, settings, anonymous_allowed, path, body):
    settings.CHAT_ALLOW_ANONYMOUS = anonymous_allowed

    response = http.post(path, json=body)

    assert_json_error(response, 401, "unauthenticated")
    assert response.headers["www-authenticate"] == 'Bearer realm="api"'
    assert not response.cookies, "no session is created for a caller that is not a browser session"


@pytest.mark.parametrize("path", ["/api/chat", "/api/chat/stream", "/chat", "/api/sessions/s1/clear"])
def test_a_browser_session_without_csrf_token_gets_403_in_words(asgi_server, settings, path):
    settings.CHAT_ALLOW_ANONYMOUS = True
    with httpx.Client(base_url=asgi_server.url, timeout=30) as browser:
        browser.get("/")  # the chat page gives the browser its session and CSRF cookies
        assert "sessionid" in browser.cookies

        response = browser.post(path, json={"message": "hi"})

    body = assert_json_error(response, 403, "forbidden")
    assert body["detail"].startswith("CSRF check failed: CSRF token missing.")
    assert "X-CSRFToken" in body["detail"]


def test_a_browser_session_with_a_wrong_csrf_token_gets_djangos_reason(asgi_server, settings):
    settings.CHAT_ALLOW_ANONYMOUS = True
    with httpx.Client(base_url=asgi_server.url, timeout=30) as browser:
        browser.get("/")
        response = browser.post("/api/chat/stream", json={"message": "hi"}, headers={"X-CSRFToken": "x" * 64})

    body = assert_json_error(response, 403, "forbidden")
    assert "incorrect" in body["detail"] or "invalid" in body["detail"], body


# --- start-up -------------------------------------------------------------------------------------


def start_settings(env: dict) -> subprocess.CompletedProcess:
    base = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "COZE_"))}
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env={**base, "DJANGO_SETTINGS_MODULE": "cozeproject.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("hosts", [None, "", " , "])
def test_production_refuses_to_start_without_allowed_hosts(hosts):
    env = {"DJANGO_DEBUG": "0", "DJANGO_SECRET_KEY": "production-secret-key-" + "0123456789abcdef" * 3}
    if hosts is not None:
        env["DJANGO_ALLOWED_HOSTS"] = hosts

    result = start_settings(env)

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and "DJANGO_ALLOWED_HOSTS is not set" in result.stderr


def test_production_starts_with_allowed_hosts_and_debug_without():
    production = start_settings(
        {
            "DJANGO_DEBUG": "0",
            "DJANGO_SECRET_KEY": "production-secret-key-" + "0123456789abcdef" * 3,
            "DJANGO_ALLOWED_HOSTS": "chat.example.com",
            "CHAT_DEMO": "1",
        }
    )
    debug = start_settings({"DJANGO_DEBUG": "1"})

    assert production.returncode == 0, production.stderr
    assert debug.returncode == 0, debug.stderr


def test_with_debug_on_api_errors_are_still_json_and_pages_keep_djangos_debug_pages(http, api_key, settings):
    settings.DEBUG = True  # what ./scripts/serve runs with

    missing = http.get("/api/nothing-here", headers=auth(api_key))
    wrong_host = http.post("/api/chat", json={"message": "hi"}, headers={**auth(api_key), "Host": "evil.example"})
    page = http.get("/accounts/nothing-here")

    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    assert int(missing.headers["content-length"]) == len(missing.content)
    assert wrong_host.status_code == 400 and wrong_host.json()["code"] == "invalid"
    assert wrong_host.headers["x-content-type-options"] == "nosniff"
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")


# --- one JSON format --------------------------------------------------------------------------


def test_every_json_answer_is_formatted_one_way(http, api_key, settings):
    """DRF's views and the async views answer byte-identical JSON for the same data: compact, and
    text as UTF-8 rather than \\u escapes."""
    session_id = http.post("/api/chat", json={"message": "héllo"}, headers=auth(api_key)).json()["session_id"]
    answers = {
        "DRF view": http.get(f"/api/sessions/{session_id}/messages", headers=auth(api_key)),
        "DRF error": http.get("/api/sessions/nope", headers=auth(api_key)),
        "async view": http.post("/chat", json={"message": "héllo"}, headers=auth(api_key)),
        "async error": http.post(
            "/api/chat/stream", content=b"x", headers={**auth(api_key), "Content-Type": "text/plain"}
        ),
        "earlier session info": http.get(f"/session/{session_id}/info", headers=auth(api_key)),
        "earlier session clear": http.post(f"/session/{session_id}/clear", headers=auth(api_key)),
        "OpenAI models": http.get("/v1/models", headers=auth(api_key)),
        "OpenAI error": http.get("/v1/models/nope", headers=auth(api_key)),
        "health": http.get("/health"),
        "no route": http.get("/api/nothing-here-é", headers=auth(api_key)),
        "body too large": http.post(
            "/api/chat", content=b"x" * (settings.CHAT_MAX_BODY_BYTES + 1), headers=auth(api_key)
        ),
    }

    for name, response in answers.items():
        assert response.headers["content-type"].startswith("application/json"), name
        canonical = json.dumps(response.json(), ensure_ascii=False, separators=(",", ":")).encode()
        assert response.content == canonical, f"{name}: {response.content[:120]!r}"
