"""Validation of the chat request body (docs/api.md §4), shared by the three transports, and the
read-side serializers of the session API."""

import json
import re
import threading

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import parsers, serializers

from chat.access import tokens
from chat.domain.errors import ChatError
from chat.domain.inputs import ChatRequest, check_text
from sessions_admin import feedback
from sessions_admin.models import ChatSession, Message

SESSION_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
MAX_MAP_ITEMS = 16
MAX_MAP_KEY = 64
MAX_MAP_VALUE = 512
MAX_ADDITIONAL_MESSAGES = 100
MAX_ATTACHMENTS = 10


class StrictCharField(serializers.CharField):
    """A string, and only a string: DRF's CharField would turn 42 or true into text."""

    default_error_messages = {"not_a_string": "Must be a string."}

    def __init__(self, **kwargs):
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("not_a_string")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """true or false, and only those: DRF's BooleanField would also take "yes", 1 or "on"."""

    default_error_messages = {"not_a_boolean": "Must be true or false."}

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("not_a_boolean")
        return data


class StringMapField(serializers.DictField):
    """A flat map of strings, within Coze's limits (16 pairs, keys ≤ 64, values ≤ 512 chars)."""

    child = StrictCharField(allow_blank=True, max_length=MAX_MAP_VALUE)

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if len(value) > MAX_MAP_ITEMS:
            raise serializers.ValidationError(f"At most {MAX_MAP_ITEMS} entries.")
        for key in value:
            if not 1 <= len(key) <= MAX_MAP_KEY:
                raise serializers.ValidationError(f"Keys must be 1 to {MAX_MAP_KEY} characters.")
        return value


class AdditionalMessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=["user", "assistant"], default="user")
    type = serializers.ChoiceField(choices=["question", "answer"], required=False)
    content = StrictCharField(allow_blank=False)
    content_type = serializers.ChoiceField(choices=["text", "object_string"], default="text")
    meta_data = StringMapField(required=False)

    def to_internal_value(self, data):
        if isinstance(data, dict) and isinstance(data.get("content"), list):
            # Earlier clients send object_string content as a JSON list rather than a string.
            data = {**data, "content": json.dumps(data["content"], ensure_ascii=False)}
            data.setdefault("content_type", "object_string")
        unknown = set(data) - set(self.fields) if isinstance(data, dict) else set()
        if unknown:
            raise serializers.ValidationError({name: ["Unknown field."] for name in sorted(unknown)})
        return super().to_internal_value(data)


class AttachmentSerializer(serializers.Serializer):
    """`{"file_id": "…"}` (a file the caller uploaded) or `{"url": "https://…", "type": "image"|"file"}`."""

    file_id = StrictCharField(required=False, max_length=64)
    url = serializers.URLField(required=False, max_length=2048)
    type = serializers.ChoiceField(choices=["image", "file"], required=False)

    def to_internal_value(self, data):
        unknown = set(data) - set(self.fields) if isinstance(data, dict) else set()
        if unknown:
            raise serializers.ValidationError({name: ["Unknown field."] for name in sorted(unknown)})
        return super().to_internal_value(data)

    def validate(self, attrs):
        if "file_id" in attrs:
            if set(attrs) != {"file_id"}:
                raise serializers.ValidationError("Give either file_id, or url and type.")
        elif "url" in attrs:
            if "type" not in attrs:
                raise serializers.ValidationError({"type": ["A url needs its type: image or file."]})
            if not attrs["url"].lower().startswith("https://"):
                raise serializers.ValidationError({"url": ["Only https:// links can be attached."]})
        else:
            raise serializers.ValidationError("Give either file_id, or url and type.")
        return attrs


class ChatRequestSerializer(serializers.Serializer):
    message = StrictCharField(required=False, allow_blank=False)
    session_id = StrictCharField(required=False)
    user_id = StrictCharField(required=False, max_length=128)
    bot_id = StrictCharField(required=False, max_length=64)
    custom_variables = StringMapField(required=False)
    meta_data = StringMapField(required=False)
    additional_messages = serializers.ListField(
        child=AdditionalMessageSerializer(), required=False, allow_empty=False, max_length=MAX_ADDITIONAL_MESSAGES
    )
    attachments = serializers.ListField(
        child=AttachmentSerializer(), required=False, allow_empty=False, max_length=MAX_ATTACHMENTS
    )
    resumable = StrictBooleanField(
        required=False, help_text="Keep the reply running when the client goes away, for a resume (§9)."
    )

    def validate_session_id(self, value: str) -> str:
        if not SESSION_ID_RE.match(value):
            raise serializers.ValidationError("Use 1 to 128 characters of A-Z a-z 0-9 _ . : -")
        return value

    def validate(self, attrs):
        has_message = "message" in attrs
        has_additional = bool(attrs.get("additional_messages"))
        has_attachments = bool(attrs.get("attachments"))
        if has_additional and has_attachments:
            raise serializers.ValidationError(
                {"attachments": ["Attachments go with message, not with additional_messages."]}
            )
        if has_message == has_additional and not (has_attachments and not has_message):
            raise serializers.ValidationError({"message": ["Send either message or additional_messages."]})
        if has_additional and not any(item["role"] == "user" for item in attrs["additional_messages"]):
            raise serializers.ValidationError({"additional_messages": ["Include at least one user message."]})
        return attrs


