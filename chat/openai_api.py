"""The OpenAI-compatible API (docs/api.md §10): `GET /v1/models` and `POST /v1/chat/completions`.

A thin transport like the others: it authenticates the API key, turns OpenAI's request body into
a ChatRequest, runs the turn through the one chat service and renders the service's events as
OpenAI's `chat.completion` object or `chat.completion.chunk` stream. Errors use OpenAI's shape,
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
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from chat import files
from chat.auth import aowner_from_api_key, bearer_key
from chat.domain import transcripts
from chat.domain.errors import ChatError
from chat.domain.events import PING, CompletedEvent, DeltaEvent, ErrorEvent, ReasoningEvent, SessionEvent
from chat.domain.inputs import ChatRequest, Owner
from chat.domain.sse import PING as SSE_PING
from chat.domain.sse import sse_data
from chat.runtime.db import db_async
from chat.serializers import MAX_ADDITIONAL_MESSAGES, SESSION_ID_RE, parse_json_bytes
from chat.transports.errors import mark_logged
from chat.turn import service
from chat.views import SSE_HEADERS, stream_items
from sessions_admin.models import ChatSession, Reply

SESSION_HEADER = "X-Session-Id"
# Models have no creation date of their own here; this one is stable for the life of the process.
MODELS_CREATED = int(time.time())
# How a system prompt travels to Coze, which has no system role: as a user-role context message
# marked with this message meta_data, ahead of the conversation.
SYSTEM_META_DATA = {"openai_role": "system"}
UNSUPPORTED_PARTS_DETAIL = (
    "Content parts of type {kind!r} are not supported; send text and (in user messages) image_url parts."
)


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


def openai_error_response(error: ChatError, *, session_id: str | None = None) -> JsonResponse:
    response = JsonResponse(openai_error_body(error), status=error.status, json_dumps_params={"ensure_ascii": False})
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


def model_ids() -> list[str]:
    """Each allowed bot's id, then the names of COZE_BOT_NAMES."""
    return [
        *settings.COZE_ALLOWED_BOT_IDS,
        *(name for name in settings.COZE_BOT_NAMES if name not in settings.COZE_ALLOWED_BOT_IDS),
    ]


def bot_for_model(model: str) -> str:
    """The bot id a `model` names (a bot id or a COZE_BOT_NAMES name); ChatError("not_found") otherwise."""
    if model in settings.COZE_ALLOWED_BOT_IDS:
        return model
    bot_id = settings.COZE_BOT_NAMES.get(model)
    if bot_id is None:
        raise ChatError(
            "not_found",
            f"The model {model!r} does not exist here; GET /v1/models lists the bots you can use.",
            errors={"model": ["Unknown model."]},
        )
    return bot_id


def _model_object(model_id: str) -> dict:
    return {"id": model_id, "object": "model", "created": MODELS_CREATED, "owned_by": "coze"}


@require_GET
async def models_view(request: HttpRequest) -> HttpResponse:
    """GET /v1/models: one model per allowed bot, plus its readable names."""
    try:
        await _aowner(request)
    except ChatError as error:
        return openai_error_response(error)
    return JsonResponse({"object": "list", "data": [_model_object(model_id) for model_id in model_ids()]})


@require_GET
async def model_view(request: HttpRequest, model: str) -> HttpResponse:
    """GET /v1/models/{model}."""
    try:
        await _aowner(request)
        bot_for_model(model)
    except ChatError as error:
        return openai_error_response(error)
    return JsonResponse(_model_object(model))


# --- the request ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenAIMessage:
    role: str  # "system" (also for OpenAI's "developer"), "user" or "assistant"
    text: str
    image_urls: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    """The parts of an OpenAI chat completion body this server uses; the rest is ignored."""

    model: str
    bot_id: str
    earlier: list[OpenAIMessage]
    question: str
    stream: bool = False
    include_usage: bool = False
    user: str | None = None
    session_id: str | None = None
    # The last user message's images; earlier messages' images are not sent again (a continued
    # session's Coze conversation has them, a new one gets the earlier messages' text).
    image_urls: tuple[str, ...] = ()


