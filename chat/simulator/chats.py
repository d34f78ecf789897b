"""Chat routes: create (streamed or not), retrieve, message list, cancel."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from .bot import PRE_CHAT_FAULTS, Directives, last_user_message, message_attachments, user_text
from .plans import ChatPlan
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
        # A conversation created without a bot takes the bot of its first chat.
        bot_id = str(body.get("bot_id") or "")
        if not conversation.bot_id:
            conversation.bot_id = bot_id
        chat = Chat(
            id=self.new_id(),
            conversation_id=conversation.id,
            bot_id=bot_id or conversation.bot_id,
            section_id=conversation.section_id,
            created_at=int(time.time()),
            meta_data=body["meta_data"] if isinstance(body.get("meta_data"), dict) else {},
            stream=stream,
            request_messages=messages,
            user_id=str(body.get("user_id") or ""),
            auto_save_history=body.get("auto_save_history", True) is not False,
        )
        self._store(chat, [self._entered_message(conversation, m, chat) for m in messages if isinstance(m, dict)])
        plan = self._plan(chat, conversation, text, directives, received)
        if chat.auto_save_history:
            conversation.turns.append(text)
        conversation.running_chat_id = chat.id
        self._remember(chat)
        return await self._play(request, chat, plan, stream)

    async def _play(self, request: Request, chat: Chat, plan: ChatPlan, stream: bool) -> Response | None:
        """Stream ``plan``, or answer the chat object at once and play it in the background
        (Studio: answer once the chat has ended or paused)."""
        if stream:
            await self._stream(request, chat, plan)
            return None
        if self.config.studio:
            await self._run_in_background(chat, plan)
            return ok(chat.as_dict())
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
        if chat.status not in ("in_progress", "requires_action"):
            raise CozeError(4104, f"chat {chat.id} cannot be cancelled: it is {chat.status}")
        waiting = chat.status == "requires_action"
        chat.status = "canceled"
        chat.canceled_at = time.time()
        self.state.cancels += 1
        if waiting:  # nothing runs on: the chat ends here
            if chat.tool_timer is not None:
                chat.tool_timer.cancel()
            chat.finished_at = chat.canceled_at
            self._release(chat)
        return ok(chat.as_dict())

    async def _chat_submit_tool_outputs(self, request: Request) -> Response | None:
        query = request.query
        body = request.json()
        chat = self._chat(query.get("conversation_id"), query.get("chat_id"))
        if chat.status != "requires_action" or chat.required_action is None:
            raise CozeError(4000, f"chat {chat.id} is {chat.status}: it is not waiting for tool outputs")
        calls = chat.required_action["submit_tool_outputs"]["tool_calls"]
        outputs = _tool_outputs(body.get("tool_outputs"), {call["id"] for call in calls})
        chat.tool_outputs = body["tool_outputs"]
        if chat.tool_timer is not None:
            chat.tool_timer.cancel()
        chat.status = "in_progress"
        plan = self._continued_plan(chat, calls, outputs)
        return await self._play(request, chat, plan, body.get("stream") is True)


def _tool_outputs(items: Any, call_ids: set[str]) -> dict[str, str]:
    """The submitted outputs by call id; code 4000 unless there is exactly one for each call."""
    if not isinstance(items, list) or not items:
        raise CozeError(4000, "tool_outputs must be a non-empty list")
    outputs: dict[str, str] = {}
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("output"), str):
            raise CozeError(4000, "each tool output needs a tool_call_id and a string output")
        call_id = item.get("tool_call_id")
        if call_id not in call_ids or call_id in outputs:
            raise CozeError(4000, f"tool_call_id {call_id!r} is not one of the chat's pending tool calls")
        outputs[call_id] = item["output"]
    missing = call_ids - outputs.keys()
    if missing:
        raise CozeError(4000, f"no output for tool calls {', '.join(sorted(missing))}")
    return outputs
