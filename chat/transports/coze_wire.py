"""Coze's wire, for Coze's own API (docs/api.md §13): the envelope, and the conversation, chat and
message objects exactly as cozepy and @coze/api parse them (errors in Coze's shape:
`chat.transports.errors.coze_error_response`).

Pure rendering: the views in `coze_api` and `coze_conversations` call the services and hand what
they got to the functions here.
"""

import json
import time

from django.http import HttpResponse

from chat.domain.events import ToolCall, Usage
from chat.runtime.logging import request_id_var
from chat.transports.errors import COZE_CODES, COZE_INTERNAL_ERROR, json_response
from sessions_admin.models import ChatSession, Message, Reply

CHAT_STATUS = {
    Reply.Status.IN_PROGRESS: "in_progress",
    Reply.Status.REQUIRES_ACTION: "requires_action",
    Reply.Status.COMPLETED: "completed",
    Reply.Status.CANCELLED: "canceled",
    Reply.Status.FAILED: "failed",
    Reply.Status.INTERRUPTED: "failed",
}


def logid() -> str:
    """The request's id, as Coze's `x-tt-logid` (its clients keep it with each answer)."""
    return request_id_var.get()


def ok(data, **beside) -> HttpResponse:
    """`{"code": 0, "msg": "", "data": …}`, and paging keys beside `data` where Coze puts them."""
    return json_response({"code": 0, "msg": "", "data": data, **beside}, headers={"x-tt-logid": logid()})


def seconds(moment) -> int:
    return int(moment.timestamp()) if moment is not None else 0


# --- objects --------------------------------------------------------------------------------


def conversation_object(session: ChatSession) -> dict:
    return {
        "id": session.session_id,
        "created_at": seconds(session.created_at),
        "meta_data": session.meta_data or {},
        "last_section_id": str(session.current_conversation_id or 0),
    }


def usage_object(usage: Usage | None) -> dict:
    usage = usage or Usage()
    return {"token_count": usage.total_tokens, "output_count": usage.output_tokens, "input_count": usage.input_tokens}


def required_action_object(tool_calls) -> dict:
    """Coze's `required_action` for calls (ToolCall objects or the dicts `Reply.required_action` keeps)."""
    calls = [call.as_dict() if isinstance(call, ToolCall) else call for call in tool_calls]
    return {
        "type": "submit_tool_outputs",
        "submit_tool_outputs": {
            "tool_calls": [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]},
                }
                for call in calls
            ]
        },
    }


def chat_object(
    *,
    chat_id: str,
    conversation_id: str,
    bot_id: str,
    created_at: int,
    status: str,
    section_id: str,
    meta_data: dict | None = None,
    usage: Usage | None = None,
    last_error: tuple[int, str] = (0, ""),
    completed_at: int | None = None,
    failed_at: int | None = None,
    tool_calls=None,
) -> dict:
    """Coze's chat object, with the keys Coze sends (and only then `completed_at`, `failed_at`,
    `required_action`)."""
    data = {
        "id": chat_id,
        "conversation_id": conversation_id,
        "bot_id": bot_id,
        "created_at": created_at,
        "last_error": {"code": last_error[0], "msg": last_error[1]},
        "meta_data": meta_data or {},
        "status": status,
        "usage": usage_object(usage),
        "section_id": section_id,
    }
    if completed_at is not None:
        data["completed_at"] = completed_at
    if failed_at is not None:
        data["failed_at"] = failed_at
    if tool_calls is not None:
        data["required_action"] = required_action_object(tool_calls)
    return data


def stored_error(reply: Reply) -> tuple[int, str]:
    """A stored reply's failure as Coze's `last_error`."""
    if reply.status not in (Reply.Status.FAILED, Reply.Status.INTERRUPTED):
        return (0, "")
    code = reply.error_code or "internal_error"
    return (COZE_CODES.get(code, COZE_INTERNAL_ERROR), reply.error_detail or "")


