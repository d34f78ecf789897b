"""A chat with Coze: the request's messages, the open stream translated into our `Upstream*`
events, the tool outputs that continue a paused chat, and cancel."""

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

import httpx
from cozepy import ChatEvent, ChatEventType, Message, MessageObjectString, ToolOutput

from chat.coze.client import aget_client, last_header, last_response
from chat.coze.errors import error_from_coze_code, map_exception, redact
from chat.domain.errors import ChatError
from chat.domain.events import ToolCall, Usage

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class UpstreamStarted:
    chat_id: str
    conversation_id: str
    logid: str


@dataclass(frozen=True, slots=True)
class UpstreamReasoning:
    content: str
    message_id: str = ""


@dataclass(frozen=True, slots=True)
class UpstreamDelta:
    content: str
    message_id: str = ""


@dataclass(frozen=True, slots=True)
class UpstreamAnswer:
    message_id: str


@dataclass(frozen=True, slots=True)
class UpstreamFollowUp:
    content: str
    message_id: str = ""


@dataclass(frozen=True, slots=True)
class UpstreamMessage:
    """Another completed message of the chat: `verbose`, `function_call` or `tool_response`."""

    kind: str
    message_id: str
    content: str


@dataclass(frozen=True, slots=True)
class UpstreamCompleted:
    usage: Usage


@dataclass(frozen=True, slots=True)
class UpstreamRequiresAction:
    """The chat paused for the bot's local plugins: the stream ends after this, and the chat goes
    on once `achat_submit_tool_outputs` brings their outputs."""

    tool_calls: tuple[ToolCall, ...]


UpstreamEvent = (
    UpstreamStarted
    | UpstreamReasoning
    | UpstreamDelta
    | UpstreamAnswer
    | UpstreamFollowUp
    | UpstreamMessage
    | UpstreamCompleted
    | UpstreamRequiresAction
)
# The other completed messages a chat sends, passed on as UpstreamMessage.
OTHER_MESSAGE_KINDS = frozenset({"verbose", "function_call", "tool_response"})


def attachment_item(attachment: dict) -> MessageObjectString:
    """The Coze object_string item for one resolved attachment: `{"kind": "image"|"file", "file_id"}`
    for an uploaded file, or `{"kind", "url"}` for a link. (The OpenAI path maps `image_url`
    parts to `{"kind": "image", "url": …}`.)"""
    build = MessageObjectString.build_image if attachment["kind"] == "image" else MessageObjectString.build_file
    if attachment.get("file_id"):
        return build(file_id=attachment["file_id"])
    return build(file_url=attachment["url"])


def build_messages(
    *, message: str | None, additional_messages: list[dict] | None, attachments: list[dict] | tuple = ()
) -> list[Message]:
    """Coze message objects for a turn: the request's additional_messages, or one user message —
    plain text, or with `attachments` (see `attachment_item`) one object_string message of the
    text and those items, as Coze expects multimodal input."""
    if additional_messages:
        messages = [
            Message(
                role=item.get("role", "user"),
                type=item.get("type") or ("question" if item.get("role", "user") == "user" else "answer"),
                content=item["content"],
                content_type=item.get("content_type", "text"),
                meta_data=item.get("meta_data"),
            )
            for item in additional_messages
        ]
        last = additional_messages[-1]
        if attachments and last.get("role", "user") == "user" and last.get("content_type", "text") == "text":
            # The turn's own question is the last message (context before it): its attachments go with it.
            items = [MessageObjectString.build_text(last["content"])] if last["content"] else []
            messages[-1] = Message.build_user_question_objects(items + [attachment_item(a) for a in attachments])
        return messages
    if attachments:
        items = [MessageObjectString.build_text(message)] if message else []
        items += [attachment_item(attachment) for attachment in attachments]
        return [Message.build_user_question_objects(items)]
    return [Message.build_user_question_text(message or "")]