_bound_serializers = threading.local()


def _chat_request_serializer() -> ChatRequestSerializer:
    """This thread's ChatRequestSerializer, bound once and reused.

    A new serializer deep-copies and binds all its fields, which was most of the time a chat body
    took to validate (0.7 ms on the way to the first token). `run_validation` keeps no state on
    the instance, so one per thread serves every request.
    """
    serializer = getattr(_bound_serializers, "chat_request", None)
    if serializer is None:
        serializer = _bound_serializers.chat_request = ChatRequestSerializer()
        serializer.fields  # noqa: B018 - bind the fields now, once
    return serializer


def parse_chat_request(data, *, extra_fields: frozenset[str] = frozenset()) -> ChatRequest:
    """Validate a decoded JSON body; raises ChatError (invalid, payload_too_large, bot_not_allowed).

    `extra_fields` are tolerated and ignored (the WebSocket frame's `type`).
    """
    _known_fields_only(data, ChatRequestSerializer, extra_fields)
    message = data.get("message")
    limit = settings.CHAT_MAX_MESSAGE_CHARS
    if isinstance(message, str) and len(message) > limit:
        raise ChatError("payload_too_large", f"The message is longer than {limit} characters.")
    body = {key: value for key, value in data.items() if key not in extra_fields}
    attrs = _validated(_chat_request_serializer(), body)
    additional = attrs.get("additional_messages")
    if additional and sum(len(item["content"]) for item in additional) > limit:
        raise ChatError("payload_too_large", f"The messages are longer than {limit} characters.")
    bot_id = attrs.get("bot_id")
    if bot_id and bot_id not in settings.COZE_ALLOWED_BOT_IDS:
        raise ChatError("bot_not_allowed", f"bot_id {bot_id!r} is not allowed on this server.")
    return ChatRequest(
        message=attrs.get("message"),
        session_id=attrs.get("session_id"),
        user_id=attrs.get("user_id"),
        bot_id=bot_id,
        custom_variables=dict(attrs.get("custom_variables") or {}),
        meta_data=dict(attrs.get("meta_data") or {}),
        additional_messages=[dict(item) for item in additional] if additional else None,
        attachments=tuple(dict(item) for item in attrs.get("attachments") or ()),
        resumable=attrs.get("resumable", False),
    )


def _known_fields_only(data, serializer_class, extra_fields: frozenset[str] = frozenset()) -> None:
    """ChatError("invalid") unless `data` is a JSON object of the serializer's fields (and `extra_fields`)."""
    if not isinstance(data, dict):
        raise ChatError("invalid", "The body must be a JSON object.")
    unknown = set(data) - set(serializer_class._declared_fields) - extra_fields
    if unknown:
        raise ChatError(
            "invalid",
            f"Unknown field: {sorted(unknown)[0]}",
            errors={name: ["Unknown field."] for name in sorted(unknown)},
        )


def _validated(serializer: serializers.Serializer, body: dict) -> dict:
    """The serializer's validated attributes; ChatError("invalid") naming the first bad field."""
    try:
        return serializer.run_validation(body)
    except serializers.ValidationError as exc:
        errors = exc.detail
        field, messages = next(iter(errors.items()))
        first = messages[0] if isinstance(messages, list) and messages else messages
        raise ChatError("invalid", f"{field}: {first}", errors=_plain(errors)) from None


# --- end-user tokens (docs/api.md §2) ---------------------------------------------------------


class StrictIntegerField(serializers.IntegerField):
    """A JSON number that is a whole number: DRF's IntegerField would also take "60" or true."""

    default_error_messages = {"not_an_integer": "Must be a whole number."}

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("not_an_integer")
        return super().to_internal_value(data)


class TokenRequestSerializer(serializers.Serializer):
    user_id = StrictCharField(
        max_length=128, help_text="The end user's Coze user_id: the token reaches only this user's sessions."
    )
    expires_in = StrictIntegerField(
        required=False,
        min_value=tokens.MIN_EXPIRES_IN,
        max_value=tokens.MAX_EXPIRES_IN,
        help_text=f"Seconds the token lives; default {tokens.DEFAULT_EXPIRES_IN}.",
    )

    def validate_user_id(self, value: str) -> str:
        if value == settings.COZE_USER_ID:
            # Requests that name no user_id leave their sessions with this one: a token for it
            # would reach all of them.
            raise serializers.ValidationError("This is the server's default user_id (COZE_USER_ID); name the end user.")
        return value


