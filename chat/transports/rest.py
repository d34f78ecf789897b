"""The DRF API: whole replies, the session API, cancel, end-user tokens. Views validate, call a
service, serialize."""

from datetime import UTC, datetime

from adrf.views import APIView as AsyncAPIView
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import exceptions as drf_exceptions
from rest_framework import serializers, status
from rest_framework.generics import ListAPIView
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from chat.access import budgets, tokens
from chat.access.auth import bearer_key
from chat.conversations import sessions
from chat.domain.errors import ChatError
from chat.files import uploads
from chat.transports.serializers import (
    ChatRequestSerializer,
    FeedbackSerializer,
    MessageSerializer,
    SessionSerializer,
    TokenRequestSerializer,
    UsageSerializer,
    parse_chat_request,
    parse_feedback_request,
    parse_token_request,
)
from chat.turn import service
from sessions_admin import feedback, feedback_outbox
from sessions_admin.models import Reply, hash_api_key

ERROR_RESPONSE = inline_serializer(
    "Error",
    {
        "detail": serializers.CharField(),
        "code": serializers.CharField(),
        "errors": serializers.DictField(required=False),
    },
)
CHAT_RESPONSE = inline_serializer(
    "ChatResponse",
    {
        "response": serializers.CharField(),
        "session_id": serializers.CharField(),
        "conversation_id": serializers.CharField(),
        "chat_id": serializers.CharField(),
        "message_id": serializers.CharField(),
        "follow_ups": serializers.ListField(child=serializers.CharField()),
        "usage": UsageSerializer(),
        "timestamp": serializers.DateTimeField(),
    },
)
ERRORS = {code: ERROR_RESPONSE for code in (400, 401, 403, 404, 409, 413, 415, 429, 502, 503, 504)}


SESSION_CLEARED_MESSAGE = "Context cleared; the next message starts a new conversation."


def chat_response_body(event) -> dict:
    return {
        "response": event.content,
        "session_id": event.session_id,
        "conversation_id": event.conversation_id,
        "chat_id": event.chat_id,
        "message_id": event.message_id,
        "follow_ups": event.follow_ups,
        "usage": event.usage.as_dict(),
        "timestamp": event.timestamp,
    }


class ChatSendApi(AsyncAPIView):
    """Send a message and get the whole reply."""

    throttle_classes = []  # the chat service applies the owner's limits to every transport

    @extend_schema(
        request=ChatRequestSerializer,
        responses={200: CHAT_RESPONSE, **ERRORS},
        summary="Chat: the whole reply as JSON",
        tags=["chat"],
    )
    async def post(self, request):
        chat_request = parse_chat_request(request.data)
        completed = await service.achat_send(
            owner=request.auth, chat_request=chat_request, transport=Reply.Transport.SYNC
        )
        return Response(chat_response_body(completed))


class FileUploadApi(AsyncAPIView):
    """Upload a file to Coze for use as a chat attachment (multipart, field `file`)."""

    parser_classes = [MultiPartParser]  # the owner's per-minute rate applies (default throttle)

    @extend_schema(
        request={
            "multipart/form-data": inline_serializer("FileUpload", {"file": serializers.FileField()}),
        },
        responses={
            201: inline_serializer(
                "UploadedFile",
                {
                    "file_id": serializers.CharField(),
                    "file_name": serializers.CharField(),
                    "bytes": serializers.IntegerField(),
                    "content_type": serializers.CharField(),
                },
            ),
            **ERRORS,
        },
        summary="Upload a file or image to attach to a chat",
        tags=["files"],
    )
    async def post(self, request):
        try:
            uploaded_file = request.data.get("file")
        except drf_exceptions.UnsupportedMediaType:
            raise ChatError("unsupported_media_type", "Send the file as multipart/form-data, field 'file'.") from None
        except drf_exceptions.ParseError as error:
            raise ChatError("invalid", f"Malformed multipart body: {error.detail}") from None
        if uploaded_file is None or isinstance(uploaded_file, str):
            raise ChatError(
                "invalid", "file: send the file as the multipart field 'file'.", errors={"file": ["Required."]}
            )
        chat_file = await uploads.afile_upload(owner=request.auth, uploaded_file=uploaded_file)
        return Response(uploads.file_upload_body(chat_file), status=status.HTTP_201_CREATED)


