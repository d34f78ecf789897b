"""Coze's own API (docs/api.md §13) with cozepy, synchronous, over HTTP to a real ASGI server: a
client written for Coze with only its base URL and token changed."""

import time

import httpx
import pytest
from cozepy import ChatEventType, ChatStatus, CozeAPIError, Message, MessageObjectString
from django.test import Client

from sessions_admin.models import ApiClient, ChatSession, Reply
from tests.chat.coze_clients import Background, bot, gateway_coze, question, sim_get, stream_turn
from tests.chat.test_files import png_bytes
from tests.conftest import auth, wait_until
from tests.sessions_admin.factories import make_user

pytestmark = pytest.mark.django_db(transaction=True)

STREAM_START = ["conversation.chat.created", "conversation.chat.in_progress"]
STREAM_END = [
    "conversation.message.completed",  # the answer
    "conversation.message.completed",  # verbose
    "conversation.message.completed",  # follow-up
    "conversation.message.completed",  # follow-up
    "conversation.chat.completed",
]


def test_the_xiaozhi_provider_pattern_a_botless_conversation_then_turn_after_turn(asgi_server, api_key, simulator):
    """Xiaozhi's Coze provider: `conversations.create(messages=[])` without a bot, then `chat.stream`
    turn after turn with a fixed user_id; the conversation takes its first chat's bot."""
    coze = gateway_coze(asgi_server, api_key)
    conversation = coze.conversations.create(messages=[])
    assert conversation.id.isdigit() and conversation.last_section_id

    answers = []
    for text in ("Hello", "What did I say?", "Bye"):
        names, answer, chat = stream_turn(coze, text, user_id="device-42", conversation_id=conversation.id)
        assert names[:2] == STREAM_START and names[-5:] == STREAM_END
        assert chat.conversation_id == conversation.id and chat.status == ChatStatus.COMPLETED
        answers.append(answer)
    assert answers == [
        "You said: Hello",
        "You said: What did I say? (turn 2; before that you said: Hello)",
        "You said: Bye (turn 3; before that you said: What did I say?)",
    ]

    # The conversation is a session of this key: its own API reads it, with the bot and user.
    info = httpx.get(f"{asgi_server.url}/api/sessions/{conversation.id}", headers=auth(api_key)).json()
    assert info["bot_id"] == bot() and info["user_id"] == "device-42" and info["message_count"] == 6
    replies = Reply.objects.filter(session__session_id=conversation.id)
    assert {reply.transport for reply in replies} == {"coze"} and replies.count() == 3
    # One Coze conversation upstream carried the three chats, as user device-42.
    chat_ids = list(replies.values_list("coze_chat_id", flat=True))
    upstream = {sim_get(simulator, f"/_sim/chats/{chat_id}")["conversation_id"] for chat_id in chat_ids}
    assert len(upstream) == 1 and sim_get(simulator, f"/_sim/chats/{chat_ids[0]}")["user_id"] == "device-42"

    # Staff see the turns as Coze API turns, with the user the client sent.
    staff = Client()
    staff.force_login(make_user("staffer", superuser=True))
    page = staff.get("/admin/sessions_admin/reply/", {"transport": "coze"}).content.decode()
    assert page.count("Coze API") >= 3
    assert "device-42" in staff.get("/admin/sessions_admin/chatsession/").content.decode()


