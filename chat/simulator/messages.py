"""Message routes of a conversation: list, delete, feedback."""

from __future__ import annotations

import time
from typing import Any

from .state import Conversation, SimulatorBase
from .wire import CozeError, Request, Response, json_response, ok

# The types /v1/conversation/message/list returns (the rest is a chat's working: verbose,
# follow-ups, function calls and tool responses, listed by /v3/chat/message/list).
LISTED_TYPES = frozenset({"question", "answer"})
MAX_LIMIT = 50
FEEDBACK_TYPES = frozenset({"like", "unlike"})


class MessageRoutes(SimulatorBase):
    """``/v1/conversation/message/list``, ``/v1/conversation/message/delete`` and
    ``/v1/conversations/{id}/messages/{id}/feedback`` (POST and DELETE)."""

    async def _message_list(self, request: Request) -> Response:
        """A page of the conversation's questions and answers, with Coze's cursors beside ``data``.

        ``order`` "desc" (newest first, the default) or "asc"; ``after_id`` pages on in that
        order (pass the last page's ``last_id``), ``before_id`` pages back (its ``first_id``).
        """
        conversation = self._conversation(request.query.get("conversation_id"))
        body = request.json()
        order = body.get("order") or "desc"
        if order not in ("asc", "desc"):
            raise CozeError(4000, "order must be asc or desc")
        limit = body.get("limit")
        limit = MAX_LIMIT if limit is None else limit
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
            raise CozeError(4000, f"limit must be an integer from 1 to {MAX_LIMIT}")
        before, after = _cursor(body, "before_id"), _cursor(body, "after_id")
        if before is not None and after is not None:
            raise CozeError(4000, "before_id and after_id cannot both be given")
        chat_id = str(body.get("chat_id") or "")
        items = sorted(
            (
                m
                for m in conversation.messages
                if m["type"] in LISTED_TYPES and (not chat_id or m["chat_id"] == chat_id)
            ),
            key=lambda m: int(m["id"]),
            reverse=order == "desc",
        )

        def comes_after(message: dict[str, Any], cursor: int) -> bool:
            return int(message["id"]) < cursor if order == "desc" else int(message["id"]) > cursor

        if after is not None:
            rest = [m for m in items if comes_after(m, after)]
            page, has_more = rest[:limit], len(rest) > limit
        elif before is not None:
            earlier = [m for m in items if int(m["id"]) != before and not comes_after(m, before)]
            page, has_more = earlier[-limit:], len(earlier) > limit
        else:
            page, has_more = items[:limit], len(items) > limit
        payload = {
            "code": 0,
            "msg": "",
            "data": page,
            "first_id": page[0]["id"] if page else "0",
            "last_id": page[-1]["id"] if page else "0",
            "has_more": has_more,
        }
        return json_response(200, payload)

    async def _message_delete(self, request: Request) -> Response:
        conversation = self._conversation(request.query.get("conversation_id"))
        message = _message(conversation, request.query.get("message_id"))
        conversation.messages.remove(message)
        chat = self.state.chats.get(message["chat_id"])
        if chat is not None:
            chat.messages = [m for m in chat.messages if m["id"] != message["id"]]
        self.state.deletions.append(
            {"conversation_id": conversation.id, "message_id": message["id"], "at": time.time()}
        )
        return ok(message)

    async def _message_feedback(self, request: Request) -> Response:
        """POST records a like or unlike (a second one replaces the first), DELETE removes it."""
        parts = request.path.split("/")
        conversation = self._conversation(parts[3])
        message = _message(conversation, parts[5])
        record: dict[str, Any] = {
            "method": request.method,
            "conversation_id": conversation.id,
            "message_id": message["id"],
            "at": time.time(),
        }
        if request.method == "POST":
            body = request.json()
            if body.get("feedback_type") not in FEEDBACK_TYPES:
                raise CozeError(4000, "feedback_type must be like or unlike")
            reason_types = body.get("reason_types")
            if reason_types is not None and not (
                isinstance(reason_types, list) and all(isinstance(r, str) for r in reason_types)
            ):
                raise CozeError(4000, "reason_types must be a list of strings")
            comment = body.get("comment")
            if comment is not None and not isinstance(comment, str):
                raise CozeError(4000, "comment must be a string")
            record.update(feedback_type=body["feedback_type"], reason_types=reason_types, comment=comment)
        self.state.feedback.append(record)
        return ok({})


def _cursor(body: dict[str, Any], name: str) -> int | None:
    """A message id used as a cursor (None when absent, "" or 0: Coze's "no cursor")."""
    value = body.get(name)
    if value in (None, "", 0, "0"):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise CozeError(4000, f"{name} must be a message id") from None


def _message(conversation: Conversation, message_id: str | None) -> dict[str, Any]:
    for message in conversation.messages:
        if message["id"] == message_id:
            return message
    raise CozeError(4000, f"message {message_id!r} does not exist in conversation {conversation.id}")
