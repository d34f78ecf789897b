"""Coze's own API (docs/api.md §13): the chat routes — `/v3/chat` (streamed or not), its
retrieve, message list, cancel and submit_tool_outputs — for clients written for Coze (cozepy,
@coze/api, voice servers), which switch to the gateway by changing their base URL and token.

A transport like the others: Bearer keys only (never a session cookie, so a form posted from
another site can't ride a staff login; CSRF does not apply), the chat service for every turn
(`transport` coze), Coze's envelope, objects and stream events out (`coze_wire`, `coze_stream`),
errors in Coze's shape. The conversation routes, uploads and Coze's unserved paths are in
`coze_conversations`.

A non-stream `/v3/chat` answers the chat `in_progress` as soon as Coze has taken it (before its
first token) and the turn goes on in the background, on the same service, so `retrieve` and
`message/list` show it as it ends.
"""

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from chat.access.auth import aowner_from_api_key, bearer_key
from chat.conversations import coze_sessions, sessions
from chat.domain.errors import ChatError
from chat.domain.events import SessionEvent
from chat.domain.inputs import Owner
from chat.files import attachments
from chat.runtime.db import db_async
from chat.runtime.tasks import in_background
from chat.transports import coze_wire
from chat.transports.coze_requests import json_body, parse_chat, parse_tool_outputs
from chat.transports.coze_stream import CozeStream
from chat.transports.errors import coze_error_response
from chat.transports.sse import SSE_HEADERS
from chat.turn import service
from chat.turn.control import TurnControl
from sessions_admin.models import Reply

# How long a non-stream answer waits for the chat's id to be stored, so the client's first
# retrieve (possibly on another worker) finds it.
IDS_RECORDED_WAIT_SECONDS = 5.0
CHAT_CANNOT_BE_CANCELLED = 4104  # Coze's code for a cancel of a chat that has ended
STUDIO_NO_TOOL_OUTPUTS = (
    "This server's Coze is a self-hosted Coze Studio, which has no submit_tool_outputs: a chat can't be "
    "continued with local tool outputs."
)


async def aowner(request: HttpRequest) -> Owner:
    """The caller of a Coze path: `Authorization: Bearer <key>` only, never a session cookie."""
    key = bearer_key(request.headers.get("Authorization", ""))
    if key is None:
        raise ChatError("unauthenticated", "Send 'Authorization: Bearer <api key>'.")
    return await aowner_from_api_key(key, address=request.META.get("REMOTE_ADDR"))


def coze_view(*methods: str):
    """A view of Coze's API: `view(request, owner, …)`, the method checked, the caller
    authenticated, every ChatError answered in Coze's shape, `x-tt-logid` on every answer."""

    def decorate(view):
        @csrf_exempt  # Bearer only: no cookie is read, so there is nothing to forge
        @functools.wraps(view)
        async def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            if request.method not in methods:
                allowed = ", ".join(methods)
                response = coze_error_response(
                    ChatError("method_not_allowed", f"{request.method} is not allowed here; use {allowed}.")
                )
                response["Allow"] = allowed
                return response
            try:
                owner = await aowner(request)
                response = await view(request, owner, *args, **kwargs)
            except RequestDataTooBig:
                return coze_error_response(ChatError("payload_too_large"))
            except ChatError as error:
                return coze_error_response(error)
            response["x-tt-logid"] = coze_wire.logid()
            return response

        return wrapper

    return decorate


def ids_of(request: HttpRequest, body: dict | None = None) -> tuple[str, str]:
    """`conversation_id` and `chat_id` from the query (or, for cancel, the body)."""
    body = body or {}
    conversation_id = request.GET.get("conversation_id") or body.get("conversation_id")
    chat_id = request.GET.get("chat_id") or body.get("chat_id")
    if not isinstance(conversation_id, str) or not conversation_id:
        raise ChatError("invalid", "conversation_id: Required.", errors={"conversation_id": ["Required."]})
    if not isinstance(chat_id, str) or not chat_id:
        raise ChatError("invalid", "chat_id: Required.", errors={"chat_id": ["Required."]})
    return conversation_id, chat_id


_resolve_files = db_async(attachments.attachments_resolve)


def _stream_response(stream: CozeStream, first, events: AsyncIterator) -> StreamingHttpResponse:
    return StreamingHttpResponse(
        stream.render(first, events),
        content_type="text/event-stream; charset=utf-8",
        headers={**SSE_HEADERS, "x-tt-logid": coze_wire.logid()},
    )


async def _drain(events: AsyncIterator) -> None:
    async with contextlib.aclosing(events):
        async for _ in events:
            pass


async def _run_on(events: AsyncIterator, control: TurnControl, *, wait_for_ids: bool) -> SessionEvent:
    """Start the turn, let it run on in the background, and return its first event once Coze has
    taken the chat (and, for a new chat, once its id is stored for the client's retrieve)."""
    first = await anext(events)
    turn = in_background(_drain(events))
    if wait_for_ids and control.ids_recorded is not None:
        await asyncio.wait([control.ids_recorded], timeout=IDS_RECORDED_WAIT_SECONDS)
        recorded = control.ids_recorded
        if not recorded.done() or recorded.cancelled() or recorded.exception() or not recorded.result():
            # The reply ended first, and its finish stores the ids: wait for that instead.
            await asyncio.wait([turn], timeout=IDS_RECORDED_WAIT_SECONDS)
    return first


