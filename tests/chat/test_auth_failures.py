"""Wrong API keys from one address: after CHAT_AUTH_FAILURES_PER_MINUTE of them in a minute, its keys
that are not ours are refused with `429 rate_limited` and no database lookup, on every route that
takes a key, while valid keys from the same address keep working (docs/api.md §3)."""

import json
import logging
import secrets
import socket

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from chat.access import auth, auth_failures
from chat.runtime import metrics
from tests.chat.conftest import backend  # noqa: F401 - the memory/Redis fixture
from tests.chat.limits_helpers import reset_counters
from tests.conftest import auth as bearer
from tests.conftest import stream_chat, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

LIMIT = 3
COZE_CHAT_BODY = {"user_id": "u1", "additional_messages": [{"role": "user", "content": "hi", "content_type": "text"}]}
OPENAI_BODY = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}
# (route, JSON body, how its error body names the code)
ROUTES = [
    ("/api/chat/stream", {"message": "hi"}, lambda body: body["code"]),
    ("/api/chat", {"message": "hi"}, lambda body: body["code"]),
    ("/chat/stream", {"message": "hi"}, lambda body: body["code"]),
    ("/api/coze-chat", COZE_CHAT_BODY, lambda body: body["code"]),
    ("/v1/chat/completions", OPENAI_BODY, lambda body: body["error"]["code"]),
]


def wrong_key() -> str:
    return "cz_" + secrets.token_urlsafe(32)  # well formed, so it costs a lookup


@pytest.fixture(autouse=True)
def failure_limit(settings, backend):  # noqa: F811
    settings.CHAT_AUTH_FAILURES_PER_MINUTE = LIMIT
    settings.CHAT_AUTH_BLOCKED_RATE = 0  # paced refusals are tested on their own, below
    reset_counters()
    auth_failures._blocked_until.clear()
    auth._owners_by_key_hash.clear()
    auth._directory = None
    yield
    reset_counters()
    auth_failures._blocked_until.clear()


@pytest.fixture
def lookups(monkeypatch):
    """Counts API-key lookups in the database (async views and DRF's sync ones)."""
    counted = []
    real = auth.owner_from_api_key

    def counting(raw_key):
        counted.append(raw_key)
        return real(raw_key)

    monkeypatch.setattr(auth, "owner_from_api_key", counting)
    return counted


def block(http: httpx.Client) -> None:
    for _ in range(LIMIT):
        response = http.post("/api/chat/stream", json={"message": "hi"}, headers=bearer(wrong_key()))
        assert response.status_code == 401


def _blocked_count() -> float:
    return metrics.AUTH_FAILURES.labels("blocked")._value.get()


@pytest.mark.parametrize(("path", "body", "code_of"), ROUTES, ids=[route[0] for route in ROUTES])
def test_an_address_over_the_limit_gets_429_without_a_lookup_on_every_route(http, lookups, path, body, code_of):
    block(http)
    looked_up = len(lookups)
    blocked_before = _blocked_count()

    response = http.post(path, json=body, headers=bearer(wrong_key()))

    assert response.status_code == 429, response.text
    assert code_of(response.json()) == "rate_limited"
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert len(lookups) == looked_up
    assert _blocked_count() == blocked_before + 1


