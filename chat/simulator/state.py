"""What the simulator knows: its configuration, conversations, chats and files, all in memory."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

from .wire import CozeError

# Coze's documented limit for one uploaded file.
COZE_MAX_UPLOAD_BYTES = 512 * 1024 * 1024
# Extensions of the file types Coze's upload accepts (documents, text and code, images, audio,
# video, archives).
COZE_UPLOAD_EXTENSIONS = frozenset(
    "doc docx xls xlsx ppt pptx pdf numbers csv txt md json xml html htm cpp py java c js ts go "
    "jpg jpeg jpg2 png gif webp heic heif bmp pcd tiff tif wav ogg mp3 m4a mp4 avi mov 3gp 3gpp flv "
    "webm wmv rmvb zip rar".split()
)
# Finished chats beyond this many are forgotten, oldest first, so a long demo stays small.
MAX_CHATS = 20_000


@dataclass
class SimulatorConfig:
    """How a simulator instance behaves.

    ``token``: when set, every Coze endpoint requires ``Authorization: Bearer <token>`` (or a
    token issued by the OAuth endpoint) and answers HTTP 401 / code 4100 otherwise.
    ``token_delay_ms``: pause between two deltas. ``first_token_delay_ms``: pause between
    ``conversation.chat.in_progress`` and the first delta. ``max_upload_bytes``: the largest
    file ``/v1/files/upload`` takes. ``tool_output_timeout_s``: how long a chat waits in
    ``requires_action`` for its tool outputs before it fails. ``studio``: behave as a self-hosted
    Coze Studio instead of coze.com (see the module docstring of :mod:`chat.simulator.app`).
    """

    token: str | None = None
    token_delay_ms: float = 0
    first_token_delay_ms: float = 0
    max_upload_bytes: int = COZE_MAX_UPLOAD_BYTES
    tool_output_timeout_s: float = 600.0
    studio: bool = False


@dataclass(eq=False)
class Conversation:
    """A conversation, its stored messages and the memory of its current section.

    ``bot_id`` is empty until the conversation's first chat when it was created without one.
    ``messages`` holds every stored message in the order it was stored (the message list filters
    them); ``turns`` the user texts of the current section, which is what the bot remembers.
    """

    id: str
    created_at: int
    meta_data: dict[str, Any]
    section_id: str
    bot_id: str = ""
    turns: list[str] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    running_chat_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created_at": self.created_at,
            "meta_data": self.meta_data,
            "last_section_id": self.section_id,
        }

    def inspection(self) -> dict[str, Any]:
        """What ``GET /_sim/conversations/{id}`` answers."""
        return {
            "bot_id": self.bot_id,
            "section_id": self.section_id,
            "turns": self.turns,
            "message_ids": [message["id"] for message in self.messages],
            "running_chat_id": self.running_chat_id,
        }


@dataclass(eq=False)
class Chat:
    """One chat (a user turn and its answer), as Coze reports it and as tests inspect it."""

    id: str
    conversation_id: str
    bot_id: str
    section_id: str
    created_at: int
    meta_data: dict[str, Any]
    stream: bool
    status: str = "in_progress"
    usage: dict[str, int] = field(default_factory=lambda: {"token_count": 0, "output_count": 0, "input_count": 0})
    last_error: dict[str, Any] = field(default_factory=lambda: {"code": 0, "msg": ""})
    completed_at: int | None = None
    failed_at: int | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    tokens_sent: int = 0
    request_messages: list[Any] = field(default_factory=list)
    client_disconnected_at: float | None = None
    canceled_at: float | None = None
    finished_at: float | None = None
    user_id: str = ""
    auto_save_history: bool = True
    # A chat paused for local tools: Coze's required_action, what the client submitted, and what
    # the rest of the chat needs (set by the planner, used by submit_tool_outputs).
    required_action: dict[str, Any] | None = None
    tool_outputs: list[Any] = field(default_factory=list)
    continuation: Any = None
    tool_timer: asyncio.Task[None] | None = None

    def as_dict(self, status: str | None = None) -> dict[str, Any]:
        """The Coze chat object; ``status`` overrides the stored one (for stream events)."""
        data: dict[str, Any] = {
            "id": self.id,
            "conversation_id": self.conversation_id,
            "bot_id": self.bot_id,
            "created_at": self.created_at,
            "last_error": self.last_error,
            "meta_data": self.meta_data,
            "status": status or self.status,
            "usage": self.usage,
            "section_id": self.section_id,
        }
        if self.completed_at is not None:
            data["completed_at"] = self.completed_at
        if self.failed_at is not None:
            data["failed_at"] = self.failed_at
        if self.required_action is not None and data["status"] == "requires_action":
            data["required_action"] = self.required_action
        return data

    def inspection(self) -> dict[str, Any]:
        """What ``GET /_sim/chats/{id}`` answers."""
        return {
            "status": self.status,
            "tokens_sent": self.tokens_sent,
            "client_disconnected_at": self.client_disconnected_at,
            "canceled_at": self.canceled_at,
            "finished_at": self.finished_at,
            "conversation_id": self.conversation_id,
            "stream": self.stream,
            "additional_messages": self.request_messages,
            "user_id": self.user_id,
            "required_action": self.required_action,
            "tool_outputs": self.tool_outputs,
        }


@dataclass(eq=False)
class UploadedFile:
    """A file received by ``/v1/files/upload``: its metadata and a digest, not its content."""

    id: str
    file_name: str
    bytes: int
    content_type: str
    sha256: str
    created_at: int

    def as_dict(self) -> dict[str, Any]:
        """Coze's file object."""
        return {"id": self.id, "bytes": self.bytes, "file_name": self.file_name, "created_at": self.created_at}

    def inspection(self) -> dict[str, Any]:
        return {
            "file_name": self.file_name,
            "bytes": self.bytes,
            "content_type": self.content_type,
            "sha256": self.sha256,
        }