class ChatCancelApi(AsyncAPIView):
    """Stop a reply in progress; the upstream chat is closed and cancelled too."""

    @extend_schema(
        request=None,
        responses={
            200: inline_serializer(
                "CancelResponse", {"chat_id": serializers.CharField(), "status": serializers.CharField()}
            ),
            **ERRORS,
        },
        summary="Cancel a reply in progress",
        tags=["chat"],
    )
    async def post(self, request, chat_id: str):
        return Response(await sessions.achat_cancel(owner=request.auth, chat_id=chat_id))


class SessionCancelApi(AsyncAPIView):
    """Stop the session's reply in progress, wherever it streams; the upstream chat is cancelled too."""

    @extend_schema(
        request=None,
        responses={
            200: inline_serializer(
                "SessionCancelResponse",
                {
                    "session_id": serializers.CharField(),
                    "chat_id": serializers.CharField(),
                    "status": serializers.CharField(),
                },
            ),
            **ERRORS,
        },
        summary="Cancel the session's reply in progress",
        tags=["sessions"],
    )
    async def post(self, request, session_id: str):
        return Response(await sessions.asession_cancel(owner=request.auth, session_id=session_id))


class SessionListApi(ListAPIView):
    """The caller's sessions, newest activity first."""

    serializer_class = SessionSerializer

    def get_queryset(self):
        return sessions.session_list(owner=self.request.auth)

    @extend_schema(
        tags=["sessions"],
        responses={200: SessionSerializer(many=True), **ERRORS},
        summary="Your sessions, newest activity first",
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class SessionDetailApi(APIView):
    @extend_schema(tags=["sessions"], responses={200: SessionSerializer, **ERRORS}, summary="Session info")
    def get(self, request, session_id: str):
        session = sessions.session_get(owner=request.auth, session_id=session_id)
        return Response(SessionSerializer(session).data)

    @extend_schema(tags=["sessions"], responses={204: None, **ERRORS}, summary="Delete a session and its records")
    def delete(self, request, session_id: str):
        sessions.session_delete(owner=request.auth, session_id=session_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class SessionMessagesApi(ListAPIView):
    """The current conversation's messages, oldest first."""

    serializer_class = MessageSerializer

    def get_queryset(self):
        return sessions.session_messages(owner=self.request.auth, session_id=self.kwargs["session_id"])

    @extend_schema(
        tags=["sessions"],
        responses={200: MessageSerializer(many=True), **ERRORS},
        summary="The current conversation's messages, oldest first",
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class SessionClearApi(APIView):
    @extend_schema(
        tags=["sessions"],
        request=None,
        responses={
            200: inline_serializer(
                "ClearResponse",
                {
                    "session_id": serializers.CharField(),
                    "cleared_at": serializers.DateTimeField(),
                    "message": serializers.CharField(),
                },
            ),
            **ERRORS,
        },
        summary="Forget the context; the next turn starts a new Coze conversation",
    )
    def post(self, request, session_id: str):
        session = sessions.session_clear(owner=request.auth, session_id=session_id)
        return Response(
            {
                "session_id": session.session_id,
                "cleared_at": session.cleared_at,
                "message": SESSION_CLEARED_MESSAGE,
            }
        )


FEEDBACK_RESPONSE = inline_serializer(
    "FeedbackResponse",
    {"message_id": serializers.IntegerField(), "feedback": FeedbackSerializer()},
)


class MessageFeedbackApi(APIView):
    """Rate an answer up or down, with an optional comment, or take the rating back (docs/api.md
    §15). The rating is stored at once and forwarded to Coze in the background."""

    @extend_schema(
        tags=["sessions"],
        request=FeedbackSerializer,
        responses={200: FEEDBACK_RESPONSE, **ERRORS},
        summary="Rate an answer (a second rating replaces the first)",
    )
    def post(self, request, message_id: str):
        rating, comment = parse_feedback_request(request.data)
        owner = request.auth
        stored = feedback.feedback_set(
            owner_key=owner.key, coze_user_id=owner.end_user_id, message_id=message_id, rating=rating, comment=comment
        )
        feedback_outbox.wake()
        return Response({"message_id": stored.message_id, "feedback": feedback.feedback_json(stored)})

    @extend_schema(tags=["sessions"], responses={204: None, **ERRORS}, summary="Take an answer's rating back")
    def delete(self, request, message_id: str):
        owner = request.auth
        feedback.feedback_clear(owner_key=owner.key, coze_user_id=owner.end_user_id, message_id=message_id)
        feedback_outbox.wake()
        return Response(status=status.HTTP_204_NO_CONTENT)


USAGE_RESPONSE = inline_serializer(
    "UsageResponse",
    {
        "today": inline_serializer(
            "UsagePeriod", {"tokens": serializers.IntegerField(), "replies": serializers.IntegerField()}
        ),
        "month": inline_serializer(
            "UsageMonth", {"tokens": serializers.IntegerField(), "replies": serializers.IntegerField()}
        ),
        "limits": inline_serializer(
            "UsageLimits",
            {
                "rpm": serializers.IntegerField(allow_null=True),
                "max_streams": serializers.IntegerField(allow_null=True),
                "daily_tokens": serializers.IntegerField(allow_null=True),
                "monthly_tokens": serializers.IntegerField(allow_null=True),
            },
        ),
        "remaining": inline_serializer(
            "UsageRemaining",
            {
                "daily_tokens": serializers.IntegerField(allow_null=True),
                "monthly_tokens": serializers.IntegerField(allow_null=True),
            },
        ),
    },
)


class UsageApi(APIView):
    """The caller's own token use (today and this month, UTC), its limits and what is left of its budgets."""

    @extend_schema(tags=["usage"], responses={200: USAGE_RESPONSE, **ERRORS}, summary="Your use, limits and budgets")
    def get(self, request):
        return Response(budgets.usage_report(request.auth))


TOKEN_RESPONSE = inline_serializer(
    "EndUserToken",
    {
        "token": serializers.CharField(help_text="`czt_…`: send it as `Authorization: Bearer <token>`."),
        "user_id": serializers.CharField(),
        "expires_at": serializers.DateTimeField(),
    },
)


class TokenApi(APIView):
    """Mint an end-user token: a short-lived Bearer that acts as this API client, narrowed to one
    end user's sessions (docs/api.md §2). Called by the client's own backend with its key, never
    from a browser."""

    @extend_schema(
        tags=["tokens"],
        request=TokenRequestSerializer,
        responses={201: TOKEN_RESPONSE, **ERRORS},
        summary="Mint an end-user token for one user_id",
    )
    def post(self, request):
        owner = request.auth
        if owner.end_user_id is not None:
            raise ChatError("forbidden", "A token cannot mint tokens; the API key mints them.")
        if owner.api_client_id is None:
            raise ChatError("forbidden", "Only an API client mints tokens: send 'Authorization: Bearer <api key>'.")
        user_id, expires_in = parse_token_request(request.data)
        key_hash = hash_api_key(bearer_key(request.headers.get("Authorization", "")))
        token, expires_at = tokens.mint(
            client_id=owner.api_client_id, key_hash=key_hash, user_id=user_id, expires_in=expires_in
        )
        body = {
            "token": token,
            "user_id": user_id,
            "expires_at": serializers.DateTimeField().to_representation(datetime.fromtimestamp(expires_at, UTC)),
        }
        # A credential: no cache may keep it (as OAuth's token endpoint answers).
        return Response(body, status=status.HTTP_201_CREATED, headers={"Cache-Control": "no-store"})
