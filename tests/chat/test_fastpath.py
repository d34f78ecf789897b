"""API-key SSE streams take the direct ASGI route; everything else goes through Django."""

import threading

import httpx
import pytest

from chat.fastpath import takes_fast_path
from sessions_admin.models import Reply
from tests.conftest import auth, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def scope(path="/api/chat/stream", method="POST", **headers):
    return {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(name.replace("_", "-").encode(), value.encode()) for name, value in headers.items()],
    }


def test_only_bearer_streams_without_cookie_or_origin_take_the_fast_path():
    assert takes_fast_path(scope(authorization="Bearer cz_x"))
    assert takes_fast_path(scope(authorization="bearer cz_x"))
    assert not takes_fast_path(scope())
    assert not takes_fast_path(scope(authorization="Bearer cz_x", cookie="sessionid=1"))
    assert not takes_fast_path(scope(authorization="Bearer cz_x", origin="https://app.example.com"))
    assert not takes_fast_path(scope(path="/api/chat", authorization="Bearer cz_x"))
    assert not takes_fast_path(scope(method="GET", authorization="Bearer cz_x"))
    assert not takes_fast_path({"type": "websocket", "path": "/api/chat/stream", "headers": []})


def test_fast_path_responses_carry_the_middleware_headers(http, api_key):
    streamed = http.post(
        "/api/chat/stream", json={"message": "hi"}, headers={**auth(api_key), "X-Request-ID": "trace-12345678"}
    )
    refused = http.post("/api/chat/stream", json={}, headers=auth(api_key))

    for response in (streamed, refused):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "same-origin"
        assert response.headers["x-request-id"]
    assert streamed.headers["x-request-id"] == "trace-12345678"
    assert streamed.status_code == 200 and refused.status_code == 400


def test_open_api_key_streams_do_not_hold_a_thread_each(asgi_server, api_key):
    baseline = threading.active_count()
    clients, responses = [], []
    try:
        for index in range(15):
            client = httpx.Client(base_url=asgi_server.url, timeout=30)
            request = client.build_request(
                "POST", "/api/chat/stream", json={"message": f"[sim:slow=200] stream {index}"}, headers=auth(api_key)
            )
            response = client.send(request, stream=True)
            assert response.status_code == 200
            clients.append(client)
            responses.append(response)
        wait_until(lambda: Reply.objects.filter(status="in_progress").count() == 15)

        during = threading.active_count()
    finally:
        for response, client in zip(responses, clients, strict=True):
            response.close()
            client.close()

    # Django's handler would hold one thread per open stream; the fast path holds none.
    assert during - baseline < 5, (baseline, during)
