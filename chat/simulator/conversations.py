"""Conversation routes: create, retrieve, clear."""

from __future__ import annotations

from .bot import message_text
from .state import SimulatorBase
from .wire import Request, Response, ok


class ConversationRoutes(SimulatorBase):
    """``/v1/conversation/create``, ``/v1/conversation/retrieve``, ``/v1/conversations/{id}/clear``."""

    async def _conversation_create(self, request: Request) -> Response:
        body = request.json()
        conversation = self._new_conversation(body.get("meta_data"))
        messages = body.get("messages") or []
        if isinstance(messages, list):
            conversation.turns.extend(
                message_text(m) for m in messages if isinstance(m, dict) and m.get("role") == "user"
            )
        return ok(conversation.as_dict())

    async def _conversation_retrieve(self, request: Request) -> Response:
        return ok(self._conversation(request.query.get("conversation_id")).as_dict())

    async def _conversation_clear(self, request: Request) -> Response:
        conversation = self._conversation(request.path.split("/")[3])
        conversation.section_id = self.new_id()
        conversation.turns = []
        return ok({"id": conversation.section_id, "conversation_id": conversation.id})
