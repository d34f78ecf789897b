"""Middleware: the body-size limit (ASGI, before Django reads a body), the request context
(request id, request metrics), and Django's own middleware running on the event loop."""

import tempfile

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.contrib.auth import middleware as auth_middleware
from django.contrib.messages import middleware as messages_middleware
from django.contrib.sessions import middleware as sessions_middleware
from django.http import HttpResponseBadRequest
from django.middleware import clickjacking, common, csrf, security
from django.utils.deprecation import MiddlewareMixin
from whitenoise.middleware import WhiteNoiseMiddleware

from chat.domain.errors import ChatError
from chat.domain.inputs import check_text
from chat.runtime.logging import request_context_begin, request_context_end, request_id_var
from chat.transports.errors import (
    COZE_CODES,
    coze_error_response,
    is_api_path,
    is_coze_path,
    json_error_response,
    render_json,
)

PAYLOAD_TOO_LARGE = render_json({"detail": "The request body is larger than 1 MiB.", "code": "payload_too_large"})
# Paths with their own body limit instead of CHAT_MAX_BODY_BYTES: file uploads, the gateway's own
# and Coze's API's (docs/api.md §12, §13; deploy/nginx.conf gives both the same limit).
UPLOAD_PATHS = frozenset({"/api/files", "/v1/files/upload"})
# How much of a spooled chunked upload is handed to Django at a time.
SPOOL_CHUNK_BYTES = 64 * 1024


def upload_too_large_body() -> bytes:
    from chat.files.uploads import upload_too_large_detail  # imports models: only once Django is set up

    return render_json({"detail": upload_too_large_detail(), "code": "payload_too_large"})


def coze_too_large_body(*, upload: bool) -> bytes:
    """The 413 of Coze's paths, in Coze's shape (code 4000, docs/api.md §13)."""
    from chat.files.uploads import upload_too_large_detail

    msg = upload_too_large_detail() if upload else "The request body is larger than 1 MiB."
    return render_json({"code": COZE_CODES["payload_too_large"], "msg": msg})


class BodySizeLimitMiddleware:
    """Refuse bodies over CHAT_MAX_BODY_BYTES with a JSON 413 without reading them whole.

    Django's ASGI handler spools the entire body before any view runs, so the limit has to be
    enforced here: by Content-Length up front, and by counting for chunked uploads.

    File uploads (UPLOAD_PATHS) have CHAT_MAX_UPLOAD_BYTES plus the multipart framing instead;
    with a Content-Length within it their body is passed through unbuffered (the server delivers
    no more than that length, and Django spools it to a temporary file), so a 20 MiB upload is
    never held in memory here. A chunked upload is counted as it is spooled to a temporary file
    (in memory up to FILE_UPLOAD_MAX_MEMORY_SIZE, on disk past it), then given to Django with the
    Content-Length its multipart parser needs (without one it sees no file at all).
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        is_upload = scope["path"] in UPLOAD_PATHS
        if is_upload:
            limit = settings.CHAT_MAX_UPLOAD_BYTES + settings.CHAT_UPLOAD_BODY_OVERHEAD
        else:
            limit = settings.CHAT_MAX_BODY_BYTES
        declared = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    return await self._refuse(send, upload=is_upload, coze=is_coze_path(scope["path"]))
        if is_upload:
            if declared is not None:
                return await self.app(scope, receive, send)
            return await self._spooled_upload(scope, receive, send, limit)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                # Disconnected before the body arrived: let Django see it as it would.
                chunks.append(message)
                break
            size += len(message.get("body", b""))
            if size > limit:
                return await self._refuse(send, upload=is_upload, coze=is_coze_path(scope["path"]))
            chunks.append(message)
            if not message.get("more_body", False):
                break

        async def replay():
            if chunks:
                return chunks.pop(0)
            return await receive()

        return await self.app(scope, replay, send)

    async def _spooled_upload(self, scope, receive, send, limit: int) -> None:
        """A chunked upload: counted and spooled as it comes, then replayed to Django in chunks."""
        spool = tempfile.SpooledTemporaryFile(max_size=settings.FILE_UPLOAD_MAX_MEMORY_SIZE)
        try:
            size, ended = 0, None
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    ended = message  # disconnected before the body arrived: Django sees it as it would
                    break
                body = message.get("body", b"")
                size += len(body)
                if size > limit:
                    return await self._refuse(send, upload=True, coze=is_coze_path(scope["path"]))
                if getattr(spool, "_rolled", False):  # on disk: write off the event loop
                    await sync_to_async(spool.write, thread_sensitive=False)(body)
                else:
                    spool.write(body)
                if not message.get("more_body", False):
                    break
            spool.seek(0)
            left = size

            async def replay():
                nonlocal left, ended
                if ended is not None:
                    message, ended = ended, None
                    return message
                if left < 0:
                    return await receive()  # the body was given: what comes now is the disconnect
                chunk = spool.read(SPOOL_CHUNK_BYTES)
                left -= len(chunk)
                more = left > 0
                if not more:
                    left = -1
                return {"type": "http.request", "body": chunk, "more_body": more}

            headers = [*scope.get("headers", []), (b"content-length", str(size).encode())]
            return await self.app({**scope, "headers": headers}, replay, send)
        finally:
            spool.close()

    @staticmethod
    async def _refuse(send, *, upload: bool = False, coze: bool = False) -> None:
        if coze:
            body = coze_too_large_body(upload=upload)
        else:
            body = upload_too_large_body() if upload else PAYLOAD_TOO_LARGE
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class RequestContextMiddleware:
    """Gives each request an id (X-Request-ID in and out, on every log line) and counts it."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self._acall(request)
        token = self._begin(request)
        try:
            response = self.get_response(request)
        finally:
            request_id_var.reset(token)
        return self._end(request, response)

    async def _acall(self, request):
        token = self._begin(request)
        try:
            response = await self.get_response(request)
        finally:
            request_id_var.reset(token)
        return self._end(request, response)

    @staticmethod
    def _begin(request):
        return request_context_begin(request)

    @staticmethod
    def _end(request, response):
        match = getattr(request, "resolver_match", None)
        return request_context_end(request, response, route=match.route if match else "unmatched")


