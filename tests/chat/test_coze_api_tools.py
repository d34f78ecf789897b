"""Local tools (docs/api.md §13): a bot whose plugin runs on the client pauses its chat; the reply
waits (`requires_action`: the session busy, no stream slot held, spared by crash recovery, failed
after CHAT_TOOL_OUTPUT_TIMEOUT) until the outputs come, through Coze's `submit_tool_outputs` or the
OpenAI path's `tool` messages, and the rest of the reply is stored with the same turn. The
simulator's bot calls its local plugin for `[sim:tool]`."""

import asyncio
import json
from datetime import timedelta

import httpx
import openai
import pytest
from asgiref.sync import sync_to_async
from cozepy import ChatEventType, ChatStatus, CozeAPIError, ToolOutput
from django.db import connection
from django.utils import timezone

from chat.turn import tools
from chat.turn.recovery import fail_expired_pauses, mark_interrupted_replies
from sessions_admin.models import ApiClient, ChatSession, Reply
from tests.chat.coze_clients import bot, gateway_coze, question, sim_get, stream_turn
from tests.conftest import auth, await_until, stream_chat, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def pause_for_tools(coze, conversation_id: str, text: str = "[sim:tool] Weather in Oslo?"):
    """Stream a turn that stops for the bot's local plugin; returns the paused chat."""
    names, answer, chat = stream_turn(coze, text, user_id="tool-user", conversation_id=conversation_id)
    assert names[-1] == "conversation.chat.requires_action" and answer == ""
    assert chat.status == ChatStatus.REQUIRES_ACTION
    return chat


def test_a_paused_chat_waits_then_goes_on_with_the_outputs_as_one_stored_reply(asgi_server, api_key, simulator):
    coze = gateway_coze(asgi_server, api_key)
    conversation = coze.conversations.create(bot_id=bot())
    chat = pause_for_tools(coze, conversation.id)
    (call,) = chat.required_action.submit_tool_outputs.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"input": "Weather in Oslo?"}
    reply = Reply.objects.get(coze_chat_id=chat.id)
    assert reply.status == Reply.Status.REQUIRES_ACTION
    assert coze.chat.retrieve(conversation_id=conversation.id, chat_id=chat.id).status == ChatStatus.REQUIRES_ACTION

    # While it waits the conversation is busy (Coze's 4016), on every API.
    with pytest.raises(CozeAPIError) as busy:
        stream_turn(coze, "Anyone there?", user_id="tool-user", conversation_id=conversation.id)
    assert busy.value.code == 4016
    response, _ = stream_chat(
        httpx.Client(base_url=asgi_server.url), api_key, {"message": "hi", "session_id": conversation.id}
    )
    assert response.status_code == 409
    # Crash recovery leaves a waiting reply alone.
    mark_interrupted_replies()
    assert fail_expired_pauses() == 0
    assert Reply.objects.get(pk=reply.pk).status == Reply.Status.REQUIRES_ACTION

    answer, names = "", []
    for event in coze.chat.submit_tool_outputs(
        conversation_id=conversation.id,
        chat_id=chat.id,
        tool_outputs=[ToolOutput(tool_call_id=call.id, output="sunny")],
        stream=True,
    ):
        names.append(event.event)
        if event.event == ChatEventType.CONVERSATION_MESSAGE_DELTA:
            answer += event.message.content
    assert names[0] == ChatEventType.CONVERSATION_CHAT_IN_PROGRESS
    assert names[-1] == ChatEventType.CONVERSATION_CHAT_COMPLETED
    assert answer == "You said: [sim:tool] Weather in Oslo? [tool get_weather: sunny]"

    reply.refresh_from_db()
    assert reply.status == Reply.Status.COMPLETED and reply.total_tokens > 0
    assert reply.messages.get(kind="answer").content == answer
    assert reply.required_action["tool_calls"][0]["output"] == "sunny"
    assert Reply.objects.filter(session__session_id=conversation.id).count() == 1  # one turn
    assert ChatSession.objects.get(session_id=conversation.id).status == "active"
    assert sim_get(simulator, f"/_sim/chats/{chat.id}")["tool_outputs"] == [
        {"tool_call_id": call.id, "output": "sunny"}
    ]
    messages = coze.chat.messages.list(conversation_id=conversation.id, chat_id=chat.id)
    assert [m.type for m in messages][:3] == ["function_call", "tool_response", "answer"]
    _, next_answer, _ = stream_turn(coze, "Thanks", user_id="tool-user", conversation_id=conversation.id)
    assert next_answer.startswith("You said: Thanks (turn 2;")


def test_a_waiting_reply_holds_no_stream_slot(asgi_server, api_key, settings):
    ApiClient.objects.filter(name="test client").update(max_concurrent_streams=1)
    coze = gateway_coze(asgi_server, api_key)
    pause_for_tools(coze, coze.conversations.create(bot_id=bot()).id)
    _, answer, _ = stream_turn(coze, "Another conversation", user_id="u")  # the one slot is free
    assert answer == "You said: Another conversation"


