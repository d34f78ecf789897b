from django.contrib import admin
from django.http import HttpResponseRedirect
from django.templatetags.static import static
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from chat.transports import compat, coze_api, coze_conversations, openai_api, rest, sse

# Errors outside the views: JSON under the API's paths, Django's pages elsewhere (chat/transports/errors.py).
handler400 = "chat.transports.errors.bad_request_view"
handler403 = "chat.transports.errors.permission_denied_view"
handler404 = "chat.transports.errors.page_not_found_view"
handler500 = "chat.transports.errors.server_error_view"


def favicon_view(request):
    # Browsers ask for /favicon.ico whatever a page links; send them to the icon the pages use.
    # Not permanent: the static URL carries a content hash that changes with the file.
    return HttpResponseRedirect(static("favicon.svg"))


urlpatterns = [
    path("", sse.chat_page_view, name="chat-page"),
    path("favicon.ico", favicon_view, name="favicon"),
    path("health", sse.health_view, name="health"),
    path("metrics", sse.metrics_view, name="metrics"),
    path("api/chat", rest.ChatSendApi.as_view(), name="chat-send"),
    path("api/chat/stream", sse.chat_stream_view, name="chat-stream"),
    path("api/files", rest.FileUploadApi.as_view(), name="file-upload"),
    path("api/chats/<str:chat_id>/cancel", rest.ChatCancelApi.as_view(), name="chat-cancel"),
    path("api/usage", rest.UsageApi.as_view(), name="usage"),
    path("api/tokens", rest.TokenApi.as_view(), name="tokens"),
    path("api/sessions", rest.SessionListApi.as_view(), name="session-list"),
    path("api/sessions/<str:session_id>", rest.SessionDetailApi.as_view(), name="session-detail"),
    path("api/sessions/<str:session_id>/messages", rest.SessionMessagesApi.as_view(), name="session-messages"),
    path("api/sessions/<str:session_id>/clear", rest.SessionClearApi.as_view(), name="session-clear"),
    path("api/sessions/<str:session_id>/stream", sse.session_stream_view, name="session-stream"),
    path("api/sessions/<str:session_id>/cancel", rest.SessionCancelApi.as_view(), name="session-cancel"),
    path("api/messages/<str:message_id>/feedback", rest.MessageFeedbackApi.as_view(), name="message-feedback"),
    # The earlier FastAPI services' paths (docs/api.md §8).
    path("chat", compat.legacy_chat_view, name="legacy-chat"),
    path("chat/stream", compat.legacy_chat_stream_view, name="legacy-chat-stream"),
    path("session/<str:session_id>/info", compat.legacy_session_info_view, name="legacy-session-info"),
    path("session/<str:session_id>/clear", compat.legacy_session_clear_view, name="legacy-session-clear"),
    path("api/coze-chat", compat.legacy_coze_chat_view, name="legacy-coze-chat"),
    # The OpenAI-compatible API (docs/api.md §10).
    path("v1/models", openai_api.models_view, name="openai-models"),
    path("v1/models/<path:model>", openai_api.model_view, name="openai-model"),
    path("v1/chat/completions", openai_api.chat_completions_view, name="openai-chat-completions"),
    # Coze's own API, for clients written for Coze (docs/api.md §13); its other paths answer
    # Coze's 404 (chat/transports/errors.py).
    path("v3/chat", coze_api.chat_view, name="coze-chat"),
    path("v3/chat/retrieve", coze_api.chat_retrieve_view, name="coze-chat-retrieve"),
    path("v3/chat/message/list", coze_api.chat_messages_view, name="coze-chat-messages"),
    path("v3/chat/cancel", coze_api.chat_cancel_view, name="coze-chat-cancel"),
    path("v3/chat/submit_tool_outputs", coze_api.submit_tool_outputs_view, name="coze-submit-tool-outputs"),
    path("v1/conversation/create", coze_conversations.conversation_create_view, name="coze-conversation-create"),
    path("v1/conversation/retrieve", coze_conversations.conversation_retrieve_view, name="coze-conversation-retrieve"),
    path("v1/conversations", coze_conversations.conversation_list_view, name="coze-conversation-list"),
    path(
        "v1/conversations/<str:conversation_id>",
        coze_conversations.conversation_delete_view,
        name="coze-conversation-delete",
    ),
    path(
        "v1/conversations/<str:conversation_id>/clear",
        coze_conversations.conversation_clear_view,
        name="coze-conversation-clear",
    ),
    path(
        "v1/conversations/<str:conversation_id>/messages/<str:message_id>/feedback",
        coze_conversations.message_feedback_view,
        name="coze-message-feedback",
    ),
    path("v1/conversation/message/list", coze_conversations.message_list_view, name="coze-message-list"),
    path("v1/files/upload", coze_conversations.file_upload_view, name="coze-file-upload"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
]