class UpstreamChat:
    """An open streaming chat. Iterate `events()`; always `await aclose()` (the service does so in
    a finally): closing cozepy's stream leaves its HTTP response open until garbage collection, and
    only closing that response frees the connection and tells Coze the client is gone."""

    def __init__(
        self,
        *,
        stream: AsyncGenerator[ChatEvent, None],
        first: ChatEvent | None,
        response: httpx.Response,
        continued: bool = False,
    ):
        self._stream = stream
        self._first = first
        self._response = response
        self.logid = response.headers.get("x-tt-logid", "")
        # A chat that tool outputs continued starts at `in_progress` (it has no `created` again).
        self._continued = continued
        self._completed = False
        self._closed = False

    async def events(self) -> AsyncIterator[UpstreamEvent]:
        """Yields our events; raises ChatError on any upstream failure or a stream that ends early
        (neither completed nor paused for tools)."""
        try:
            if self._first is not None:
                first, self._first = self._first, None
                for event in self._translate(first):
                    yield event
            async for chat_event in self._stream:
                for event in self._translate(chat_event):
                    yield event
        except ChatError:
            raise
        except Exception as exc:
            raise map_exception(exc, logid=self.logid, mid_stream=True) from exc
        if not self._completed:
            raise ChatError(
                "upstream_error",
                "Coze ended the stream before the reply was complete.",
                retryable=True,
                logid=self.logid,
            )

    def _translate(self, event: ChatEvent) -> tuple[UpstreamEvent, ...]:
        kind = event.event
        if kind == ChatEventType.CONVERSATION_MESSAGE_DELTA:
            message = event.message
            message_id = message.id or ""
            if message.reasoning_content and message.content:
                return (
                    UpstreamReasoning(message.reasoning_content, message_id),
                    UpstreamDelta(message.content, message_id),
                )
            if message.reasoning_content:
                return (UpstreamReasoning(message.reasoning_content, message_id),)
            if message.content:
                return (UpstreamDelta(message.content, message_id),)
        elif kind == ChatEventType.CONVERSATION_MESSAGE_COMPLETED:
            message = event.message
            if message.type == "follow_up":
                return (UpstreamFollowUp(message.content, message.id or ""),)
            if message.type == "answer" and message.id:
                return (UpstreamAnswer(message.id),)
            if message.type in OTHER_MESSAGE_KINDS:
                # cozepy's enum makes a member of a type it does not know: its value is Coze's name.
                kind = getattr(message.type, "value", message.type)
                return (UpstreamMessage(kind, message.id or "", message.content),)
        elif kind == ChatEventType.CONVERSATION_CHAT_CREATED or (
            kind == ChatEventType.CONVERSATION_CHAT_IN_PROGRESS and self._continued
        ):
            self._continued = False
            chat = event.chat
            return (UpstreamStarted(chat_id=chat.id, conversation_id=chat.conversation_id, logid=self.logid),)
        elif kind == ChatEventType.CONVERSATION_CHAT_COMPLETED:
            usage = event.chat.usage
            self._completed = True
            return (
                UpstreamCompleted(
                    Usage(
                        input_tokens=usage.input_count if usage else 0,
                        output_tokens=usage.output_count if usage else 0,
                        total_tokens=usage.token_count if usage else 0,
                    )
                ),
            )
        elif kind == ChatEventType.CONVERSATION_CHAT_FAILED:
            last_error = event.chat.last_error
            raise error_from_coze_code(
                last_error.code if last_error else 0,
                last_error.msg if last_error else "",
                logid=self.logid,
                chat_failed=True,
            )
        elif kind == ChatEventType.CONVERSATION_CHAT_REQUIRES_ACTION:
            self._completed = True  # the stream ends here, as it should
            return (UpstreamRequiresAction(tool_calls_of(event.chat)),)
        return ()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await _close_stream(self._stream, self._response)


def tool_calls_of(chat) -> tuple[ToolCall, ...]:
    """The local plugin calls of a chat in `requires_action`."""
    action = chat.required_action
    calls = action.submit_tool_outputs.tool_calls if action and action.submit_tool_outputs else []
    return tuple(
        ToolCall(
            id=call.id,
            name=call.function.name if call.function else "",
            arguments=call.function.arguments if call.function else "{}",
        )
        for call in calls
    )


