"""End-user tokens (docs/api.md §2): `POST /api/tokens` mints, with an API key, a signed short-lived
token narrowed to one `user_id`; it is a Bearer on every path and transport, reaches only that
user's sessions and files, mints nothing, and is `401` once expired, tampered with or revoked."""

import base64
import json
import logging
import re
import threading
import uuid
from datetime import UTC, datetime

import httpx
import openai
import pytest
from django.contrib.auth.models import User
from django.core import signing
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from chat.access import auth, auth_failures, tokens
from chat.domain.inputs import ChatRequest, Owner
from chat.files.attachments import ResolvedAttachments
from chat.transports.websocket import TOKEN_SUBPROTOCOL
from chat.turn import start, store, store_orm
from chat.turn.records import Route, RouteChanged, TurnStart
from sessions_admin.models import ApiClient, ChatFile, ChatSession, Message, Reply, hash_api_key
from tests.chat.conftest import backend  # noqa: F401 - the memory/Redis fixture
from tests.chat.limits_helpers import reset_counters
from tests.chat.test_files import png_bytes
from tests.conftest import auth as bearer
from tests.conftest import read_sse, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fresh_token_cache():
    """Each test's clients are new: forget the clients earlier tests' tokens were checked against."""
    auth._token_clients.clear()
    yield
    auth._token_clients.clear()


def mint(http: httpx.Client, key: str, user_id: str = "alice", **body) -> str:
    response = http.post("/api/tokens", json={"user_id": user_id, **body}, headers=bearer(key))
    assert response.status_code == 201, response.text
    return response.json()["token"]


def chat(http: httpx.Client, credential: str, message: str = "hi", **body) -> httpx.Response:
    return http.post("/api/chat", json={"message": message, **body}, headers=bearer(credential))


def questions() -> list[str]:
    return list(Message.objects.filter(role="user").order_by("pk").values_list("content", flat=True))


def ws_turn(socket, message: str, **body) -> list[dict]:
    socket.send(json.dumps({"type": "chat", "message": message, **body}))
    frames = []
    while not frames or frames[-1]["type"] != "done":
        frames.append(json.loads(socket.recv(timeout=10)))
    return frames


def ws_closed_code(url: str, **connect_kwargs) -> int:
    with connect(url, **connect_kwargs) as socket:
        with pytest.raises(ConnectionClosed) as closed:
            socket.recv(timeout=10)
    return closed.value.rcvd.code


@pytest.fixture
def coze_users(monkeypatch) -> list[str]:
    """The Coze user_id of each turn sent upstream (the real adapter still sends it)."""
    seen = []
    real = start.aopen_upstream

    async def recording(*, chat_request, route, attachments):
        seen.append(route.coze_user_id)
        return await real(chat_request=chat_request, route=route, attachments=attachments)

    monkeypatch.setattr(start, "aopen_upstream", recording)
    return seen


# --- minting -----------------------------------------------------------------------------------


def frozen_clock(monkeypatch) -> list[float]:
    """Tokens' clock, stopped at a whole second; set `[0]` to move it."""
    clock = [float(int(tokens.now()))]
    monkeypatch.setattr(tokens, "now", lambda: clock[0])
    return clock


def test_an_api_key_mints_a_signed_token_for_one_user_that_expires(http, api_key, monkeypatch):
    monkeypatch.setattr(tokens, "now", lambda: 1_900_000_000.0)

    default = http.post("/api/tokens", json={"user_id": "alice"}, headers=bearer(api_key))
    short = http.post("/api/tokens", json={"user_id": "bob", "expires_in": 60}, headers=bearer(api_key))

    assert default.status_code == 201, default.text
    body = default.json()
    assert set(body) == {"token", "user_id", "expires_at"} and body["user_id"] == "alice"
    assert datetime.fromisoformat(body["expires_at"]) == datetime.fromtimestamp(1_900_000_900, UTC)
    assert datetime.fromisoformat(short.json()["expires_at"]) == datetime.fromtimestamp(1_900_000_060, UTC)
    assert default.headers["cache-control"] == "no-store"
    token = body["token"]
    # A prefix tells it from a key; only characters a header, a URL and a subprotocol all accept.
    assert re.fullmatch(r"czt_[A-Za-z0-9_.-]+", token) and not tokens.looks_like_token(api_key)
    # Readable, unalterable, and nothing of the key in it.
    payload = json.loads(base64.urlsafe_b64decode(token[4:].split(".")[0] + "=="))
    client = ApiClient.objects.get()
    assert payload["c"] == client.pk and payload["u"] == "alice" and payload["x"] == 1_900_000_900
    assert api_key not in token and client.key_hash[:16] not in json.dumps(payload)


