"""Coze's request bodies for Coze's own API (docs/api.md §13), validated into what the services
take. What cozepy and @coze/api send is taken as they send it (cozepy's messages carry every field
of its model, nulls included); a malformed body is ChatError `invalid` naming the field (Coze's
4000). Fields Coze has that mean nothing here (`auto_save_history`, `parameters`, `enable_card`,
`extra_params`, `shortcut_command`, `connector_id`, `name`) are accepted and ignored.
"""

import json
import threading
from dataclasses import dataclass
from urllib.parse import parse_qsl

from django.conf import settings
from django.http import HttpRequest
from rest_framework import serializers

from chat.conversations.coze_sessions import EnteredMessage
from chat.domain.errors import ChatError
from chat.domain.inputs import ChatRequest, check_text
from chat.transports.serializers import (
    MAX_ADDITIONAL_MESSAGES,
    MAX_ATTACHMENTS,
    SESSION_ID_RE,
    AdditionalMessageSerializer,
    AttachmentSerializer,
    StrictBooleanField,
    StrictCharField,
    StringMapField,
    parse_json_bytes,
)

# Fields of a Coze message object that a client may echo back in a request and that say nothing
# new (cozepy sends its whole model: ids and times as null).
ECHOED_MESSAGE_FIELDS = frozenset(
    {"id", "conversation_id", "section_id", "bot_id", "chat_id", "created_at", "updated_at", "reasoning_content"}
)
MAX_PAGE_SIZE = 50
MAX_MESSAGE_LIMIT = 50


def _invalid(field: str, message: str) -> ChatError:
    return ChatError("invalid", f"{field}: {message}", errors={field: [message]})


# --- bodies -----------------------------------------------------------------------------------


def json_body(request: HttpRequest) -> dict:
    """The body as a JSON object; {} when there is none (cozepy and the JS SDK send bodiless POSTs)."""
    if not request.body.strip():
        return {}
    content_type = request.content_type or "application/json"
    if content_type in ("", "text/plain"):  # a bare client that named no type: JSON is all Coze takes
        content_type = "application/json"
    body = parse_json_bytes(request.body, content_type)
    if not isinstance(body, dict):
        raise ChatError("invalid", "The body must be a JSON object.")
    return body


def form_or_json_body(request: HttpRequest) -> dict:
    """A JSON body, or the fields of a form (URL-encoded or multipart, as older voice servers send
    a conversation's creation): form values are text, `messages` and `meta_data` JSON text."""
    content_type = (request.content_type or "").lower()
    if content_type == "application/x-www-form-urlencoded":
        fields = dict(parse_qsl(request.body.decode("utf-8", "replace"), keep_blank_values=True))
    elif content_type == "multipart/form-data":
        fields = {name: request.POST.get(name) for name in request.POST}
    else:
        return json_body(request)
    check_text(fields)
    for name in ("messages", "meta_data"):
        text = fields.get(name)
        if isinstance(text, str):
            try:
                fields[name] = json.loads(text) if text.strip() else None
            except ValueError:
                raise _invalid(name, "Must be JSON in a form field.") from None
    return fields


def _without_nulls(body: dict) -> dict:
    return {key: value for key, value in body.items() if value is not None}


# --- messages ---------------------------------------------------------------------------------


class _Bound(threading.local):
    """Serializers bound once per thread (binding their fields is most of their cost)."""

    def __init__(self):
        self.message = AdditionalMessageSerializer()
        self.attachment = AttachmentSerializer()
        self.chat = CozeChatSerializer()
        self.chat.fields  # noqa: B018 - bind now


class CozeChatSerializer(serializers.Serializer):
    bot_id = StrictCharField(max_length=64)
    user_id = StrictCharField(required=False, max_length=128)
    stream = StrictBooleanField(required=False)
    custom_variables = StringMapField(required=False)
    meta_data = StringMapField(required=False)
    additional_messages = serializers.ListField(required=False, max_length=MAX_ADDITIONAL_MESSAGES)


_bound = _Bound()


def _message(item, field: str) -> dict:
    if not isinstance(item, dict):
        raise _invalid(field, "Each message must be an object with role, content and content_type.")
    cleaned = {key: value for key, value in item.items() if value is not None and key not in ECHOED_MESSAGE_FIELDS}
    try:
        return dict(_bound.message.run_validation(cleaned))
    except serializers.ValidationError as exc:
        name, messages = next(iter(exc.detail.items())) if isinstance(exc.detail, dict) else ("", exc.detail)
        first = messages[0] if isinstance(messages, list) and messages else messages
        raise _invalid(f"{field}.{name}" if name else field, str(first)) from None


def _items(content: str, field: str) -> list[dict]:
    try:
        items = json.loads(content)
    except ValueError:
        items = None
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise _invalid(field, "object_string content must be a JSON list of {type, text | file_id | file_url} items.")
    return items