def test_three_streamed_turns_remember_each_other_and_the_messages_page_back(asgi_server, api_key):
    coze = gateway_coze(asgi_server, api_key)
    conversation = coze.conversations.create(bot_id=bot(), meta_data={"device": "kitchen"})
    assert conversation.meta_data == {"device": "kitchen"}
    for text in ("one", "two", "three"):
        stream_turn(coze, text, user_id="u-1", conversation_id=conversation.id)
    _, answer, _ = stream_turn(coze, "four", user_id="u-1", conversation_id=conversation.id)
    assert answer == "You said: four (turn 4; before that you said: three)"

    # Newest first by default, two at a time: cozepy follows `has_more` with `after_id`.
    paged = coze.conversations.messages.list(conversation_id=conversation.id, limit=2)
    listed = [(m.role, m.content) for m in paged]
    assert len(listed) == 8 and listed[0] == ("assistant", answer) and listed[1] == ("user", "four")
    assert listed[-1] == ("user", "one")
    oldest_first = coze.conversations.messages.list(conversation_id=conversation.id, order="asc", limit=50)
    assert [m.content for m in oldest_first.items][:2] == ["one", "You said: one"]
    assert oldest_first.has_more is False
    # `before_id` pages back toward the newest: the two messages just after the oldest one.
    first_id = oldest_first.items[0].id
    back = coze.conversations.messages.list(conversation_id=conversation.id, order="desc", before_id=first_id, limit=2)
    assert [m.content for m in back.items] == ["two", "You said: one"]

    retrieved = coze.conversations.retrieve(conversation_id=conversation.id)
    assert retrieved.id == conversation.id and retrieved.meta_data == {"device": "kitchen"}
    listed_conversations = coze.conversations.list(bot_id=bot(), page_size=10)
    assert conversation.id in [c.id for c in listed_conversations.items]


def test_a_turn_without_conversation_id_starts_a_conversation_the_session_api_knows(asgi_server, api_key):
    coze = gateway_coze(asgi_server, api_key)
    _, answer, chat = stream_turn(coze, "Fresh", user_id="u-2")
    assert answer == "You said: Fresh"
    assert ChatSession.objects.get(session_id=chat.conversation_id).coze_user_id == "u-2"
    _, again, _ = stream_turn(coze, "And?", user_id="u-2", conversation_id=chat.conversation_id)
    assert again == "You said: And? (turn 2; before that you said: Fresh)"


def test_create_and_poll_answers_in_progress_at_once_and_polls_to_the_end(asgi_server, api_key):
    coze = gateway_coze(asgi_server, api_key)
    conversation = coze.conversations.create()
    started = time.monotonic()
    chat = coze.chat.create(
        bot_id=bot(),
        user_id="poller",
        conversation_id=conversation.id,
        additional_messages=question("[sim:first_delay=3000] Slowly"),
    )
    assert time.monotonic() - started < 1.0  # Coze took the chat; its first token is 3 s away
    assert chat.status == ChatStatus.IN_PROGRESS and chat.conversation_id == conversation.id
    # Another worker (or this one) finds it at once, still running.
    assert coze.chat.retrieve(conversation_id=conversation.id, chat_id=chat.id).status == ChatStatus.IN_PROGRESS
    assert list(coze.chat.messages.list(conversation_id=conversation.id, chat_id=chat.id)) == []
    ended = wait_until(
        lambda: (
            (c := coze.chat.retrieve(conversation_id=conversation.id, chat_id=chat.id)).status == ChatStatus.COMPLETED
            and c
        ),
        timeout=10,
        interval=0.1,
    )
    assert ended.usage.token_count > 0

    started = time.monotonic()
    poll = coze.chat.create_and_poll(
        bot_id=bot(), user_id="poller", conversation_id=conversation.id, additional_messages=question("Again")
    )
    assert time.monotonic() - started < 2.5  # the reply's own time, plus at most one 1 s poll
    assert poll.chat.status == ChatStatus.COMPLETED
    answers = [m.content for m in poll.messages if m.type == "answer"]
    assert answers == ["You said: Again (turn 2; before that you said: [sim:first_delay=3000] Slowly)"]
    assert [m.content for m in poll.messages if m.type == "follow_up"] == ["Tell me more", "What else can you do?"]


def test_a_seed_style_poll_loop_sees_the_reply_as_it_ends(asgi_server, api_key):
    """Voice servers poll with plain HTTP: create → retrieve until completed → message list."""
    headers = auth(api_key)
    with httpx.Client(base_url=asgi_server.url, headers=headers, timeout=10) as http:
        conversation_id = http.post("/v1/conversation/create", json={}).json()["data"]["id"]
        body = {
            "bot_id": bot(),
            "user_id": "seed",
            "stream": False,
            "additional_messages": [{"role": "user", "content": "[sim:slow=20] Poll me", "content_type": "text"}],
        }
        chat = http.post(f"/v3/chat?conversation_id={conversation_id}", json=body).json()["data"]
        assert chat["status"] == "in_progress"
        seen = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status = http.get(
                "/v3/chat/retrieve", params={"conversation_id": conversation_id, "chat_id": chat["id"]}
            ).json()["data"]["status"]
            seen.append(status)
            if status == "completed":
                break
            time.sleep(0.05)
        assert seen[0] == "in_progress" and seen[-1] == "completed"
        messages = http.get(
            "/v3/chat/message/list", params={"conversation_id": conversation_id, "chat_id": chat["id"]}
        ).json()["data"]
        assert [m["content"] for m in messages if m["type"] == "answer"] == ["You said: [sim:slow=20] Poll me"]