BAD_TOKEN_BODIES = {
    "no user_id": {},
    "empty user_id": {"user_id": ""},
    "user_id not a string": {"user_id": 7},
    "user_id too long": {"user_id": "u" * 129},
    "the server's default user_id": {"user_id": "default_user"},
    "expires_in 0": {"user_id": "alice", "expires_in": 0},
    "expires_in over a day": {"user_id": "alice", "expires_in": 86_401},
    "expires_in a string": {"user_id": "alice", "expires_in": "60"},
    "expires_in true": {"user_id": "alice", "expires_in": True},
    "expires_in a fraction": {"user_id": "alice", "expires_in": 1.5},
    "an unknown field": {"user_id": "alice", "scope": "all"},
}


@pytest.mark.parametrize("case", BAD_TOKEN_BODIES)
def test_a_bad_token_request_is_400_naming_the_field(http, api_key, settings, case):
    settings.COZE_USER_ID = "default_user"
    response = http.post("/api/tokens", json=BAD_TOKEN_BODIES[case], headers=bearer(api_key))

    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid" and response.json()["errors"]


def test_expires_in_may_be_one_second_to_one_day(http, api_key):
    for expires_in in (1, 86_400):
        mint(http, api_key, expires_in=expires_in)


def test_only_an_api_key_mints_tokens(http, api_key, client):
    token = mint(http, api_key)

    by_token = http.post("/api/tokens", json={"user_id": "alice"}, headers=bearer(token))
    anonymous = http.post("/api/tokens", json={"user_id": "alice"})
    client.force_login(User.objects.create_user("staff", password="pw-1234-long"))
    by_session = client.post("/api/tokens", {"user_id": "alice"}, content_type="application/json")

    assert (by_token.status_code, by_token.json()["code"]) == (403, "forbidden")
    assert "token cannot mint" in by_token.json()["detail"]
    assert (anonymous.status_code, anonymous.json()["code"]) == (401, "unauthenticated")
    assert (by_session.status_code, by_session.json()["code"]) == (403, "forbidden")


# --- using a token -----------------------------------------------------------------------------


def test_a_token_chats_as_its_user_over_http_sse_and_websocket(asgi_server, http, api_key, coze_users):
    token = mint(http, api_key)

    first = chat(http, token, "one", session_id="a1")
    second = http.post("/api/chat/stream", json={"message": "two", "session_id": "a1"}, headers=bearer(token))
    with connect(f"{asgi_server.ws_url}/ws/chat/", additional_headers=bearer(token)) as socket:
        third = ws_turn(socket, "three", session_id="a1")
    # A browser's way: the token as a subprotocol, the server choosing the marker (not the token).
    with connect(f"{asgi_server.ws_url}/ws/chat/", subprotocols=[TOKEN_SUBPROTOCOL, token]) as socket:
        assert socket.subprotocol == TOKEN_SUBPROTOCOL
        fourth = ws_turn(socket, "four", session_id="a1")
    new_session = chat(http, token, "no session id")

    assert first.status_code == 200, first.text
    assert read_sse(second)[-2]["data"]["content"] == "You said: two (turn 2; before that you said: one)"
    assert third[-2]["content"] == "You said: three (turn 3; before that you said: two)"
    assert fourth[-2]["content"] == "You said: four (turn 4; before that you said: three)"
    assert coze_users == ["alice"] * 5
    info = http.get("/api/sessions/a1", headers=bearer(token)).json()
    assert info["user_id"] == "alice" and info["message_count"] == 8
    assert ChatSession.objects.get(session_id=new_session.json()["session_id"]).coze_user_id == "alice"
    transports = set(Reply.objects.filter(session__session_id="a1").values_list("transport", flat=True))
    assert transports == {"sync", "sse", "websocket"}
    # The client's own key sees its end users' sessions; the token spends the client's budget.
    assert {s["session_id"] for s in http.get("/api/sessions", headers=bearer(api_key)).json()["results"]} == {
        "a1",
        new_session.json()["session_id"],
    }
    usage = http.get("/api/usage", headers=bearer(token)).json()
    assert usage["today"]["replies"] == 5


