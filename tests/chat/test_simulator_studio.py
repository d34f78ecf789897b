"""The simulator's Coze Studio profile against coze.com's, with the real cozepy.

Studio ends a stream with `conversation.stream.done` (its data line empty) instead of `done`,
sends no verbose message, answers a non-stream chat only once it has ended, takes personal
access tokens only, and lacks some of coze.com's routes (answering them as Studio does).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cozepy
import httpx
import pytest
from cozepy import ChatEventType, ChatStatus, Message, MessageType, ToolOutput
from cozepy.exception import CozeAPIError

from chat.simulator import SimulatorConfig, SimulatorServer

BOT = "7400000000000000005"
USER = "tester"
PAT = "pat_studio_token"


@pytest.fixture(scope="module")
def studio() -> Iterator[SimulatorServer]:
    with SimulatorServer(SimulatorConfig(token=PAT, studio=True)) as server:
        yield server


@pytest.fixture(scope="module")
def coze_com() -> Iterator[SimulatorServer]:
    with SimulatorServer(SimulatorConfig()) as server:
        yield server


def client(server: SimulatorServer, token: str = PAT) -> cozepy.Coze:
    return cozepy.Coze(auth=cozepy.TokenAuth(token), base_url=server.base_url)


def user(text: str) -> list[Message]:
    return [Message.build_user_question_text(text)]


def raw_stream(server: SimulatorServer, text: str, token: str = PAT) -> str:
    body = {
        "bot_id": BOT,
        "user_id": USER,
        "stream": True,
        "additional_messages": [{"role": "user", "content": text, "content_type": "text"}],
    }
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.post(f"{server.base_url}/v3/chat", json=body, headers=headers).text


def test_studio_stream_ends_with_stream_done_and_no_verbose_message(studio):
    body = raw_stream(studio, "hello studio")
    assert body.rstrip("\n").endswith("event:conversation.stream.done\ndata:")
    assert "event:done" not in body and '"type":"verbose"' not in body

    events = list(client(studio).chat.stream(bot_id=BOT, user_id=USER, additional_messages=user("hello studio")))
    # cozepy knows no conversation.stream.done: it reports an unknown event with empty data.
    assert events[-1].event == ChatEventType.UNKNOWN
    assert events[-1].unknown == {"event": "conversation.stream.done", "data": ""}
    assert events[-2].event == ChatEventType.CONVERSATION_CHAT_COMPLETED
    completed = [e.message.type for e in events if e.event == ChatEventType.CONVERSATION_MESSAGE_COMPLETED]
    assert completed == [MessageType.ANSWER, MessageType.FOLLOW_UP, MessageType.FOLLOW_UP]


@pytest.mark.asyncio
async def test_async_client_reads_the_studio_stream_to_its_end(studio):
    http_client = cozepy.AsyncHTTPClient()
    try:
        coze = cozepy.AsyncCoze(auth=cozepy.AsyncTokenAuth(PAT), base_url=studio.base_url, http_client=http_client)
        conversation = await coze.conversations.create()
        events = [
            e
            async for e in coze.chat.stream(
                bot_id=BOT, user_id=USER, conversation_id=conversation.id, additional_messages=user("async studio")
            )
        ]
        chat = await coze.chat.create(
            bot_id=BOT, user_id=USER, conversation_id=conversation.id, additional_messages=user("and again")
        )
    finally:
        await http_client.aclose()
    assert [e.event for e in events[-2:]] == [ChatEventType.CONVERSATION_CHAT_COMPLETED, ChatEventType.UNKNOWN]
    assert "".join(e.message.content for e in events if e.event == ChatEventType.CONVERSATION_MESSAGE_DELTA) == (
        "You said: async studio"
    )
    assert chat.status == ChatStatus.COMPLETED and chat.conversation_id == conversation.id


def test_coze_com_stream_ends_with_done_after_the_verbose_message(coze_com):
    body = raw_stream(coze_com, "hello coze")
    assert body.endswith('event:done\ndata:"[DONE]"\n\n')
    assert '"type":"verbose"' in body and "conversation.stream.done" not in body


def test_studio_failure_and_tool_pause_end_with_stream_done_too(studio):
    failed = raw_stream(studio, "[sim:chat_failed] failing")
    assert "event:conversation.chat.failed" in failed
    assert failed.endswith("event:conversation.stream.done\ndata:\n\n")
    paused = raw_stream(studio, "[sim:tool] pausing")
    assert "event:conversation.chat.requires_action" in paused
    assert paused.endswith("event:conversation.stream.done\ndata:\n\n")


@pytest.mark.parametrize("profile", ["studio", "coze_com"])
def test_non_stream_chat_answers_when_complete_on_studio_at_once_on_coze(profile, request):
    server = request.getfixturevalue(profile)
    coze = client(server)
    started = time.monotonic()
    chat = coze.chat.create(bot_id=BOT, user_id=USER, additional_messages=user("[sim:first_delay=400] wait"))
    elapsed = time.monotonic() - started
    if profile == "studio":
        assert chat.status == ChatStatus.COMPLETED and elapsed >= 0.4
        assert chat.usage.output_count > 0
        messages = coze.chat.messages.list(conversation_id=chat.conversation_id, chat_id=chat.id)
        assert [m.type for m in messages] == [MessageType.ANSWER, MessageType.FOLLOW_UP, MessageType.FOLLOW_UP]
    else:
        assert chat.status == ChatStatus.IN_PROGRESS and elapsed < 0.4


def test_studio_takes_personal_access_tokens_only(studio):
    coze = client(studio)
    assert coze.conversations.create().id
    with pytest.raises(CozeAPIError) as error:
        client(studio, "pat_wrong").conversations.create()
    assert error.value.code == 4100
    # No OAuth token route: Studio answers its own 404 for it.
    answer = httpx.post(
        f"{studio.base_url}/api/permission/oauth2/token",
        json={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer"},
        headers={"Authorization": "Bearer a.b.c"},
    )
    assert (answer.status_code, answer.json()) == (404, {"code": 404, "msg": "not found"})


def test_studio_ignores_the_messages_of_a_new_conversation(studio, coze_com):
    for server, seeded in ((studio, []), (coze_com, ["seed"])):
        conversation = client(server).conversations.create(messages=user("seed"))
        turns = httpx.get(f"{server.base_url}/_sim/conversations/{conversation.id}").json()["turns"]
        assert turns == seeded


def test_studio_lacks_submit_tool_outputs_and_other_routes(studio):
    coze = client(studio)
    paused = coze.chat.create(bot_id=BOT, user_id=USER, additional_messages=user("[sim:tool]"))
    assert paused.status == ChatStatus.REQUIRES_ACTION
    [call] = paused.required_action.submit_tool_outputs.tool_calls
    with pytest.raises(CozeAPIError) as error:
        coze.chat.submit_tool_outputs(
            conversation_id=paused.conversation_id,
            chat_id=paused.id,
            tool_outputs=[ToolOutput(tool_call_id=call.id, output="x")],
            stream=False,
        )
    assert (error.value.code, error.value.msg) == (404, "not found")

    headers = {"Authorization": f"Bearer {PAT}"}
    ids = {"conversation_id": paused.conversation_id, "chat_id": paused.id}
    # Studio serves chat retrieve on GET only; cozepy's POST gets its 404.
    assert httpx.get(f"{studio.base_url}/v3/chat/retrieve", params=ids, headers=headers).json()["code"] == 0
    with pytest.raises(CozeAPIError) as error:
        coze.chat.retrieve(**ids)
    assert error.value.code == 404
    for method, path in [
        ("POST", f"/v1/conversations/{paused.conversation_id}/messages/1/feedback"),
        ("POST", "/v1/conversation/message/delete"),
        ("GET", "/v1/files/retrieve"),
    ]:
        answer = httpx.request(method, f"{studio.base_url}{path}", headers=headers)
        assert (answer.status_code, answer.json()) == (404, {"code": 404, "msg": "not found"}), path


def test_the_main_flows_work_on_both_profiles(studio, coze_com):
    for server in (studio, coze_com):
        coze = client(server)
        conversation = coze.conversations.create(bot_id=BOT)
        for text in ("one", "two"):
            events = list(
                coze.chat.stream(
                    bot_id=BOT, user_id=USER, conversation_id=conversation.id, additional_messages=user(text)
                )
            )
            assert any(e.event == ChatEventType.CONVERSATION_CHAT_COMPLETED for e in events)
        listed = coze.conversations.messages.list(conversation_id=conversation.id)
        assert [m.content for m in listed][:2] == ["You said: two (turn 2; before that you said: one)", "two"]
        assert conversation.id in [c.id for c in coze.conversations.list(bot_id=BOT).items]
        chat = coze.chat.create(
            bot_id=BOT,
            user_id=USER,
            conversation_id=conversation.id,
            additional_messages=user("[sim:slow=20] cancel me"),
        )
        if server is coze_com:
            assert coze.chat.cancel(conversation_id=conversation.id, chat_id=chat.id).status == ChatStatus.CANCELED
        else:  # Studio answered once complete: nothing is left to cancel
            with pytest.raises(CozeAPIError) as error:
                coze.chat.cancel(conversation_id=conversation.id, chat_id=chat.id)
            assert error.value.code == 4104


def test_module_runs_the_studio_profile():
    root = Path(__file__).resolve().parents[2]
    process = subprocess.Popen(
        [sys.executable, "-m", "chat.simulator", "--port", "0", "--studio"],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        base_url = process.stdout.readline().strip()
        deadline = time.monotonic() + 10
        while True:
            try:
                answer = httpx.post(f"{base_url}/v3/chat/submit_tool_outputs")
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert (answer.status_code, answer.json()) == (404, {"code": 404, "msg": "not found"})
    finally:
        process.terminate()
        process.wait(timeout=10)
