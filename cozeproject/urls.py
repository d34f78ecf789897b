from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from chat import apis, compat, views

urlpatterns = [
    path("", views.chat_page_view, name="chat-page"),
    path("health", views.health_view, name="health"),
    path("metrics", views.metrics_view, name="metrics"),
    path("api/chat", apis.ChatSendApi.as_view(), name="chat-send"),
    path("api/chat/stream", views.chat_stream_view, name="chat-stream"),
    path("api/files", apis.FileUploadApi.as_view(), name="file-upload"),
    path("api/chats/<str:chat_id>/cancel", apis.ChatCancelApi.as_view(), name="chat-cancel"),
    path("api/sessions", apis.SessionListApi.as_view(), name="session-list"),
    path("api/sessions/<str:session_id>", apis.SessionDetailApi.as_view(), name="session-detail"),
    path("api/sessions/<str:session_id>/messages", apis.SessionMessagesApi.as_view(), name="session-messages"),
    path("api/sessions/<str:session_id>/clear", apis.SessionClearApi.as_view(), name="session-clear"),
    # The earlier FastAPI services' paths (API.md §8).
    path("chat", compat.legacy_chat_view, name="legacy-chat"),
    path("chat/stream", compat.legacy_chat_stream_view, name="legacy-chat-stream"),
    path("session/<str:session_id>/info", compat.legacy_session_info_view, name="legacy-session-info"),
    path("session/<str:session_id>/clear", compat.legacy_session_clear_view, name="legacy-session-clear"),
    path("api/coze-chat", compat.legacy_coze_chat_view, name="legacy-coze-chat"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
]