def test_create_and_poll_stops_at_requires_action_and_non_stream_outputs_finish_it(asgi_server, api_key):
    coze = gateway_coze(asgi_server, api_key)
    conversation = coze.conversations.create(bot_id=bot())
    poll = coze.chat.create_and_poll(
        bot_id=bot(), user_id="u", conversation_id=conversation.id, additional_messages=question("[sim:tool=a,b] x")
    )
    assert poll.chat.status == ChatStatus.REQUIRES_ACTION
    calls = poll.chat.required_action.submit_tool_outputs.tool_calls
    assert [c.function.name for c in calls] == ["a", "b"]
    with pytest.raises(CozeAPIError) as wrong:  # one output missing
        coze.chat.submit_tool_outputs(
            conversation_id=conversation.id,
            chat_id=poll.chat.id,
            tool_outputs=[ToolOutput(tool_call_id=calls[0].id, output="1")],
            stream=False,
        )
    assert wrong.value.code == 4000
    assert Reply.objects.get(coze_chat_id=poll.chat.id).status == Reply.Status.REQUIRES_ACTION  # still waits

    chat = coze.chat.submit_tool_outputs(
        conversation_id=conversation.id,
        chat_id=poll.chat.id,
        tool_outputs=[ToolOutput(tool_call_id=c.id, output=str(i)) for i, c in enumerate(calls)],
        stream=False,
    )
    assert chat.status == ChatStatus.IN_PROGRESS
    ended = wait_until(
        lambda: (
            (c := coze.chat.retrieve(conversation_id=conversation.id, chat_id=chat.id)).status == ChatStatus.COMPLETED
            and c
        )
    )
    assert ended.id == poll.chat.id
    answers = [m.content for m in coze.chat.messages.list(conversation_id=conversation.id, chat_id=chat.id)]
    assert "You said: [sim:tool=a,b] x [tool a: 0] [tool b: 1]" in answers


def test_outputs_that_do_not_come_in_time_fail_the_reply(asgi_server, api_key, simulator, settings):
    settings.CHAT_TOOL_OUTPUT_TIMEOUT = 1
    coze = gateway_coze(asgi_server, api_key)
    conversation = coze.conversations.create(bot_id=bot())
    chat = pause_for_tools(coze, conversation.id)
    reply = wait_until(
        lambda: (r := Reply.objects.get(coze_chat_id=chat.id)).status == Reply.Status.FAILED and r, timeout=10
    )
    assert reply.error_code == "tool_output_timeout"
    assert sim_get(simulator, f"/_sim/chats/{chat.id}")["status"] == "canceled"  # Coze's chat stopped too
    retrieved = coze.chat.retrieve(conversation_id=conversation.id, chat_id=chat.id)
    assert retrieved.status == ChatStatus.FAILED and retrieved.last_error.code == 5000
    with pytest.raises(CozeAPIError) as late:
        coze.chat.submit_tool_outputs(
            conversation_id=conversation.id,
            chat_id=chat.id,
            tool_outputs=[
                ToolOutput(tool_call_id=chat.required_action.submit_tool_outputs.tool_calls[0].id, output="x")
            ],
            stream=True,
        )
    assert late.value.code == 4000
    _, answer, _ = stream_turn(coze, "Still there?", user_id="u", conversation_id=conversation.id)
    assert answer.startswith("You said: Still there?")


def test_crash_recovery_fails_a_pause_whose_worker_died_once_its_wait_passed(asgi_server, api_key):
    coze = gateway_coze(asgi_server, api_key)
    conversation = coze.conversations.create(bot_id=bot())
    chat = pause_for_tools(coze, conversation.id)
    assert fail_expired_pauses() == 0
    # The worker that paused it is gone, and so is its timer; the wait has passed.
    ChatSession.objects.filter(session_id=conversation.id).update(locked_until="2000-01-01T00:00:00Z")
    assert fail_expired_pauses() == 1
    reply = Reply.objects.get(coze_chat_id=chat.id)
    assert reply.status == Reply.Status.FAILED and reply.error_code == "tool_output_timeout"


def test_a_waiting_chat_can_be_cancelled(asgi_server, api_key, simulator):
    coze = gateway_coze(asgi_server, api_key)
    conversation = coze.conversations.create(bot_id=bot())
    chat = pause_for_tools(coze, conversation.id)
    assert coze.chat.cancel(conversation_id=conversation.id, chat_id=chat.id).status == ChatStatus.CANCELED
    assert Reply.objects.get(coze_chat_id=chat.id).status == Reply.Status.CANCELLED
    assert sim_get(simulator, f"/_sim/chats/{chat.id}")["status"] == "canceled"


def test_apis_that_cannot_carry_tool_calls_fail_the_turn_and_stop_cozes_chat(http, api_key, simulator):
    response, events = stream_chat(http, api_key, {"message": "[sim:tool] weather?"})
    assert response.status_code == 200
    error = next(e["data"] for e in events if e.get("event") == "error")
    assert error["code"] == "upstream_error" and "runs on the client" in error["detail"]
    reply = Reply.objects.get()
    assert reply.status == Reply.Status.FAILED and reply.transport == "sse"
    chat = wait_until(
        lambda: (c := sim_get(simulator, f"/_sim/chats/{reply.coze_chat_id}"))["status"] == "canceled" and c
    )
    assert chat["required_action"] is not None
    assert (
        http.post(
            "/api/chat", json={"message": "next", "session_id": reply.session.session_id}, headers=auth(api_key)
        ).status_code
        == 200
    )