def question_parts(message: dict, field: str) -> tuple[str, tuple[dict, ...]]:
    """A user message's text and its attachments (docs/api.md §12 items) from Coze's
    object_string items: `text` items joined, `image` and `file` items by `file_id` or `file_url`."""
    if message["content_type"] != "object_string":
        return message["content"], ()
    texts, attachments = [], []
    for item in _items(message["content"], field):
        kind = item.get("type")
        if kind == "text":
            if not isinstance(item.get("text"), str):
                raise _invalid(field, "A text item needs its text.")
            texts.append(item["text"])
        elif kind in ("image", "file"):
            attachment = (
                {"file_id": item["file_id"]} if item.get("file_id") else {"url": item.get("file_url"), "type": kind}
            )
            try:
                attachments.append(dict(_bound.attachment.run_validation(attachment)))
            except serializers.ValidationError as exc:
                raise _invalid(
                    field, f"An {kind} item needs a file_id or an https:// file_url ({exc.detail})."
                ) from None
        else:
            raise _invalid(field, f"Items of type {kind!r} are not supported; send text, image and file items.")
    if len(attachments) > MAX_ATTACHMENTS:
        raise _invalid(field, f"At most {MAX_ATTACHMENTS} images and files.")
    return "".join(texts), tuple(attachments)


def context_file_ids(messages: list[dict]) -> list[str]:
    """The file ids that messages before the question attach (they must be the caller's too)."""
    ids = []
    for message in messages:
        if message["content_type"] == "object_string":
            ids += [
                item["file_id"] for item in _items(message["content"], "additional_messages") if item.get("file_id")
            ]
    return ids


# --- the chat ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CozeChat:
    """A validated `/v3/chat`: the turn's request, whether to stream, what to echo in the chat
    object, and the files the context messages name (checked as the caller's)."""

    chat_request: ChatRequest
    stream: bool
    meta_data: dict
    context_file_ids: tuple[str, ...]


def parse_chat(body: dict, *, conversation_id: str | None, new_session_id: str) -> CozeChat:
    """`POST /v3/chat`: Coze's body as a turn. The last user message is the question (stored as
    the user's message; its object_string images and files are the turn's attachments); the
    messages before it go to Coze as context. Without `conversation_id` the turn starts a new
    conversation, `new_session_id`."""
    body = _without_nulls(body)
    if "bot_id" not in body:
        raise _invalid("bot_id", "Required: the bot to chat with.")
    try:
        attrs = _bound.chat.run_validation({k: v for k, v in body.items() if k in _bound.chat.fields})
    except serializers.ValidationError as exc:
        name, messages = next(iter(exc.detail.items()))
        first = messages[0] if isinstance(messages, list) and messages else messages
        raise _invalid(name, str(first)) from None
    bot_id = attrs["bot_id"]
    if bot_id not in settings.COZE_ALLOWED_BOT_IDS:
        raise ChatError("bot_not_allowed", f"bot_id {bot_id!r} is not allowed on this server.")
    messages = [
        _message(item, f"additional_messages[{index}]")
        for index, item in enumerate(attrs.get("additional_messages") or [])
    ]
    last_user = next((i for i in range(len(messages) - 1, -1, -1) if messages[i]["role"] == "user"), None)
    if last_user is None:
        raise _invalid("additional_messages", "Include the user's message (role user).")
    question, attachments = question_parts(messages[last_user], f"additional_messages[{last_user}].content")
    if not question.strip() and not attachments:
        raise _invalid(f"additional_messages[{last_user}].content", "The user's message is empty.")
    limit = settings.CHAT_MAX_MESSAGE_CHARS
    if len(question) > limit or sum(len(m["content"]) for m in messages) > limit:
        raise ChatError("payload_too_large", f"The messages are longer than {limit} characters.")
    if conversation_id is not None and not SESSION_ID_RE.match(conversation_id):
        raise ChatError("not_found", "No such conversation.", errors={"conversation_id": ["No such conversation."]})
    context = messages[:last_user] + messages[last_user + 1 :]
    sent = None
    if context or attachments:
        # What goes to Coze: the context and the question as text (the attachments rejoin it there).
        as_text = {**messages[last_user], "content": question, "content_type": "text"}
        sent = [*messages[:last_user], as_text, *messages[last_user + 1 :]] if context else [as_text]
    chat_request = ChatRequest(
        message=question,
        session_id=conversation_id or new_session_id,
        user_id=attrs.get("user_id") or None,
        bot_id=bot_id,
        custom_variables=dict(attrs.get("custom_variables") or {}),
        meta_data=dict(attrs.get("meta_data") or {}),
        additional_messages=sent,
        attachments=attachments,
        existing_session=conversation_id is not None,
    )
    return CozeChat(
        chat_request=chat_request,
        stream=attrs.get("stream", False),
        meta_data=dict(attrs.get("meta_data") or {}),
        context_file_ids=tuple(context_file_ids(context)),
    )


