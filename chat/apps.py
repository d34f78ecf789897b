from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "chat"
    verbose_name = "Chat"

    def ready(self) -> None:
        from chat import openapi  # noqa: F401 - registers the OpenAPI security scheme extensions
