"""The renderings of `ChatError` over HTTP, and Django's error handlers for the API's paths.

The DRF exception handler and `json_error_response` answer `{"detail", "code"[, "errors"]}` with
the status of the error's code (docs/api.md §3); under Coze's paths (docs/api.md §13),
`coze_error_response` answers Coze's `{"code": <number>, "msg"}` with the same status.

Failures that happen outside the views — no route, a disallowed Host, an unexpected exception, a
CSRF rejection — reach Django's own error handlers (`handler400/403/404/500` in the URLconf,
CSRF_FAILURE_VIEW); the ones here answer the same JSON under the API's paths (`is_api_path`) and
leave Django's HTML pages to the chat page, login and admin.
"""

import logging

from django.core.exceptions import DisallowedHost, RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpResponse
from django.urls import Resolver404
from django.views import csrf as django_csrf
from django.views import defaults as django_defaults
from rest_framework import exceptions as drf_exceptions
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from chat.domain.errors import ERROR_CODES, ChatError, csrf_detail
from chat.runtime.logging import request_id_var

logger = logging.getLogger(__name__)


def render_json(data) -> bytes:
    """JSON as the whole API writes it: with DRF's renderer, so that DRF's views and the others
    answer the same bytes for the same data (compact, text as UTF-8, not \\u escapes)."""
    return JSONRenderer().render(data)


def json_response(data, *, status: int = 200, headers: dict | None = None) -> HttpResponse:
    """A JSON answer for the views outside DRF, formatted as DRF's (`render_json`)."""
    return HttpResponse(render_json(data), status=status, headers=headers, content_type="application/json")


def json_error_response(error: ChatError) -> HttpResponse:
    response = json_response(error.as_body(), status=error.status)
    for name, value in error.headers().items():
        response[name] = value
    return mark_logged(response, error)


# --- Coze's shape (docs/api.md §13) -----------------------------------------------------------

# Our error codes as Coze's numbers. Coze's own failures (RELAYED) keep Coze's code.
COZE_CODES = {
    "invalid": 4000,
    "method_not_allowed": 4000,
    "payload_too_large": 4000,
    "unsupported_media_type": 4000,
    "gone": 4000,
    "unauthenticated": 4100,
    "forbidden": 4101,
    "bot_not_allowed": 4006,
    "session_busy": 4016,
    "rate_limited": 4020,
    "quota_exceeded": 4011,
    "upstream_rate_limited": 4009,
}
COZE_INTERNAL_ERROR = 5000
COZE_CONVERSATION_NOT_FOUND, COZE_CHAT_NOT_FOUND = 4002, 4001
# Coze's own codes relayed as they came; never the server's Coze credentials failing (that is the
# server's problem, not to be told to the client as if its own token were wrong).
RELAYED = frozenset({"upstream_error", "upstream_rate_limited", "session_busy"})
# The OpenAI-compatible API's paths under /v1; every other /v1 and /v3 path is Coze's.
OPENAI_PATHS = ("/v1/models", "/v1/chat/completions")


def is_coze_path(path: str) -> bool:
    """Whether `path` is one of Coze's API paths (served or not): errors there are Coze-shaped."""
    if path.startswith("/v3/"):
        return True
    return path.startswith("/v1/") and not any(path == p or path.startswith(p + "/") for p in OPENAI_PATHS)


def coze_code(error: ChatError) -> int:
    """The Coze code for a ChatError (docs/api.md §13)."""
    if error.code == "not_found":
        return COZE_CHAT_NOT_FOUND if error.errors and "chat_id" in error.errors else COZE_CONVERSATION_NOT_FOUND
    if error.code in RELAYED and error.upstream_code:
        return error.upstream_code
    return COZE_CODES.get(error.code, COZE_INTERNAL_ERROR)


def coze_error_body(error: ChatError, *, code: int | None = None) -> dict:
    """`{"code", "msg", "detail": {"logid"}}`: Coze's error, which both SDKs raise from."""
    msg = error.upstream_msg if error.code in RELAYED and error.upstream_msg else error.detail
    return {"code": code or coze_code(error), "msg": msg, "detail": {"logid": request_id_var.get()}}


def coze_error_response(error: ChatError, *, code: int | None = None) -> HttpResponse:
    """A ChatError in Coze's shape, with the HTTP status of docs/api.md §3 and Coze's `x-tt-logid`."""
    response = json_response(coze_error_body(error, code=code), status=error.status)
    for name, value in error.headers().items():
        if name != "WWW-Authenticate" or error.code == "unauthenticated":
            response[name] = value
    response["x-tt-logid"] = request_id_var.get()
    return mark_logged(response, error)


def mark_logged(response, error: ChatError):
    """Spare Django's per-response warning (`Too Many Requests: /path`) for an error logged otherwise."""
    if error.logged:
        response._has_been_logged = True  # what django.utils.log.log_response checks
    return response


