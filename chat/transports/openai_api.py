"""The OpenAI-compatible API (docs/api.md §10): `GET /v1/models` and `POST /v1/chat/completions`.

A thin transport like the others: it authenticates the API key, turns OpenAI's request body into
a ChatRequest, runs the turn through the one chat service and renders the service's events as
OpenAI's `chat.completion` object or `chat.completion.chunk` stream. A bot that calls a plugin
running on the client ends the completion with `finish_reason: "tool_calls"`; the next request's
`tool` messages continue that Coze chat (docs/api.md §13). Errors use OpenAI's shape,
built from the same ChatError (codes and statuses of docs/api.md §3) as every other transport.

Which session a call belongs to (OpenAI clients resend the whole history every time):
* `X-Session-Id` (or body `session_id`) pins it; only the last user message goes to Coze.
* Otherwise the earlier user and assistant messages are looked up by their digest
  (`chat.domain.transcripts`) among the caller's sessions; a match continues that session, the most
  recently active one when several match (idle ones before one with a reply in progress).
* Otherwise a new session starts and the earlier messages go to Coze as its context.
"""

import contextlib
import time
from collections.abc import AsyncIterator

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from chat.access.auth import aowner_from_api_key, bearer_key
from chat.domain.errors import ChatError
from chat.domain.events import (
    PING,
    CompletedEvent,
    DeltaEvent,
    ErrorEvent,
    ReasoningEvent,
    RequiresActionEvent,
    SessionEvent,
)
from chat.domain.inputs import Owner
from chat.domain.sse import PING as SSE_PING
from chat.domain.sse import sse_data
from chat.transports.errors import json_response, mark_logged
from chat.transports.openai_requests import (
    SESSION_HEADER,
    bot_for_model,
    chat_request_for,
    model_ids,
    parse_completion_request,
    paused_chat_for,
)
from chat.transports.serializers import parse_json_bytes
from chat.transports.sse import SSE_HEADERS, stream_items
from chat.turn import service
from sessions_admin.models import Reply

# Models have no creation date of their own here; this one is stable for the life of the process.
MODELS_CREATED = int(time.time())


# --- errors -----------------------------------------------------------------------------------


def _error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def openai_error_body(error: ChatError) -> dict:
    """`{"error": {"message", "type", "code", "param"}}` for a ChatError; `code` is ours (docs/api.md §3)."""
    param = next(iter(error.errors), None) if error.errors else None
    return {"error": {"message": error.detail, "type": _error_type(error.status), "code": error.code, "param": param}}


def openai_error_response(error: ChatError, *, session_id: str | None = None) -> HttpResponse:
    response = json_response(openai_error_body(error), status=error.status)
    for name, value in error.headers().items():
        response[name] = value
    # The openai SDKs retry 409, 429 and 5xx by default; this header makes them retry only what may succeed.
    response["x-should-retry"] = "true" if error.retryable else "false"
    if session_id:
        response[SESSION_HEADER] = session_id
    return mark_logged(response, error)


async def _aowner(request: HttpRequest) -> Owner:
    """The API client of `Authorization: Bearer <key>`, the only way in here (OpenAI clients send one)."""
    key = bearer_key(request.headers.get("Authorization", ""))
    if key is None:
        raise ChatError("unauthenticated")
    return await aowner_from_api_key(key, address=request.META.get("REMOTE_ADDR"))


# --- models -----------------------------------------------------------------------------------


def _model_object(model_id: str) -> dict:
    return {"id": model_id, "object": "model", "created": MODELS_CREATED, "owned_by": "coze"}


@require_GET
async def models_view(request: HttpRequest) -> HttpResponse:
    """GET /v1/models: one model per allowed bot, plus its readable names."""
    try:
        await _aowner(request)
    except ChatError as error:
        return openai_error_response(error)
    return json_response({"object": "list", "data": [_model_object(model_id) for model_id in model_ids()]})


@require_GET
async def model_view(request: HttpRequest, model: str) -> HttpResponse:
    """GET /v1/models/{model}."""
    try:
        await _aowner(request)
        bot_for_model(model)
    except ChatError as error:
        return openai_error_response(error)
    return json_response(_model_object(model))


# --- the answer -------------------------------------------------------------------------------


def usage_body(completed: CompletedEvent) -> dict:
    """Coze's own token counts, in OpenAI's names."""
    return {
        "prompt_tokens": completed.usage.input_tokens,
        "completion_tokens": completed.usage.output_tokens,
        "total_tokens": completed.usage.total_tokens,
    }


def completion_body(completed: CompletedEvent, *, model: str) -> dict:
    """The `chat.completion` object for a whole reply; its id carries Coze's chat id."""
    return {
        "id": f"chatcmpl-{completed.chat_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completed.content, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": usage_body(completed),
    }