# --- Django's middleware, on the event loop ---------------------------------------------------
#
# In an async middleware stack, Django's MiddlewareMixin runs every process_request and
# process_response hook through sync_to_async: a hop to the request's own thread and back for
# each hook, and that thread lives as long as the response (for a stream, the whole reply). The
# hooks of these middlewares read headers, cookies and settings and do no I/O, so the subclasses
# below call Django's own hooks directly on the event loop instead. Where a hook may touch the
# database (saving a session), they hop to a thread exactly then; where it would read the session
# (the CSRF secret under CSRF_USE_SESSIONS), the session is loaded first with its async API.
#
# Only Django's documented middleware surface is used: `get_response`, the `process_*` hooks,
# `request.session` (`modified`, `akeys`). Messages are kept in a cookie (MESSAGE_STORAGE), so
# their hooks do no I/O either.


class _HooksOnTheLoop:
    """For MiddlewareMixin subclasses whose hooks do no I/O: call them without a thread hop when
    the stack is async (MiddlewareMixin marks the instance a coroutine function then); the sync
    stack (WSGI, Django's test client) keeps MiddlewareMixin's own call."""

    def __call__(self, request):
        if iscoroutinefunction(self.get_response):
            return self._acall(request)
        return super().__call__(request)

    async def _acall(self, request):
        response = self.process_request(request) if hasattr(self, "process_request") else None
        response = response or await self.get_response(request)
        return await self._aprocess_response(request, response)

    async def _aprocess_response(self, request, response):
        if hasattr(self, "process_response"):
            response = self.process_response(request, response)
        return response


class SecurityMiddleware(_HooksOnTheLoop, security.SecurityMiddleware):
    pass


class CommonMiddleware(_HooksOnTheLoop, common.CommonMiddleware):
    pass


class CsrfViewMiddleware(_HooksOnTheLoop, csrf.CsrfViewMiddleware):
    async def _acall(self, request):
        if settings.CSRF_USE_SESSIONS:
            # The CSRF secret is in the session: load the session here, awaited, so that Django's
            # hooks (and the chat views' own CSRF check) read it from memory, not the database.
            await request.session.akeys()
        return await super()._acall(request)

    async def process_view(self, request, callback, callback_args, callback_kwargs):
        # Async, so the handler awaits it instead of wrapping it in sync_to_async.
        return super().process_view(request, callback, callback_args, callback_kwargs)