def test_cancel_stops_the_reply_and_frees_the_conversation(asgi_server, api_key, simulator):
    coze = gateway_coze(asgi_server, api_key)
    conversation = coze.conversations.create(bot_id=bot())
    started = {}

    def stream():
        names = []
        for event in coze.chat.stream(
            bot_id=bot(),
            user_id="u",
            conversation_id=conversation.id,
            additional_messages=question("[sim:slow=100] A long answer to cut short"),
        ):
            names.append(event.event)
            if event.chat is not None:
                started["chat_id"] = event.chat.id
        return names

    streaming = Background(stream)
    streaming.start()
    chat_id = wait_until(lambda: started.get("chat_id"))
    cancelled = coze.chat.cancel(conversation_id=conversation.id, chat_id=chat_id)
    assert cancelled.status == ChatStatus.CANCELED
    names = streaming.outcome()
    assert ChatEventType.CONVERSATION_CHAT_COMPLETED not in names  # the stream just ended
    assert Reply.objects.get(coze_chat_id=chat_id).status == Reply.Status.CANCELLED
    assert sim_get(simulator, f"/_sim/chats/{chat_id}")["status"] == "canceled"  # upstream too
    # A chat that has ended can't be cancelled: Coze's 4104.
    with pytest.raises(CozeAPIError) as ended:
        coze.chat.cancel(conversation_id=conversation.id, chat_id=chat_id)
    assert ended.value.code == 4104
    _, answer, _ = stream_turn(coze, "Next", user_id="u", conversation_id=conversation.id)
    assert answer.startswith("You said: Next")


def test_an_uploaded_file_goes_with_an_object_string_message(asgi_server, api_key, simulator):
    coze = gateway_coze(asgi_server, api_key)
    uploaded = coze.files.upload(file=("cat.png", png_bytes(), "image/png"))
    assert uploaded.file_name == "cat.png" and uploaded.bytes == len(png_bytes())
    names, answer = [], ""
    message = Message.build_user_question_objects(
        [MessageObjectString.build_text("What is this?"), MessageObjectString.build_image(file_id=uploaded.id)]
    )
    for event in coze.chat.stream(bot_id=bot(), user_id="u", additional_messages=[message]):
        names.append(event.event)
        if event.event == ChatEventType.CONVERSATION_MESSAGE_DELTA:
            answer += event.message.content
    assert answer == "You said: What is this? [received: image cat.png]"
    reply = Reply.objects.get(transport="coze")
    question_message = reply.messages.get(kind="question")
    assert question_message.content == "What is this?" and question_message.content_type == "object_string"
    assert question_message.attachments[0]["file_id"] == uploaded.id


def test_a_wrong_key_is_cozes_4100(asgi_server, api_key):
    coze = gateway_coze(asgi_server, "cz_" + "x" * 43)
    with pytest.raises(CozeAPIError) as refused:
        coze.conversations.create()
    assert refused.value.code == 4100 and refused.value.logid
    with pytest.raises(CozeAPIError) as refused:
        stream_turn(coze, "hi", user_id="u")
    assert refused.value.code == 4100