@coze_view("POST")
async def chat_view(request: HttpRequest, owner: Owner) -> HttpResponse:
    """POST /v3/chat[?conversation_id=]: a turn, as Coze's stream or, not streamed, the chat at once."""
    chat = parse_chat(
        json_body(request),
        conversation_id=request.GET.get("conversation_id") or None,
        new_session_id=coze_sessions.new_conversation_id(),
    )
    if chat.context_file_ids:  # the question's own files are checked as the turn starts
        await _resolve_files(owner=owner, attachments=[{"file_id": i} for i in chat.context_file_ids])
    chat_request = chat.chat_request
    control = TurnControl(owner_key=owner.key)
    events = service.achat_events(
        owner=owner,
        chat_request=chat_request,
        transport=Reply.Transport.COZE,
        control=control,
        detailed=True,
        local_tools=True,
    )
    stream = CozeStream(
        conversation_id=chat_request.session_id,
        bot_id=chat_request.bot_id,
        meta_data=chat.meta_data,
        created_at=int(time.time()),
    )
    if chat.stream:
        return _stream_response(stream, await anext(events), events)
    first = await _run_on(events, control, wait_for_ids=True)
    stream.chat_id, stream.section_id = first.chat_id, first.section_id
    return coze_wire.ok(stream.chat("in_progress"))


@coze_view("POST")
async def submit_tool_outputs_view(request: HttpRequest, owner: Owner) -> HttpResponse:
    """POST /v3/chat/submit_tool_outputs?conversation_id=&chat_id=: continue a chat that waits for
    its local tools' outputs, streamed or not."""
    if settings.COZE_PLATFORM == "studio":
        return coze_error_response(ChatError("invalid", STUDIO_NO_TOOL_OUTPUTS))
    session_id, chat_id = ids_of(request)
    outputs, streamed = parse_tool_outputs(json_body(request))
    reply = await coze_sessions.achat_get(owner=owner, session_id=session_id, chat_id=chat_id)
    control = TurnControl(owner_key=owner.key)
    events = service.achat_continue_events(
        owner=owner, session_id=session_id, chat_id=chat_id, outputs=outputs, control=control, detailed=True
    )
    stream = CozeStream(
        conversation_id=session_id,
        bot_id=reply.bot_id,
        meta_data={},
        created_at=coze_wire.seconds(reply.started_at),
        continued=True,
    )
    if streamed:
        return _stream_response(stream, await anext(events), events)
    first = await _run_on(events, control, wait_for_ids=False)
    stream.chat_id, stream.section_id = first.chat_id, first.section_id
    return coze_wire.ok(stream.chat("in_progress"))


@coze_view("GET", "POST")
async def chat_retrieve_view(request: HttpRequest, owner: Owner) -> HttpResponse:
    """GET|POST /v3/chat/retrieve?conversation_id=&chat_id=: the chat object as stored now."""
    session_id, chat_id = ids_of(request)
    reply = await coze_sessions.achat_get(owner=owner, session_id=session_id, chat_id=chat_id)
    return coze_wire.ok(coze_wire.stored_chat_object(reply, session_id=session_id))


@coze_view("GET", "POST")
async def chat_messages_view(request: HttpRequest, owner: Owner) -> HttpResponse:
    """GET|POST /v3/chat/message/list?conversation_id=&chat_id=: the chat's messages once stored —
    its local tool calls and their outputs, the answer, the follow-ups."""
    session_id, chat_id = ids_of(request)
    reply = await coze_sessions.achat_get(owner=owner, session_id=session_id, chat_id=chat_id)
    stored = await coze_sessions.chat_messages(reply=reply)
    messages = coze_wire.tool_messages(reply, session_id=session_id) + [
        coze_wire.stored_message(message, session_id=session_id, bot_id=reply.bot_id) for message in stored
    ]
    return coze_wire.ok(messages)


@coze_view("POST")
async def chat_cancel_view(request: HttpRequest, owner: Owner) -> HttpResponse:
    """POST /v3/chat/cancel {conversation_id, chat_id}: stop a reply in progress (or waiting for its
    tools); Coze's 4104 for one that has ended."""
    session_id, chat_id = ids_of(request, json_body(request))
    reply = await coze_sessions.achat_get(owner=owner, session_id=session_id, chat_id=chat_id)
    if reply.status not in (Reply.Status.IN_PROGRESS, Reply.Status.REQUIRES_ACTION):
        return coze_error_response(
            ChatError("invalid", f"The chat has ended ({coze_wire.CHAT_STATUS[reply.status]}): it can't be cancelled."),
            code=CHAT_CANNOT_BE_CANCELLED,
        )
    await sessions.achat_cancel(owner=owner, chat_id=chat_id)
    reply = await coze_sessions.achat_get(owner=owner, session_id=session_id, chat_id=chat_id)
    return coze_wire.ok(coze_wire.stored_chat_object(reply, session_id=session_id))