def parse_tool_outputs(body: dict) -> tuple[dict[str, str], bool]:
    """`/v3/chat/submit_tool_outputs`'s body: the outputs by call id, and whether to stream."""
    items = body.get("tool_outputs")
    if not isinstance(items, list) or not items:
        raise _invalid("tool_outputs", "Required: a list of {tool_call_id, output}.")
    outputs: dict[str, str] = {}
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("tool_call_id"), str):
            raise _invalid(f"tool_outputs[{index}]", "Needs a tool_call_id (a string) and an output.")
        output = item.get("output")
        if not isinstance(output, str):
            raise _invalid(f"tool_outputs[{index}].output", "Must be a string.")
        if item["tool_call_id"] in outputs:
            raise _invalid(f"tool_outputs[{index}]", "Two outputs for one tool call.")
        outputs[item["tool_call_id"]] = output
    if sum(len(output) for output in outputs.values()) > settings.CHAT_MAX_MESSAGE_CHARS:
        raise ChatError("payload_too_large", "The tool outputs are longer than CHAT_MAX_MESSAGE_CHARS characters.")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _invalid("stream", "Must be true or false.")
    return outputs, stream


# --- conversations ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewConversation:
    bot_id: str
    user_id: str
    messages: list[EnteredMessage]
    meta_data: dict


def parse_conversation(fields: dict) -> NewConversation:
    """`POST /v1/conversation/create`: everything optional (`bot_id`, `messages`, `meta_data`,
    `user_id`, as Studio and older voice servers send it)."""
    fields = _without_nulls(fields)
    bot_id = fields.get("bot_id", "")
    if isinstance(bot_id, int) and not isinstance(bot_id, bool):
        bot_id = str(bot_id)  # a form or a loose client: ids are strings
    if not isinstance(bot_id, str) or len(bot_id) > 64:
        raise _invalid("bot_id", "Must be a bot id (a string).")
    user_id = fields.get("user_id", "")
    if not isinstance(user_id, str) or len(user_id) > 128:
        raise _invalid("user_id", "Must be a string of at most 128 characters.")
    raw_messages = fields.get("messages") or []
    if not isinstance(raw_messages, list) or len(raw_messages) > MAX_ADDITIONAL_MESSAGES:
        raise _invalid("messages", f"Must be a list of at most {MAX_ADDITIONAL_MESSAGES} messages.")
    messages = [_message(item, f"messages[{index}]") for index, item in enumerate(raw_messages)]
    if sum(len(m["content"]) for m in messages) > settings.CHAT_MAX_MESSAGE_CHARS:
        raise ChatError("payload_too_large", "The messages are longer than CHAT_MAX_MESSAGE_CHARS characters.")
    meta_data = fields.get("meta_data") or {}
    try:
        meta_data = dict(StringMapField().run_validation(meta_data))
    except serializers.ValidationError as exc:
        raise _invalid("meta_data", str(exc.detail[0] if isinstance(exc.detail, list) else exc.detail)) from None
    return NewConversation(
        bot_id=bot_id,
        user_id=user_id,
        messages=[
            EnteredMessage(
                role=m["role"], content=m["content"], content_type=m["content_type"], meta_data=m.get("meta_data", {})
            )
            for m in messages
        ],
        meta_data=meta_data,
    )


def int_param(params, name: str, *, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError):
        value = low - 1
    if isinstance(raw, bool) or not low <= value <= high:
        raise _invalid(name, f"Must be a whole number from {low} to {high}.")
    return value


@dataclass(frozen=True, slots=True)
class MessageQuery:
    order: str
    chat_id: str | None
    before_id: str | None
    after_id: str | None
    limit: int


def parse_message_query(body: dict) -> MessageQuery:
    """`/v1/conversation/message/list`'s body (cozepy sends all five keys, nulls included)."""
    order = body.get("order") or "desc"
    if order not in ("asc", "desc"):
        raise _invalid("order", "Must be asc or desc.")
    cursors = {}
    for name in ("chat_id", "before_id", "after_id"):
        value = body.get(name)
        if value in (None, "", 0, "0"):
            value = None
        elif isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        elif not isinstance(value, str):
            raise _invalid(name, "Must be an id (a string).")
        cursors[name] = value
    if cursors["before_id"] and cursors["after_id"]:
        raise _invalid("before_id", "Give before_id or after_id, not both.")
    limit = int_param(body, "limit", default=MAX_MESSAGE_LIMIT, low=1, high=MAX_MESSAGE_LIMIT)
    return MessageQuery(order=order, limit=limit, **cursors)


# Coze's feedback types as our ratings (docs/api.md §15).
RATING_OF_FEEDBACK_TYPE = {"like": "up", "unlike": "down"}
MAX_REASON_TYPES = 20


def parse_feedback(body: dict) -> tuple[str, str]:
    """The rating and comment of Coze's feedback body `{feedback_type, reason_types?, comment?}`.
    `reason_types` (a list of Coze's reason names) is checked for its shape and not kept."""
    feedback_type = body.get("feedback_type")
    if feedback_type not in RATING_OF_FEEDBACK_TYPE:
        raise _invalid("feedback_type", 'Must be "like" or "unlike".')
    reasons = body.get("reason_types")
    if reasons is not None and not (
        isinstance(reasons, list) and len(reasons) <= MAX_REASON_TYPES and all(isinstance(r, str) for r in reasons)
    ):
        raise _invalid("reason_types", f"Must be a list of at most {MAX_REASON_TYPES} strings.")
    comment = body.get("comment")
    return RATING_OF_FEEDBACK_TYPE[feedback_type], "" if comment is None else comment
