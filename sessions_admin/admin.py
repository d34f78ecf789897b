from django.contrib import admin

from sessions_admin.models import ApiClient, ChatSession, Reply


@admin.register(ApiClient)
class ApiClientAdmin(admin.ModelAdmin):
    list_display = ["name", "key_prefix", "is_active", "created_at", "last_used_at"]
    readonly_fields = ["key_prefix", "created_at", "last_used_at"]


@admin.register(ChatSession)
class ChatSessionAdmin(admin.ModelAdmin):
    list_display = [
        "session_id",
        "owner_key",
        "coze_user_id",
        "bot_id",
        "message_count",
        "total_tokens",
        "last_activity",
    ]
    show_full_result_count = False


@admin.register(Reply)
class ReplyAdmin(admin.ModelAdmin):
    list_display = ["coze_chat_id", "status", "transport", "total_tokens", "time_to_first_token_ms", "started_at"]
    show_full_result_count = False
