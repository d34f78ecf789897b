from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "chat"
    verbose_name = "Chat"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in
        from django.core import signals
        from django.db import close_old_connections, reset_queries

        from chat.conversations.sessions import browser_sessions_to_user
        from chat.transports import openapi  # noqa: F401 - registers the OpenAPI security scheme extensions

        user_logged_in.connect(browser_sessions_to_user, dispatch_uid="chat.browser_sessions_to_user")

        # Under ASGI, Django runs these two `request_started` receivers in a thread of the request's
        # own, which is new for every request and so has no connection or query log to tidy: a
        # thread hop that does nothing. Without them `request_started` has no synchronous
        # receivers and the request starts on the event loop. (`request_finished` keeps closing
        # the connections a synchronous view opened in that thread.)
        signals.request_started.disconnect(close_old_connections)
        signals.request_started.disconnect(reset_queries)
