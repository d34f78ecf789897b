"""Chat routes: create (streamed or not), retrieve, message list, cancel."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from .bot import PRE_CHAT_FAULTS, Directives, last_user_message, message_attachments, user_text
from .playback import ChatPlayback
from .state import MAX_CHATS, Chat
from .wire import CozeError, Request, Response, ok


class ChatRoutes(ChatPlayback):
    """``/v3/chat`` and its retrieve, message list and cancel routes."""

    async def _chat_create(self, request: Request) -> Response | None:
        body = request.json()
        messages = body.get("additional_messages") or []
        if not isinstance(messages, list):
            raise CozeError(4000, "additional_messages must be a list")
        text = user_text(messages)
        directives = Directives.parse(text)
        for name, fault in PRE_CHAT_FAULTS.items():
            if name in directives.flags:
                if isinstance(fault, Response):
                    return fault
                raise CozeError(*fault)
        received = self._received_attachments(message_attachments(last_user_message(messages)))

        conversation_id = request.query.get("conversation_id")
        if conversation_id:
            conversation = self._conversation(conversation_id)
        else:
            conversation = self._new_conversation(None)
        if conversation.running_chat_id is not None:
            raise CozeError(4016, "a chat is already running in this conversation")

        stream = body.get("stream") is True
        chat = Chat(
            id=self.new_id(),
            conversation_id=conversation.id,
            bot_id=str(body.get("bot_id") or ""),
            section_id=conversation.section_id,
            created_at=int(time.time()),
            meta_data=body["meta_data"] if isinstance(body.get("meta_data"), dict) else {},
            stream=stream,
            request_messages=messages,
        )
        plan = self._plan(chat, conversation, text, directives, received)
        if body.get("auto_save_history", True) is not False:
            conversation.turns.append(text)
        conversation.running_chat_id = chat.id
        self._remember(chat)

        if stream:
            await self._stream(request, chat, plan)
            return None
        task = asyncio.ensure_future(self._run_in_background(chat, plan))
        self.state.background.add(task)
        task.add_done_callback(self.state.background.discard)
        return ok(chat.as_dict())

    def _remember(self, chat: Chat) -> None:
        chats = self.state.chats
        chats[chat.id] = chat
        excess = len(chats) - MAX_CHATS
        if excess > 0:
            excess += MAX_CHATS // 10  # prune in batches, not on every chat
            oldest = itertools.islice(chats.items(), 2 * excess)
            for chat_id in [cid for cid, old in oldest if old.finished_at is not None][:excess]:
                del chats[chat_id]

    def _received_attachments(self, items: list[dict[str, Any]]) -> str:
        """`` [received: image cat.png, file https://…]`` for the answer; 4000 for an unknown file id."""
        names = []
        for item in items:
            file_id, file_url = item.get("file_id"), item.get("file_url")
            if file_id:
                uploaded = self.state.files.get(str(file_id))
                if uploaded is None:
                    raise CozeError(4000, f"file {file_id!r} does not exist")
                names.append(f"{item['type']} {uploaded.file_name}")
            elif isinstance(file_url, str) and file_url:
                names.append(f"{item['type']} {file_url}")
            else:
                raise CozeError(4000, f"a {item['type']} item needs file_id or file_url")
        return f" [received: {', '.join(names)}]" if names else ""

    async def _chat_retrieve(self, request: Request) -> Response:
        query = request.query
        return ok(self._chat(query.get("conversation_id"), query.get("chat_id")).as_dict())

    async def _chat_messages(self, request: Request) -> Response:
        query = request.query
        return ok(self._chat(query.get("conversation_id"), query.get("chat_id")).messages)

    async def _chat_cancel(self, request: Request) -> Response:
        body = request.json()
        conversation_id = body.get("conversation_id") or request.query.get("conversation_id")
        chat_id = body.get("chat_id") or request.query.get("chat_id")
        if not conversation_id or not chat_id:
            raise CozeError(4000, "conversation_id and chat_id are required")
        chat = self._chat(str(conversation_id), str(chat_id))
        if chat.status != "in_progress":
            raise CozeError(4104, f"chat {chat.id} cannot be cancelled: it is {chat.status}")
        chat.status = "canceled"
        chat.canceled_at = time.time()
        self.state.cancels += 1
        return ok(chat.as_dict())