def test_the_429_has_the_json_contract_and_every_header_of_a_response(http):
    block(http)

    response = http.post("/api/chat/stream", json={"message": "hi"}, headers=bearer(wrong_key()))

    assert response.status_code == 429
    assert response.headers["content-type"] == "application/json"
    assert set(response.json()) == {"detail", "code"}
    assert "failed authentications" in response.json()["detail"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cross-origin-opener-policy"] == "same-origin"
    assert response.headers["x-frame-options"] == "DENY"
    assert len(response.headers["x-request-id"]) == 32


def test_a_disallowed_host_is_still_refused_from_a_blocked_address(http):
    block(http)

    response = http.post(
        "/api/chat/stream", json={"message": "hi"}, headers={"Host": "evil.example", **bearer(wrong_key())}
    )

    assert response.status_code == 400


def test_a_valid_key_never_used_before_still_works_from_a_blocked_address(http, api_key, other_api_key, lookups):
    block(http)
    http.post("/api/chat/stream", json={"message": "hi"}, headers=bearer(wrong_key()))  # refused: 429

    stream, events = stream_chat(http, api_key, {"message": "hello"})
    sync = http.post("/api/chat", json={"message": "hello"}, headers=bearer(other_api_key))

    assert stream.status_code == 200
    assert events[-1]["data"] == "[DONE]"
    assert any(event["event"] == "completed" for event in events)
    assert sync.status_code == 200, sync.text
    assert {api_key, other_api_key} <= set(lookups)


def test_a_key_created_during_a_block_works_once_the_directory_reloads(http, monkeypatch):
    from sessions_admin.models import ApiClient

    monkeypatch.setattr(auth, "KEY_DIRECTORY_SECONDS", 0.0)
    block(http)
    assert http.post("/api/chat/stream", json={"message": "hi"}, headers=bearer(wrong_key())).status_code == 429
    _, new_key = ApiClient.create_with_key(name="created during the block")

    response = http.post("/api/chat", json={"message": "hello"}, headers=bearer(new_key))

    assert response.status_code == 200, response.text


def test_a_websocket_with_a_wrong_key_from_a_blocked_address_is_closed_unauthenticated(http, asgi_server, lookups):
    block(http)
    looked_up = len(lookups)

    with connect(f"{asgi_server.ws_url}/ws/chat/", additional_headers=bearer(wrong_key())) as socket:
        with pytest.raises(ConnectionClosed) as closed:
            socket.recv(timeout=10)

    assert closed.value.rcvd.code == 4401
    assert len(lookups) == looked_up


def test_failures_are_logged_once_per_block_not_once_per_request(http, caplog):
    caplog.set_level(logging.WARNING)
    block(http)
    for _ in range(5):
        assert http.post("/api/chat/stream", json={"message": "hi"}, headers=bearer(wrong_key())).status_code == 429

    blocked_lines = [
        r for r in caplog.records if r.name == "chat.access.auth_failures" and "failed API-key" in r.getMessage()
    ]
    too_many_lines = [r for r in caplog.records if r.name == "django.request" and "Too Many Requests" in r.getMessage()]
    unauthorized_lines = [r for r in caplog.records if r.name == "django.request" and "Unauthorized" in r.getMessage()]
    assert len(blocked_lines) == 1
    assert "127.0.0.1" in blocked_lines[0].getMessage()
    assert too_many_lines == []
    assert len(unauthorized_lines) == LIMIT


def test_another_worker_learns_the_block_from_the_shared_count(http, lookups):
    """A worker that has not seen the address fail (its own blocks forgotten) lets one more lookup
    through; the count that lookup returns is over the limit, so from then on it refuses too."""
    block(http)
    auth_failures._blocked_until.clear()  # as a worker that did not answer those failures
    looked_up = len(lookups)

    first = http.post("/api/chat/stream", json={"message": "hi"}, headers=bearer(wrong_key()))
    second = http.post("/api/chat/stream", json={"message": "hi"}, headers=bearer(wrong_key()))

    assert (first.status_code, second.status_code) == (401, 429)
    assert len(lookups) == looked_up + 1


def test_no_limit_when_the_setting_is_zero(http, settings):
    settings.CHAT_AUTH_FAILURES_PER_MINUTE = 0

    statuses = {
        http.post("/api/chat/stream", json={"message": "hi"}, headers=bearer(wrong_key())).status_code
        for _ in range(LIMIT + 3)
    }

    assert statuses == {401}


def test_a_refusal_waits_its_turn_and_the_wait_ends_when_the_client_goes_away(http, asgi_server, settings):
    block(http)
    settings.CHAT_AUTH_BLOCKED_RATE = 1 / 60  # one refusal a minute: this one waits until the block ends
    body = json.dumps({"message": "hi"}).encode()
    request = (
        f"POST /api/chat/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {wrong_key()}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()

    with socket.create_connection(("127.0.0.1", asgi_server.port)) as client:
        client.sendall(request + body)
        wait_until(lambda: auth._refusals_held == 1)
        # The client goes away while its refusal is held: the wait ends with the request.

    wait_until(lambda: auth._refusals_held == 0)


def test_refusals_over_the_held_bound_are_sent_at_once(http, settings, monkeypatch):
    block(http)
    settings.CHAT_AUTH_BLOCKED_RATE = 1 / 600
    monkeypatch.setattr(auth, "AUTH_REFUSALS_HELD", 0)

    response = http.post("/api/chat/stream", json={"message": "hi"}, headers=bearer(wrong_key()))

    assert response.status_code == 429


def test_refusals_are_paced_per_address_up_to_the_end_of_the_block():
    auth._next_refusal.clear()

    def wait(address, block_seconds=60.0, now=100.0):
        return round(auth.refusal_wait(address, rate=10, block_seconds=block_seconds, now=now), 6)

    waits = [wait("10.0.0.1"), wait("10.0.0.1"), wait("10.0.0.2"), wait("10.0.0.1", block_seconds=0.25)]
    later = wait("10.0.0.1", now=200.0)  # long after its last turn: one interval from now

    assert waits == [0.1, 0.2, 0.1, 0.25]
    assert later == 0.1


@pytest.mark.asyncio
async def test_lookups_queued_before_the_block_are_refused_without_a_lookup_once_it_is_known(lookups):
    """A burst of wrong keys queues its lookups on the auth threads before the failure that blocks
    the address comes back; those still waiting when it does are refused unlooked-up."""
    for _ in range(LIMIT):
        with pytest.raises(auth.ChatError):
            await auth.aowner_from_api_key(wrong_key(), address="10.0.0.9")

    with pytest.raises(auth.ChatError) as refused:
        await auth.aowner_from_api_key(wrong_key(), address="10.0.0.9")
    waited = await auth._aowner_unless_blocked(wrong_key(), "10.0.0.9")

    assert refused.value.code == "rate_limited"
    assert isinstance(waited, int) and 1 <= waited <= 60
    assert len(lookups) == LIMIT