class AuthenticationMiddleware(_HooksOnTheLoop, auth_middleware.AuthenticationMiddleware):
    pass


class XFrameOptionsMiddleware(_HooksOnTheLoop, clickjacking.XFrameOptionsMiddleware):
    pass


class SessionMiddleware(_HooksOnTheLoop, sessions_middleware.SessionMiddleware):
    """Saving a modified session is database work: a thread for that, the loop otherwise."""

    async def _aprocess_response(self, request, response):
        if request.session.modified or settings.SESSION_SAVE_EVERY_REQUEST:
            return await sync_to_async(self.process_response)(request, response)
        return self.process_response(request, response)


class MessageMiddleware(_HooksOnTheLoop, messages_middleware.MessageMiddleware):
    """Messages live in a cookie (MESSAGE_STORAGE in the settings): storing and reading them is no I/O."""


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    """WhiteNoise in an async stack: static files are looked up and served from a thread (they are
    files); every other request passes straight through on the event loop."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        super().__init__(get_response)
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.async_mode:
            return self._acall(request)
        return super().__call__(request)

    async def _acall(self, request):
        if request.path_info.startswith(self.static_prefix):
            static_file = await sync_to_async(self._static_file, thread_sensitive=False)(request.path_info)
            if static_file is not None:
                return self.serve(static_file, request)
        return await self.get_response(request)

    def _static_file(self, path: str):
        # As WhiteNoiseMiddleware.__call__ looks it up.
        return self.find_file(path) if self.autorefresh else self.files.get(path)


class TextInputMiddleware(_HooksOnTheLoop, MiddlewareMixin):
    """Invalid text in the path or the query string (NUL, stray control characters, lone
    surrogates: `chat.domain.inputs.check_text`, the rule bodies are held to as they are decoded)
    is `400 invalid` before any view reads it: JSON on the API's paths (Coze's shape on Coze's),
    a plain-text 400 on the pages people browse."""

    def process_request(self, request):
        try:
            check_text(request.path_info, "path")
            check_text({name: request.GET.getlist(name) for name in request.GET}, "query")
        except ChatError as error:
            if not is_api_path(request.path_info):
                return HttpResponseBadRequest(error.detail, content_type="text/plain; charset=utf-8")
            return coze_error_response(error) if is_coze_path(request.path_info) else json_error_response(error)
        return None


class JsonErrorsMiddleware(_HooksOnTheLoop, MiddlewareMixin):
    """Every error answer under the API's paths is the JSON error shape.

    Django's own errors mostly come through `chat.transports.errors`' handlers already, but not all: the empty
    405 of `require_POST`/`require_GET`, and with DEBUG on Django's HTML debug pages for a missing
    route, a disallowed Host or a crash. Near the outside of the stack, this rewrites such an answer
    in place (its status and headers — `Allow`, the security headers — stay) as
    `{"detail", "code"}`. JSON answers (DRF's, the chat views') pass untouched.
    """

    CODES = {
        400: "invalid",
        401: "unauthenticated",
        403: "forbidden",
        404: "not_found",
        405: "method_not_allowed",
        413: "payload_too_large",
        500: "internal_error",
    }

    def process_response(self, request, response):
        code = self.CODES.get(response.status_code)
        if code is None or response.streaming or not is_api_path(request.path_info):
            return response
        if response.get("Content-Type", "").startswith("application/json"):
            return response
        error = ChatError(code, self._detail(request, response))
        if is_coze_path(request.path_info):  # Coze's shape there; an unserved path is Coze's 4000
            coze_code = COZE_CODES["invalid"] if response.status_code == 404 else None
            response.content = coze_error_response(error, code=coze_code).content
        else:
            response.content = json_error_response(error).content
        response["Content-Type"] = "application/json"
        if response.has_header("Content-Length"):  # set by CommonMiddleware for the page it replaces
            response["Content-Length"] = str(len(response.content))
        return response

    @staticmethod
    def _detail(request, response) -> str | None:
        if response.status_code == 405 and response.get("Allow"):
            return f"{request.method} is not allowed here; use {response['Allow']}."
        if response.status_code == 404:
            return f"There is no endpoint at {request.path_info}."
        return None
