"""Transport-neutral events of a chat turn, as the chat service yields them.

`as_dict()` is exactly the JSON object of docs/api.md §5 (the SSE `data:` line and the WebSocket frame).
"""

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0

    def as_dict(self) -> dict:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(frozen=True, slots=True)
class SessionEvent:
    session_id: str
    conversation_id: str
    chat_id: str
    # The session's current conversation record: Coze's API calls it the conversation's section.
    section_id: str = ""
    type: str = "session"

    def as_dict(self) -> dict:
        return {
            "type": self.type,
            "session_id": self.session_id,
            "conversation_id": self.conversation_id,
            "chat_id": self.chat_id,
        }


@dataclass(frozen=True, slots=True)
class ReasoningEvent:
    content: str
    message_id: str = ""  # Coze's id of the message it belongs to
    type: str = "reasoning"

    def as_dict(self) -> dict:
        return {"type": self.type, "content": self.content}


@dataclass(frozen=True, slots=True)
class DeltaEvent:
    content: str
    message_id: str = ""  # Coze's id of the message it belongs to
    type: str = "delta"

    def as_dict(self) -> dict:
        return {"type": self.type, "content": self.content}


@dataclass(frozen=True, slots=True)
class FollowUpEvent:
    content: str
    message_id: str = ""  # Coze's id of the message it belongs to
    type: str = "follow_up"

    def as_dict(self) -> dict:
        return {"type": self.type, "content": self.content}


@dataclass(frozen=True, slots=True)
class CompletedEvent:
    message_id: str
    content: str
    usage: Usage
    conversation_id: str
    session_id: str
    chat_id: str
    follow_ups: list[str] = field(default_factory=list)
    timestamp: str = ""
    # A resume after the window of a reply whose stored answer was redacted (docs/api.md §15):
    # `content` is that stored answer, sent whole rather than from the client's position.
    redacted: bool = False
    type: str = "completed"

    def as_dict(self) -> dict:
        event = {
            "type": self.type,
            "message_id": self.message_id,
            "content": self.content,
            "usage": self.usage.as_dict(),
            "token_count": self.usage.total_tokens,
            "conversation_id": self.conversation_id,
            "session_id": self.session_id,
        }
        if self.redacted:
            event["redacted"] = True
        return event


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    code: str
    detail: str
    retryable: bool
    retry_after: int | None = None  # seconds, as the Retry-After header of HTTP answers
    # What Coze said, when the failure is Coze's (a failed chat, an error event): its code and
    # message, and whether it failed the chat (`conversation.chat.failed`). Coze's API relays them.
    upstream_code: int | None = None
    upstream_msg: str = ""
    chat_failed: bool = False
    type: str = "error"

    @classmethod
    def from_error(cls, error) -> "ErrorEvent":
        """The event for a `chat.domain.errors.ChatError`."""
        return cls(
            code=error.code,
            detail=error.detail,
            retryable=error.retryable,
            retry_after=error.retry_after,
            upstream_code=error.upstream_code,
            upstream_msg=error.upstream_msg,
            chat_failed=error.chat_failed,
        )

    def as_dict(self) -> dict:
        body = {"type": self.type, "code": self.code, "detail": self.detail, "retryable": self.retryable}
        if self.retry_after is not None:
            body["retry_after"] = self.retry_after
        return body


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call of one of the bot's local plugins, which the client runs (docs/api.md §13)."""

    id: str
    name: str
    arguments: str  # JSON text, as Coze sends it

    def as_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "arguments": self.arguments}


@dataclass(frozen=True, slots=True)
class RequiresActionEvent:
    """The reply paused: the bot called local plugins whose outputs the client must send. The
    reply's last event; only transports that can carry tool calls get it (see chat.turn.service)."""

    tool_calls: tuple[ToolCall, ...]
    chat_id: str
    session_id: str
    type: str = "requires_action"

    def as_dict(self) -> dict:
        return {"type": self.type, "tool_calls": [call.as_dict() for call in self.tool_calls]}


@dataclass(frozen=True, slots=True)
class MessageEvent:
    """A completed Coze message of the reply, for transports that render Coze's own stream:
    `answer` (when the answer is whole), `verbose`, `function_call`, `tool_response`."""

    kind: str
    message_id: str
    content: str
    type: str = "message"

    def as_dict(self) -> dict:
        return {"type": self.type, "kind": self.kind, "message_id": self.message_id, "content": self.content}


class Ping:
    """A heartbeat marker: yielded by a reply's event stream while nothing else happens."""


PING = Ping()


ChatEvent = (
    SessionEvent
    | ReasoningEvent
    | DeltaEvent
    | FollowUpEvent
    | CompletedEvent
    | ErrorEvent
    | RequiresActionEvent
    | MessageEvent
)