def test_another_users_token_gets_404_on_that_session(asgi_server, http, api_key):
    alice, bob = mint(http, api_key, "alice"), mint(http, api_key, "bob")
    assert chat(http, alice, "mine", session_id="shared").status_code == 200
    chat_id = Reply.objects.get().coze_chat_id

    answers = {
        "info": http.get("/api/sessions/shared", headers=bearer(bob)),
        "messages": http.get("/api/sessions/shared/messages", headers=bearer(bob)),
        "clear": http.post("/api/sessions/shared/clear", headers=bearer(bob)),
        "delete": http.delete("/api/sessions/shared", headers=bearer(bob)),
        "resume": http.get("/api/sessions/shared/stream", headers=bearer(bob)),
        "cancel session": http.post("/api/sessions/shared/cancel", headers=bearer(bob)),
        "cancel chat": http.post(f"/api/chats/{chat_id}/cancel", headers=bearer(bob)),
        "chat": chat(http, bob, "let me in", session_id="shared"),
        "stream": http.post("/api/chat/stream", json={"message": "in", "session_id": "shared"}, headers=bearer(bob)),
        "earlier info": http.get("/session/shared/info", headers=bearer(bob)),
    }
    with connect(f"{asgi_server.ws_url}/ws/chat/", additional_headers=bearer(bob)) as socket:
        ws_frames = ws_turn(socket, "in", session_id="shared")

    for name, response in answers.items():
        assert (response.status_code, response.json()["code"]) == (404, "not_found"), name
    assert ws_frames[0]["code"] == "not_found"
    assert http.get("/api/sessions", headers=bearer(bob)).json()["results"] == []
    assert [s["session_id"] for s in http.get("/api/sessions", headers=bearer(alice)).json()["results"]] == ["shared"]
    # Nothing of bob's reached alice's session, which is still hers.
    assert ChatSession.objects.get().coze_user_id == "alice" and questions() == ["mine"]
    assert http.get("/session/shared/info", headers=bearer(alice)).status_code == 200


def test_a_session_moved_to_another_user_meanwhile_is_refused_under_the_row_lock(http, api_key):
    """The worker remembers the session as alice's; another worker's turn has made it bob's: the
    start, which checks the route under the session's row lock, refuses alice's token."""
    alice = mint(http, api_key, "alice")
    assert chat(http, alice, "first", session_id="s").status_code == 200
    assert start._routes[(ApiClient.objects.get().owner_key, "s")].coze_user_id == "alice"
    ChatSession.objects.filter(session_id="s").update(coze_user_id="bob")

    response = chat(http, alice, "second", session_id="s")

    assert (response.status_code, response.json()["code"]) == (404, "not_found")
    assert ChatSession.objects.get().coze_user_id == "bob"
    assert questions() == ["first"] and Reply.objects.count() == 1


def _start(path: str, owner: Owner, session_id: str, *, expected_user: str | None = None, user_id=None):
    from django.db import connection

    if path == "sql" and connection.vendor != "postgresql":
        pytest.skip("the SQL functions exist on PostgreSQL only")
    turn_start = store._turn_start_pg if path == "sql" else store_orm.turn_start
    bot_id = "7000000000000000001"
    return turn_start(
        TurnStart(
            owner=owner,
            chat_request=ChatRequest(message="hi", session_id=session_id, user_id=user_id),
            session_id=session_id,
            bot_id=bot_id,
            transport="sse",
            worker_channel="worker-1",
            lock_token=uuid.uuid4().hex[:16],
            attachments=ResolvedAttachments(),
            expected_route=None if expected_user is None else Route("", bot_id, expected_user),
        )
    )


