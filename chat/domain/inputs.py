"""The validated inputs of a chat turn: who is asking (`Owner`) and what (`ChatRequest`).

Plain data, imported by authentication, validation, the transports and the chat service alike.
"""

import dataclasses
from dataclasses import dataclass, field

from chat.domain.errors import ChatError


@dataclass(frozen=True, slots=True)
class Owner:
    """Who is asking: an API client, a logged-in user, or an anonymous browser.

    An end-user token (docs/api.md §2) is its API client narrowed to one end user: the same `key`
    (so limits and budgets stay the client's) with `end_user_id`, the Coze user_id whose sessions
    and files alone it reaches.
    """

    key: str
    api_client_id: int | None = None
    user_id: int | None = None
    end_user_id: str | None = None

    def scope(self, prefix: str = "") -> dict[str, str]:
        """The ORM filter of what this owner reaches, for sessions and files (both carry
        `owner_key` and `coze_user_id`); `prefix` reaches them through a relation ("session__").
        Every query of an owner's sessions, replies and files filters with it."""
        scope = {f"{prefix}owner_key": self.key}
        if self.end_user_id is not None:
            scope[f"{prefix}coze_user_id"] = self.end_user_id
        return scope

    def reaches(self, *, owner_key: str, coze_user_id: str) -> bool:
        """Whether a session (or a running turn of one) of `owner_key` and `coze_user_id` is this
        owner's: `scope` for what is in memory rather than in the database."""
        return owner_key == self.key and (self.end_user_id is None or coze_user_id == self.end_user_id)


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

    def narrowed_to(self, owner: Owner) -> "ChatRequest":
        """The request as `owner` may send it. An end-user token speaks for its own user only: a
        `user_id` naming another is `forbidden`; naming its own is dropped, so that the session's
        user (a new session's: the token's) is the turn's and a token never moves a session."""
        if owner.end_user_id is None or self.user_id is None:
            return self
        if self.user_id != owner.end_user_id:
            raise ChatError("forbidden", "This token is for another user_id; send the token's own or none.")
        return dataclasses.replace(self, user_id=None)

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
