"""The validated inputs of a chat turn: who is asking (`Owner`) and what (`ChatRequest`).

Plain data, imported by authentication, validation, the transports and the chat service alike.
"""

import dataclasses
import re
from dataclasses import dataclass, field

from chat.domain.errors import ChatError

# --- text: the one rule of what text a request may carry -----------------------------------------

# Characters no text field of any request may hold, on any transport (docs/api.md §3, `invalid`):
# * NUL (U+0000): PostgreSQL text can't store it (the insert fails), and C strings end at it;
# * the other C0 control characters (U+0001 to U+001F) except tab, line feed and carriage return:
#   no keyboard or text editor produces them; in a prompt they are noise or an injection trick
#   (terminal escapes, form feeds), and XML-based tools downstream reject them;
# * lone surrogates (U+D800 to U+DFFF): JSON's `\ud800` escape can spell one, but it is no character
#   and can't be encoded as UTF-8 (a pair of escapes that spells one character is decoded to it).
# DEL and the C1 controls (U+007F to U+009F) pass: they are valid characters in text converted from
# older encodings, and harmless to store and to send.
INVALID_TEXT_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")


def text_fault(text: str) -> str | None:
    """Why `text` can't be accepted (the first offending character, named), or None when it can."""
    found = INVALID_TEXT_RE.search(text)
    if found is None:
        return None
    char = found.group()
    code = f"U+{ord(char):04X}"
    if char == "\x00":
        return f"Contains a NUL character ({code}) at position {found.start()}."
    if "\ud800" <= char <= "\udfff":
        return f"Contains a lone surrogate ({code}) at position {found.start()}, which is not text."
    return f"Contains the control character {code} at position {found.start()}."


def check_text(value, field: str = "body") -> None:
    """ChatError("invalid") naming the field (`messages[0].content`) when any string of `value` — a
    decoded JSON value, a form or query field, a file name: its keys too — holds a character
    `text_fault` refuses. Every transport calls this on what it decoded, before anything else."""
    if isinstance(value, str):
        fault = text_fault(value)
        if fault is not None:
            raise ChatError("invalid", f"{field}: {fault}", errors={field: [fault]})
    elif isinstance(value, dict):
        for key, item in value.items():
            name = key if field == "body" else f"{field}.{key}"
            if isinstance(key, str):
                check_text(key, f"{name} (the name)")
            check_text(item, name)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_text(item, f"{field}[{index}]")


def check_message_text(text: str | None, field: str = "message", *, has_items: bool = False) -> None:
    """A user's message: valid text (`check_text`), and more than whitespace unless the turn
    carries images or files (`has_items`), which are then the message. A blank turn is `invalid`,
    never sent to Coze and never billed."""
    if text is None:
        return
    check_text(text, field)
    if not has_items and not text.strip():
        raise ChatError("invalid", f"{field}: The message is empty or only whitespace.", errors={field: ["Blank."]})


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
    # The session must exist already (Coze's `conversation_id`, docs/api.md §13): `not_found`
    # otherwise, where other transports create it.
    existing_session: bool = False

    def __post_init__(self):
        # The last line of the rule for whatever a transport built: blank or invalid text in a
        # turn is `invalid` before admission, storage or Coze.
        check_message_text(self.message, has_items=bool(self.attachments))
        for index, item in enumerate(self.additional_messages or ()):
            name = f"additional_messages[{index}].content"
            content = item.get("content")
            if item.get("role", "user") == "user" and item.get("content_type", "text") == "text":
                check_message_text(content, name, has_items=bool(self.attachments))
            else:
                check_text(content, name)
        for name in ("session_id", "user_id", "bot_id"):
            check_text(getattr(self, name), name)
        check_text(self.custom_variables, "custom_variables")
        check_text(self.meta_data, "meta_data")

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
