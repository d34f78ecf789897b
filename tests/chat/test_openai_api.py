"""The OpenAI-compatible API, driven by the official `openai` package over real HTTP."""

import base64
import json
import threading

import httpx
import openai
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command

from chat.transports.openai_requests import OpenAIMessage, coze_context
from cozeproject.settings import parse_bot_names
from sessions_admin.models import ChatSession, Message, Reply
from tests.chat.test_files import png_bytes
from tests.conftest import auth, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

BOT = "7000000000000000001"
OTHER_BOT = "7000000000000000002"


@pytest.fixture
def bots(settings):
    settings.COZE_BOT_ID = BOT
    settings.COZE_ALLOWED_BOT_IDS = [BOT, OTHER_BOT]
    settings.COZE_BOT_NAMES = {"helper": BOT}
    return settings


@pytest.fixture
def client(asgi_server, api_key, bots):
    with openai.OpenAI(base_url=f"{asgi_server.url}/v1", api_key=api_key, max_retries=0) as client:
        yield client


def sim_chat(simulator, chat_id: str) -> dict:
    return httpx.get(f"{simulator.base_url}/_sim/chats/{chat_id}").json()


def coze_chat_id(completion_id: str) -> str:
    assert completion_id.startswith("chatcmpl-")
    return completion_id.removeprefix("chatcmpl-")


# --- models -----------------------------------------------------------------------------------


def test_models_lists_each_allowed_bot_and_its_names(client):
    models = client.models.list()

    assert [model.id for model in models.data] == [BOT, OTHER_BOT, "helper"]
    assert {model.owned_by for model in models.data} == {"coze"}
    assert client.models.retrieve("helper").id == "helper"


def test_models_need_an_api_key(asgi_server, bots):
    with openai.OpenAI(base_url=f"{asgi_server.url}/v1", api_key="cz_wrong", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError) as raised:
            client.models.list()
    assert raised.value.body["code"] == "unauthenticated"


def test_a_model_name_reaches_its_bot(client):
    completion = client.chat.completions.create(model="helper", messages=[{"role": "user", "content": "by name"}])

    assert completion.model == "helper"
    assert Reply.objects.get().bot_id == BOT


def test_a_bot_id_is_a_model_too(client):
    client.chat.completions.create(model=OTHER_BOT, messages=[{"role": "user", "content": "by id"}])

    assert Reply.objects.get().bot_id == OTHER_BOT


# --- completions ------------------------------------------------------------------------------


def test_non_streamed_completion_answers_with_coze_usage_and_the_session(client, simulator):
    raw = client.chat.completions.with_raw_response.create(
        model=BOT, messages=[{"role": "user", "content": "hello there"}]
    )
    completion = raw.parse()

    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "You said: hello there"
    assert completion.choices[0].finish_reason == "stop"
    reply = Reply.objects.get()
    assert reply.transport == "openai" and reply.status == "completed"
    assert reply.coze_chat_id == coze_chat_id(completion.id)
    assert completion.usage.prompt_tokens == reply.input_tokens > 0
    assert completion.usage.completion_tokens == reply.output_tokens > 0
    assert completion.usage.total_tokens == reply.total_tokens == reply.input_tokens + reply.output_tokens
    assert raw.headers["x-session-id"] == reply.session.session_id
    assert sim_chat(simulator, reply.coze_chat_id)["status"] == "completed"