def parse_token_request(data) -> tuple[str, int]:
    """The `user_id` and `expires_in` of a `POST /api/tokens` body; raises ChatError("invalid")."""
    _known_fields_only(data, TokenRequestSerializer)
    attrs = _validated(TokenRequestSerializer(), data)
    return attrs["user_id"], attrs.get("expires_in", tokens.DEFAULT_EXPIRES_IN)


def _plain(errors):
    """DRF's ErrorDetail tree as plain JSON values."""
    if isinstance(errors, dict):
        return {key: _plain(value) for key, value in errors.items()}
    if isinstance(errors, list):
        return [_plain(value) for value in errors]
    return str(errors)


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def decode_json(body: bytes):
    """A JSON body, which must be UTF-8 text (RFC 8259) whose strings are valid text
    (`chat.domain.inputs.check_text`); raises ChatError("invalid") saying which it is not. The
    one decoder of request bodies: the async views through `parse_json_bytes`, DRF's views
    through `JsonParser`."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ChatError(
            "invalid", f"The request body is not UTF-8 (byte {error.start}); send JSON as UTF-8 text."
        ) from None
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except ValueError:
        raise ChatError("invalid", "Malformed JSON in the request body.") from None
    check_text(value)  # NUL, stray control characters, lone surrogates: `invalid` in any field
    return value


def parse_json_bytes(body: bytes, content_type: str):
    """Decode a request body; raises ChatError (unsupported_media_type, payload_too_large, invalid)."""
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise ChatError("unsupported_media_type")
    if len(body) > settings.CHAT_MAX_BODY_BYTES:
        raise ChatError("payload_too_large", "The request body is larger than 1 MiB.")
    return decode_json(body)


class JsonParser(parsers.JSONParser):
    """DRF's JSON parser with `decode_json`'s rules and messages."""

    def parse(self, stream, media_type=None, parser_context=None):
        return decode_json(stream.read())


# --- read side --------------------------------------------------------------------------------


class UsageSerializer(serializers.Serializer):
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()


class SessionSerializer(serializers.ModelSerializer):
    user_id = serializers.CharField(source="coze_user_id")
    title = serializers.SerializerMethodField()
    conversation_id = serializers.SerializerMethodField()
    status = serializers.CharField()
    usage = UsageSerializer(source="*", read_only=True)

    class Meta:
        model = ChatSession
        fields = [
            "session_id",
            "user_id",
            "bot_id",
            "conversation_id",
            "created_at",
            "last_activity",
            "message_count",
            "status",
            "usage",
            "title",
        ]

    def get_title(self, session: ChatSession) -> str | None:
        """The start of the current conversation's first question (None after a clear)."""
        return getattr(session, "title", None)

    def get_conversation_id(self, session: ChatSession) -> str | None:
        conversation = session.current_conversation
        return (conversation.coze_conversation_id or None) if conversation else None


class FeedbackSerializer(serializers.Serializer):
    """A rating of an answer (docs/api.md §15): the request body, and how a message shows it."""

    rating = serializers.ChoiceField(choices=feedback.RATINGS, help_text='"up" or "down".')
    comment = StrictCharField(
        required=False,
        allow_blank=True,
        max_length=feedback.MAX_COMMENT_CHARS,
        help_text=f"Optional, up to {feedback.MAX_COMMENT_CHARS} characters; empty or absent for none.",
    )


def parse_feedback_request(data, extra_fields: frozenset[str] = frozenset()) -> tuple[object, object]:
    """The `rating` and `comment` of a feedback body, unchecked beyond its shape (a JSON object of
    those fields): `sessions_admin.feedback.feedback_set` validates the values, for every transport."""
    _known_fields_only(data, FeedbackSerializer, extra_fields)
    return data.get("rating"), data.get("comment", "")


class MessageSerializer(serializers.ModelSerializer):
    type = serializers.CharField(source="kind")
    chat_id = serializers.SerializerMethodField()
    status = serializers.SerializerMethodField()
    feedback = serializers.SerializerMethodField()

    class Meta:
        model = Message
        fields = [
            "id",
            "role",
            "type",
            "content",
            "content_type",
            "attachments",
            "chat_id",
            "status",
            "feedback",
            "created_at",
        ]

    @extend_schema_field(FeedbackSerializer(allow_null=True))
    def get_feedback(self, message: Message) -> dict | None:
        """The answer's rating, `{"rating","comment"}`, or null (always null on a question)."""
        return feedback.message_feedback(message)

    def get_chat_id(self, message: Message) -> str | None:
        return (message.reply.coze_chat_id or None) if message.reply else None

    def get_status(self, message: Message) -> str | None:
        """How the reply this message belongs to ended (answers can be partial)."""
        return message.reply.status if message.reply else None
