"""The Coze adapter's error mapping, client handling and stream closing."""

import asyncio

import httpx
import pytest
from cozepy import ChatEventType, CozeAPIError, CozeInvalidEventError

from chat import coze
from chat.coze import chats as coze_chats
from chat.coze import client as coze_client
from chat.domain.errors import ChatError
from tests.conftest import COZE_TEST_TOKEN


@pytest.mark.parametrize(
    ("code", "expected", "status"),
    [
        (4100, "upstream_auth_failed", 502),
        (4101, "upstream_auth_failed", 502),
        (4008, "upstream_rate_limited", 429),
        (4009, "upstream_rate_limited", 429),
        (4020, "upstream_rate_limited", 429),
        (429, "upstream_rate_limited", 429),
        (4016, "session_busy", 409),
        (4000, "upstream_error", 502),
        (4010, "upstream_error", 502),
        (5000, "upstream_error", 502),
        (500, "upstream_error", 502),
    ],
)
def test_coze_codes_map_to_our_codes(code, expected, status):
    error = coze.map_exception(CozeAPIError(code, "msg", "logid-1"), mid_stream=False)

    assert (error.code, error.status) == (expected, status)
    assert error.logid == "logid-1"
    if expected == "upstream_rate_limited":
        assert error.retry_after and error.retry_after > 0


def test_permanent_coze_errors_are_not_retryable_and_transient_ones_are():
    assert not coze.map_exception(CozeAPIError(4010, "prompt too long"), mid_stream=True).retryable
    assert coze.map_exception(CozeAPIError(5000, "internal"), mid_stream=True).retryable


def test_transport_errors_map_to_unavailable_timeout_or_error():
    request = httpx.Request("POST", "http://coze.invalid")
    assert coze.map_exception(httpx.ConnectError("refused", request=request), mid_stream=False).code == (
        "upstream_unavailable"
    )
    assert coze.map_exception(httpx.ReadTimeout("slow", request=request), mid_stream=True).code == "upstream_timeout"
    dropped = coze.map_exception(httpx.RemoteProtocolError("cut", request=request), mid_stream=True)
    assert dropped.code == "upstream_error" and dropped.retryable
    assert coze.map_exception(CozeInvalidEventError("", "junk"), mid_stream=True).code == "upstream_error"


def test_error_event_payload_is_parsed_for_its_code():
    error = coze.map_exception(Exception('error event: {"code":4020,"msg":"slow down"}'), mid_stream=True)

    assert error.code == "upstream_rate_limited"


def test_the_token_never_appears_in_error_details(settings):
    settings.COZE_API_TOKEN = COZE_TEST_TOKEN
    error = coze.map_exception(CozeAPIError(4000, f"bad token {COZE_TEST_TOKEN}"), mid_stream=False)

    assert COZE_TEST_TOKEN not in error.detail
    assert "[redacted]" in error.detail


@pytest.mark.asyncio
async def test_one_shared_client_per_event_loop():
    assert coze.get_client() is coze.get_client()


@pytest.mark.asyncio
async def test_aclose_releases_the_upstream_connection(simulator):
    upstream = await coze.achat_open(
        bot_id="1",
        user_id="u",
        conversation_id=None,
        messages=coze.build_messages(message="[sim:slow=100] long enough", additional_messages=None),
    )
    events = upstream.events()
    started = await anext(events)
    assert isinstance(started, coze.UpstreamStarted)
    assert started.logid and started.logid == upstream.logid  # Coze's x-tt-logid of the chat request

    await upstream.aclose()

    async with httpx.AsyncClient(base_url=simulator.base_url) as sim:
        for _ in range(50):
            chat = (await sim.get(f"/_sim/chats/{started.chat_id}")).json()
            if chat["client_disconnected_at"]:
                break
            await asyncio.sleep(0.02)
    assert chat["client_disconnected_at"] is not None


@pytest.mark.asyncio
async def test_refusal_raises_chat_error_before_any_event():
    with pytest.raises(ChatError) as caught:
        await coze.achat_open(
            bot_id="1",
            user_id="u",
            conversation_id=None,
            messages=coze.build_messages(message="[sim:auth_failed]", additional_messages=None),
        )
    assert caught.value.code == "upstream_auth_failed"
    assert caught.value.logid


@pytest.mark.asyncio
async def test_cozepy_leaves_the_response_of_a_closed_stream_open_and_we_can_see_it(simulator):
    """What `_chat_stream_response` relies on (and why cozepy is pinned): cozepy's public stream
    sends the chat through our httpx client, and closing the stream does not close the HTTP
    response. When a cozepy upgrade changes either, this fails first."""
    stream = coze.get_client().chat.stream(
        bot_id="1",
        user_id="u",
        additional_messages=coze.build_messages(message="[sim:slow=100] long enough", additional_messages=None),
    )
    first = await anext(stream)
    response = coze_chats._chat_stream_response()
    assert first.event == ChatEventType.CONVERSATION_CHAT_CREATED
    assert response.headers["content-type"].startswith("text/event-stream")

    await stream.aclose()

    assert not response.is_closed, "cozepy now closes a closed stream's response: UpstreamChat may rely on it"
    await response.aclose()


@pytest.mark.asyncio
async def test_a_stream_whose_response_the_adapter_cannot_see_is_refused_loudly(simulator):
    # The last response this task saw is not a chat stream: a conversation created just before.
    await coze.get_client().conversations.create()

    with pytest.raises(RuntimeError, match="response hook"):
        coze_chats._chat_stream_response()


@pytest.mark.asyncio
async def test_a_stream_that_fails_at_its_first_event_leaves_no_response_open(simulator):
    with pytest.raises(ChatError) as caught:
        await coze.achat_open(
            bot_id="1",
            user_id="u",
            conversation_id=None,
            messages=coze.build_messages(message="[sim:garbage]", additional_messages=None),
        )

    assert caught.value.code == "upstream_error"
    response = coze_client.last_response.get()
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.is_closed


@pytest.mark.asyncio
async def test_an_error_event_through_cozepy_keeps_its_coze_code(simulator):
    # cozepy raises a bare Exception("error event: {...}") for it; map_exception reads that text.
    upstream = await coze.achat_open(
        bot_id="1",
        user_id="u",
        conversation_id=None,
        messages=coze.build_messages(message="[sim:error_event] break halfway", additional_messages=None),
    )
    try:
        with pytest.raises(ChatError) as caught:
            async for _event in upstream.events():
                pass
    finally:
        await upstream.aclose()

    assert (caught.value.code, caught.value.upstream_code) == ("upstream_error", 4013)
    assert caught.value.logid == upstream.logid