def test_streamed_completion_sends_role_deltas_finish_and_a_usage_chunk(client):
    with client.chat.completions.with_streaming_response.create(
        model=BOT,
        messages=[{"role": "user", "content": "[sim:echo]stream me, 你好 👩‍👩‍👧‍👦"}],
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        session_id = response.headers["x-session-id"]
        chunks = list(response.parse())

    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert content == "stream me, 你好 👩‍👩‍👧‍👦"
    assert len([chunk for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]) > 5
    finishes = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert {chunk.id for chunk in chunks} == {chunks[0].id}
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    reply = Reply.objects.get()
    assert (usage_chunk.usage.prompt_tokens, usage_chunk.usage.completion_tokens) == (
        reply.input_tokens,
        reply.output_tokens,
    )
    assert usage_chunk.usage.total_tokens == reply.total_tokens > 0
    assert all(chunk.usage is None for chunk in chunks[:-1])
    assert reply.session.session_id == session_id and reply.transport == "openai"
    assert Message.objects.get(kind="answer").content == content


def test_streamed_completion_without_include_usage_has_no_usage_chunk(client):
    chunks = list(
        client.chat.completions.create(model=BOT, messages=[{"role": "user", "content": "no usage"}], stream=True)
    )

    assert all(chunk.choices for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_reasoning_streams_as_reasoning_content(client):
    chunks = list(
        client.chat.completions.create(
            model=BOT, messages=[{"role": "user", "content": "[sim:reasoning] think"}], stream=True
        )
    )

    reasoning = "".join(
        (chunk.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for chunk in chunks if chunk.choices
    )
    assert reasoning == "Let me think about that."


@pytest.mark.asyncio
async def test_async_client_completes_and_streams(asgi_server, api_key, bots):
    async with openai.AsyncOpenAI(base_url=f"{asgi_server.url}/v1", api_key=api_key, max_retries=0) as client:
        completion = await client.chat.completions.create(
            model="helper", messages=[{"role": "user", "content": "async one"}]
        )
        stream = await client.chat.completions.create(
            model="helper",
            messages=[{"role": "user", "content": "async two"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]

    assert completion.choices[0].message.content == "You said: async one"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "You said: async two"
    assert chunks[-1].usage.total_tokens > 0


def test_unknown_openai_fields_are_accepted_and_ignored(client):
    completion = client.chat.completions.create(
        model=BOT,
        messages=[{"role": "user", "content": [{"type": "text", "text": "parts"}, {"type": "text", "text": "too"}]}],
        temperature=0.2,
        max_tokens=50,
        top_p=0.9,
        seed=7,
        n=1,
        presence_penalty=0,
        extra_body={"some_new_field": {"x": 1}},
    )

    assert completion.choices[0].message.content == "You said: parts\ntoo"


def test_user_becomes_the_coze_user_id(client):
    client.chat.completions.create(model=BOT, messages=[{"role": "user", "content": "who am i"}], user="alice")

    assert ChatSession.objects.get().coze_user_id == "alice"


# --- conversations ----------------------------------------------------------------------------


def ask(client, history: list[dict], text: str, **kwargs) -> tuple[list[dict], object]:
    """One turn of a stock client: send the whole history plus `text`, append the answer."""
    messages = [*history, {"role": "user", "content": text}]
    raw = client.chat.completions.with_raw_response.create(model=BOT, messages=messages, **kwargs)
    completion = raw.parse()
    return [*messages, {"role": "assistant", "content": completion.choices[0].message.content}], raw


def test_three_turns_resending_the_history_stay_in_one_coze_conversation(client, simulator):
    history: list[dict] = []
    session_ids, chat_ids = [], []
    for text in ("one", "two", "three"):
        history, raw = ask(client, history, text)
        session_ids.append(raw.headers["x-session-id"])
        chat_ids.append(coze_chat_id(raw.parse().id))

    assert history[-1]["content"] == "You said: three (turn 3; before that you said: two)"
    assert len(set(session_ids)) == 1
    conversations = {sim_chat(simulator, chat_id)["conversation_id"] for chat_id in chat_ids}
    assert len(conversations) == 1
    session = ChatSession.objects.get()
    assert session.session_id == session_ids[0] and session.message_count == 6
    assert list(Message.objects.filter(kind="question").values_list("content", flat=True)) == ["one", "two", "three"]


def test_three_streamed_turns_with_a_system_prompt_stay_in_one_session(client):
    history = [{"role": "system", "content": "You are terse."}]
    for text in ("a", "b", "c"):
        messages = [*history, {"role": "user", "content": text}]
        stream = client.chat.completions.create(model=BOT, messages=messages, stream=True)
        answer = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        history = [*messages, {"role": "assistant", "content": answer}]

    assert history[-1]["content"] == "You said: c (turn 3; before that you said: b)"
    assert ChatSession.objects.count() == 1


def test_x_session_id_pins_the_session_and_only_the_last_message_is_sent(client):
    _, first = ask(client, [], "first", extra_headers={"X-Session-Id": "pinned-1"})
    # A history the server never saw: with a pinned session it is not looked up nor sent.
    unrelated = [{"role": "user", "content": "never said"}, {"role": "assistant", "content": "never answered"}]
    history, second = ask(client, unrelated, "second", extra_headers={"X-Session-Id": "pinned-1"})

    assert first.headers["x-session-id"] == second.headers["x-session-id"] == "pinned-1"
    assert history[-1]["content"] == "You said: second (turn 2; before that you said: first)"
    session = ChatSession.objects.get()
    assert session.session_id == "pinned-1"
    assert list(Message.objects.filter(kind="question").values_list("content", flat=True)) == ["first", "second"]


def test_body_session_id_pins_the_session_too(client):
    ask(client, [], "x", extra_body={"session_id": "body-pinned"})
    history, raw = ask(client, [], "y", extra_body={"session_id": "body-pinned"})

    assert raw.headers["x-session-id"] == "body-pinned"
    assert history[-1]["content"] == "You said: y (turn 2; before that you said: x)"


def test_a_history_that_matches_no_session_starts_a_new_one_and_stores_only_the_last_message(client):
    ask(client, [], "known")
    unknown = [{"role": "user", "content": "known"}, {"role": "assistant", "content": "an answer I made up"}]

    history, raw = ask(client, unknown, "next")

    assert history[-1]["content"] == "You said: next"  # a new Coze conversation
    assert ChatSession.objects.count() == 2
    new_session = ChatSession.objects.get(session_id=raw.headers["x-session-id"])
    assert list(
        Message.objects.filter(conversation__session=new_session, kind="question").values_list("content", flat=True)
    ) == ["next"]


def test_earlier_messages_of_a_new_session_go_to_coze_as_context():
    earlier = [
        OpenAIMessage("system", "Be brief."),
        OpenAIMessage("user", "hi"),
        OpenAIMessage("assistant", "hello"),
        OpenAIMessage("assistant", "  "),
    ]

    assert coze_context(earlier, "next") == [
        {
            "role": "user",
            "type": "question",
            "content": "Be brief.",
            "content_type": "text",
            "meta_data": {"openai_role": "system"},
        },
        {"role": "user", "type": "question", "content": "hi", "content_type": "text"},
        {"role": "assistant", "type": "answer", "content": "hello", "content_type": "text"},
        {"role": "user", "type": "question", "content": "next", "content_type": "text"},
    ]


def test_when_two_sessions_hold_the_same_transcript_the_most_recent_continues(client):
    ask(client, [], "same", extra_headers={"X-Session-Id": "older"})
    history, _ = ask(client, [], "same", extra_headers={"X-Session-Id": "newer"})

    _, raw = ask(client, history, "then")

    assert raw.headers["x-session-id"] == "newer"


def test_a_cleared_session_is_not_continued_by_its_old_history(client, http, api_key):
    history, raw = ask(client, [], "before clear")
    session_id = raw.headers["x-session-id"]
    assert http.post(f"/api/sessions/{session_id}/clear", headers=auth(api_key)).status_code == 200

    answer_history, again = ask(client, history, "after clear")

    assert again.headers["x-session-id"] != session_id
    assert answer_history[-1]["content"] == "You said: after clear"


def test_a_turn_that_failed_before_any_text_is_left_out_of_the_transcript(client):
    history, first = ask(client, [], "one")
    with pytest.raises(openai.InternalServerError):
        ask(client, history, "[sim:bad_param] fails")

    answered, retry = ask(client, history, "two")

    assert retry.headers["x-session-id"] == first.headers["x-session-id"]
    assert answered[-1]["content"] == "You said: two (turn 2; before that you said: one)"


def test_a_long_history_that_matches_no_session_is_too_large(client, settings):
    settings.CHAT_MAX_MESSAGE_CHARS = 50
    history = [{"role": "user", "content": "x" * 30}, {"role": "assistant", "content": "y" * 30}]

    with pytest.raises(openai.APIStatusError) as raised:
        ask(client, history, "next")

    assert raised.value.status_code == 413 and raised.value.body["code"] == "payload_too_large"
    assert not Reply.objects.exists()


def test_another_clients_history_is_never_continued(client, asgi_server, other_api_key):
    history, raw = ask(client, [], "mine")
    with openai.OpenAI(base_url=f"{asgi_server.url}/v1", api_key=other_api_key, max_retries=0) as other:
        _, other_raw = ask(other, history, "theirs")

    assert other_raw.headers["x-session-id"] != raw.headers["x-session-id"]
    assert ChatSession.objects.count() == 2


def test_a_session_started_on_another_transport_is_continued_by_its_history(client, http, api_key):
    first = http.post("/api/chat", json={"message": "via rest"}, headers=auth(api_key)).json()
    history = [{"role": "user", "content": "via rest"}, {"role": "assistant", "content": first["response"]}]

    _, raw = ask(client, history, "via openai")

    assert raw.headers["x-session-id"] == first["session_id"]


# --- errors -----------------------------------------------------------------------------------


def test_a_bad_key_is_an_authentication_error_in_openais_shape(asgi_server, bots):
    response = httpx.post(
        f"{asgi_server.url}/v1/chat/completions",
        json={"model": BOT, "messages": [{"role": "user", "content": "x"}]},
        headers=auth("cz_not_a_key"),
    )
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "authentication_error" and error["code"] == "unauthenticated" and error["message"]

    with openai.OpenAI(base_url=f"{asgi_server.url}/v1", api_key="cz_not_a_key", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(model=BOT, messages=[{"role": "user", "content": "x"}])


def test_an_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])

    assert raised.value.body["param"] == "model"
    assert not Reply.objects.exists()


@pytest.mark.parametrize(
    "messages",
    [
        [],
        [{"role": "assistant", "content": "the last message is not the user's"}],
        [{"role": "user", "content": "x"}, {"role": "tool", "content": "x", "tool_call_id": "1"}],
        [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function"}]},
            {"role": "tool", "content": "x", "tool_call_id": "call_2"},
        ],
        [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}}]}],
    ],
    ids=["empty", "last-not-user", "tool-without-call", "tool-for-another-call", "audio", "image-not-https"],
)
def test_an_invalid_body_is_a_bad_request(client, messages):
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=BOT, messages=messages)

    assert raised.value.body["type"] == "invalid_request_error"
    assert raised.value.body["code"] == "invalid"
    assert not Reply.objects.exists()