@pytest.mark.parametrize("path", ["sql", "orm"])
def test_a_narrowed_start_takes_its_user_and_is_refused_another_users_session_under_the_lock(path):
    client = Owner(key="client:7", api_client_id=None)
    alice = Owner(key="client:7", api_client_id=None, end_user_id="alice")
    _start(path, client, "bobs", user_id="bob")
    ChatSession.objects.update(lock_token="", locked_until=None)

    with pytest.raises(RouteChanged) as moved:
        _start(path, alice, "bobs", expected_user="alice")
    alices = _start(path, alice, "alices", expected_user="alice")

    assert moved.value.args[0].coze_user_id == "bob"
    assert Reply.objects.filter(session__session_id="bobs").count() == 1
    assert alices.route.coze_user_id == "alice"
    assert dict(ChatSession.objects.values_list("session_id", "coze_user_id")) == {"bobs": "bob", "alices": "alice"}


def test_another_users_token_cannot_cancel_a_running_reply(asgi_server, http, api_key):
    alice, bob = mint(http, api_key, "alice"), mint(http, api_key, "bob")
    events: list[dict] = []
    session_seen = threading.Event()

    def stream() -> None:
        body = {"message": "[sim:slow=100] a long answer please", "session_id": "long"}
        with httpx.Client(base_url=asgi_server.url, timeout=30) as client:
            with client.stream("POST", "/api/chat/stream", json=body, headers=bearer(alice)) as response:
                for line in response.iter_lines():
                    if line.startswith("data: {"):
                        events.append(json.loads(line[6:]))
                        session_seen.set()

    streaming = threading.Thread(target=stream)
    streaming.start()
    assert session_seen.wait(10)
    chat_id = events[0]["chat_id"]

    by_bob = http.post(f"/api/chats/{chat_id}/cancel", headers=bearer(bob))
    assert (by_bob.status_code, by_bob.json()["code"]) == (404, "not_found")
    assert Reply.objects.get().status == "in_progress"
    by_alice = http.post(f"/api/chats/{chat_id}/cancel", headers=bearer(alice))
    streaming.join(10)

    assert by_alice.json() == {"chat_id": chat_id, "status": "cancelled"}
    assert events[-1]["code"] == "cancelled"


def test_a_body_naming_another_user_id_is_403(asgi_server, http, api_key):
    token = mint(http, api_key, "alice")

    answers = {
        "sync": chat(http, token, user_id="bob"),
        "sse": http.post("/api/chat/stream", json={"message": "hi", "user_id": "bob"}, headers=bearer(token)),
        "earlier /chat": http.post("/chat", json={"message": "hi", "user_id": "bob"}, headers=bearer(token)),
        "earlier /api/coze-chat": http.post(
            "/api/coze-chat",
            json={"user_id": "bob", "additional_messages": [{"role": "user", "content": "hi", "content_type": "text"}]},
            headers=bearer(token),
        ),
    }
    with connect(f"{asgi_server.ws_url}/ws/chat/", additional_headers=bearer(token)) as socket:
        ws_frames = ws_turn(socket, "hi", user_id="bob")

    for name, response in answers.items():
        assert (response.status_code, response.json()["code"]) == (403, "forbidden"), name
    assert ws_frames[0]["code"] == "forbidden"
    assert not Message.objects.exists()
    # Naming its own user is fine.
    assert chat(http, token, user_id="alice").status_code == 200


