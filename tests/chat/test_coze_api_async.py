"""Coze's own API (docs/api.md §13) with cozepy's async client (`AsyncCoze`), over HTTP to a real
ASGI server."""

import asyncio
import time

import pytest
from asgiref.sync import sync_to_async
from cozepy import ChatEventType, ChatStatus, CozeAPIError, Message, MessageObjectString
from django.db import connection

from sessions_admin.models import Reply
from tests.chat.coze_clients import astream_turn, bot, gateway_async_coze, question
from tests.chat.test_files import png_bytes

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@sync_to_async(thread_sensitive=False)
def reply_status(session_id: str) -> str:
    try:
        return Reply.objects.get(session__session_id=session_id).status
    finally:
        connection.close()  # this thread's: the test database is dropped at the end


async def test_async_client_creates_and_streams_three_turns_that_remember_each_other(asgi_server, api_key):
    coze = gateway_async_coze(asgi_server, api_key)
    conversation = await coze.conversations.create(messages=[])
    answers = []
    for text in ("one", "two", "three"):
        names, answer, chat = await astream_turn(coze, text, user_id="async-user", conversation_id=conversation.id)
        assert names[0] == "conversation.chat.created" and names[-1] == "conversation.chat.completed"
        assert chat.conversation_id == conversation.id
        answers.append(answer)
    assert answers[2] == "You said: three (turn 3; before that you said: two)"

    page = await coze.conversations.messages.list(conversation_id=conversation.id, limit=4)
    contents = [message.content async for message in page]
    assert len(contents) == 6 and contents[:2] == [answers[2], "three"]


async def test_async_create_then_poll_to_the_end(asgi_server, api_key):
    """AsyncCoze has no create_and_poll: a client writes the same loop (create, retrieve, messages)."""
    coze = gateway_async_coze(asgi_server, api_key)
    started = time.monotonic()
    chat = await coze.chat.create(
        bot_id=bot(), user_id="u", additional_messages=question("[sim:first_delay=2000] Take your time")
    )
    assert time.monotonic() - started < 1.0 and chat.status == ChatStatus.IN_PROGRESS
    deadline = time.monotonic() + 10
    while chat.status == ChatStatus.IN_PROGRESS:
        assert time.monotonic() < deadline, "the chat did not end"
        await asyncio.sleep(0.1)  # the client's own polling, as cozepy's create_and_poll does
        chat = await coze.chat.retrieve(conversation_id=chat.conversation_id, chat_id=chat.id)
    assert chat.status == ChatStatus.COMPLETED
    messages = await coze.chat.messages.list(conversation_id=chat.conversation_id, chat_id=chat.id)
    assert [m.content for m in messages if m.type == "answer"] == ["You said: [sim:first_delay=2000] Take your time"]


async def test_async_cancel(asgi_server, api_key):
    coze = gateway_async_coze(asgi_server, api_key)
    conversation = await coze.conversations.create(bot_id=bot())
    names = []
    async for event in coze.chat.stream(
        bot_id=bot(),
        user_id="u",
        conversation_id=conversation.id,
        additional_messages=question("[sim:slow=100] Something long to stop"),
    ):
        names.append(event.event)
        if event.event == ChatEventType.CONVERSATION_MESSAGE_DELTA and names.count(event.event) == 2:
            cancelled = await coze.chat.cancel(conversation_id=conversation.id, chat_id=event.message.chat_id)
            assert cancelled.status == ChatStatus.CANCELED
    assert ChatEventType.CONVERSATION_CHAT_COMPLETED not in names
    assert await reply_status(conversation.id) == Reply.Status.CANCELLED


async def test_async_upload_then_an_object_string_message(asgi_server, api_key):
    coze = gateway_async_coze(asgi_server, api_key)
    uploaded = await coze.files.upload(file=("dot.png", png_bytes(), "image/png"))
    message = Message.build_user_question_objects(
        [MessageObjectString.build_text("Look"), MessageObjectString.build_image(file_id=uploaded.id)]
    )
    answer = ""
    async for event in coze.chat.stream(bot_id=bot(), user_id="u", additional_messages=[message]):
        if event.event == ChatEventType.CONVERSATION_MESSAGE_DELTA:
            answer += event.message.content
    assert answer == "You said: Look [received: image dot.png]"


async def test_async_wrong_key_and_another_keys_conversation(asgi_server, api_key, other_api_key):
    with pytest.raises(CozeAPIError) as refused:
        await gateway_async_coze(asgi_server, "not-a-key").conversations.create()
    assert refused.value.code == 4100

    theirs = await gateway_async_coze(asgi_server, other_api_key).conversations.create(bot_id=bot())
    mine = gateway_async_coze(asgi_server, api_key)
    with pytest.raises(CozeAPIError) as refused:
        await astream_turn(mine, "hello?", user_id="me", conversation_id=theirs.id)
    assert refused.value.code == 4002
    with pytest.raises(CozeAPIError) as refused:
        await mine.conversations.retrieve(conversation_id=theirs.id)
    assert refused.value.code == 4002
