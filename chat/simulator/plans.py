"""Planning a chat: everything it will send, built before it plays.

A chat either answers at once, or (``[sim:tool]``) first pauses for its local plugins: its plan
then ends with ``conversation.chat.requires_action``, and the rest of the chat is planned when
``/v3/chat/submit_tool_outputs`` brings the outputs, from the :class:`Continuation` kept on it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .bot import (
    FOLLOW_UPS,
    MID_STREAM_FAULTS,
    REASONING_TEXT,
    VERBOSE_CONTENT,
    Directives,
    answer_text,
    split_deltas,
    tool_results,
    without_directives,
)
from .state import Chat, Conversation, SimulatorBase
from .wire import json_bytes


@dataclass
class ChatPlan:
    """Everything a chat will send, serialised up front so the per-delta work is one send.

    ``lead_messages`` are completed before the answer: the ``function_call`` messages of a chat
    that then pauses for ``tool_calls``, or the ``tool_response`` messages of a ``continued``
    chat (one that ``submit_tool_outputs`` resumed: it has no ``conversation.chat.created``).
    """

    reasoning_frames: list[bytes]
    answer_frames: list[bytes]
    final_messages: list[dict[str, Any]]
    usage: dict[str, int]
    first_delay: float
    token_delay: float
    fault: str | None
    silence: float
    lead_messages: list[dict[str, Any]] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    continued: bool = False


@dataclass
class Continuation:
    """What a chat needs to answer: decided when it starts, kept while it waits for tools."""

    answer: str
    reasoning: bool
    input_count: int
    first_delay: float
    token_delay: float
    fault: str | None
    silence: float


class ChatPlanner(SimulatorBase):
    """Builds the plans of the scripted bot's chats."""

    def _plan(
        self, chat: Chat, conversation: Conversation, text: str, directives: Directives, received: str = ""
    ) -> ChatPlan:
        answer = answer_text(text, directives, conversation.turns)
        if directives.echo is None:  # an echo stays exactly the text after the directive
            answer += received
        section_chars = sum(map(len, conversation.turns)) + len(text)
        first_ms = directives.first_delay_ms
        slow_ms = directives.slow_ms
        continuation = Continuation(
            answer=answer,
            reasoning="reasoning" in directives.flags,
            input_count=section_chars // 4 + 1,
            first_delay=(self.config.first_token_delay_ms if first_ms is None else first_ms) / 1000,
            token_delay=(self.config.token_delay_ms if slow_ms is None else slow_ms) / 1000,
            fault=next((f for f in MID_STREAM_FAULTS if f in directives.flags), None),
            silence=directives.silence_s or 0.0,
        )
        if directives.tools:
            return self._tool_plan(chat, continuation, directives.tools, without_directives(text))
        return self._answer_plan(chat, continuation)

    def _tool_plan(self, chat: Chat, continuation: Continuation, tools: list[str], text: str) -> ChatPlan:
        """The first part of a chat that calls local plugins: it stops at ``requires_action``."""
        arguments = {"input": text}
        calls = [
            {
                "id": f"call_{self.new_id()}",
                "type": "function",
                "function": {"name": name, "arguments": _json(arguments)},
            }
            for name in tools
        ]
        chat.continuation = continuation
        return ChatPlan(
            reasoning_frames=[],
            answer_frames=[],
            final_messages=[],
            usage=chat.usage,
            first_delay=continuation.first_delay,
            token_delay=continuation.token_delay,
            fault=None,
            silence=0.0,
            lead_messages=[
                self._message(chat, "function_call", _json({"name": name, "arguments": arguments})) for name in tools
            ],
            tool_calls=calls,
        )

    def _continued_plan(self, chat: Chat, calls: list[dict[str, Any]], outputs: dict[str, str]) -> ChatPlan:
        """The rest of a chat whose tool ``outputs`` (by call id) arrived: its answer uses them."""
        continuation: Continuation = chat.continuation
        lead = [self._message(chat, "tool_response", outputs[call["id"]]) for call in calls]
        answer = continuation.answer + tool_results(calls, outputs)
        plan = self._answer_plan(chat, dataclasses.replace(continuation, answer=answer))
        plan.lead_messages = lead
        plan.continued = True
        return plan

    def _answer_plan(self, chat: Chat, continuation: Continuation) -> ChatPlan:
        answer = continuation.answer
        message = {
            "id": self.new_id(),
            "conversation_id": chat.conversation_id,
            "bot_id": chat.bot_id,
            "role": "assistant",
            "type": "answer",
        }
        tail = {
            "content_type": "text",
            "chat_id": chat.id,
            "section_id": chat.section_id,
        }
        # Pre-serialise the message around its content: each delta only dumps its piece.
        head = b"event:conversation.message.delta\ndata:" + json_bytes(message)[:-1]
        tail_bytes = b"," + json_bytes(tail)[1:] + b"\n\n"
        answer_frames = [head + b',"content":' + json_bytes(piece) + tail_bytes for piece in split_deltas(answer)]
        reasoning_frames = []
        if continuation.reasoning:
            reasoning_frames = [
                head + b',"content":"","reasoning_content":' + json_bytes(piece) + tail_bytes
                for piece in split_deltas(REASONING_TEXT)
            ]

        answer_message = self._message(chat, "answer", answer, message["id"])
        if reasoning_frames:
            answer_message["reasoning_content"] = REASONING_TEXT
        verbose = [] if self.config.studio else [self._message(chat, "verbose", VERBOSE_CONTENT)]
        final_messages = [
            answer_message,
            *verbose,
            *(self._message(chat, "follow_up", question) for question in FOLLOW_UPS),
        ]
        output_count = len(reasoning_frames) + len(answer_frames)
        input_count = continuation.input_count
        return ChatPlan(
            reasoning_frames=reasoning_frames,
            answer_frames=answer_frames,
            final_messages=final_messages,
            usage={
                "token_count": input_count + output_count,
                "output_count": output_count,
                "input_count": input_count,
            },
            first_delay=continuation.first_delay,
            token_delay=continuation.token_delay,
            fault=continuation.fault,
            silence=continuation.silence,
        )

    def _message(self, chat: Chat, kind: str, content: str, message_id: str | None = None) -> dict[str, Any]:
        """A completed assistant message of ``chat``."""
        return {
            "id": message_id or self.new_id(),
            "conversation_id": chat.conversation_id,
            "bot_id": chat.bot_id,
            "role": "assistant",
            "type": kind,
            "content": content,
            "content_type": "text",
            "chat_id": chat.id,
            "section_id": chat.section_id,
            "created_at": chat.created_at,
            "updated_at": chat.created_at,
        }


def _json(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)
