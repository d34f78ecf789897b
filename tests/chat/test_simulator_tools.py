"""The simulator's bot with local plugins (`[sim:tool]`), driven by the real cozepy.

The chat pauses with `conversation.chat.requires_action`; `submit_tool_outputs` (streamed or
not) continues the same chat, and the answer carries the outputs.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator

import cozepy
import httpx
import pytest
from cozepy import ChatEventType, ChatStatus, Message, MessageType, ToolOutput
from cozepy.exception import CozeAPIError

from chat.simulator import SimulatorConfig, SimulatorServer

BOT = "7400000000000000004"
USER = "tester"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(SimulatorConfig(token_delay_ms=1)) as server:
        yield server


@pytest.fixture
def coze(sim) -> cozepy.Coze:
    return cozepy.Coze(auth=cozepy.TokenAuth("any"), base_url=sim.base_url)


@contextlib.asynccontextmanager
async def async_coze(server: SimulatorServer) -> AsyncIterator[cozepy.AsyncCoze]:
    http_client = cozepy.AsyncHTTPClient()
    try:
        yield cozepy.AsyncCoze(auth=cozepy.AsyncTokenAuth("any"), base_url=server.base_url, http_client=http_client)
    finally:
        await http_client.aclose()


def user(text: str) -> list[Message]:
    return [Message.build_user_question_text(text)]


def outputs_for(chat: cozepy.Chat, **by_name: str) -> list[ToolOutput]:
    calls = chat.required_action.submit_tool_outputs.tool_calls
    return [ToolOutput(tool_call_id=call.id, output=by_name[call.function.name]) for call in calls]


def inspect_chat(server: SimulatorServer, chat_id: str) -> dict:
    return httpx.get(f"{server.base_url}/_sim/chats/{chat_id}").json()


def wait_for_status(coze: cozepy.Coze, chat: cozepy.Chat, *statuses: ChatStatus, seconds: float = 5) -> cozepy.Chat:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        chat = coze.chat.retrieve(conversation_id=chat.conversation_id, chat_id=chat.id)
        if chat.status in statuses:
            return chat
        time.sleep(0.01)
    raise AssertionError(f"chat {chat.id} is still {chat.status}, not {statuses}")


def test_stream_pauses_for_the_tool_and_submit_continues_the_same_chat(sim, coze):
    events = list(coze.chat.stream(bot_id=BOT, user_id=USER, additional_messages=user("Paris? [sim:tool]")))
    assert [e.event for e in events] == [
        ChatEventType.CONVERSATION_CHAT_CREATED,
        ChatEventType.CONVERSATION_CHAT_IN_PROGRESS,
        ChatEventType.CONVERSATION_MESSAGE_COMPLETED,
        ChatEventType.CONVERSATION_CHAT_REQUIRES_ACTION,
    ]
    function_call = events[2].message
    assert function_call.type == MessageType.FUNCTION_CALL
    assert json.loads(function_call.content) == {"name": "get_weather", "arguments": {"input": "Paris?"}}
    paused = events[-1].chat
    assert paused.status == ChatStatus.REQUIRES_ACTION
    [call] = paused.required_action.submit_tool_outputs.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"input": "Paris?"}
    assert coze.chat.retrieve(conversation_id=paused.conversation_id, chat_id=paused.id).status == "requires_action"

    stream = coze.chat.submit_tool_outputs(
        conversation_id=paused.conversation_id,
        chat_id=paused.id,
        tool_outputs=outputs_for(paused, get_weather="sunny, 21°C"),
        stream=True,
    )
    rest = list(stream)
    kinds = [e.event for e in rest]
    assert kinds[0] == ChatEventType.CONVERSATION_CHAT_IN_PROGRESS  # no second chat.created
    assert rest[1].message.type == MessageType.TOOL_RESPONSE and rest[1].message.content == "sunny, 21°C"
    assert kinds[-1] == ChatEventType.CONVERSATION_CHAT_COMPLETED
    answer = "You said: Paris? [sim:tool] [tool get_weather: sunny, 21°C]"
    deltas = "".join(e.message.content for e in rest if e.event == ChatEventType.CONVERSATION_MESSAGE_DELTA)
    assert deltas == answer
    assert {e.chat.id for e in rest if e.chat} == {paused.id}

    messages = coze.chat.messages.list(conversation_id=paused.conversation_id, chat_id=paused.id)
    assert [m.type for m in messages] == [
        MessageType.FUNCTION_CALL,
        MessageType.TOOL_RESPONSE,
        MessageType.ANSWER,
        MessageType.VERBOSE,
        MessageType.FOLLOW_UP,
        MessageType.FOLLOW_UP,
    ]
    assert messages[2].content == answer
    received = inspect_chat(sim, paused.id)["tool_outputs"]
    assert received == [{"tool_call_id": call.id, "output": "sunny, 21°C"}]


@pytest.mark.asyncio
async def test_async_stream_and_submit_with_two_tools(sim):
    async with async_coze(sim) as coze:
        events = [
            e
            async for e in coze.chat.stream(
                bot_id=BOT, user_id=USER, additional_messages=user("plan my day [sim:tool=get_weather,get_agenda]")
            )
        ]
        paused = events[-1].chat
        names = [c.function.name for c in paused.required_action.submit_tool_outputs.tool_calls]
        assert names == ["get_weather", "get_agenda"]
        assert [e.message.type for e in events if e.message] == [MessageType.FUNCTION_CALL] * 2

        rest = [
            e
            async for e in coze.chat.submit_tool_outputs_stream(
                conversation_id=paused.conversation_id,
                chat_id=paused.id,
                tool_outputs=outputs_for(paused, get_agenda="two meetings", get_weather="rain"),
            )
        ]
    completed = [e.message for e in rest if e.event == ChatEventType.CONVERSATION_MESSAGE_COMPLETED]
    assert [m.content for m in completed if m.type == MessageType.TOOL_RESPONSE] == ["rain", "two meetings"]
    answer = next(m for m in completed if m.type == MessageType.ANSWER)
    assert answer.content.endswith(" [tool get_weather: rain] [tool get_agenda: two meetings]")
    assert rest[-1].chat.status == ChatStatus.COMPLETED and rest[-1].chat.usage.output_count > 0


def test_non_stream_chat_pauses_and_non_stream_submit_finishes_in_the_background(sim, coze):
    poll = coze.chat.create_and_poll(
        bot_id=BOT, user_id=USER, additional_messages=user("[sim:first_delay=50] weather [sim:tool]")
    )
    paused = poll.chat
    assert paused.status == ChatStatus.REQUIRES_ACTION
    assert [m.type for m in poll.messages] == [MessageType.FUNCTION_CALL]

    chat = coze.chat.submit_tool_outputs(
        conversation_id=paused.conversation_id,
        chat_id=paused.id,
        tool_outputs=outputs_for(paused, get_weather="fog"),
        stream=False,
    )
    assert chat.id == paused.id and chat.status == ChatStatus.IN_PROGRESS
    finished = wait_for_status(coze, chat, ChatStatus.COMPLETED)
    assert finished.usage.output_count > 0
    newest = coze.conversations.messages.list(conversation_id=paused.conversation_id, limit=1).items[0]
    assert newest.content == "You said: [sim:first_delay=50] weather [sim:tool] [tool get_weather: fog]"


def test_the_conversation_is_busy_while_waiting_and_outputs_must_match_the_calls(sim, coze):
    events = list(coze.chat.stream(bot_id=BOT, user_id=USER, additional_messages=user("[sim:tool=a_tool,b_tool]")))
    paused = events[-1].chat
    with pytest.raises(CozeAPIError) as error:
        list(
            coze.chat.stream(
                bot_id=BOT, user_id=USER, conversation_id=paused.conversation_id, additional_messages=user("next")
            )
        )
    assert error.value.code == 4016

    [a_call, b_call] = paused.required_action.submit_tool_outputs.tool_calls

    def submit(outputs: list[ToolOutput]) -> cozepy.Chat:
        return coze.chat.submit_tool_outputs(
            conversation_id=paused.conversation_id, chat_id=paused.id, tool_outputs=outputs, stream=False
        )

    for wrong in (
        [ToolOutput(tool_call_id=a_call.id, output="only one")],
        [ToolOutput(tool_call_id=a_call.id, output="x"), ToolOutput(tool_call_id="call_unknown", output="y")],
        [ToolOutput(tool_call_id=a_call.id, output="x"), ToolOutput(tool_call_id=a_call.id, output="y")],
        [ToolOutput(tool_call_id=i, output="x") for i in (a_call.id, b_call.id, "call_unknown")],
        [ToolOutput(tool_call_id=i, output="x") for i in (a_call.id, b_call.id, a_call.id)],
    ):
        with pytest.raises(CozeAPIError) as error:
            submit(wrong)
        assert error.value.code == 4000
    assert inspect_chat(sim, paused.id)["status"] == "requires_action"

    submit([ToolOutput(tool_call_id=b_call.id, output="B"), ToolOutput(tool_call_id=a_call.id, output="A")])
    wait_for_status(coze, paused, ChatStatus.COMPLETED)
    with pytest.raises(CozeAPIError) as error:  # nothing is waiting any more
        submit([ToolOutput(tool_call_id=a_call.id, output="A"), ToolOutput(tool_call_id=b_call.id, output="B")])
    assert error.value.code == 4000
    with pytest.raises(CozeAPIError) as error:
        coze.chat.submit_tool_outputs(
            conversation_id=paused.conversation_id, chat_id="1", tool_outputs=[], stream=False
        )
    assert error.value.code == 4001


def test_cancel_ends_a_waiting_chat_and_frees_the_conversation(sim, coze):
    paused = list(coze.chat.stream(bot_id=BOT, user_id=USER, additional_messages=user("[sim:tool]")))[-1].chat
    canceled = coze.chat.cancel(conversation_id=paused.conversation_id, chat_id=paused.id)
    assert canceled.status == ChatStatus.CANCELED
    assert inspect_chat(sim, paused.id)["finished_at"] is not None
    events = list(
        coze.chat.stream(
            bot_id=BOT, user_id=USER, conversation_id=paused.conversation_id, additional_messages=user("free again")
        )
    )
    assert events[-1].chat.status == ChatStatus.COMPLETED


def test_a_chat_whose_outputs_never_come_fails_after_the_timeout():
    with SimulatorServer(SimulatorConfig(tool_output_timeout_s=0.2)) as server:
        coze = cozepy.Coze(auth=cozepy.TokenAuth("any"), base_url=server.base_url)
        paused = list(coze.chat.stream(bot_id=BOT, user_id=USER, additional_messages=user("[sim:tool]")))[-1].chat
        failed = wait_for_status(coze, paused, ChatStatus.FAILED)
        assert failed.last_error.code == 5000 and "did not arrive" in failed.last_error.msg
        with pytest.raises(CozeAPIError) as error:
            coze.chat.submit_tool_outputs(
                conversation_id=paused.conversation_id,
                chat_id=paused.id,
                tool_outputs=outputs_for(paused, get_weather="too late"),
                stream=False,
            )
        assert error.value.code == 4000
        again = coze.chat.create_and_poll(
            bot_id=BOT, user_id=USER, conversation_id=paused.conversation_id, additional_messages=user("next")
        )
        assert again.chat.status == ChatStatus.COMPLETED


def test_closing_the_stream_after_the_pause_keeps_the_chat_waiting(sim):
    body = {
        "bot_id": BOT,
        "user_id": USER,
        "stream": True,
        "additional_messages": [{"role": "user", "content": "[sim:tool]", "content_type": "text"}],
    }
    with httpx.stream("POST", f"{sim.base_url}/v3/chat", json=body) as response:
        lines = list(response.iter_lines())
    events = [line.removeprefix("event:") for line in lines if line.startswith("event:")]
    assert events[-2:] == ["conversation.chat.requires_action", "done"]
    paused = json.loads(lines[lines.index("event:conversation.chat.requires_action") + 1].removeprefix("data:"))
    assert paused["status"] == "requires_action" and "required_action" in paused

    conversation = httpx.get(f"{sim.base_url}/_sim/conversations/{paused['conversation_id']}").json()
    assert conversation["running_chat_id"] == paused["id"]
    assert inspect_chat(sim, paused["id"])["status"] == "requires_action"