def stored_chat_object(reply: Reply, *, session_id: str) -> dict:
    """The chat object of a stored reply (`/v3/chat/retrieve`)."""
    status = CHAT_STATUS.get(reply.status, "failed")
    ended = reply.finished_at if reply.status != Reply.Status.REQUIRES_ACTION else None
    pending = None
    if reply.status == Reply.Status.REQUIRES_ACTION:
        pending = [call for call in (reply.required_action or {}).get("tool_calls", []) if "output" not in call]
    return chat_object(
        chat_id=reply.coze_chat_id,
        conversation_id=session_id,
        bot_id=reply.bot_id,
        created_at=seconds(reply.started_at),
        status=status,
        section_id=str(reply.conversation_id),
        usage=Usage(reply.input_tokens, reply.output_tokens, reply.total_tokens),
        last_error=stored_error(reply),
        completed_at=seconds(ended) if ended and status == "completed" else None,
        failed_at=seconds(ended) if ended and status in ("failed", "canceled") else None,
        tool_calls=pending,
    )


def delta_object(
    *, message_id: str, conversation_id: str, bot_id: str, chat_id: str, section_id: str, content: str, reasoning=None
) -> dict:
    """A `conversation.message.delta` message (keys as Coze sends them)."""
    data = {
        "id": message_id,
        "conversation_id": conversation_id,
        "bot_id": bot_id,
        "role": "assistant",
        "type": "answer",
        "content": content,
    }
    if reasoning is not None:
        data["reasoning_content"] = reasoning
    data.update(content_type="text", chat_id=chat_id, section_id=section_id)
    return data


def completed_message(
    *,
    message_id: str,
    conversation_id: str,
    bot_id: str,
    chat_id: str,
    section_id: str,
    kind: str,
    content: str,
    created_at: int | None = None,
    reasoning: str = "",
) -> dict:
    """A `conversation.message.completed` message: the answer, verbose, follow_up, function_call or
    tool_response."""
    moment = created_at if created_at is not None else int(time.time())
    data = {
        "id": message_id,
        "conversation_id": conversation_id,
        "bot_id": bot_id,
        "role": "assistant",
        "type": kind,
        "content": content,
        "content_type": "text",
        "chat_id": chat_id,
        "section_id": section_id,
        "created_at": moment,
        "updated_at": moment,
    }
    if reasoning:
        data["reasoning_content"] = reasoning
    return data


def stored_message(message: Message, *, session_id: str, bot_id: str) -> dict:
    """A stored question, answer or follow-up as Coze's message object."""
    created = seconds(message.created_at)
    reply = message.reply
    return {
        "id": message.coze_message_id or str(message.pk),
        "conversation_id": session_id,
        "bot_id": (reply.bot_id if reply is not None else message.conversation.bot_id) or bot_id,
        "role": message.role,
        "type": message.kind,
        "content": message.content,
        "content_type": message.content_type,
        "chat_id": reply.coze_chat_id if reply is not None else "0",
        "section_id": str(message.conversation_id),
        "meta_data": {},
        "created_at": created,
        "updated_at": created,
    }


def tool_messages(reply: Reply, *, session_id: str) -> list[dict]:
    """The function_call and tool_response messages of a reply that used local tools."""
    messages = []
    base = {"conversation_id": session_id, "bot_id": reply.bot_id, "chat_id": reply.coze_chat_id}
    created = seconds(reply.started_at)
    for call in (reply.required_action or {}).get("tool_calls", []):
        try:
            arguments = json.loads(call["arguments"])
        except (TypeError, ValueError):
            arguments = call["arguments"]
        content = json.dumps({"name": call["name"], "arguments": arguments}, ensure_ascii=False)
        messages.append(
            completed_message(
                message_id=call["id"],
                kind="function_call",
                content=content,
                created_at=created,
                section_id=str(reply.conversation_id),
                **base,
            )
        )
        if "output" in call:
            messages.append(
                completed_message(
                    message_id=f"{call['id']}.output",
                    kind="tool_response",
                    content=call["output"],
                    created_at=created,
                    section_id=str(reply.conversation_id),
                    **base,
                )
            )
    return messages