@dataclass(eq=False)
class SimulatorState:
    """Everything the simulator knows; safe to read from another thread for inspection."""

    conversations: dict[str, Conversation] = field(default_factory=dict)
    chats: dict[str, Chat] = field(default_factory=dict)
    issued_tokens: dict[str, float] = field(default_factory=dict)  # token -> expiry
    files: dict[str, UploadedFile] = field(default_factory=dict)
    # What clients sent to the feedback and delete routes, in order, for tests to read.
    feedback: list[dict[str, Any]] = field(default_factory=list)
    deletions: list[dict[str, Any]] = field(default_factory=list)
    open_streams: int = 0
    total_streams: int = 0
    client_disconnects: int = 0
    cancels: int = 0
    background: set[asyncio.Task[None]] = field(default_factory=set)

    def stats(self) -> dict[str, int]:
        return {
            "open_streams": self.open_streams,
            "total_streams": self.total_streams,
            "client_disconnects": self.client_disconnects,
            "cancels": self.cancels,
        }


_IDS = itertools.count(7 * 10**18 + (time.time_ns() // 10**6 % 10**12) * 10**5)


def new_id() -> str:
    """A 19-digit numeric id like Coze's, unique within the process."""
    return str(next(_IDS))


class SimulatorBase:
    """What every route family shares: the settings, the memory and the lookups."""

    config: SimulatorConfig
    state: SimulatorState

    new_id = staticmethod(new_id)

    def _conversation(self, conversation_id: str | None) -> Conversation:
        conversation = self.state.conversations.get(conversation_id or "")
        if conversation is None:
            raise CozeError(4002, f"conversation {conversation_id!r} does not exist")
        return conversation

    def _chat(self, conversation_id: str | None, chat_id: str | None) -> Chat:
        self._conversation(conversation_id)
        chat = self.state.chats.get(chat_id or "")
        if chat is None or chat.conversation_id != conversation_id:
            raise CozeError(4001, f"chat {chat_id!r} does not exist")
        return chat

    def _new_conversation(self, meta_data: Any, bot_id: str = "") -> Conversation:
        conversation = Conversation(
            id=self.new_id(),
            created_at=int(time.time()),
            meta_data=meta_data if isinstance(meta_data, dict) else {},
            section_id=self.new_id(),
            bot_id=bot_id,
        )
        self.state.conversations[conversation.id] = conversation
        return conversation

    def _entered_message(
        self, conversation: Conversation, message: dict[str, Any], chat: Chat | None
    ) -> dict[str, Any]:
        """A message a client entered (a chat's ``additional_messages``, a new conversation's
        ``messages``) as the conversation stores it; ``chat_id`` is "0" outside a chat."""
        role = "assistant" if message.get("role") == "assistant" else "user"
        content = message.get("content")
        meta_data = message.get("meta_data")
        now = int(time.time())
        return {
            "id": self.new_id(),
            "conversation_id": conversation.id,
            "bot_id": chat.bot_id if chat is not None else conversation.bot_id,
            "role": role,
            "type": message.get("type") or ("question" if role == "user" else "answer"),
            "content": content if isinstance(content, str) else json.dumps(content, ensure_ascii=False),
            "content_type": message.get("content_type") or "text",
            "chat_id": chat.id if chat is not None else "0",
            "section_id": conversation.section_id,
            "meta_data": meta_data if isinstance(meta_data, dict) else {},
            "created_at": now,
            "updated_at": now,
        }