def test_another_keys_conversation_and_chat_are_not_found(asgi_server, api_key, other_api_key):
    mine, theirs = gateway_coze(asgi_server, api_key), gateway_coze(asgi_server, other_api_key)
    conversation = theirs.conversations.create(bot_id=bot())
    _, _, their_chat = stream_turn(theirs, "private", user_id="them", conversation_id=conversation.id)
    for call in (
        lambda: mine.conversations.retrieve(conversation_id=conversation.id),
        lambda: stream_turn(mine, "let me in", user_id="me", conversation_id=conversation.id),
        lambda: mine.conversations.messages.list(conversation_id=conversation.id),
        lambda: mine.conversations.clear(conversation_id=conversation.id),
        lambda: mine.chat.retrieve(conversation_id=conversation.id, chat_id=their_chat.id),
    ):
        with pytest.raises(CozeAPIError) as refused:
            call()
        assert refused.value.code == 4002
    own = mine.conversations.create(bot_id=bot())
    with pytest.raises(CozeAPIError) as refused:  # my conversation, their chat
        mine.chat.retrieve(conversation_id=own.id, chat_id=their_chat.id)
    assert refused.value.code == 4001
    assert ChatSession.objects.filter(session_id=conversation.id).count() == 1  # nothing made on my side


def test_a_bot_outside_the_keys_bots_is_4006(asgi_server, api_key, settings):
    settings.COZE_ALLOWED_BOT_IDS = [bot(), "7400000000000000009"]
    ApiClient.objects.filter(name="test client").update(allowed_bot_ids="7400000000000000009")
    coze = gateway_coze(asgi_server, api_key)
    for call in (
        lambda: coze.conversations.create(bot_id=bot()),
        lambda: stream_turn(coze, "hi", user_id="u", bot_id=bot()),
        lambda: coze.conversations.list(bot_id=bot()),
    ):
        with pytest.raises(CozeAPIError) as refused:
            call()
        assert refused.value.code == 4006
    with pytest.raises(CozeAPIError) as refused:  # not one of the server's bots at all
        stream_turn(coze, "hi", user_id="u", bot_id="7400000000000000666")
    assert refused.value.code == 4006
    _, answer, _ = stream_turn(coze, "mine", user_id="u", bot_id="7400000000000000009")
    assert answer == "You said: mine"


def test_clear_starts_a_new_section_and_keeps_the_conversation(asgi_server, api_key):
    coze = gateway_coze(asgi_server, api_key)
    conversation = coze.conversations.create(bot_id=bot())
    stream_turn(coze, "remember me", user_id="u", conversation_id=conversation.id)
    section = coze.conversations.clear(conversation_id=conversation.id)
    assert section.conversation_id == conversation.id and section.id != conversation.last_section_id
    _, answer, _ = stream_turn(coze, "who?", user_id="u", conversation_id=conversation.id)
    assert answer == "You said: who?"  # a new context
    # The conversation's messages are still all listed, each in its section; the session outlived the clear.
    listed = coze.conversations.messages.list(conversation_id=conversation.id).items
    assert [m.section_id for m in listed] == [section.id] * 2 + [conversation.last_section_id] * 2
    info = httpx.get(f"{asgi_server.url}/api/sessions/{conversation.id}", headers=auth(api_key)).json()
    assert info["message_count"] == 2
    # Deleted through the session API, it is gone for Coze's API too.
    assert httpx.delete(f"{asgi_server.url}/api/sessions/{conversation.id}", headers=auth(api_key)).status_code == 204
    with pytest.raises(CozeAPIError) as gone:
        coze.conversations.retrieve(conversation_id=conversation.id)
    assert gone.value.code == 4002


def test_a_conversation_created_with_messages_keeps_them_as_context(asgi_server, api_key, simulator):
    coze = gateway_coze(asgi_server, api_key)
    conversation = coze.conversations.create(
        messages=[Message.build_user_question_text("My name is Ada"), Message.build_assistant_answer("Hello Ada")]
    )
    _, answer, _ = stream_turn(coze, "Who am I?", user_id="u", conversation_id=conversation.id)
    assert answer == "You said: Who am I? (turn 2; before that you said: My name is Ada)"
    listed = coze.conversations.messages.list(conversation_id=conversation.id, order="asc")
    assert [m.content for m in listed.items][:2] == ["My name is Ada", "Hello Ada"]
    session = ChatSession.objects.get(session_id=conversation.id)
    assert session.bot_id == bot() and session.current_conversation.bot_id == bot()  # its first chat's bot