def test_the_openai_path_takes_a_token_as_its_api_key(asgi_server, http, api_key, coze_users, settings):
    alice, bob = mint(http, api_key, "alice"), mint(http, api_key, "bob")
    base_url, model = f"{asgi_server.url}/v1", settings.COZE_BOT_ID
    with openai.OpenAI(base_url=base_url, api_key=alice, max_retries=0) as client:
        first = client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "hello"}]
        )
        with pytest.raises(openai.PermissionDeniedError):
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], user="bob")
    alices_session = first.headers["x-session-id"]
    history = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": first.parse().choices[0].message.content},
        {"role": "user", "content": "and now?"},
    ]
    # Bob resending alice's history gets a session of his own, not hers.
    with openai.OpenAI(base_url=base_url, api_key=bob, max_retries=0) as client:
        bobs = client.chat.completions.with_raw_response.create(model=model, messages=history)
    with openai.OpenAI(base_url=base_url, api_key="czt_" + alice[4:-2] + "xx", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError):
            client.models.list()

    assert bobs.headers["x-session-id"] != alices_session
    assert coze_users == ["alice", "bob"]
    assert ChatSession.objects.get(session_id=alices_session).message_count == 2
    assert ChatSession.objects.get(session_id=bobs.headers["x-session-id"]).coze_user_id == "bob"


def test_a_tokens_uploads_are_its_users_only(http, api_key):
    alice, bob = mint(http, api_key, "alice"), mint(http, api_key, "bob")
    upload = http.post("/api/files", files={"file": ("cat.png", png_bytes(), "image/png")}, headers=bearer(alice))
    assert upload.status_code == 201, upload.text
    attachment = [{"file_id": upload.json()["file_id"]}]

    by_bob = chat(http, bob, "look", attachments=attachment)
    by_alice = chat(http, alice, "look", attachments=attachment)
    by_key = chat(http, api_key, "look", attachments=attachment)

    assert ChatFile.objects.get().coze_user_id == "alice"
    assert (by_bob.status_code, by_bob.json()["code"]) == (404, "not_found")
    assert by_alice.status_code == 200 and by_key.status_code == 200


# --- when a token stops working ----------------------------------------------------------------


def tampered(token: str) -> dict[str, str]:
    value = token.removeprefix(tokens.TOKEN_PREFIX)
    payload, timestamp, signature = value.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    as_bob = base64.urlsafe_b64encode(json.dumps({**claims, "u": "bob"}).encode()).decode().rstrip("=")
    later = base64.urlsafe_b64encode(json.dumps({**claims, "x": claims["x"] + 3600}).encode()).decode().rstrip("=")
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    return {
        "another user": f"czt_{as_bob}.{timestamp}.{signature}",
        "a later expiry": f"czt_{later}.{timestamp}.{signature}",
        "a changed signature": f"czt_{payload}.{timestamp}.{flipped}",
        "no signature": f"czt_{payload}.{timestamp}",
        "signed for something else": "czt_" + signing.TimestampSigner(sep=".").sign_object(claims),
        "garbage": "czt_not-a-token",
    }


def test_a_tampered_token_is_401_on_http_and_websocket(asgi_server, http, api_key):
    token = mint(http, api_key, "alice")
    assert chat(http, token).status_code == 200

    for name, forged in tampered(token).items():
        for response in (
            chat(http, forged),
            http.post("/api/chat/stream", json={"message": "hi"}, headers=bearer(forged)),
            http.get("/api/sessions", headers=bearer(forged)),
        ):
            assert (response.status_code, response.json()["code"]) == (401, "unauthenticated"), name
            assert response.headers["www-authenticate"].startswith("Bearer")
        assert ws_closed_code(f"{asgi_server.ws_url}/ws/chat/", additional_headers=bearer(forged)) == 4401, name
        url = f"{asgi_server.ws_url}/ws/chat/"
        assert ws_closed_code(url, subprotocols=[TOKEN_SUBPROTOCOL, forged]) == 4401, name
    assert Reply.objects.count() == 1


def test_a_token_signed_under_another_secret_key_is_401(http, api_key, settings):
    settings.SECRET_KEY = "another-deployment-" + "x" * 40
    foreign = mint(http, api_key, "alice")
    settings.SECRET_KEY = "this-deployment-" + "y" * 40

    assert chat(http, foreign).status_code == 401
    assert chat(http, mint(http, api_key, "alice")).status_code == 200