def _invalid(field: str, message: str) -> ChatError:
    return ChatError("invalid", f"{field}: {message}", errors={field: [message]})


def _message_content(index: int, role: str, content) -> tuple[str, tuple[str, ...]]:
    """A message's text (a string, or its `text` parts joined by newlines) and the URLs of its
    `image_url` parts (user messages only)."""
    field = f"messages[{index}].content"
    if content is None and role == "assistant":
        return "", ()  # an assistant turn that only called tools
    if isinstance(content, str):
        return content, ()
    if not isinstance(content, list):
        raise _invalid(field, "Must be a string or a list of content parts.")
    texts, image_urls = [], []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url" and role == "user":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url:
                raise _invalid(field, "An image_url part needs {'image_url': {'url': 'https://… or data:…'}}.")
            image_urls.append(url)
        elif kind in ("image_url", "input_audio", "file", "refusal"):
            raise _invalid(field, UNSUPPORTED_PARTS_DETAIL.format(kind=kind))
        else:
            raise _invalid(field, "Each part must be {'type': 'text', 'text': '…'} or an image_url.")
    return "\n".join(texts), tuple(image_urls)


def _parse_messages(messages) -> list[OpenAIMessage]:
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages", "Must be a non-empty list of messages.")
    parsed = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _invalid(f"messages[{index}]", "Must be an object with role and content.")
        role = message.get("role")
        if role == "developer":
            role = "system"
        if role in ("tool", "function"):
            raise _invalid(
                f"messages[{index}].role", "Tool messages are not supported: the Coze bot runs its own tools."
            )
        if role not in ("system", "user", "assistant"):
            raise _invalid(f"messages[{index}].role", "Must be system, developer, user or assistant.")
        text, image_urls = _message_content(index, role, message.get("content"))
        parsed.append(OpenAIMessage(role=role, text=text, image_urls=image_urls))
    return parsed