def tool_calls_of(paused: RequiresActionEvent) -> list[dict]:
    """The bot's local plugin calls as OpenAI's `tool_calls` (Coze's call ids, which the client's
    `tool` messages answer)."""
    return [
        {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
        for call in paused.tool_calls
    ]


def tool_calls_body(paused: RequiresActionEvent, *, text: str, model: str) -> dict:
    """The `chat.completion` of a reply that paused for the client's tools: `finish_reason:
    "tool_calls"`; the next request's `tool` messages continue it."""
    return {
        "id": f"chatcmpl-{paused.chat_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": text or None,
                    "refusal": None,
                    "tool_calls": tool_calls_of(paused),
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }


async def _whole_reply(events: AsyncIterator, *, model: str) -> tuple[dict, str]:
    """Consume a reply's events: the `chat.completion` body and the session. Raises ChatError."""
    parts: list[str] = []
    async with contextlib.aclosing(events):
        async for event in events:
            if isinstance(event, DeltaEvent):
                parts.append(event.content)
            elif isinstance(event, CompletedEvent):
                return completion_body(event, model=model), event.session_id
            elif isinstance(event, RequiresActionEvent):
                return tool_calls_body(event, text="".join(parts), model=model), event.session_id
            elif isinstance(event, ErrorEvent):
                raise ChatError(event.code, event.detail, retryable=event.retryable)
    raise ChatError("upstream_error", "The reply ended without completing.")


async def render_chunks(first, events: AsyncIterator, *, model: str, include_usage: bool) -> AsyncIterator[bytes]:
    """The service's events as `chat.completion.chunk` data lines: the role first, content (and
    reasoning) deltas, a last chunk with `finish_reason`, the usage chunk when asked, `[DONE]`.

    A failure after the stream began is a `{"error": …}` line, which the openai SDKs raise as
    APIError, then `[DONE]`. Follow-up suggestions have no place in OpenAI's format and are left out.
    """
    created = int(time.time())
    chunk_id = "chatcmpl-"
    no_usage = {"usage": None} if include_usage else {}

    def chunk(delta: dict, finish_reason: str | None = None) -> bytes:
        return sse_data(
            {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
                **no_usage,
            }
        )

    async with contextlib.aclosing(stream_items(first, events)) as items:
        async for item in items:
            if item is PING:
                yield SSE_PING
            elif isinstance(item, DeltaEvent):
                yield chunk({"content": item.content})
            elif isinstance(item, ReasoningEvent):
                # DeepSeek's field for it, which front-ends such as Open WebUI show as thinking.
                yield chunk({"reasoning_content": item.content})
            elif isinstance(item, SessionEvent):
                chunk_id = f"chatcmpl-{item.chat_id}"
                yield chunk({"role": "assistant", "content": ""})
            elif isinstance(item, RequiresActionEvent):
                calls = [{"index": index, **call} for index, call in enumerate(tool_calls_of(item))]
                yield chunk({"tool_calls": calls})
                yield chunk({}, "tool_calls")
                if include_usage:
                    yield sse_data(
                        {
                            "id": chunk_id,
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": model,
                            "choices": [],
                            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
                        }
                    )
            elif isinstance(item, CompletedEvent):
                yield chunk({}, "stop")
                if include_usage:
                    yield sse_data(
                        {
                            "id": chunk_id,
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": model,
                            "choices": [],
                            "usage": usage_body(item),
                        }
                    )
            elif isinstance(item, ErrorEvent):
                error = ChatError(item.code, item.detail, retryable=item.retryable)
                yield sse_data(openai_error_body(error))
    yield sse_data("[DONE]")


@csrf_exempt  # Bearer keys only: no cookies, so nothing to forge.
@require_POST
async def chat_completions_view(request: HttpRequest) -> HttpResponse:
    """POST /v1/chat/completions: a turn of the chat service, as OpenAI's answer or chunk stream."""
    known_session: str | None = None
    try:
        owner = await _aowner(request)
        body = parse_json_bytes(request.body, request.content_type or "")
        completion = parse_completion_request(body, header_session_id=request.headers.get(SESSION_HEADER))
        heartbeat = settings.CHAT_SSE_HEARTBEAT if completion.stream else None
        if completion.tool_outputs is not None:
            # The client ran the bot's local tools: the paused reply goes on with their outputs.
            session_id, chat_id = await paused_chat_for(
                owner=owner, tool_call_ids=set(completion.tool_outputs), session_id=completion.session_id
            )
            known_session = session_id
            events = service.achat_continue_events(
                owner=owner,
                session_id=session_id,
                chat_id=chat_id,
                outputs=completion.tool_outputs,
                heartbeat=heartbeat,
            )
        else:
            chat_request, continues = await chat_request_for(owner, completion)
            session_id = chat_request.session_id
            known_session = session_id if continues else None
            events = service.achat_events(
                owner=owner,
                chat_request=chat_request,
                transport=Reply.Transport.OPENAI,
                heartbeat=heartbeat,
                local_tools=True,
            )
        if not completion.stream:
            answer, session_id = await _whole_reply(events, model=completion.model)
            return json_response(answer, headers={SESSION_HEADER: session_id})
        first = await anext(events)
    except RequestDataTooBig:
        return openai_error_response(ChatError("payload_too_large"))
    except ChatError as error:
        return openai_error_response(error, session_id=known_session)
    return StreamingHttpResponse(
        render_chunks(first, events, model=completion.model, include_usage=completion.include_usage),
        content_type="text/event-stream; charset=utf-8",
        headers={**SSE_HEADERS, SESSION_HEADER: session_id},
    )
