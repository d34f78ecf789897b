"""An OpenAI Chat Completions request as a turn (docs/api.md §10): the body parsed and checked,
the session it continues (by `X-Session-Id`, else by the digest of its earlier messages), and the
ChatRequest the chat service runs.

OpenAI clients resend the whole history on every call. With a pinned session only the last user
message goes to Coze; a history that matches one of the caller's sessions continues it (the most
recently active one when several match, idle ones before one with a reply in progress); otherwise
a new session starts and the earlier messages go to Coze as its context.
"""

import uuid
from dataclasses import dataclass

from django.conf import settings
from django.utils import timezone

from chat.domain import transcripts
from chat.domain.errors import ChatError
from chat.domain.inputs import ChatRequest, Owner
from chat.files import uploads
from chat.runtime.db import db_async
from chat.transports.serializers import MAX_ADDITIONAL_MESSAGES, SESSION_ID_RE
from sessions_admin.models import ChatSession

SESSION_HEADER = "X-Session-Id"
# How a system prompt travels to Coze, which has no system role: as a user-role context message
# marked with this message meta_data, ahead of the conversation.
SYSTEM_META_DATA = {"openai_role": "system"}
UNSUPPORTED_PARTS_DETAIL = (
    "Content parts of type {kind!r} are not supported; send text and (in user messages) image_url parts."
)


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
        ChatSession.objects.filter(**owner.scope(), current_conversation__transcript_hash=digest)
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
    attachments = tuple(
        [await uploads.aattachment_from_image_url(owner=owner, url=url) for url in completion.image_urls]
    )
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