def parse_completion_request(body, *, header_session_id: str | None = None) -> CompletionRequest:
    """Validate an OpenAI chat completion body; raises ChatError (invalid, not_found, payload_too_large).

    Unknown fields (temperature, max_tokens, tools, …) are accepted and ignored.
    """
    if not isinstance(body, dict):
        raise ChatError("invalid", "The body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("model", "Required: a bot id or a name from GET /v1/models.")
    messages = _parse_messages(body.get("messages"))
    last = messages[-1]
    if last.role != "user" or not (last.text.strip() or last.image_urls):
        raise _invalid("messages", "The last message must be a user message with text or images.")
    limit = settings.CHAT_MAX_MESSAGE_CHARS
    if len(last.text) > limit:
        raise ChatError("payload_too_large", f"The message is longer than {limit} characters.")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _invalid("stream", "Must be true or false.")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise _invalid("stream_options", "Must be an object.")
    include_usage = stream_options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise _invalid("stream_options", "include_usage must be true or false.")
    user = body.get("user")
    if user is not None and (not isinstance(user, str) or not 1 <= len(user) <= 128):
        raise _invalid("user", "Must be a string of 1 to 128 characters.")
    session_id = header_session_id or body.get("session_id")
    if session_id is not None and (not isinstance(session_id, str) or not SESSION_ID_RE.match(session_id)):
        raise _invalid("session_id", "Use 1 to 128 characters of A-Z a-z 0-9 _ . : -")
    return CompletionRequest(
        model=model,
        bot_id=bot_for_model(model),
        earlier=messages[:-1],
        question=last.text,
        stream=stream,
        include_usage=include_usage,
        user=user or None,
        session_id=session_id,
        image_urls=last.image_urls,
    )


def history_of(earlier: list[OpenAIMessage]) -> list[tuple[str, str]]:
    """The earlier messages as a stored transcript holds them: user and assistant turns, in order."""
    return [(message.role, message.text) for message in earlier if message.role != "system"]


def coze_context(earlier: list[OpenAIMessage], question: str) -> list[dict]:
    """Coze message objects for a new session: the earlier messages as context, then the question.

    A system prompt becomes a user-role message marked `meta_data.openai_role = "system"` (Coze
    has no system role; the bot's own persona still applies).
    """
    limit = settings.CHAT_MAX_MESSAGE_CHARS
    context = [message for message in earlier if message.text.strip()]
    if len(context) + 1 > MAX_ADDITIONAL_MESSAGES or sum(len(m.text) for m in context) + len(question) > limit:
        raise ChatError(
            "payload_too_large",
            f"This history is more than Coze takes as context ({MAX_ADDITIONAL_MESSAGES} messages, {limit} "
            f"characters) and matches no session here; pin a session with {SESSION_HEADER} or start a new chat.",
        )
    items = []
    for message in context:
        item = {
            "role": "assistant" if message.role == "assistant" else "user",
            "type": "answer" if message.role == "assistant" else "question",
            "content": message.text,
            "content_type": "text",
        }
        if message.role == "system":
            item["meta_data"] = dict(SYSTEM_META_DATA)
        items.append(item)
    items.append({"role": "user", "type": "question", "content": question, "content_type": "text"})
    return items


@db_async
def session_for_history(*, owner: Owner, bot_id: str, history: list[tuple[str, str]]) -> str | None:
    """The caller's session whose current conversation holds exactly `history` (one index lookup).

    Several can match (two chats that began alike): the most recently active idle one wins, else
    the most recent. A cleared session matches nothing until it has new turns.
    """
    digest = transcripts.transcript_hash(owner_key=owner.key, bot_id=bot_id, messages=history)
    candidates = list(
        ChatSession.objects.filter(owner_key=owner.key, current_conversation__transcript_hash=digest)
        .order_by("-last_activity", "-pk")
        .values_list("session_id", "locked_until")[:10]
    )
    now = timezone.now()
    for session_id, locked_until in candidates:
        if locked_until is None or locked_until <= now:
            return session_id
    return candidates[0][0] if candidates else None


async def chat_request_for(owner: Owner, completion: CompletionRequest) -> tuple[ChatRequest, bool]:
    """The service's ChatRequest for a completion, and whether it continues a session that exists.

    `message` is always the last user message (what the service stores as the question); a new
    session with earlier messages also carries them as `additional_messages`, which is what goes to
    Coze (the service prefers them over `message` when sending).
    """
    # Images go to Coze as the turn's attachments: links as they are, data: URLs uploaded first.
    attachments = tuple([await files.aattachment_from_image_url(owner=owner, url=url) for url in completion.image_urls])
    common = {
        "message": completion.question or None,
        "user_id": completion.user,
        "bot_id": completion.bot_id,
        "attachments": attachments,
    }
    if completion.session_id:
        return ChatRequest(session_id=completion.session_id, **common), True
    history = history_of(completion.earlier)
    if history:
        session_id = await session_for_history(owner=owner, bot_id=completion.bot_id, history=history)
        if session_id is not None:
            return ChatRequest(session_id=session_id, **common), True
    additional = coze_context(completion.earlier, completion.question) if completion.earlier else None
    # Generated here rather than by the service, so the stream's headers can carry it.
    session_id = uuid.uuid4().hex
    return ChatRequest(session_id=session_id, additional_messages=additional, **common), False


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
        chat_request, continues = await chat_request_for(owner, completion)
        known_session = chat_request.session_id if continues else None
        if not completion.stream:
            completed = await service.achat_send(
                owner=owner, chat_request=chat_request, transport=Reply.Transport.OPENAI
            )
            return JsonResponse(
                completion_body(completed, model=completion.model),
                headers={SESSION_HEADER: completed.session_id},
                json_dumps_params={"ensure_ascii": False},
            )
        events = service.achat_events(
            owner=owner,
            chat_request=chat_request,
            transport=Reply.Transport.OPENAI,
            heartbeat=settings.CHAT_SSE_HEARTBEAT,
        )
        first = await anext(events)
    except RequestDataTooBig:
        return openai_error_response(ChatError("payload_too_large"))
    except ChatError as error:
        return openai_error_response(error, session_id=known_session)
    return StreamingHttpResponse(
        render_chunks(first, events, model=completion.model, include_usage=completion.include_usage),
        content_type="text/event-stream; charset=utf-8",
        headers={**SSE_HEADERS, SESSION_HEADER: chat_request.session_id},
    )
