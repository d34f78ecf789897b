"""ASGI entry point: HTTP (including SSE) and WebSocket from one application."""

import os
import sys
from http import HTTPStatus

from django.core.asgi import get_asgi_application

from cozeproject import daphne_bodies
from cozeproject.configuration import exit_on_configuration_error

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cozeproject.settings")

# Set up Django before importing anything that touches models (consumers, auth middleware).
django_asgi_app = exit_on_configuration_error(get_asgi_application)

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import OriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.handlers.asgi import ASGIHandler  # noqa: E402
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware  # noqa: E402

from chat.coze import start_demo_mode  # noqa: E402
from chat.routing import websocket_urlpatterns  # noqa: E402
from chat.turn.lifecycle import ProcessLifecycle  # noqa: E402
from cozeproject.middleware import BodySizeLimitMiddleware  # noqa: E402


class BrowserOriginValidator(OriginValidator):
    """Origin check for browsers only.

    Channels' validator rejects a missing Origin. Browsers always send one, so a socket without it
    is a non-browser client, which has to authenticate with its API key instead: let it through to
    the consumer, which closes it with 4401 when it has no valid key. A present Origin must match
    ALLOWED_HOSTS or CORS_ALLOWED_ORIGINS.
    """

    def valid_origin(self, parsed_origin) -> bool:
        if parsed_origin is None:
            return True
        return self.validate_origin(parsed_origin)


def build_application(django_app=None):
    """The whole ASGI application. A new Django handler reads the settings anew (tests build one
    under other settings); the server's is built once, at import."""
    application = ProcessLifecycle(
        ProtocolTypeRouter(
            {
                # Every HTTP request, API or page, goes through Django's handler and middleware.
                "http": BodySizeLimitMiddleware(django_app or ASGIHandler()),
                "websocket": BrowserOriginValidator(
                    AuthMiddlewareStack(URLRouter(websocket_urlpatterns)),
                    [*settings.ALLOWED_HOSTS, *settings.CORS_ALLOWED_ORIGINS],
                ),
            }
        )
    )
    if settings.CHAT_TRUSTED_PROXIES:
        # The one place the client's address is decided, for HTTP and WebSocket under any server:
        # scope["client"] (Django's REMOTE_ADDR) becomes the address X-Forwarded-For names, walked
        # from the right past the trusted proxies, when the peer is one of them. The servers' own
        # proxy-header options stay off (daphne without --proxy-headers, uvicorn --no-proxy-headers):
        # they would trust the header from any peer, or from 127.0.0.1 whatever this setting says.
        application = ProxyHeadersMiddleware(application, trusted_hosts=settings.CHAT_TRUSTED_PROXIES)
    return application


def complete_twisted_reason_phrases() -> None:
    """daphne (and `runserver`, which is daphne) sends Twisted's reason phrase for a status, and
    Twisted has none for 429 (nor 422, 428, 431, 451…): `HTTP/1.1 429 Unknown Status`. Fill the
    phrases it lacks from Python's own table, so every server says "429 Too Many Requests"."""
    twisted_http = sys.modules.get("twisted.web.http")  # imported by daphne before the application
    if twisted_http is None:
        return
    for status in HTTPStatus:
        twisted_http.RESPONSES.setdefault(status.value, status.phrase.encode())


complete_twisted_reason_phrases()
daphne_bodies.install()  # under daphne: request bodies past 1 MiB on disk, not in memory
start_demo_mode()  # before serving: the simulator's start-up and the DEMO MODE log line, once per process

application = build_application(django_asgi_app)
