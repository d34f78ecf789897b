"""Helpers for the tests of Coze's own API (docs/api.md §13): cozepy pointed at the gateway, as a
client written for Coze is after its two values changed (base URL and token)."""

import threading

import httpx
from cozepy import AsyncCoze, AsyncTokenAuth, ChatEventType, Coze, Message, TokenAuth
from django.conf import settings


def bot() -> str:
    return settings.COZE_BOT_ID


def gateway_coze(server, key: str) -> Coze:
    return Coze(auth=TokenAuth(key), base_url=server.url)


def gateway_async_coze(server, key: str) -> AsyncCoze:
    return AsyncCoze(auth=AsyncTokenAuth(key), base_url=server.url)


def question(text: str) -> list[Message]:
    return [Message.build_user_question_text(text)]


def stream_turn(coze: Coze, text: str, **kwargs) -> tuple[list[str], str, object]:
    """One streamed turn: the event names, the streamed answer, the last chat object."""
    names, answer, chat = [], "", None
    for event in coze.chat.stream(bot_id=kwargs.pop("bot_id", bot()), additional_messages=question(text), **kwargs):
        names.append(str(event.event.value))
        if event.event == ChatEventType.CONVERSATION_MESSAGE_DELTA:
            answer += event.message.content
        if event.chat is not None:
            chat = event.chat
    return names, answer, chat


async def astream_turn(coze: AsyncCoze, text: str, **kwargs) -> tuple[list[str], str, object]:
    names, answer, chat = [], "", None
    async for event in coze.chat.stream(
        bot_id=kwargs.pop("bot_id", bot()), additional_messages=question(text), **kwargs
    ):
        names.append(str(event.event.value))
        if event.event == ChatEventType.CONVERSATION_MESSAGE_DELTA:
            answer += event.message.content
        if event.chat is not None:
            chat = event.chat
    return names, answer, chat


def sim_get(simulator, path: str) -> dict:
    return httpx.get(f"{simulator.base_url}{path}").json()


class Background(threading.Thread):
    """Run `target` in a thread, keeping what it returned or raised."""

    def __init__(self, target):
        super().__init__(daemon=True)
        self._target_fn = target
        self.result = None
        self.error = None

    def run(self):
        try:
            self.result = self._target_fn()
        except BaseException as exc:
            self.error = exc

    def outcome(self, timeout: float = 30):
        self.join(timeout)
        assert not self.is_alive(), "the background call did not end"
        if self.error is not None:
            raise self.error
        return self.result