def test_an_expired_token_is_401_on_http_and_closes_its_websocket(asgi_server, http, api_key, monkeypatch):
    clock = frozen_clock(monkeypatch)
    token = mint(http, api_key, "alice", expires_in=1)
    url = f"{asgi_server.ws_url}/ws/chat/"
    with connect(url, subprotocols=[TOKEN_SUBPROTOCOL, token]) as socket:
        assert ws_turn(socket, "while valid")[-2]["type"] == "completed"
        clock[0] += 1

        # The open socket checks its token again on the next turn.
        socket.send(json.dumps({"type": "chat", "message": "too late"}))
        error = json.loads(socket.recv(timeout=10))
        with pytest.raises(ConnectionClosed) as closed:
            socket.recv(timeout=10)

    assert (error["type"], error["code"]) == ("error", "unauthenticated") and "expired" in error["detail"]
    assert closed.value.rcvd.code == 4401
    for response in (
        chat(http, token),
        http.post("/api/chat/stream", json={"message": "hi"}, headers=bearer(token)),
        http.get("/api/sessions", headers=bearer(token)),
    ):
        assert (response.status_code, response.json()["code"]) == (401, "unauthenticated")
        assert "expired" in response.json()["detail"]
    assert ws_closed_code(url, additional_headers=bearer(token)) == 4401
    assert questions() == ["while valid"]


def test_revoking_the_key_revokes_its_tokens(http, api_key, monkeypatch):
    monkeypatch.setattr(auth, "KEY_CACHE_SECONDS", 0.2)
    token = mint(http, api_key, "alice")
    assert chat(http, token).status_code == 200

    ApiClient.objects.update(is_active=False)

    revoked = wait_until(lambda: (r := chat(http, token)).status_code == 401 and r, timeout=5)
    assert revoked.json()["code"] == "unauthenticated" and "revoked" in revoked.json()["detail"]
    # A client given another key (its old one revoked) keeps none of the old key's tokens either.
    ApiClient.objects.update(is_active=True, key_hash=hash_api_key("cz_" + "n" * 43))
    auth._token_clients.clear()
    assert chat(http, token).status_code == 401


@pytest.mark.parametrize("path", ["/api/chat", "/api/chat/stream"])  # DRF's sync auth, the async one
def test_forged_tokens_count_as_wrong_keys_while_valid_tokens_pass_a_blocked_address(
    http,
    api_key,
    settings,
    backend,  # noqa: F811
    path,
):
    settings.CHAT_AUTH_BLOCKED_RATE = 0
    reset_counters()
    auth_failures._blocked_until.clear()
    token = mint(http, api_key, "alice")
    expired = tokens.TOKEN_PREFIX + signing.TimestampSigner(salt=tokens.SIGNING_SALT, sep=".").sign_object(
        {"c": ApiClient.objects.get().pk, "u": "alice", "x": 1, "k": "0" * 16}
    )

    def send(credential: str) -> httpx.Response:
        return http.post(path, json={"message": "hi"}, headers=bearer(credential))

    settings.CHAT_AUTH_FAILURES_PER_MINUTE = 3
    try:
        # Expired tokens are genuine ones: refused, never counted.
        assert {send(expired).status_code for _ in range(5)} == {401}
        assert {send(token + "x").status_code for _ in range(3)} == {401}
        blocked = send(token + "y")

        assert (blocked.status_code, blocked.json()["code"]) == (429, "rate_limited")
        assert send(token).status_code == 200
    finally:
        reset_counters()
        auth_failures._blocked_until.clear()


def test_tokens_are_never_logged(asgi_server, http, api_key, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    clock = frozen_clock(monkeypatch)
    token = mint(http, api_key, "alice", expires_in=1)
    chat(http, token, user_id="bob")
    chat(http, token + "x")
    with connect(f"{asgi_server.ws_url}/ws/chat/", subprotocols=[TOKEN_SUBPROTOCOL, token]) as socket:
        ws_turn(socket, "hi")
    clock[0] += 1
    chat(http, token)

    assert caplog.records
    assert not [(record.name, record.getMessage()) for record in caplog.records if "czt_" in record.getMessage()]