STREAM_PATHS = ("/v3/chat", "/v3/chat/submit_tool_outputs")


def _chat_stream_response() -> httpx.Response:
    """The HTTP response of the chat stream cozepy has just opened in this task.

    The one place that depends on how cozepy streams (hence its exact pin): its public
    `chat.stream()` yields events but never the HTTP response, and closing it leaves the response
    open. It does send the request through our httpx client, whose response hook saw the response.
    If a cozepy upgrade stops doing so, fail here, loudly, rather than leak a connection per turn.
    """
    response = last_response.get()
    if response is None or not response.request.url.path.endswith(STREAM_PATHS):
        raise RuntimeError(
            "cozepy streamed the chat without our httpx client's response hook seeing its response; "
            "chat/coze/chats.py can't close such streams (see tests/chat/test_coze_adapter.py)"
        )
    return response


async def _close_stream(stream: AsyncGenerator[ChatEvent, None], response: httpx.Response | None) -> None:
    # The generator first, then the HTTP response: that is what frees the connection.
    try:
        await stream.aclose()
    except Exception:  # e.g. still running in another task: closing the response stops it anyway
        logger.debug("closing the cozepy stream failed", exc_info=True)
    if response is not None:
        await response.aclose()


def _is_event_stream(response: httpx.Response | None) -> bool:
    return response is not None and "event-stream" in response.headers.get("content-type", "")


async def achat_open(
    *,
    bot_id: str,
    user_id: str,
    conversation_id: str | None,
    messages: list[Message],
    custom_variables: dict[str, str] | None = None,
    meta_data: dict[str, str] | None = None,
) -> UpstreamChat:
    """Send the chat request and return the open stream. Raises ChatError when Coze refuses it
    or can't be reached (these happen before any byte of the reply)."""
    client = await aget_client()
    last_response.set(None)
    stream = client.chat.stream(
        bot_id=bot_id,
        user_id=user_id,
        additional_messages=messages,
        custom_variables=custom_variables or None,
        meta_data=meta_data or None,
        conversation_id=conversation_id or None,
        auto_save_history=True,
    )
    return await _aopen_stream(stream)


async def achat_submit_tool_outputs(
    *, conversation_id: str, chat_id: str, tool_outputs: list[tuple[str, str]]
) -> UpstreamChat:
    """Continue a chat paused for local tools with their outputs (`(tool_call_id, output)` pairs)
    and return its open stream, which starts with the chat's `in_progress` (as UpstreamStarted).
    Raises ChatError when Coze refuses (e.g. 4000 for outputs that don't match its calls)."""
    client = await aget_client()
    last_response.set(None)
    stream = client.chat.submit_tool_outputs_stream(
        conversation_id=conversation_id,
        chat_id=chat_id,
        tool_outputs=[ToolOutput(tool_call_id=call_id, output=output) for call_id, output in tool_outputs],
    )
    return await _aopen_stream(stream, continued=True)


async def _aopen_stream(stream: AsyncGenerator[ChatEvent, None], *, continued: bool = False) -> UpstreamChat:
    try:
        # cozepy sends the request on the stream's first step; take its first event (the chat
        # object) here, so that a refusal raises before the caller sees any of the reply.
        first = await anext(stream, None)
    except BaseException as exc:
        response = last_response.get()
        await _close_stream(stream, response)
        if not isinstance(exc, Exception):
            raise
        raise map_exception(exc, logid=last_header("x-tt-logid"), mid_stream=_is_event_stream(response)) from exc
    try:
        response = _chat_stream_response()
    except RuntimeError:
        await stream.aclose()
        raise
    return UpstreamChat(stream=stream, first=first, response=response, continued=continued)


async def achat_cancel(*, conversation_id: str, chat_id: str) -> None:
    """Ask Coze to mark the chat cancelled. Best effort: a chat that already ended answers 4104."""
    try:
        await (await aget_client()).chat.cancel(conversation_id=conversation_id, chat_id=chat_id)
    except Exception as exc:  # noqa: BLE001 - cancel is advisory; the stream is closed anyway
        logger.info("Coze cancel for chat %s did not apply: %s", chat_id, redact(str(exc)))
