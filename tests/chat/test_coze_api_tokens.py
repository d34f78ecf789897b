"""End-user tokens (docs/api.md §2, §13) on Coze's own API, with cozepy: a page or a device holds a
short-lived token narrowed to its user instead of the API key, and gets only that user's
conversations; tampered, expired or revoked tokens are Coze's 4100."""

import pytest
from cozepy import ChatStatus, CozeAPIError, ToolOutput

from chat.access import auth, tokens
from sessions_admin.models import ApiClient, ChatSession
from tests.chat.coze_clients import bot, gateway_coze, question, stream_turn
from tests.conftest import auth as bearer

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fresh_token_cache():
    auth._token_clients.clear()
    yield
    auth._token_clients.clear()


def mint(http, key: str, user_id: str, **body) -> str:
    response = http.post("/api/tokens", json={"user_id": user_id, **body}, headers=bearer(key))
    assert response.status_code == 201, response.text
    return response.json()["token"]


def test_cozepy_with_an_end_user_token_reaches_only_its_users_conversations(asgi_server, http, api_key):
    alice = gateway_coze(asgi_server, mint(http, api_key, "alice"))
    conversation = alice.conversations.create()
    _, answer, _ = stream_turn(alice, "Hello", user_id="alice", conversation_id=conversation.id)
    assert answer == "You said: Hello"
    _, answer, _ = stream_turn(alice, "Again", conversation_id=conversation.id, user_id="alice")
    assert answer.startswith("You said: Again (turn 2;")
    assert ChatSession.objects.get(session_id=conversation.id).coze_user_id == "alice"
    poll = alice.chat.create_and_poll(
        bot_id=bot(), user_id="alice", conversation_id=conversation.id, additional_messages=question("Polled")
    )
    assert poll.chat.status == ChatStatus.COMPLETED

    bob = gateway_coze(asgi_server, mint(http, api_key, "bob"))
    for call in (
        lambda: bob.conversations.retrieve(conversation_id=conversation.id),
        lambda: stream_turn(bob, "Let me in", user_id="bob", conversation_id=conversation.id),
        lambda: bob.conversations.messages.list(conversation_id=conversation.id),
    ):
        with pytest.raises(CozeAPIError) as refused:
            call()
        assert refused.value.code == 4002
    assert [c.id for c in bob.conversations.list(bot_id=bot()).items] == []
    # The key itself still reaches every conversation of its client.
    assert (
        gateway_coze(asgi_server, api_key).conversations.retrieve(conversation_id=conversation.id).id == conversation.id
    )

    with pytest.raises(CozeAPIError) as refused:  # a token speaks for its own user only
        stream_turn(alice, "As bob", user_id="bob")
    assert refused.value.code == 4101
    as_bob = http.post("/v1/conversation/create", data={"user_id": "bob"}, headers=bearer(mint(http, api_key, "alice")))
    assert as_bob.status_code == 403 and as_bob.json()["code"] == 4101


def test_a_paused_chat_of_a_token_is_continued_with_the_token(asgi_server, http, api_key):
    alice = gateway_coze(asgi_server, mint(http, api_key, "alice"))
    _, _, chat = stream_turn(alice, "[sim:tool] weather", user_id="alice")
    assert chat.status == ChatStatus.REQUIRES_ACTION
    (call,) = chat.required_action.submit_tool_outputs.tool_calls
    bob = gateway_coze(asgi_server, mint(http, api_key, "bob"))
    with pytest.raises(CozeAPIError) as refused:
        bob.chat.submit_tool_outputs(
            conversation_id=chat.conversation_id,
            chat_id=chat.id,
            tool_outputs=[ToolOutput(tool_call_id=call.id, output="x")],
            stream=False,
        )
    assert refused.value.code == 4002
    answer = "".join(
        event.message.content
        for event in alice.chat.submit_tool_outputs(
            conversation_id=chat.conversation_id,
            chat_id=chat.id,
            tool_outputs=[ToolOutput(tool_call_id=call.id, output="sunny")],
            stream=True,
        )
        if event.event == "conversation.message.delta"
    )
    assert answer.endswith("[tool get_weather: sunny]")


def test_tampered_expired_and_revoked_tokens_are_4100(asgi_server, http, api_key, monkeypatch):
    token = mint(http, api_key, "alice", expires_in=60)
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    with pytest.raises(CozeAPIError) as refused:
        gateway_coze(asgi_server, tampered).conversations.create()
    assert refused.value.code == 4100

    later = tokens.now() + 120
    monkeypatch.setattr(tokens, "now", lambda: later)
    with pytest.raises(CozeAPIError) as refused:
        stream_turn(gateway_coze(asgi_server, token), "hi", user_id="alice")
    assert refused.value.code == 4100
    monkeypatch.undo()

    fresh = mint(http, api_key, "alice")
    assert gateway_coze(asgi_server, fresh).conversations.create().id
    ApiClient.objects.update(is_active=False)
    auth._token_clients.clear()  # the revocation reaches every worker within KEY_CACHE_SECONDS
    with pytest.raises(CozeAPIError) as refused:
        gateway_coze(asgi_server, fresh).conversations.create()
    assert refused.value.code == 4100
