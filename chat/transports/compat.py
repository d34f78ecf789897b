"""Compatibility paths of the earlier FastAPI services (docs/api.md §8), so their clients keep working.

Thin adapters over the same chat service: they accept the earlier request bodies (ignoring fields
the earlier services ignored) and render the earlier response and stream formats. Authentication
and per-owner isolation are the same as everywhere else (docs/api.md §2).
"""

import contextlib
import json
from collections.abc import AsyncIterator

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from chat.access.auth import aresolve_owner
from chat.conversations import sessions
from chat.domain.errors import ChatError
from chat.domain.events import PING, CompletedEvent, DeltaEvent, ErrorEvent
from chat.domain.inputs import ChatRequest, Owner
from chat.domain.sse import PING as SSE_PING
from chat.domain.sse import sse_data
from chat.runtime.db import db_async
from chat.transports.errors import json_error_response, json_response
from chat.transports.rest import SESSION_CLEARED_MESSAGE, chat_response_body
from chat.transports.serializers import SessionSerializer, parse_chat_request, parse_json_bytes
from chat.transports.sse import start_sse_stream, stream_items
from chat.turn import service
from sessions_admin.models import Conversation, Reply

# The earlier body of /chat and /chat/stream; anything else they were sent is ignored, as then.
LEGACY_CHAT_FIELDS = ("message", "session_id", "user_id")
LEGACY_COZE_CHAT_FIELDS = ("user_id", "bot_id", "additional_messages", "custom_variables", "meta_data", "session_id")


def _legacy_chat_request(body) -> ChatRequest:
    if not isinstance(body, dict):
        raise ChatError("invalid", "The body must be a JSON object.")
    return parse_chat_request({key: body[key] for key in LEGACY_CHAT_FIELDS if key in body})


async def _parse_legacy_chat(owner: Owner, body) -> ChatRequest:
    return _legacy_chat_request(body)


@db_async
def _session_id_for_conversation(*, owner: Owner, conversation_id: str) -> str:
    conversation = (
        Conversation.objects.select_related("session")
        .filter(**owner.scope("session__"), coze_conversation_id=conversation_id)
        .first()
    )
    if conversation is None:
        raise ChatError("not_found", "No such conversation.")
    return conversation.session.session_id


def _content_items(content) -> list[dict] | None:
    """The items of an earlier client's list content — a JSON list of `{"type": …}` objects, sent
    as a list or as a string holding one — or None when `content` is not such a list."""
    items = content
    if isinstance(content, str):
        if not content.lstrip().startswith("["):
            return None
        try:
            items = json.loads(content)
        except ValueError:
            return None
    if isinstance(items, list) and items and all(isinstance(item, dict) and "type" in item for item in items):
        return items
    return None


def _earlier_message(item: dict) -> dict:
    """One `additional_messages` item as the earlier service understood it.

    Its documented request sends `content_type: "text"` with `content` a JSON list of
    `{"type": "text", "text": …}` (as a string, or as a list from its front-end). The earlier
    service decoded that list, so the bot got the words, not the JSON: a list of text items reaches
    Coze as their text (one item a line), a list with images or files as an `object_string`.
    An explicit `object_string` is passed on as sent.
    """
    if item.get("content_type", "text") != "text":
        return item
    items = _content_items(item.get("content"))
    if items is None:
        return item
    if all(entry["type"] == "text" and isinstance(entry.get("text"), str) for entry in items):
        return {**item, "content": "\n".join(entry["text"] for entry in items), "content_type": "text"}
    return {**item, "content": json.dumps(items, ensure_ascii=False), "content_type": "object_string"}


async def _parse_coze_chat(owner: Owner, body) -> ChatRequest:
    if not isinstance(body, dict):
        raise ChatError("invalid", "The body must be a JSON object.")
    data = {key: body[key] for key in LEGACY_COZE_CHAT_FIELDS if key in body}
    messages = data.get("additional_messages")
    if isinstance(messages, list):
        normalised = []
        for item in messages:
            if isinstance(item, dict):
                # Earlier clients also sent Coze's own message fields; keep the ones we pass on.
                item = {
                    key: item[key] for key in ("role", "type", "content", "content_type", "meta_data") if key in item
                }
                item = _earlier_message(item)
            normalised.append(item)
        data["additional_messages"] = normalised
    conversation_id = body.get("conversation_id")
    if conversation_id and "session_id" not in data:
        if not isinstance(conversation_id, str):
            raise ChatError(
                "invalid", "conversation_id must be a string.", errors={"conversation_id": ["Must be a string."]}
            )
        data["session_id"] = await _session_id_for_conversation(owner=owner, conversation_id=conversation_id)
    return parse_chat_request(data)


