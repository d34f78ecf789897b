"""The simulator's conversation and message routes, driven by the real cozepy (sync and async).

Create (JSON, URL-encoded and multipart forms), retrieve, list, clear and delete conversations;
list messages with Coze's cursors; delete messages; feedback. The simulator records what it
received on its `/_sim/...` routes, which these tests read.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import cozepy
import httpx
import pytest
from cozepy import ChatStatus, Message, MessageType
from cozepy.conversations.message.feedback import FeedbackType
from cozepy.exception import CozeAPIError

from chat.simulator import SimulatorConfig, SimulatorServer

BOT = "7400000000000000002"
OTHER_BOT = "7400000000000000003"
USER = "tester"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(SimulatorConfig()) as server:
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


def turn(coze: cozepy.Coze, conversation_id: str, text: str, bot_id: str = BOT) -> cozepy.ChatEvent:
    """Stream one turn; the last event (chat completed)."""
    events = list(
        coze.chat.stream(
            bot_id=bot_id,
            user_id=USER,
            conversation_id=conversation_id,
            additional_messages=[Message.build_user_question_text(text)],
        )
    )
    assert events[-1].chat.status == ChatStatus.COMPLETED
    return events[-1]


def inspect(sim: SimulatorServer, path: str) -> dict:
    return httpx.get(f"{sim.base_url}/_sim/{path}").json()


# --------------------------------------------------------------------------- conversations


def test_conversation_without_bot_takes_the_bot_of_its_first_chat(sim, coze):
    # Xiaozhi's pattern: a bare conversation, then turn after turn with a fixed user.
    conversation = coze.conversations.create(messages=[])
    assert inspect(sim, f"conversations/{conversation.id}")["bot_id"] == ""
    first = turn(coze, conversation.id, "hello")
    second = turn(coze, conversation.id, "again")
    assert first.chat.bot_id == second.chat.bot_id == BOT
    assert inspect(sim, f"conversations/{conversation.id}")["bot_id"] == BOT
    assert conversation.id in [c.id for c in coze.conversations.list(bot_id=BOT, page_size=50).items]


def test_conversation_create_takes_json_and_both_forms(sim):
    base = sim.base_url
    seeded = '[{"role":"user","content":"seeded turn","content_type":"text"}]'
    answers = [
        httpx.post(f"{base}/v1/conversation/create", json={"bot_id": BOT, "meta_data": {"k": "v"}}),
        httpx.post(f"{base}/v1/conversation/create", data={"bot_id": BOT, "messages": seeded}),
        httpx.post(f"{base}/v1/conversation/create", files={"bot_id": (None, BOT), "meta_data": (None, '{"k":"v"}')}),
        httpx.post(f"{base}/v1/conversation/create"),  # no body at all
    ]
    bodies = [answer.json() for answer in answers]
    assert [b["code"] for b in bodies] == [0, 0, 0, 0]
    assert bodies[0]["data"]["meta_data"] == bodies[2]["data"]["meta_data"] == {"k": "v"}
    assert set(bodies[1]["data"]) == {"id", "created_at", "meta_data", "last_section_id"}
    for body, bot in zip(bodies, [BOT, BOT, BOT, ""], strict=True):
        assert inspect(sim, f"conversations/{body['data']['id']}")["bot_id"] == bot
    # The form's messages seed the memory like JSON ones.
    assert inspect(sim, f"conversations/{bodies[1]['data']['id']}")["turns"] == ["seeded turn"]

    bad = httpx.post(f"{base}/v1/conversation/create", data={"messages": "[not json"}).json()
    assert bad["code"] == 4000


@pytest.mark.asyncio
async def test_conversation_retrieve_by_get_and_post(sim):
    async with async_coze(sim) as coze:
        conversation = await coze.conversations.create(bot_id=BOT, meta_data={"a": "b"})
        retrieved = await coze.conversations.retrieve(conversation_id=conversation.id)
    assert retrieved.model_dump() == conversation.model_dump()
    posted = httpx.post(f"{sim.base_url}/v1/conversation/retrieve", params={"conversation_id": conversation.id})
    assert posted.json()["data"]["id"] == conversation.id


def test_conversation_list_pages_newest_first_per_bot(sim, coze):
    bot = "7400000000000000099"
    ids = [coze.conversations.create(bot_id=bot).id for _ in range(5)]
    coze.conversations.create(bot_id=OTHER_BOT)

    first = coze.conversations.list(bot_id=bot, page_size=2)
    assert [c.id for c in first.items] == ids[::-1][:2] and first.has_more
    assert [c.id for c in first] == ids[::-1]  # the iterator walks every page
    last = coze.conversations.list(bot_id=bot, page_num=3, page_size=2)
    assert [c.id for c in last.items] == [ids[0]] and not last.has_more

    with pytest.raises(CozeAPIError) as error:
        coze.conversations.list(bot_id=bot, page_size=51)
    assert error.value.code == 4000
    missing_bot = httpx.get(f"{sim.base_url}/v1/conversations").json()
    assert missing_bot["code"] == 4000


@pytest.mark.asyncio
async def test_async_conversation_list(sim):
    async with async_coze(sim) as coze:
        bot = "7400000000000000098"
        created = [(await coze.conversations.create(bot_id=bot)).id for _ in range(3)]
        listed = [c.id async for c in await coze.conversations.list(bot_id=bot, page_size=2)]
    assert listed == created[::-1]


def test_clear_starts_a_section_and_keeps_the_messages(sim, coze):
    conversation = coze.conversations.create(bot_id=BOT)
    turn(coze, conversation.id, "before the clear")
    section = coze.conversations.clear(conversation_id=conversation.id)
    assert section.conversation_id == conversation.id and section.id != conversation.last_section_id
    after = turn(coze, conversation.id, "after the clear")
    assert after.chat.usage.input_count == len("after the clear") // 4 + 1  # memory reset

    messages = list(coze.conversations.messages.list(conversation_id=conversation.id, order="asc"))
    assert [(m.type, m.content) for m in messages] == [
        (MessageType.QUESTION, "before the clear"),
        (MessageType.ANSWER, "You said: before the clear"),
        (MessageType.QUESTION, "after the clear"),
        (MessageType.ANSWER, "You said: after the clear"),
    ]
    assert messages[0].section_id == conversation.last_section_id
    assert messages[2].section_id == section.id


def test_conversation_delete_is_recorded_and_then_unknown(sim, coze):
    conversation = coze.conversations.create(bot_id=BOT)
    coze.conversations.delete(conversation_id=conversation.id)
    deletions = inspect(sim, "deletions")["deletions"]
    assert {"conversation_id": conversation.id, "message_id": None} in [
        {k: d[k] for k in ("conversation_id", "message_id")} for d in deletions
    ]
    with pytest.raises(CozeAPIError) as error:
        coze.conversations.retrieve(conversation_id=conversation.id)
    assert error.value.code == 4002


# --------------------------------------------------------------------------- messages


def test_message_list_has_coze_cursors_beside_data(sim, coze):
    conversation = coze.conversations.create(bot_id=BOT)
    for text in ("one", "two", "three"):
        turn(coze, conversation.id, text)

    raw = httpx.post(
        f"{sim.base_url}/v1/conversation/message/list",
        params={"conversation_id": conversation.id},
        json={"limit": 2},
    ).json()
    assert set(raw) == {"code", "msg", "data", "first_id", "last_id", "has_more"}
    assert raw["has_more"] is True
    assert [raw["first_id"], raw["last_id"]] == [raw["data"][0]["id"], raw["data"][-1]["id"]]
    assert all(isinstance(raw[k], str) for k in ("first_id", "last_id"))

    # Newest first by default; cozepy follows last_id (after_id) page by page.
    newest_first = list(coze.conversations.messages.list(conversation_id=conversation.id, limit=2))
    contents = [m.content for m in newest_first]
    assert contents == [
        "You said: three (turn 3; before that you said: two)",
        "three",
        "You said: two (turn 2; before that you said: one)",
        "two",
        "You said: one",
        "one",
    ]
    oldest_first = list(coze.conversations.messages.list(conversation_id=conversation.id, order="asc", limit=4))
    assert [m.content for m in oldest_first] == contents[::-1]

    # before_id pages back towards the start of the order: the nearest messages first.
    middle = newest_first[3].id  # "two"
    before = coze.conversations.messages.list(conversation_id=conversation.id, before_id=middle, limit=2)
    assert [m.content for m in before.items] == contents[1:3] and before.has_more
    after = coze.conversations.messages.list(conversation_id=conversation.id, after_id=middle, limit=10)
    assert [m.content for m in after.items] == contents[4:] and not after.has_more

    empty = coze.conversations.messages.list(conversation_id=conversation.id, after_id=newest_first[-1].id)
    assert empty.items == [] and not empty.has_more


def test_message_list_filters_by_chat_and_lists_questions_and_answers_only(sim, coze):
    conversation = coze.conversations.create(bot_id=BOT, messages=[Message.build_user_question_text("seed")])
    first = turn(coze, conversation.id, "one")
    turn(coze, conversation.id, "two")
    by_chat = list(coze.conversations.messages.list(conversation_id=conversation.id, chat_id=first.chat.id))
    assert [(m.type, m.content) for m in by_chat] == [
        (MessageType.ANSWER, "You said: one (turn 2; before that you said: seed)"),
        (MessageType.QUESTION, "one"),
    ]
    assert all(m.chat_id == first.chat.id for m in by_chat)
    everything = list(coze.conversations.messages.list(conversation_id=conversation.id))
    assert {m.type for m in everything} == {MessageType.QUESTION, MessageType.ANSWER}
    assert everything[-1].content == "seed" and everything[-1].chat_id == "0"

    with pytest.raises(CozeAPIError) as error:
        coze.conversations.messages.list(conversation_id=conversation.id, limit=51)
    assert error.value.code == 4000
    with pytest.raises(CozeAPIError) as error:
        coze.conversations.messages.list(conversation_id="1")
    assert error.value.code == 4002


@pytest.mark.asyncio
async def test_async_message_list_and_delete(sim):
    async with async_coze(sim) as coze:
        conversation = await coze.conversations.create(bot_id=BOT)
        chat = await coze.chat.create(
            bot_id=BOT,
            user_id=USER,
            conversation_id=conversation.id,
            additional_messages=[Message.build_user_question_text("delete my answer")],
        )
        for _ in range(200):
            chat = await coze.chat.retrieve(conversation_id=conversation.id, chat_id=chat.id)
            if chat.status != ChatStatus.IN_PROGRESS:
                break
            await asyncio.sleep(0.02)
        pager = await coze.conversations.messages.list(conversation_id=conversation.id)
        messages = [m async for m in pager]
        answer = next(m for m in messages if m.type == MessageType.ANSWER)

        deleted = await coze.conversations.messages.delete(conversation_id=conversation.id, message_id=answer.id)
        assert deleted.id == answer.id and deleted.content == "You said: delete my answer"
        left = [m async for m in await coze.conversations.messages.list(conversation_id=conversation.id)]
        assert [m.type for m in left] == [MessageType.QUESTION]
        chat_messages = await coze.chat.messages.list(conversation_id=conversation.id, chat_id=chat.id)
        assert answer.id not in [m.id for m in chat_messages]
        with pytest.raises(CozeAPIError) as error:
            await coze.conversations.messages.delete(conversation_id=conversation.id, message_id=answer.id)
        assert error.value.code == 4000
    assert {"conversation_id": conversation.id, "message_id": answer.id} in [
        {k: d[k] for k in ("conversation_id", "message_id")} for d in inspect(sim, "deletions")["deletions"]
    ]


# --------------------------------------------------------------------------- feedback


def test_feedback_is_recorded_as_received(sim, coze):
    conversation = coze.conversations.create(bot_id=BOT)
    turn(coze, conversation.id, "rate me")
    answer = next(
        m for m in coze.conversations.messages.list(conversation_id=conversation.id) if m.type == MessageType.ANSWER
    )
    feedback = coze.conversations.messages.feedback
    feedback.create(
        conversation_id=conversation.id,
        message_id=answer.id,
        feedback_type=FeedbackType.UNLIKE,
        reason_types=["wrong"],
        comment="not what I asked",
    )
    feedback.create(conversation_id=conversation.id, message_id=answer.id, feedback_type=FeedbackType.LIKE)
    feedback.delete(conversation_id=conversation.id, message_id=answer.id)

    received = [f for f in inspect(sim, "feedback")["feedback"] if f["message_id"] == answer.id]
    assert [(f["method"], f.get("feedback_type"), f.get("reason_types"), f.get("comment")) for f in received] == [
        ("POST", "unlike", ["wrong"], "not what I asked"),
        ("POST", "like", None, None),
        ("DELETE", None, None, None),
    ]
    assert {f["conversation_id"] for f in received} == {conversation.id}

    raw = httpx.post(
        f"{sim.base_url}/v1/conversations/{conversation.id}/messages/{answer.id}/feedback",
        json={"feedback_type": "meh"},
    ).json()
    assert raw["code"] == 4000
    with pytest.raises(CozeAPIError) as error:
        feedback.create(conversation_id=conversation.id, message_id="1", feedback_type=FeedbackType.LIKE)
    assert error.value.code == 4000


@pytest.mark.asyncio
async def test_async_feedback_answers_an_empty_object(sim):
    async with async_coze(sim) as coze:
        conversation = await coze.conversations.create(bot_id=BOT, messages=[Message.build_user_question_text("hi")])
        [question] = [m async for m in await coze.conversations.messages.list(conversation_id=conversation.id)]
        result = await coze.conversations.messages.feedback.create(
            conversation_id=conversation.id, message_id=question.id, feedback_type=FeedbackType.LIKE
        )
        assert result.model_dump() == {}
    raw = httpx.delete(f"{sim.base_url}/v1/conversations/{conversation.id}/messages/{question.id}/feedback").json()
    assert raw == {"code": 0, "msg": "", "data": {}}