def test_image_url_parts_reach_coze_as_image_items_of_the_question(client, simulator):
    png = base64.b64encode(png_bytes()).decode()
    completion = client.chat.completions.create(
        model=BOT,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
                ],
            }
        ],
    )

    # The simulator names the images it was given: the link as sent, the data: URL uploaded first.
    answer = completion.choices[0].message.content
    assert answer.startswith("You said: what is this? [received: image https://example.com/a.png, image image")
    reply = Reply.objects.get()
    question = Message.objects.get(reply=reply, kind="question")
    assert question.content == "what is this?" and question.content_type == "object_string"
    assert [item.get("url") or item.get("content_type") for item in question.attachments] == [
        "https://example.com/a.png",
        "image/png",
    ]


def test_a_busy_session_is_a_conflict(client, asgi_server, api_key):
    started = threading.Event()

    def slow_turn():
        with openai.OpenAI(base_url=f"{asgi_server.url}/v1", api_key=api_key, max_retries=0) as slow:
            stream = slow.chat.completions.create(
                model=BOT,
                messages=[{"role": "user", "content": "[sim:slow=50] a long answer"}],
                stream=True,
                extra_headers={"X-Session-Id": "busy"},
            )
            for _ in stream:
                started.set()

    thread = threading.Thread(target=slow_turn, daemon=True)
    thread.start()
    assert started.wait(10)

    with pytest.raises(openai.ConflictError) as raised:
        client.chat.completions.create(
            model=BOT, messages=[{"role": "user", "content": "meanwhile"}], extra_headers={"X-Session-Id": "busy"}
        )

    assert raised.value.body["code"] == "session_busy"
    assert raised.value.response.headers["x-session-id"] == "busy"
    assert raised.value.response.headers["x-should-retry"] == "true"
    thread.join(20)