def chat_error_from_drf(exc: Exception) -> ChatError | None:
    """Translate DRF/Django exceptions into ChatError; None when unknown."""
    if isinstance(exc, ChatError):
        return exc
    if isinstance(exc, drf_exceptions.ValidationError):
        errors = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        return ChatError("invalid", _first_message(errors), errors=errors)
    if isinstance(exc, drf_exceptions.ParseError):
        return ChatError("invalid", "Malformed JSON in the request body.")
    if isinstance(exc, drf_exceptions.UnsupportedMediaType):
        return ChatError("unsupported_media_type")
    if isinstance(exc, (drf_exceptions.NotAuthenticated, drf_exceptions.AuthenticationFailed)):
        return ChatError("unauthenticated", str(exc.detail))
    if isinstance(exc, drf_exceptions.PermissionDenied):
        return ChatError("forbidden", str(exc.detail))
    if isinstance(exc, (drf_exceptions.NotFound, Http404)):
        return ChatError("not_found")
    if isinstance(exc, drf_exceptions.MethodNotAllowed):
        return ChatError("method_not_allowed", str(exc.detail))
    if isinstance(exc, drf_exceptions.Throttled):
        return ChatError("rate_limited", retry_after=int(exc.wait or 1))
    if isinstance(exc, RequestDataTooBig):
        return ChatError("payload_too_large")
    if isinstance(exc, (OperationalError, InterfaceError)):
        logger.error("Database unavailable: %s", exc)
        return ChatError("service_unavailable", "The database is unavailable; retry shortly.")
    return None


def api_exception_handler(exc: Exception, context: dict) -> Response:
    """DRF's EXCEPTION_HANDLER: every API error is `{"detail", "code"[, "errors"]}`."""
    error = chat_error_from_drf(exc)
    if error is None:
        view = context.get("view")
        logger.exception("Unhandled error in %s", type(view).__name__ if view else "API view")
        error = ChatError("internal_error")
    return mark_logged(Response(error.as_body(), status=error.status, headers=error.headers()), error)


def _first_message(errors: dict) -> str:
    for field, messages in errors.items():
        message = messages[0] if isinstance(messages, list) and messages else messages
        if isinstance(message, dict):
            return f"{field}: {_first_message(message)}"
        return f"{field}: {message}" if field != "non_field_errors" else str(message)
    return ERROR_CODES["invalid"][1]


# --- Django's error handlers (cozeproject/urls.py, CSRF_FAILURE_VIEW) -----------------------------

# The machine-facing paths: the API, the OpenAI-compatible API, the earlier services' paths (docs/api.md
# §8) and the operations endpoints. Everything else (the chat page, login, admin) is for people.
API_PATHS = ("/api", "/v1", "/v3", "/chat", "/session", "/health", "/metrics")


def is_api_path(path: str) -> bool:
    """Whether errors at `path` (a request's path_info) are answered as JSON."""
    return any(path == prefix or path.startswith(prefix + "/") for prefix in API_PATHS)


def _render(request, error: ChatError):
    """An error answer for `request`'s path: Coze's shape under Coze's paths, ours elsewhere."""
    return coze_error_response(error) if is_coze_path(request.path_info) else json_error_response(error)


def bad_request_view(request, exception=None):
    """handler400: a disallowed Host, a request Django could not parse."""
    if not is_api_path(request.path_info):
        return django_defaults.bad_request(request, exception)
    if isinstance(exception, RequestDataTooBig):
        return _render(request, ChatError("payload_too_large"))
    if isinstance(exception, DisallowedHost):
        # The reason (and the host) is logged by Django on django.security.DisallowedHost.
        return _render(request, ChatError("invalid", "This server does not answer to the host in the Host header."))
    return _render(request, ChatError("invalid"))


def permission_denied_view(request, exception=None):
    """handler403: PermissionDenied raised outside a DRF view."""
    if not is_api_path(request.path_info):
        return django_defaults.permission_denied(request, exception)
    return _render(request, ChatError("forbidden"))


def page_not_found_view(request, exception=None):
    """handler404: no route for the path (including a stray trailing slash), or Http404."""
    if not is_api_path(request.path_info):
        return django_defaults.page_not_found(request, exception)
    if isinstance(exception, Resolver404):
        error = ChatError("not_found", f"There is no endpoint at {request.path_info}.")
        if is_coze_path(request.path_info):  # a path of Coze's API this server does not serve
            return coze_error_response(error, code=COZE_CODES["invalid"])
        return _render(request, error)
    return _render(request, ChatError("not_found"))


def server_error_view(request):
    """handler500: an unexpected exception; Django logs it on django.request with its traceback."""
    if not is_api_path(request.path_info):
        return django_defaults.server_error(request)
    return _render(request, ChatError("internal_error"))


def csrf_failure_view(request, reason: str = ""):
    """CSRF_FAILURE_VIEW: a JSON `forbidden` under the API's paths, Django's page elsewhere.

    `reason` is Django's, in words ("CSRF token missing."); it is kept on the response so
    `chat.access.browsers.csrf_failure` can put it in the detail of the errors it raises.
    """
    if not is_api_path(request.path_info):
        return django_csrf.csrf_failure(request, reason)
    response = json_error_response(ChatError("forbidden", csrf_detail(reason)))
    response.csrf_reason = reason
    return response
