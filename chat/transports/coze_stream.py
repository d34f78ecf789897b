"""The chat service's events as Coze's own stream (docs/api.md §13): the events cozepy and
@coze/api parse, with Coze's names and data objects, each exactly one `event:` and one `data:`
line (no `id:`, no heartbeat comments, which cozepy's parser refuses), ending with `done` whatever
the upstream platform ended with.

    conversation.chat.created, conversation.chat.in_progress     (in_progress only when continued)
    conversation.message.delta …                                 (reasoning first, when given)
    conversation.message.completed                               (answer, verbose, follow-ups, …)
    conversation.chat.completed | conversation.chat.requires_action | conversation.chat.failed | error
    done
"""

import contextlib
import time
from collections.abc import AsyncIterator

from chat.domain.errors import ChatError
from chat.domain.events import (
    PING,
    CompletedEvent,
    DeltaEvent,
    ErrorEvent,
    FollowUpEvent,
    MessageEvent,
    ReasoningEvent,
    RequiresActionEvent,
    SessionEvent,
)
from chat.domain.sse import COZE_DONE, coze_event
from chat.transports import coze_wire
from chat.transports.errors import coze_code, coze_error_body
from chat.transports.sse import stream_items


class CozeStream:
    """Renders one chat's events. `conversation_id` is the session's id (Coze's conversation here),
    `continued` a chat that tool outputs resumed (Coze sends no second `created` for it)."""

    def __init__(self, *, conversation_id: str, bot_id: str, meta_data: dict, created_at: int, continued=False):
        self.conversation_id = conversation_id
        self.bot_id = bot_id
        self.meta_data = meta_data
        self.created_at = created_at
        self.continued = continued
        self.chat_id = ""
        self.section_id = ""
        self.reasoning: list[str] = []

    def chat(self, status: str, **extra) -> dict:
        """The chat object in `status`."""
        return coze_wire.chat_object(
            chat_id=self.chat_id,
            conversation_id=self.conversation_id,
            bot_id=self.bot_id,
            created_at=self.created_at,
            status=status,
            section_id=self.section_id,
            meta_data=self.meta_data,
            **extra,
        )

    def _message(self, kind: str, message_id: str, content: str, reasoning: str = "") -> dict:
        return coze_wire.completed_message(
            message_id=message_id,
            conversation_id=self.conversation_id,
            bot_id=self.bot_id,
            chat_id=self.chat_id,
            section_id=self.section_id,
            kind=kind,
            content=content,
            reasoning=reasoning,
        )

    def _delta(self, message_id: str, content: str, reasoning: str | None = None) -> bytes:
        return coze_event(
            "conversation.message.delta",
            coze_wire.delta_object(
                message_id=message_id,
                conversation_id=self.conversation_id,
                bot_id=self.bot_id,
                chat_id=self.chat_id,
                section_id=self.section_id,
                content=content,
                reasoning=reasoning,
            ),
        )

    def frames(self, item) -> tuple[bytes, bool]:
        """The bytes for one event, and whether they end the stream."""
        if isinstance(item, DeltaEvent):
            return self._delta(item.message_id, item.content), False
        if isinstance(item, ReasoningEvent):
            self.reasoning.append(item.content)
            return self._delta(item.message_id, "", item.content), False
        if isinstance(item, SessionEvent):
            self.chat_id, self.section_id = item.chat_id, item.section_id
            started = b"" if self.continued else coze_event("conversation.chat.created", self.chat("created"))
            return started + coze_event("conversation.chat.in_progress", self.chat("in_progress")), False
        if isinstance(item, MessageEvent):
            reasoning = "".join(self.reasoning) if item.kind == "answer" else ""
            return coze_event(
                "conversation.message.completed", self._message(item.kind, item.message_id, item.content, reasoning)
            ), False
        if isinstance(item, FollowUpEvent):
            return coze_event(
                "conversation.message.completed", self._message("follow_up", item.message_id, item.content)
            ), False
        if isinstance(item, CompletedEvent):
            completed = self.chat("completed", usage=item.usage, completed_at=int(time.time()))
            return coze_event("conversation.chat.completed", completed) + COZE_DONE, True
        if isinstance(item, RequiresActionEvent):
            waiting = self.chat("requires_action", tool_calls=item.tool_calls)
            return coze_event("conversation.chat.requires_action", waiting) + COZE_DONE, True
        if isinstance(item, ErrorEvent):
            return self._failure(item) + COZE_DONE, True
        return b"", False

    def _failure(self, error: ErrorEvent) -> bytes:
        if error.chat_failed and error.upstream_code:
            # Coze failed the chat: relayed as Coze sent it.
            last_error = (error.upstream_code, error.upstream_msg or error.detail)
            return coze_event(
                "conversation.chat.failed", self.chat("failed", last_error=last_error, failed_at=int(time.time()))
            )
        if error.code == "cancelled":
            return b""  # the client asked for it: the stream just ends
        failure = ChatError(
            error.code, error.detail, upstream_code=error.upstream_code, upstream_msg=error.upstream_msg
        )
        return coze_event("error", {"code": coze_code(failure), "msg": coze_error_body(failure)["msg"]})

    async def render(self, first, events: AsyncIterator) -> AsyncIterator[bytes]:
        ended = False
        async with contextlib.aclosing(stream_items(first, events)) as items:
            async for item in items:
                if item is PING:
                    continue
                data, ended = self.frames(item)
                if data:
                    yield data
                if ended:
                    break
        if not ended:
            yield COZE_DONE
