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
from chat.turn.records import pending_calls, redacted
from sessions_admin.models import ChatSession, Reply

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
    role: str  # "system" (also for OpenAI's "developer"), "user", "assistant" or "tool"
    text: str
    image_urls: tuple[str, ...] = ()
    tool_call_ids: tuple[str, ...] = ()  # an assistant message's tool_calls
    tool_call_id: str = ""  # a tool message's: the call it answers


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
    # The outputs of the bot's local tools (by call id), when the request ends with `tool`
    # messages answering the last assistant message's `tool_calls`: the paused Coze chat goes on.
    tool_outputs: dict[str, str] | None = None


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
        if role == "function":
            raise _invalid(f"messages[{index}].role", "Function messages are OpenAI's old form: send tool messages.")
        if role not in ("system", "user", "assistant", "tool"):
            raise _invalid(f"messages[{index}].role", "Must be system, developer, user, assistant or tool.")
        text, image_urls = _message_content(index, role, message.get("content"))
        tool_call_ids, tool_call_id = (), ""
        if role == "assistant" and message.get("tool_calls"):
            tool_call_ids = _tool_call_ids(index, message["tool_calls"])
        if role == "tool":
            tool_call_id = message.get("tool_call_id")
            if not isinstance(tool_call_id, str) or not tool_call_id:
                raise _invalid(f"messages[{index}].tool_call_id", "A tool message names the call it answers.")
        parsed.append(
            OpenAIMessage(
                role=role, text=text, image_urls=image_urls, tool_call_ids=tool_call_ids, tool_call_id=tool_call_id
            )
        )
    return parsed


def _tool_call_ids(index: int, tool_calls) -> tuple[str, ...]:
    if not isinstance(tool_calls, list) or not all(
        isinstance(call, dict) and isinstance(call.get("id"), str) and call["id"] for call in tool_calls
    ):
        raise _invalid(f"messages[{index}].tool_calls", "Each tool call needs its id.")
    return tuple(call["id"] for call in tool_calls)


def _split_tool_outputs(messages: list[OpenAIMessage]) -> tuple[list[OpenAIMessage], dict[str, str] | None]:
    """A history that ends with `tool` messages answering the last assistant message's calls:
    the messages up to that assistant message's question, and the outputs by call id. Otherwise
    the messages as they are, and None."""
    if messages[-1].role != "tool":
        return messages, None
    start = len(messages)
    while start > 0 and messages[start - 1].role == "tool":
        start -= 1
    if start == 0 or not messages[start - 1].tool_call_ids:
        raise _invalid("messages", "Tool messages must follow the assistant message whose tool_calls they answer.")
    calls = messages[start - 1].tool_call_ids
    outputs = {message.tool_call_id: message.text for message in messages[start:]}
    unknown = sorted(set(outputs) - set(calls))
    if unknown:
        raise _invalid("messages", f"Tool message for {unknown[0]}, which the assistant message did not call.")
    before = messages[: start - 1]
    while before and before[-1].role == "assistant":  # text the bot wrote before its calls, if sent apart
        before = before[:-1]
    return before, outputs


def parse_completion_request(body, *, header_session_id: str | None = None) -> CompletionRequest:
    """Validate an OpenAI chat completion body; raises ChatError (invalid, not_found, payload_too_large).

    Unknown fields (temperature, max_tokens, tools, …) are accepted and ignored.
    """
    if not isinstance(body, dict):
        raise ChatError("invalid", "The body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("model", "Required: a bot id or a name from GET /v1/models.")
    messages, tool_outputs = _split_tool_outputs(_parse_messages(body.get("messages")))
    if not messages:
        raise _invalid("messages", "The user's message must come before the tool calls.")
    last = messages[-1]
    if last.role != "user" or not (last.text.strip() or last.image_urls):
        raise _invalid(
            "messages",
            "The last message must be a user message with text or images (or tool messages answering tool_calls).",
        )
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
        tool_outputs=tool_outputs,
    )


def history_of(earlier: list[OpenAIMessage]) -> list[tuple[str, str]]:
    """The earlier messages as a stored transcript holds them: user and assistant turns, in order.

    A reply that called local tools is stored as one answer (what the bot wrote before and after
    the calls): the `tool` messages are left out and the assistant messages around them joined.
    """
    history: list[tuple[str, str]] = []
    for message in earlier:
        if message.role in ("system", "tool"):
            continue
        if message.role == "assistant" and history and history[-1][0] == "assistant":
            history[-1] = ("assistant", history[-1][1] + message.text)
        else:
            history.append((message.role, message.text))
    return history


def coze_context(earlier: list[OpenAIMessage], question: str) -> list[dict]:
    """Coze message objects for a new session: the earlier messages as context, then the question.

    A system prompt becomes a user-role message marked `meta_data.openai_role = "system"` (Coze
    has no system role; the bot's own persona still applies).
    """
    limit = settings.CHAT_MAX_MESSAGE_CHARS
    context = [message for message in earlier if message.text.strip() and message.role != "tool"]
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
    # Images go to Coze as the turn's attachments: links as they are; data: URLs checked now and
    # uploaded by the turn once it is admitted, so a refused request uploads nothing.
    attachments = tuple(uploads.attachment_from_image_url(url) for url in completion.image_urls)
    common = {
        "message": completion.question or None,
        "user_id": completion.user,
        "bot_id": completion.bot_id,
        "attachments": attachments,
    }
    if completion.session_id:
        return ChatRequest(session_id=completion.session_id, **common), True
    # Stored transcripts hold redacted text (CHAT_REDACT), so the resent history is matched
    # redacted too; what goes to Coze below (`coze_context`) stays as the client sent it.
    history = [(role, redacted(text)) for role, text in history_of(completion.earlier)]
    if history:
        session_id = await session_for_history(owner=owner, bot_id=completion.bot_id, history=history)
        if session_id is not None:
            return ChatRequest(session_id=session_id, **common), True
    additional = coze_context(completion.earlier, completion.question) if completion.earlier else None
    # Generated here rather than by the service, so the stream's headers can carry it.
    session_id = uuid.uuid4().hex
    return ChatRequest(session_id=session_id, additional_messages=additional, **common), False


# How many of a client's replies waiting for tool outputs are looked through for a request's calls.
PAUSED_REPLIES_SEARCHED = 50


@db_async
def paused_chat_for(*, owner: Owner, tool_call_ids: set[str], session_id: str | None) -> tuple[str, str]:
    """The caller's reply that waits for outputs of these tool calls (in `session_id` when pinned):
    its session and Coze chat id. ChatError `invalid` when none does (its wait passed, or the calls
    were answered already)."""
    waiting = Reply.objects.filter(**owner.scope("session__"), status=Reply.Status.REQUIRES_ACTION)
    if session_id:
        waiting = waiting.filter(session__session_id=session_id)
    found = waiting.order_by("-pk").values_list("session__session_id", "coze_chat_id", "required_action")
    for paused_session_id, chat_id, required_action in found[:PAUSED_REPLIES_SEARCHED]:
        if tool_call_ids & {call["id"] for call in pending_calls(required_action)}:
            return paused_session_id, chat_id
    raise ChatError(
        "invalid",
        "No reply waits for these tool calls' outputs: they were answered already, or the reply ended "
        "(cancelled, or its wait of CHAT_TOOL_OUTPUT_TIMEOUT passed).",
        errors={"messages": ["Unknown or answered tool_call_id."]},
    )
