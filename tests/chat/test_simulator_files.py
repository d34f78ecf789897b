"""The simulator's file upload, driven by the real cozepy client: Coze's file object, Coze's
upload faults (too large, a type Coze refuses, auth), and object_string chats that name what
they received. Standalone like tests/chat/test_simulator.py: no Django, own simulators."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from collections.abc import AsyncIterator, Iterator

import cozepy
import httpx
import pytest
from cozepy import ChatEventType, Message, MessageObjectString
from cozepy.exception import CozeAPIError

from chat.simulator import SimulatorConfig, SimulatorServer

BOT = "7400000000000000001"
SECRET = "sim-secret-token"
PNG_HEAD = b"\x89PNG\r\n\x1a\n" + b"\x00" * 56


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(SimulatorConfig(token=SECRET, max_upload_bytes=1000)) as server:
        yield server


@contextlib.asynccontextmanager
async def async_coze(server: SimulatorServer, token: str = SECRET) -> AsyncIterator[cozepy.AsyncCoze]:
    http_client = cozepy.AsyncHTTPClient()
    try:
        yield cozepy.AsyncCoze(auth=cozepy.AsyncTokenAuth(token), base_url=server.base_url, http_client=http_client)
    finally:
        await http_client.aclose()


@pytest.mark.asyncio
async def test_an_upload_answers_coze_file_object_and_can_be_retrieved(sim):
    async with async_coze(sim) as coze:
        uploaded = await coze.files.upload(file=("cat.png", io.BytesIO(PNG_HEAD)))
        again = await coze.files.retrieve(file_id=uploaded.id)

    assert uploaded.id.isdigit() and len(uploaded.id) == 19
    assert (uploaded.file_name, uploaded.bytes) == ("cat.png", len(PNG_HEAD))
    assert uploaded.created_at > 0
    assert again.model_dump() == uploaded.model_dump()
    inspected = httpx.get(f"{sim.base_url}/_sim/files/{uploaded.id}").json()
    assert inspected["sha256"] == hashlib.sha256(PNG_HEAD).hexdigest()
    assert inspected["content_type"] == "image/png"  # httpx's guess from the name


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("file", "token", "code", "message"),
    [
        (("big.txt", b"x" * 1001), SECRET, 4000, "size limit"),
        (("tool.exe", b"MZ"), SECRET, 4000, "unsupported file type"),
        (("empty.txt", b""), SECRET, 4000, "empty"),
        (("cat.png", PNG_HEAD), "wrong-token", 4100, "authentication"),
    ],
)
async def test_upload_faults_are_coze_errors(sim, file, token, code, message):
    async with async_coze(sim, token) as coze:
        with pytest.raises(CozeAPIError) as raised:
            await coze.files.upload(file=file)

    assert raised.value.code == code
    assert message in raised.value.msg


@pytest.mark.asyncio
async def test_an_object_string_chat_names_the_files_it_received_and_keeps_the_message(sim):
    async with async_coze(sim) as coze:
        uploaded = await coze.files.upload(file=("report.pdf", b"%PDF-1.4 tiny"))
        message = Message.build_user_question_objects(
            [
                MessageObjectString.build_text("Compare"),
                MessageObjectString.build_file(file_id=uploaded.id),
                MessageObjectString.build_image(file_url="https://example.com/a.png"),
            ]
        )
        events = [e async for e in coze.chat.stream(bot_id=BOT, user_id="u", additional_messages=[message])]

    answer = "".join(e.message.content for e in events if e.event == ChatEventType.CONVERSATION_MESSAGE_DELTA)
    assert answer == "You said: Compare [received: file report.pdf, image https://example.com/a.png]"
    chat_id = events[0].chat.id
    received = httpx.get(f"{sim.base_url}/_sim/chats/{chat_id}").json()["additional_messages"]
    assert received[0]["content_type"] == "object_string"
    assert json.loads(received[0]["content"])[1]["file_id"] == uploaded.id


@pytest.mark.asyncio
async def test_a_chat_with_an_unknown_file_id_is_refused_like_coze(sim):
    message = Message.build_user_question_objects(
        [MessageObjectString.build_text("?"), MessageObjectString.build_image(file_id="7999999999999999999")]
    )
    async with async_coze(sim) as coze:
        with pytest.raises(CozeAPIError) as raised:
            [e async for e in coze.chat.stream(bot_id=BOT, user_id="u", additional_messages=[message])]

    assert raised.value.code == 4000