# --- the OpenAI path ----------------------------------------------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"input": {"type": "string"}}}},
}


@pytest.fixture
def openai_client(asgi_server, api_key):
    return openai.OpenAI(api_key=api_key, base_url=f"{asgi_server.url}/v1", max_retries=0)


def test_openai_tool_calls_round_trip_and_the_history_still_matches_the_session(openai_client, simulator):
    first = [{"role": "user", "content": "[sim:tool] Weather in Oslo?"}]
    paused = openai_client.chat.completions.with_raw_response.create(model=bot(), messages=first, tools=[WEATHER_TOOL])
    session_id = paused.headers["x-session-id"]
    paused = paused.parse()
    choice = paused.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"input": "Weather in Oslo?"}
    assert Reply.objects.get(session__session_id=session_id).status == Reply.Status.REQUIRES_ACTION

    history = [
        *first,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    done = openai_client.chat.completions.with_raw_response.create(model=bot(), messages=history)
    assert done.headers["x-session-id"] == session_id
    answer = done.parse().choices[0].message.content
    assert answer == "You said: [sim:tool] Weather in Oslo? [tool get_weather: sunny]"
    assert Reply.objects.filter(session__session_id=session_id).count() == 1
    assert Reply.objects.get(session__session_id=session_id).status == Reply.Status.COMPLETED

    # The whole history resent with a new question continues the same session and its memory.
    history += [{"role": "assistant", "content": answer}, {"role": "user", "content": "And tomorrow?"}]
    later = openai_client.chat.completions.with_raw_response.create(model=bot(), messages=history)
    assert later.headers["x-session-id"] == session_id
    assert later.parse().choices[0].message.content.startswith("You said: And tomorrow? (turn 2;")


def test_openai_streamed_tool_calls_and_their_streamed_continuation(openai_client):
    first = [{"role": "user", "content": "[sim:tool=get_weather,get_time] Oslo"}]
    chunks = list(openai_client.chat.completions.create(model=bot(), messages=first, tools=[WEATHER_TOOL], stream=True))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert [c.function.name for c in calls] == ["get_weather", "get_time"] and [c.index for c in calls] == [0, 1]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    history = [
        *first,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.function.name, "arguments": c.function.arguments},
                }
                for c in calls
            ],
        },
        {"role": "tool", "tool_call_id": calls[0].id, "content": "rain"},
        {"role": "tool", "tool_call_id": calls[1].id, "content": "noon"},
    ]
    streamed = openai_client.chat.completions.create(model=bot(), messages=history, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == "You said: [sim:tool=get_weather,get_time] Oslo [tool get_weather: rain] [tool get_time: noon]"


def test_openai_tool_messages_after_the_wait_passed_are_refused(openai_client, settings):
    settings.CHAT_TOOL_OUTPUT_TIMEOUT = 1
    first = [{"role": "user", "content": "[sim:tool] Oslo"}]
    paused = openai_client.chat.completions.create(model=bot(), messages=first)
    (call,) = paused.choices[0].message.tool_calls
    wait_until(lambda: Reply.objects.get().status == Reply.Status.FAILED, timeout=10)
    with pytest.raises(openai.BadRequestError):
        openai_client.chat.completions.create(
            model=bot(),
            messages=[
                *first,
                {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                {"role": "tool", "tool_call_id": call.id, "content": "late"},
            ],
        )
    assert Reply.objects.get().error_code == "tool_output_timeout"  # refused; it stays failed


@pytest.mark.asyncio
async def test_a_new_worker_arms_the_deadline_of_a_pause_it_did_not_make(asgi_server, api_key):
    """The worker that paused a reply restarted (its timer gone) before the deadline: the next
    worker to start arms it, and the reply ends failed at its deadline, not at the next restart."""
    coze = gateway_coze(asgi_server, api_key)
    conversation = await asyncio.to_thread(coze.conversations.create, bot_id=bot())
    chat = await asyncio.to_thread(pause_for_tools, coze, conversation.id)

    @sync_to_async(thread_sensitive=False)
    def deadline_in_a_second_and_status() -> str:
        try:
            ChatSession.objects.filter(session_id=conversation.id).update(
                locked_until=timezone.now() + timedelta(seconds=1)
            )
            return Reply.objects.get(coze_chat_id=chat.id).status
        finally:
            connection.close()

    assert await deadline_in_a_second_and_status() == Reply.Status.REQUIRES_ACTION
    assert await tools.arearm_expiries() == 1  # as lifecycle.process_started does in a new worker

    @sync_to_async(thread_sensitive=False)
    def ended() -> Reply | None:
        try:
            reply = Reply.objects.get(coze_chat_id=chat.id)
            return reply if reply.status == Reply.Status.FAILED else None
        finally:
            connection.close()

    reply = await await_until(ended, timeout=10)
    assert reply.error_code == "tool_output_timeout"