async def _render_legacy_stream(first, events: AsyncIterator, _control) -> AsyncIterator[bytes]:
    """`chunk` events with a running index, then `complete`, or `error` (the earlier /chat/stream)."""
    chunks: list[str] = []
    async with contextlib.aclosing(stream_items(first, events)) as items:
        async for item in items:
            if isinstance(item, DeltaEvent):
                yield sse_data({"type": "chunk", "data": {"content": item.content, "chunk_index": len(chunks)}})
                chunks.append(item.content)
            elif isinstance(item, CompletedEvent):
                yield sse_data(
                    {"type": "complete", "data": {"total_chunks": len(chunks), "full_content": item.content}}
                )
            elif isinstance(item, ErrorEvent):
                yield sse_data({"type": "error", "data": {"message": item.detail}})
            elif item is PING:
                yield SSE_PING


async def _render_coze_chat_stream(first, events: AsyncIterator, _control) -> AsyncIterator[bytes]:
    """`delta` and `completed` data lines, then `[DONE]` (the earlier /api/coze-chat)."""
    async with contextlib.aclosing(stream_items(first, events)) as items:
        async for item in items:
            if isinstance(item, DeltaEvent):
                yield sse_data({"type": "delta", "content": item.content})
            elif isinstance(item, CompletedEvent):
                yield sse_data(
                    {
                        "type": "completed",
                        "token_count": item.usage.total_tokens,
                        "conversation_id": item.conversation_id,
                    }
                )
            elif isinstance(item, ErrorEvent):
                yield sse_data(item.as_dict())
            elif item is PING:
                yield SSE_PING
    yield sse_data("[DONE]")


@csrf_exempt
@require_POST
async def legacy_chat_view(request: HttpRequest) -> HttpResponse:
    """POST /chat: the whole reply."""
    try:
        owner = await aresolve_owner(request)
        chat_request = _legacy_chat_request(parse_json_bytes(request.body, request.content_type or ""))
        completed = await service.achat_send(owner=owner, chat_request=chat_request, transport=Reply.Transport.COMPAT)
    except ChatError as error:
        return json_error_response(error)
    return json_response(chat_response_body(completed))


@csrf_exempt
@require_POST
async def legacy_chat_stream_view(request: HttpRequest) -> HttpResponse:
    """POST /chat/stream: chunk/complete events."""
    return await start_sse_stream(
        request, transport=Reply.Transport.COMPAT, parse=_parse_legacy_chat, render=_render_legacy_stream
    )


@csrf_exempt
@require_POST
async def legacy_coze_chat_view(request: HttpRequest) -> HttpResponse:
    """POST /api/coze-chat: delta/completed events, then [DONE]."""
    return await start_sse_stream(
        request, transport=Reply.Transport.COMPAT, parse=_parse_coze_chat, render=_render_coze_chat_stream
    )


@db_async
def _session_info(owner: Owner, session_id: str) -> dict:
    return SessionSerializer(sessions.session_get(owner=owner, session_id=session_id)).data


@db_async
def _session_clear(owner: Owner, session_id: str) -> dict:
    session = sessions.session_clear(owner=owner, session_id=session_id)
    return {
        "session_id": session.session_id,
        "cleared_at": session.cleared_at.isoformat(),
        "message": SESSION_CLEARED_MESSAGE,
    }


@csrf_exempt  # GET only: another method gets its 405, not a CSRF 403.
@require_GET
async def legacy_session_info_view(request: HttpRequest, session_id: str) -> HttpResponse:
    """GET /session/{id}/info."""
    try:
        owner = await aresolve_owner(request)
        return json_response(await _session_info(owner, session_id))
    except ChatError as error:
        return json_error_response(error)


@csrf_exempt
@require_POST
async def legacy_session_clear_view(request: HttpRequest, session_id: str) -> HttpResponse:
    """POST /session/{id}/clear."""
    try:
        owner = await aresolve_owner(request)
        return json_response(await _session_clear(owner, session_id))
    except ChatError as error:
        return json_error_response(error)
