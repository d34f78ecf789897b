"""Every request, whatever route it takes through the ASGI app, gets the same checks: Django's host
validation, the security headers of Django's own middleware, the JSON error contract for an
unexpected exception (with a `django.request` log line and a metric), Django's request signals, the
body limit, authentication and rate limits."""

import json
import logging

import httpx
import pytest
from django.core import signals

from tests.conftest import LiveServer, auth, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

COZE_CHAT_BODY = {"user_id": "u1", "additional_messages": [{"role": "user", "content": "hi", "content_type": "text"}]}

# (name, method, path, JSON body, what to break to make its view raise, is it an API route)
ROUTES = [
    ("sync chat", "POST", "/api/chat", {"message": "hi"}, "chat.access.admission.aadmit_turn", True),
    ("SSE chat", "POST", "/api/chat/stream", {"message": "hi"}, "chat.access.admission.aadmit_turn", True),
    ("session list", "GET", "/api/sessions", None, "chat.conversations.sessions.session_list", True),
    ("earlier chat", "POST", "/chat", {"message": "hi"}, "chat.access.admission.aadmit_turn", True),
    ("earlier stream", "POST", "/chat/stream", {"message": "hi"}, "chat.access.admission.aadmit_turn", True),
    ("earlier coze-chat", "POST", "/api/coze-chat", COZE_CHAT_BODY, "chat.access.admission.aadmit_turn", True),
    ("health", "GET", "/health", None, "chat.coze.coze_mode", True),
    ("chat page", "GET", "/", None, "chat.coze.coze_mode", False),
]
CHAT_ROUTES = [route for route in ROUTES if route[0] not in ("session list", "health", "chat page")]


def ids(routes):
    return [route[0] for route in routes]


def send(client: httpx.Client, method: str, path: str, body, **headers) -> httpx.Response:
    return client.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize(("name", "method", "path", "body", "breakable", "is_api"), ROUTES, ids=ids(ROUTES))
def test_a_disallowed_host_is_refused_on_every_route(http, api_key, name, method, path, body, breakable, is_api):
    response = send(http, method, path, body, Host="evil.example", **auth(api_key))

    assert response.status_code == 400
    if is_api:
        assert set(response.json()) == {"detail", "code"}


@pytest.mark.parametrize(("name", "method", "path", "body", "breakable", "is_api"), ROUTES, ids=ids(ROUTES))
def test_every_route_carries_the_security_headers(http, api_key, name, method, path, body, breakable, is_api):
    response = send(http, method, path, body, **auth(api_key))

    assert response.status_code == 200
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "same-origin"
    assert response.headers["cross-origin-opener-policy"] == "same-origin"
    assert response.headers["x-frame-options"] == "DENY"
    assert len(response.headers["x-request-id"]) == 32


@pytest.fixture
def secure_server(settings, transactional_db):
    """The whole ASGI app built anew with HSTS and HTTPS redirects on, as an operator would set them."""
    settings.SECURE_HSTS_SECONDS = 3600
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    from cozeproject.asgi import build_application

    server = LiveServer(build_application())
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize(("name", "method", "path", "body", "breakable", "is_api"), ROUTES, ids=ids(ROUTES))
def test_hsts_and_the_https_redirect_apply_on_every_route(
    secure_server, api_key, name, method, path, body, breakable, is_api
):
    with httpx.Client(base_url=secure_server.url, timeout=30) as client:
        plain = send(client, method, path, body, **auth(api_key))
        secure = send(client, method, path, body, **{"X-Forwarded-Proto": "https"}, **auth(api_key))

    assert plain.status_code == 301
    assert plain.headers["location"].startswith("https://")
    assert secure.status_code == 200
    assert secure.headers["strict-transport-security"] == "max-age=3600"


@pytest.mark.parametrize(("name", "method", "path", "body", "breakable", "is_api"), ROUTES, ids=ids(ROUTES))
def test_an_unexpected_exception_is_logged_counted_and_answered_by_the_error_contract(
    http, api_key, monkeypatch, caplog, name, method, path, body, breakable, is_api
):
    def broken(*args, **kwargs):
        raise RuntimeError("boom: an internal detail")

    monkeypatch.setattr(breakable, broken)
    caplog.set_level(logging.ERROR, logger="django.request")
    errors_before = _server_errors(http)

    response = send(http, method, path, body, **auth(api_key))

    assert response.status_code == 500
    assert "boom" not in response.text
    if is_api:
        assert response.json() == {"detail": "Internal server error.", "code": "internal_error"}
    # Django's request log has the error line; the traceback is logged with it (by Django, or by
    # the API's exception handler for DRF views).
    assert any(record.name == "django.request" and record.levelno == logging.ERROR for record in caplog.records)
    assert any(record.exc_info and "boom" in str(record.exc_info[1]) for record in caplog.records)
    assert _server_errors(http) == errors_before + 1


def _server_errors(client: httpx.Client) -> float:
    from chat.runtime import metrics

    text = metrics.render()[0].decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("cozeproject_http_requests_total{") and 'status="500"' in line
    )


@pytest.mark.parametrize(("name", "method", "path", "body", "breakable", "is_api"), ROUTES, ids=ids(ROUTES))
def test_every_route_sends_djangos_request_signals(http, api_key, name, method, path, body, breakable, is_api):
    seen = []

    def started(**kwargs):
        seen.append("started")

    def finished(**kwargs):
        seen.append("finished")

    signals.request_started.connect(started)
    signals.request_finished.connect(finished)
    try:
        send(http, method, path, body, **auth(api_key))
        # Django sends request_finished as it closes the response, once the last byte is out.
        wait_until(lambda: len(seen) == 2)
    finally:
        signals.request_started.disconnect(started)
        signals.request_finished.disconnect(finished)

    assert seen == ["started", "finished"]


@pytest.mark.parametrize(
    ("name", "method", "path", "body", "breakable", "is_api"),
    [route for route in ROUTES if route[1] == "POST"],
    ids=ids([route for route in ROUTES if route[1] == "POST"]),
)
def test_a_body_over_the_limit_is_refused_on_every_route(http, api_key, name, method, path, body, breakable, is_api):
    oversized = json.dumps({"message": "x" * (1024 * 1024 + 1)})

    response = http.request(
        method, path, content=oversized, headers={"Content-Type": "application/json", **auth(api_key)}
    )

    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


@pytest.mark.parametrize(
    ("name", "method", "path", "body", "breakable", "is_api"),
    [route for route in ROUTES if route[5] and route[0] != "health"],
    ids=ids([route for route in ROUTES if route[5] and route[0] != "health"]),
)
def test_every_api_route_needs_a_valid_key(http, name, method, path, body, breakable, is_api):
    missing = send(http, method, path, body)
    wrong = send(http, method, path, body, Authorization="Bearer cz_not_a_key")

    for response in (missing, wrong):
        assert response.status_code == 401
        assert response.json()["code"] == "unauthenticated"
        assert response.headers["www-authenticate"] == 'Bearer realm="api"'


@pytest.mark.parametrize(("name", "method", "path", "body", "breakable", "is_api"), CHAT_ROUTES, ids=ids(CHAT_ROUTES))
def test_every_chat_route_applies_the_rate_limit(http, api_key, settings, name, method, path, body, breakable, is_api):
    settings.CHAT_RATE_LIMIT_PER_MINUTE = 1
    first = send(http, method, path, body, **auth(api_key))
    second = send(http, method, path, body, **auth(api_key))

    assert first.status_code == 200
    assert second.status_code == 429
    assert int(second.headers["retry-after"]) >= 1
