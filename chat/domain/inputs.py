"""The validated inputs of a chat turn: who is asking (`Owner`) and what (`ChatRequest`).

Plain data, imported by authentication, validation, the transports and the chat service alike.
"""

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Owner:
    """Who is asking: an API client, a logged-in user, or an anonymous browser."""

    key: str
    api_client_id: int | None = None
    user_id: int | None = None


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A validated chat request body (docs/api.md §4)."""

    message: str | None = None
    session_id: str | None = None
    user_id: str | None = None
    bot_id: str | None = None
    custom_variables: dict[str, str] = field(default_factory=dict)
    meta_data: dict[str, str] = field(default_factory=dict)
    additional_messages: list[dict] | None = None
    # Validated `{"file_id"}` / `{"url", "type"}` items (docs/api.md §12), resolved as the turn starts.
    attachments: tuple[dict, ...] = ()
    resumable: bool = False  # the reply runs on when its client goes away (docs/api.md §9)
    # The session must exist already (Coze's `conversation_id`, docs/api.md §13): `not_found`
    # otherwise, where other transports create it.
    existing_session: bool = False

    @property
    def user_text(self) -> str:
        """The text stored as the user's message."""
        if self.message is not None:
            return self.message
        parts = [
            item.get("content", "") for item in self.additional_messages or [] if item.get("role", "user") == "user"
        ]
        return "\n".join(parts)

    @property
    def content_type(self) -> str:
        """How the user's message is stored: `object_string` when any message carries items."""
        messages = self.additional_messages or []
        multimodal = self.attachments or any(m.get("content_type") == "object_string" for m in messages)
        return "object_string" if multimodal else "text"
