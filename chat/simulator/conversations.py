"""Conversation routes: create, retrieve, list, clear, delete."""

from __future__ import annotations

import json
import time
from typing import Any

from .bot import message_text
from .state import SimulatorBase
from .wire import CozeError, Request, Response, ok

MAX_PAGE_SIZE = 50


class ConversationRoutes(SimulatorBase):
    """``/v1/conversation/create``, ``/v1/conversation/retrieve``, ``/v1/conversations`` (list),
    ``/v1/conversations/{id}/clear`` and ``DELETE /v1/conversations/{id}``."""

    async def _conversation_create(self, request: Request) -> Response:
        body = request.fields()
        meta_data = _json_field(body, "meta_data")
        messages = _json_field(body, "messages")
        conversation = self._new_conversation(meta_data, str(body.get("bot_id") or ""))
        if isinstance(messages, list) and not self.config.studio:  # Studio ignores them
            entered = [m for m in messages if isinstance(m, dict)]
            conversation.messages.extend(self._entered_message(conversation, m, None) for m in entered)
            conversation.turns.extend(message_text(m) for m in entered if m.get("role") == "user")
        return ok(conversation.as_dict())

    async def _conversation_retrieve(self, request: Request) -> Response:
        return ok(self._conversation(request.query.get("conversation_id")).as_dict())

    async def _conversation_list(self, request: Request) -> Response:
        """The bot's conversations, newest first, a page at a time."""
        query = request.query
        bot_id = query.get("bot_id")
        if not bot_id:
            raise CozeError(4000, "bot_id is required")
        page_num = _int_param(query, "page_num", 1, 1, None)
        page_size = _int_param(query, "page_size", MAX_PAGE_SIZE, 1, MAX_PAGE_SIZE)
        matching = [c for c in reversed(self.state.conversations.values()) if c.bot_id == bot_id]
        start = (page_num - 1) * page_size
        page = matching[start : start + page_size]
        return ok({"conversations": [c.as_dict() for c in page], "has_more": start + page_size < len(matching)})

    async def _conversation_clear(self, request: Request) -> Response:
        conversation = self._conversation(request.path.split("/")[3])
        conversation.section_id = self.new_id()
        conversation.turns = []
        return ok({"id": conversation.section_id, "conversation_id": conversation.id})

    async def _conversation_delete(self, request: Request) -> Response:
        conversation = self._conversation(request.path.split("/")[3])
        del self.state.conversations[conversation.id]
        self.state.deletions.append({"conversation_id": conversation.id, "message_id": None, "at": time.time()})
        return ok({})


def _json_field(body: dict[str, Any], name: str) -> Any:
    """A JSON value of the body; in a form, the field's text parsed as JSON (4000 if it is not)."""
    value = body.get(name)
    if isinstance(value, str) and value.strip():
        try:
            return json.loads(value)
        except ValueError:
            raise CozeError(4000, f"{name} must be JSON") from None
    return value


def _int_param(query: dict[str, str], name: str, default: int, low: int, high: int | None) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if value < low or (high is not None and value > high):
        raise CozeError(4000, f"{name} must be an integer from {low}" + (f" to {high}" if high else ""))
    return value