def test_over_the_rate_limit_is_a_rate_limit_error_with_retry_after(client, settings):
    settings.CHAT_RATE_LIMIT_PER_MINUTE = 1
    client.chat.completions.create(model=BOT, messages=[{"role": "user", "content": "one"}])

    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(model=BOT, messages=[{"role": "user", "content": "two"}])

    assert raised.value.body["code"] == "rate_limited"
    assert int(raised.value.response.headers["retry-after"]) >= 1


def test_coze_failing_before_the_reply_is_a_server_error(client):
    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(model=BOT, messages=[{"role": "user", "content": "[sim:server_error]"}])

    assert raised.value.status_code == 502
    assert raised.value.body["code"] == "upstream_error" and raised.value.body["type"] == "server_error"
    assert Reply.objects.get().status == "failed"


def test_coze_rejecting_the_servers_token_is_not_retried(client):
    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(model=BOT, messages=[{"role": "user", "content": "[sim:auth_failed]"}])

    assert raised.value.body["code"] == "upstream_auth_failed"
    assert raised.value.response.headers["x-should-retry"] == "false"


def test_coze_failing_mid_stream_raises_in_the_sdk_after_the_partial_answer(client, asgi_server, api_key, bots):
    stream = client.chat.completions.create(
        model=BOT, messages=[{"role": "user", "content": "[sim:chat_failed] half of it"}], stream=True
    )
    received = []
    with pytest.raises(openai.APIError) as raised:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")

    assert "".join(received) and "You said: [sim:chat_failed] half of it".startswith("".join(received))
    assert raised.value.body["code"] == "upstream_error"
    assert Reply.objects.get().status == "failed"

    body = httpx.post(
        f"{asgi_server.url}/v1/chat/completions",
        json={"model": BOT, "messages": [{"role": "user", "content": "[sim:chat_failed] raw"}], "stream": True},
        headers=auth(api_key),
    ).text
    data_lines = [line for line in body.splitlines() if line.startswith("data: ")]
    assert data_lines[-1] == "data: [DONE]"
    assert data_lines[-2].startswith('data: {"error":')


