"""The Coze simulator, driven over HTTP by the real cozepy client (never mocked).

No Django and no database here: the simulator is standalone, so these tests use their own
simulators (`sim`, `secured_sim`) rather than the project-wide `simulator` fixture.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import cozepy
import httpx
import pytest
from cozepy import ChatEventType, ChatStatus, Message, MessageObjectString, MessageType
from cozepy.exception import CozeAPIError, CozeInvalidEventError

from chat.simulator import SimulatorConfig, SimulatorServer, create_app
from chat.simulator.bot import split_deltas

BOT = "7400000000000000001"
USER = "tester"
SECRET = "sim-secret-token"
# Quotes, backslash, CJK with full-width punctuation, emoji ZWJ sequences (family, rainbow
# flag), CRLF, tab, the characters httpx also splits lines on, and edge spaces.
TRICKY = (
    '  Hello "world" \\ 你好\uff0c世界\uff01 '
    "\U0001f469\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 \U0001f3f3\ufe0f\u200d\U0001f308"
    " é\r\nline two\r\n\ttab \u2028 \u2029 \x85 \x0b \x1e done  "
)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(SimulatorConfig(token_delay_ms=1, first_token_delay_ms=1)) as server:
        yield server


@pytest.fixture(scope="module")
def secured_sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(SimulatorConfig(token=SECRET)) as server:
        yield server


@contextlib.asynccontextmanager
async def async_coze(server: SimulatorServer, token: str = "any") -> AsyncIterator[cozepy.AsyncCoze]:
    http_client = cozepy.AsyncHTTPClient()
    try:
        yield cozepy.AsyncCoze(auth=cozepy.AsyncTokenAuth(token), base_url=server.base_url, http_client=http_client)
    finally:
        await http_client.aclose()


def user(text: str) -> list[Message]:
    return [Message.build_user_question_text(text)]


async def collect(coze: cozepy.AsyncCoze, text: str, **kwargs) -> list[cozepy.ChatEvent]:
    return [
        event async for event in coze.chat.stream(bot_id=BOT, user_id=USER, additional_messages=user(text), **kwargs)
    ]


def deltas(events: list[cozepy.ChatEvent]) -> list[str]:
    return [e.message.content for e in events if e.event == ChatEventType.CONVERSATION_MESSAGE_DELTA]


def inspect_chat(server: SimulatorServer, chat_id: str) -> dict:
    return httpx.get(f"{server.base_url}/_sim/chats/{chat_id}").json()


def stats(server: SimulatorServer) -> dict:
    return httpx.get(f"{server.base_url}/_sim/stats").json()


async def wait_until_finished(coze: cozepy.AsyncCoze, chat: cozepy.Chat) -> cozepy.Chat:
    for _ in range(200):
        chat = await coze.chat.retrieve(conversation_id=chat.conversation_id, chat_id=chat.id)
        if chat.status != ChatStatus.IN_PROGRESS:
            return chat
        await asyncio.sleep(0.02)
    raise AssertionError(f"chat {chat.id} never finished")


# --------------------------------------------------------------------------- the stream


@pytest.mark.asyncio
async def test_stream_events_rebuild_tricky_text_byte_for_byte(sim):
    async with async_coze(sim) as coze:
        events = await collect(coze, "[sim:echo]" + TRICKY)

    kinds = [e.event for e in events]
    assert kinds[:2] == [
        ChatEventType.CONVERSATION_CHAT_CREATED,
        ChatEventType.CONVERSATION_CHAT_IN_PROGRESS,
    ]
    pieces = deltas(events)
    assert kinds[2 : 2 + len(pieces)] == [ChatEventType.CONVERSATION_MESSAGE_DELTA] * len(pieces)
    assert kinds[2 + len(pieces) :] == [ChatEventType.CONVERSATION_MESSAGE_COMPLETED] * 4 + [
        ChatEventType.CONVERSATION_CHAT_COMPLETED
    ]
    # Pieces of 1, 2, 3, 4 code points, cutting through CRLF and emoji sequences alike.
    assert [len(p) for p in pieces] == [len(p) for p in split_deltas(TRICKY)]
    assert [len(p) for p in pieces[:5]] == [1, 2, 3, 4, 1]
    assert "".join(pieces) == TRICKY

    created, completed_chat = events[0].chat, events[-1].chat
    assert created.status == ChatStatus.CREATED
    assert created.id == completed_chat.id and created.conversation_id
    answer, verbose, *follow_ups = [e.message for e in events[2 + len(pieces) : -1]]
    assert answer.type == MessageType.ANSWER and answer.content == TRICKY
    assert answer.chat_id == created.id and answer.conversation_id == created.conversation_id
    assert verbose.type == MessageType.VERBOSE
    assert json.loads(verbose.content)["msg_type"] == "generate_answer_finish"
    assert [m.type for m in follow_ups] == [MessageType.FOLLOW_UP] * 2
    assert [m.content for m in follow_ups] == ["Tell me more", "What else can you do?"]

    assert completed_chat.status == ChatStatus.COMPLETED
    usage = completed_chat.usage
    assert usage.output_count == len(pieces)
    assert usage.input_count == len("[sim:echo]" + TRICKY) // 4 + 1
    assert usage.token_count == usage.input_count + usage.output_count
    assert events[0].response.logid


def test_sync_client_parses_the_same_stream(sim):
    coze = cozepy.Coze(auth=cozepy.TokenAuth("any"), base_url=sim.base_url)
    events = list(coze.chat.stream(bot_id=BOT, user_id=USER, additional_messages=user("[sim:echo]同步 ✓")))
    assert "".join(deltas(events)) == "同步 ✓"
    assert events[-1].event == ChatEventType.CONVERSATION_CHAT_COMPLETED


@pytest.mark.asyncio
async def test_empty_echo_sends_no_deltas_but_completes(sim):
    async with async_coze(sim) as coze:
        events = await collect(coze, "[sim:echo]")
    assert deltas(events) == []
    assert events[2].message.content == ""
    assert events[-1].chat.usage.output_count == 0


@pytest.mark.asyncio
async def test_reasoning_deltas_come_before_the_answer(sim):
    async with async_coze(sim) as coze:
        events = await collect(coze, "[sim:reasoning][sim:echo]42")
    delta_messages = [e.message for e in events if e.event == ChatEventType.CONVERSATION_MESSAGE_DELTA]
    reasoning = [m for m in delta_messages if m.reasoning_content]
    assert delta_messages[: len(reasoning)] == reasoning
    assert all(m.content == "" for m in reasoning)
    assert "".join(m.reasoning_content for m in reasoning) == "Let me think about that."
    assert "".join(m.content for m in delta_messages) == "42"
    answer = next(e.message for e in events if e.event == ChatEventType.CONVERSATION_MESSAGE_COMPLETED)
    assert answer.reasoning_content == "Let me think about that."


@pytest.mark.asyncio
async def test_object_string_text_items_are_the_user_text(sim):
    message = Message.build_user_question_objects(
        [
            MessageObjectString.build_text("[sim:echo]multi"),
            MessageObjectString.build_image(file_url="https://example.com/a.png"),
            MessageObjectString.build_text("modal"),
        ]
    )
    async with async_coze(sim) as coze:
        events = [e async for e in coze.chat.stream(bot_id=BOT, user_id=USER, additional_messages=[message])]
    assert "".join(deltas(events)) == "multimodal"


@pytest.mark.asyncio
async def test_delays_follow_config_and_directives(sim):
    async with async_coze(sim) as coze:
        started = time.monotonic()
        first_delta_at = None
        async for event in coze.chat.stream(
            bot_id=BOT,
            user_id=USER,
            additional_messages=user("[sim:first_delay=300][sim:slow=40][sim:echo]abcdefghij"),
        ):
            if event.event == ChatEventType.CONVERSATION_MESSAGE_DELTA and first_delta_at is None:
                first_delta_at = time.monotonic()
        finished = time.monotonic()
    assert first_delta_at - started >= 0.3
    # "abcdefghij" is 4 deltas: 3 pauses of 40 ms after the first one.
    assert finished - first_delta_at >= 0.12


# --------------------------------------------------------------------------- memory


@pytest.mark.asyncio
async def test_conversation_remembers_earlier_turns(sim):
    async with async_coze(sim) as coze:
        first = await collect(coze, "hello")
        conversation_id = first[0].chat.conversation_id
        second = await collect(coze, "again", conversation_id=conversation_id)
        third = await collect(coze, "once more", conversation_id=conversation_id)
    assert "".join(deltas(first)) == "You said: hello"
    assert "".join(deltas(second)) == "You said: again (turn 2; before that you said: hello)"
    assert "".join(deltas(third)) == "You said: once more (turn 3; before that you said: again)"
    assert second[0].chat.conversation_id == conversation_id
    assert third[-1].chat.usage.input_count == len("hello" + "again" + "once more") // 4 + 1


@pytest.mark.asyncio
async def test_clear_starts_a_new_section_without_memory(sim):
    async with async_coze(sim) as coze:
        conversation = await coze.conversations.create(bot_id=BOT, meta_data={"k": "v"})
        assert conversation.meta_data == {"k": "v"}
        await collect(coze, "remember me", conversation_id=conversation.id)

        section = await coze.conversations.clear(conversation_id=conversation.id)
        assert section.conversation_id == conversation.id
        assert section.id != conversation.last_section_id
        retrieved = await coze.conversations.retrieve(conversation_id=conversation.id)
        assert retrieved.last_section_id == section.id

        after = await collect(coze, "fresh start", conversation_id=conversation.id)
    assert "".join(deltas(after)) == "You said: fresh start"
    assert after[2].message.section_id == section.id


@pytest.mark.asyncio
async def test_conversation_create_messages_seed_the_memory(sim):
    async with async_coze(sim) as coze:
        conversation = await coze.conversations.create(bot_id=BOT, messages=user("seeded question"))
        events = await collect(coze, "next", conversation_id=conversation.id)
    assert "".join(deltas(events)) == "You said: next (turn 2; before that you said: seeded question)"


@pytest.mark.asyncio
async def test_unknown_conversation_is_4002(sim):
    async with async_coze(sim) as coze:
        with pytest.raises(CozeAPIError) as error:
            await collect(coze, "hi", conversation_id="123")
        assert error.value.code == 4002
        with pytest.raises(CozeAPIError) as error:
            await coze.conversations.retrieve(conversation_id="123")
        assert error.value.code == 4002


# --------------------------------------------------------------------------- non-streaming


@pytest.mark.asyncio
async def test_non_stream_chat_completes_in_background_with_messages(sim):
    async with async_coze(sim) as coze:
        chat = await coze.chat.create(bot_id=BOT, user_id=USER, additional_messages=user("[sim:slow=20]quiet please"))
        assert chat.status == ChatStatus.IN_PROGRESS
        assert chat.response.logid

        finished = await wait_until_finished(coze, chat)
        assert finished.status == ChatStatus.COMPLETED
        answer = "You said: [sim:slow=20]quiet please"
        assert finished.usage.output_count == len(split_deltas(answer))

        messages = await coze.chat.messages.list(conversation_id=chat.conversation_id, chat_id=chat.id)
        assert [m.type for m in messages] == [
            MessageType.ANSWER,
            MessageType.VERBOSE,
            MessageType.FOLLOW_UP,
            MessageType.FOLLOW_UP,
        ]
        assert messages[0].content == answer
        with pytest.raises(CozeAPIError) as error:
            await coze.chat.retrieve(conversation_id=chat.conversation_id, chat_id="999")
        assert error.value.code == 4001


@pytest.mark.asyncio
async def test_cancel_flips_status_and_later_cancel_is_4104(sim):
    async with async_coze(sim) as coze:
        cancels_before = stats(sim)["cancels"]
        chat = await coze.chat.create(bot_id=BOT, user_id=USER, additional_messages=user("[sim:slow=30]cancel me"))
        canceled = await coze.chat.cancel(conversation_id=chat.conversation_id, chat_id=chat.id)
        assert canceled.status == ChatStatus.CANCELED
        retrieved = await coze.chat.retrieve(conversation_id=chat.conversation_id, chat_id=chat.id)
        assert retrieved.status == ChatStatus.CANCELED
        assert inspect_chat(sim, chat.id)["canceled_at"] is not None
        assert stats(sim)["cancels"] == cancels_before + 1

        with pytest.raises(CozeAPIError) as error:
            await coze.chat.cancel(conversation_id=chat.conversation_id, chat_id=chat.id)
        assert error.value.code == 4104

        done = await coze.chat.create(bot_id=BOT, user_id=USER, additional_messages=user("quick"))
        await wait_until_finished(coze, done)
        with pytest.raises(CozeAPIError) as error:
            await coze.chat.cancel(conversation_id=done.conversation_id, chat_id=done.id)
        assert error.value.code == 4104


@pytest.mark.asyncio
async def test_cancel_does_not_stop_the_stream(sim):
    async with async_coze(sim) as coze:
        events = []
        async for event in coze.chat.stream(
            bot_id=BOT, user_id=USER, additional_messages=user("[sim:slow=10][sim:echo]keep going")
        ):
            events.append(event)
            if len(events) == 3:
                chat = events[0].chat
                await coze.chat.cancel(conversation_id=chat.conversation_id, chat_id=chat.id)
        assert "".join(deltas(events)) == "keep going"
        assert events[-1].event == ChatEventType.CONVERSATION_CHAT_COMPLETED
        retrieved = await coze.chat.retrieve(conversation_id=chat.conversation_id, chat_id=chat.id)
        assert retrieved.status == ChatStatus.CANCELED


# --------------------------------------------------------------------------- faults


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("directive", "code"),
    [
        ("auth_failed", 4100),
        ("no_permission", 4101),
        ("rate_limited", 4020),
        ("daily_limit", 4008),
        ("system_busy", 4009),
        ("busy", 4016),
        ("bad_param", 4000),
        ("http429", 429),
        ("server_error", 500),
    ],
)
async def test_fault_before_the_stream_is_a_coze_api_error(sim, directive, code):
    async with async_coze(sim) as coze:
        with pytest.raises(CozeAPIError) as error:
            await collect(coze, f"please [sim:{directive}]")
    assert error.value.code == code
    assert error.value.logid


@pytest.mark.parametrize(
    ("directive", "status", "content_type", "retry_after", "body"),
    [
        ("auth_failed", 401, "application/json", None, None),
        ("no_permission", 403, "application/json", None, None),
        ("rate_limited", 429, "application/json", "2", None),
        ("busy", 200, "application/json", None, None),
        ("http429", 429, "text/plain", "3", "Too Many Requests"),
        ("server_error", 500, "text/html", None, "<html>oops</html>"),
    ],
)
def test_fault_http_shape(sim, directive, status, content_type, retry_after, body):
    response = httpx.post(
        f"{sim.base_url}/v3/chat",
        json={
            "bot_id": BOT,
            "user_id": USER,
            "stream": True,
            "additional_messages": [{"role": "user", "content": f"[sim:{directive}]", "content_type": "text"}],
        },
    )
    assert response.status_code == status
    assert response.headers["content-type"].startswith(content_type)
    assert response.headers.get("retry-after") == retry_after
    assert response.headers["x-tt-logid"]
    if body is not None:
        assert response.text == body


@pytest.mark.asyncio
async def test_error_event_raises_after_half_the_answer(sim):
    text = "[sim:error_event][sim:echo]abcdefghijklmnopqrst"
    received = []
    async with async_coze(sim) as coze:
        with pytest.raises(Exception, match=r"^error event: .*4013") as error:
            async for event in coze.chat.stream(bot_id=BOT, user_id=USER, additional_messages=user(text)):
                received.append(event)
    assert not isinstance(error.value, CozeAPIError)
    half = split_deltas("abcdefghijklmnopqrst")[: len(split_deltas("abcdefghijklmnopqrst")) // 2]
    assert deltas(received) == half
    assert inspect_chat(sim, received[0].chat.id)["status"] == "failed"


@pytest.mark.asyncio
async def test_chat_failed_event_ends_the_stream(sim):
    async with async_coze(sim) as coze:
        events = await collect(coze, "[sim:chat_failed][sim:echo]abcdefghijklmnopqrst")
        assert events[-1].event == ChatEventType.CONVERSATION_CHAT_FAILED
        failed = events[-1].chat
        assert failed.status == ChatStatus.FAILED
        assert (failed.last_error.code, failed.last_error.msg) == (5000, "internal error")
        assert len(deltas(events)) == len(split_deltas("abcdefghijklmnopqrst")) // 2
        retrieved = await coze.chat.retrieve(conversation_id=failed.conversation_id, chat_id=failed.id)
        assert retrieved.status == ChatStatus.FAILED


@pytest.mark.asyncio
async def test_drop_cuts_the_connection_mid_body(sim):
    received = []
    async with async_coze(sim) as coze:
        with pytest.raises(httpx.TransportError):
            async for event in coze.chat.stream(
                bot_id=BOT,
                user_id=USER,
                additional_messages=user("[sim:drop][sim:echo]abcdefghijklmnopqrst"),
            ):
                received.append(event)
        assert len(deltas(received)) == len(split_deltas("abcdefghijklmnopqrst")) // 2
        # The conversation is free again afterwards.
        events = await collect(coze, "after", conversation_id=received[0].chat.conversation_id)
        assert events[-1].event == ChatEventType.CONVERSATION_CHAT_COMPLETED


@pytest.mark.asyncio
async def test_garbage_is_an_invalid_event(sim):
    async with async_coze(sim) as coze:
        with pytest.raises(CozeInvalidEventError):
            await collect(coze, "[sim:garbage]")


@pytest.mark.asyncio
async def test_silence_pauses_half_way_then_finishes(sim):
    gaps = []
    last = None
    async with async_coze(sim) as coze:
        events = []
        async for event in coze.chat.stream(
            bot_id=BOT,
            user_id=USER,
            additional_messages=user("[sim:silence=0.5][sim:echo]abcdefghijklmnopqrst"),
        ):
            now = time.monotonic()
            if event.event == ChatEventType.CONVERSATION_MESSAGE_DELTA:
                if last is not None:
                    gaps.append(now - last)
                last = now
            events.append(event)
    assert "".join(deltas(events)) == "abcdefghijklmnopqrst"
    assert events[-1].event == ChatEventType.CONVERSATION_CHAT_COMPLETED
    half = len(split_deltas("abcdefghijklmnopqrst")) // 2
    assert gaps[half - 1] >= 0.45  # the pause, give or take the event loop's timer resolution
    assert max(gaps[: half - 1] + gaps[half:]) < 0.5


@pytest.mark.asyncio
async def test_second_chat_while_one_streams_is_4016(sim):
    async with async_coze(sim) as coze:
        stream = coze.chat.stream(
            bot_id=BOT, user_id=USER, additional_messages=user("[sim:slow=20][sim:echo]long answer")
        )
        created = await stream.__anext__()
        conversation_id = created.chat.conversation_id
        with pytest.raises(CozeAPIError) as error:
            await collect(coze, "me too", conversation_id=conversation_id)
        assert error.value.code == 4016
        with pytest.raises(CozeAPIError):
            await coze.chat.create(
                bot_id=BOT, user_id=USER, conversation_id=conversation_id, additional_messages=user("x")
            )
        rest = [event async for event in stream]
        assert rest[-1].event == ChatEventType.CONVERSATION_CHAT_COMPLETED
        after = await collect(coze, "now me", conversation_id=conversation_id)
        assert after[-1].event == ChatEventType.CONVERSATION_CHAT_COMPLETED


@pytest.mark.asyncio
async def test_client_disconnect_is_recorded_within_a_second(sim):
    disconnects_before = stats(sim)["client_disconnects"]
    async with async_coze(sim) as coze:
        stream = coze.chat.stream(bot_id=BOT, user_id=USER, additional_messages=user("[sim:slow=50]" + "x" * 1000))
        events = [await stream.__anext__() for _ in range(4)]
        chat_id = events[0].chat.id
        assert stats(sim)["open_streams"] >= 1
        closed_at = time.time()
        await events[-1]._raw_response.aclose()
        await stream.aclose()

        state = inspect_chat(sim, chat_id)
        for _ in range(100):
            if state["client_disconnected_at"] is not None:
                break
            await asyncio.sleep(0.01)
            state = inspect_chat(sim, chat_id)
        assert state["client_disconnected_at"] is not None
        assert state["client_disconnected_at"] - closed_at < 1.0
        assert state["status"] == "canceled"
        assert state["canceled_at"] is None
        sent = state["tokens_sent"]
        await asyncio.sleep(0.2)
        assert inspect_chat(sim, chat_id)["tokens_sent"] == sent < 100
        assert stats(sim)["client_disconnects"] == disconnects_before + 1
        # The conversation is free for the next chat.
        after = await collect(coze, "next", conversation_id=events[0].chat.conversation_id)
        assert after[-1].event == ChatEventType.CONVERSATION_CHAT_COMPLETED


@pytest.mark.asyncio
async def test_many_concurrent_streams(sim):
    async def one(coze: cozepy.AsyncCoze, n: int) -> str:
        return "".join(deltas(await collect(coze, f"[sim:slow=5][sim:echo]stream {n} ✓")))

    async with async_coze(sim) as coze:
        answers = await asyncio.gather(*(one(coze, n) for n in range(200)))
    assert answers == [f"stream {n} ✓" for n in range(200)]
    assert stats(sim)["open_streams"] == 0


# --------------------------------------------------------------------------- auth


@pytest.mark.asyncio
async def test_token_is_required_when_configured(secured_sim):
    for token in ("wrong", f"{SECRET}x"):
        async with async_coze(secured_sim, token) as coze:
            with pytest.raises(CozeAPIError) as error:
                await collect(coze, "hi")
            assert error.value.code == 4100
    missing = httpx.post(f"{secured_sim.base_url}/v1/conversation/create", json={})
    assert (missing.status_code, missing.json()["code"]) == (401, 4100)
    async with async_coze(secured_sim, SECRET) as coze:
        events = await collect(coze, "hi")
    assert events[-1].event == ChatEventType.CONVERSATION_CHAT_COMPLETED


def _private_key_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@pytest.mark.asyncio
async def test_jwt_oauth_tokens_are_accepted(secured_sim):
    auth = cozepy.AsyncJWTAuth(
        client_id="1234567890",
        private_key=_private_key_pem(),
        public_key_id="kid-1",
        ttl=600,
        base_url=secured_sim.base_url,
    )
    token = await auth._generate_token()
    assert token.access_token.startswith("sim-jwt-")
    assert token.token_type == "Bearer"
    assert abs(token.expires_in - (time.time() + 600)) < 5

    coze = cozepy.AsyncCoze(auth=auth, base_url=secured_sim.base_url)
    events = [e async for e in coze.chat.stream(bot_id=BOT, user_id=USER, additional_messages=user("jwt"))]
    assert events[-1].event == ChatEventType.CONVERSATION_CHAT_COMPLETED


def test_jwt_grant_requires_claims_and_grant_type(secured_sim):
    url = f"{secured_sim.base_url}/api/permission/oauth2/token"
    grant = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer"}

    def jwt(claims: dict) -> str:
        import base64

        def part(obj: dict) -> str:
            return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

        return f"{part({'alg': 'RS256'})}.{part(claims)}.c2ln"

    good = {"iss": "1", "aud": "api.coze.cn", "exp": int(time.time()) + 60}
    response = httpx.post(url, data=grant, headers={"Authorization": f"Bearer {jwt(good)}"})
    assert response.status_code == 200
    assert set(response.json()) == {"access_token", "expires_in", "token_type"}
    assert abs(response.json()["expires_in"] - (time.time() + 900)) < 5

    no_aud = {"iss": "1", "exp": int(time.time()) + 60}
    response = httpx.post(url, json=grant, headers={"Authorization": f"Bearer {jwt(no_aud)}"})
    assert response.status_code == 401 and "aud" in response.json()["error_message"]
    response = httpx.post(url, json={"grant_type": "password"}, headers={"Authorization": "Bearer x"})
    assert response.status_code == 400
    response = httpx.post(url, json=grant)
    assert response.status_code == 401


# --------------------------------------------------------------------------- plumbing


def test_unknown_paths_are_404_and_logids_are_unique(sim):
    responses = [httpx.get(f"{sim.base_url}/v9/nothing") for _ in range(3)]
    assert {r.status_code for r in responses} == {404}
    assert responses[0].json() == {"code": 4000, "msg": "not found"}
    assert len({r.headers["x-tt-logid"] for r in responses}) == 3
    assert httpx.get(f"{sim.base_url}/_sim/chats/nope").status_code == 404


def test_app_state_is_inspectable_in_process(sim):
    assert sim.app.state.stats() == stats(sim)
    assert create_app().state.stats() == {
        "open_streams": 0,
        "total_streams": 0,
        "client_disconnects": 0,
        "cancels": 0,
    }


def test_module_runs_standalone_and_prints_its_url():
    root = Path(__file__).resolve().parents[2]
    process = subprocess.Popen(
        [sys.executable, "-m", "chat.simulator", "--port", "0", "--token", "t"],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        base_url = process.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:")
        for _ in range(100):
            try:
                response = httpx.get(f"{base_url}/_sim/stats")
                break
            except httpx.TransportError:
                time.sleep(0.05)
        assert response.json()["total_streams"] == 0
        coze = cozepy.Coze(auth=cozepy.TokenAuth("t"), base_url=base_url)
        conversation = coze.conversations.create()
        assert conversation.id.isdigit() and len(conversation.id) == 19
    finally:
        process.terminate()
        process.wait(timeout=10)
