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
    type: str = "reasoning"

    def as_dict(self) -> dict:
        return {"type": self.type, "content": self.content}


@dataclass(frozen=True, slots=True)
class DeltaEvent:
    content: str
    type: str = "delta"

    def as_dict(self) -> dict:
        return {"type": self.type, "content": self.content}


@dataclass(frozen=True, slots=True)
class FollowUpEvent:
    content: str
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
    type: str = "completed"

    def as_dict(self) -> dict:
        return {
            "type": self.type,
            "message_id": self.message_id,
            "content": self.content,
            "usage": self.usage.as_dict(),
            "token_count": self.usage.total_tokens,
            "conversation_id": self.conversation_id,
            "session_id": self.session_id,
        }


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    code: str
    detail: str
    retryable: bool
    retry_after: int | None = None  # seconds, as the Retry-After header of HTTP answers
    type: str = "error"

    @classmethod
    def from_error(cls, error) -> "ErrorEvent":
        """The event for a `chat.domain.errors.ChatError`."""
        return cls(code=error.code, detail=error.detail, retryable=error.retryable, retry_after=error.retry_after)

    def as_dict(self) -> dict:
        body = {"type": self.type, "code": self.code, "detail": self.detail, "retryable": self.retryable}
        if self.retry_after is not None:
            body["retry_after"] = self.retry_after
        return body


class Ping:
    """A heartbeat marker: yielded by a reply's event stream while nothing else happens."""


PING = Ping()


ChatEvent = SessionEvent | ReasoningEvent | DeltaEvent | FollowUpEvent | CompletedEvent | ErrorEvent