def test_a_dropped_stream_is_stored_as_cancelled(client, simulator):
    stream = client.chat.completions.create(
        model=BOT, messages=[{"role": "user", "content": "[sim:slow=100] a long story to abandon"}], stream=True
    )
    chunks = [next(stream), next(stream)]
    stream.close()

    chat_id = coze_chat_id(chunks[0].id)
    assert wait_until(lambda: sim_chat(simulator, chat_id)["client_disconnected_at"], timeout=5)
    reply = wait_until(lambda: Reply.objects.filter(coze_chat_id=chat_id).exclude(status="in_progress").first())
    assert reply.status == "cancelled" and reply.transport == "openai"


def test_a_client_that_gives_up_on_a_whole_reply_cancels_it(asgi_server, api_key, bots, simulator):
    with openai.OpenAI(base_url=f"{asgi_server.url}/v1", api_key=api_key, max_retries=0, timeout=0.5) as impatient:
        with pytest.raises(openai.APITimeoutError):
            impatient.chat.completions.create(
                model=BOT, messages=[{"role": "user", "content": "[sim:slow=100] too slow to wait for"}]
            )

    reply = wait_until(lambda: Reply.objects.exclude(status="in_progress").first(), timeout=5)
    assert reply.status == "cancelled" and reply.transport == "openai"
    assert sim_chat(simulator, reply.coze_chat_id)["client_disconnected_at"]


# --- serving ----------------------------------------------------------------------------------


def test_open_completion_streams_hold_no_thread_each(asgi_server, api_key, bots):
    baseline = threading.active_count()
    clients, streams = [], []
    try:
        for index in range(10):
            client = openai.OpenAI(base_url=f"{asgi_server.url}/v1", api_key=api_key, max_retries=0)
            stream = client.chat.completions.create(
                model=BOT, messages=[{"role": "user", "content": f"[sim:slow=200] stream {index}"}], stream=True
            )
            next(stream)
            clients.append(client)
            streams.append(stream)
        wait_until(lambda: Reply.objects.filter(status="in_progress").count() == 10)
        during = threading.active_count()
    finally:
        for stream, client in zip(streams, clients, strict=True):
            stream.close()
            client.close()

    # Django's middleware runs on the event loop, so an open stream holds no thread of its own.
    assert during - baseline < 5, (baseline, during)


def test_browser_front_ends_go_through_django_and_may_read_the_session_header(asgi_server, api_key, bots, settings):
    settings.CORS_ALLOWED_ORIGINS = ["https://chat.example.com"]
    origin = {"Origin": "https://chat.example.com"}

    preflight = httpx.options(
        f"{asgi_server.url}/v1/chat/completions",
        headers={
            **origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, x-session-id",
        },
    )
    response = httpx.post(
        f"{asgi_server.url}/v1/chat/completions",
        json={"model": BOT, "messages": [{"role": "user", "content": "from a page"}]},
        headers={**auth(api_key), **origin, "X-Session-Id": "page-1"},
    )

    assert "x-session-id" in preflight.headers["access-control-allow-headers"].lower()
    assert response.status_code == 200 and response.headers["x-session-id"] == "page-1"
    assert "x-session-id" in response.headers["access-control-expose-headers"].lower()


def test_the_openapi_schema_describes_the_openai_paths(tmp_path):
    schema_file = tmp_path / "schema.json"
    call_command("spectacular", "--validate", "--fail-on-warn", "--format", "openapi-json", "--file", str(schema_file))

    schema = json.loads(schema_file.read_text())
    assert {"/v1/models", "/v1/chat/completions"} <= set(schema["paths"])
    body = schema["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/OpenAIChatCompletionRequest"}


# --- settings ---------------------------------------------------------------------------------


def test_bot_names_parse_to_a_map_of_allowed_bots():
    assert parse_bot_names(" helper = 1 , other=2,", ["1", "2"]) == {"helper": "1", "other": "2"}
    assert parse_bot_names("", ["1"]) == {}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("helper", "name=bot_id"),
        ("=1", "name=bot_id"),
        ("helper=3", "neither COZE_BOT_ID nor in COZE_ALLOWED_BOT_IDS"),
        ("helper=1,helper=2", "given twice"),
        ("2=1", "the id of another bot"),
        ("has space=1", "1 to 64 characters"),
    ],
)
def test_bad_bot_names_fail_loudly(raw, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        parse_bot_names(raw, ["1", "2"])
