"""Middleware: the body-size limit (ASGI, before Django reads a body) and the request context
(request id, request metrics)."""

import json

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings

from chat.logging import request_context_begin, request_context_end, request_id_var

PAYLOAD_TOO_LARGE = json.dumps(
    {"detail": "The request body is larger than 1 MiB.", "code": "payload_too_large"}
).encode()
# Paths with their own body limit instead of CHAT_MAX_BODY_BYTES: file uploads.
UPLOAD_PATHS = frozenset({"/api/files"})


def upload_too_large_body() -> bytes:
    from chat.files import upload_too_large_detail  # imports models: only once Django is set up

    return json.dumps({"detail": upload_too_large_detail(), "code": "payload_too_large"}).encode()


class BodySizeLimitMiddleware:
    """Refuse bodies over CHAT_MAX_BODY_BYTES with a JSON 413 without reading them whole.

    Django's ASGI handler spools the entire body before any view runs, so the limit has to be
    enforced here: by Content-Length up front, and by counting for chunked uploads.

    File uploads (UPLOAD_PATHS) have CHAT_MAX_UPLOAD_BYTES plus the multipart framing instead;
    with a Content-Length within it their body is passed through unbuffered (the server delivers
    no more than that length, and Django spools it to a temporary file), so a 20 MiB upload is
    never held in memory here. A chunked upload is counted as it is buffered, then given the
    Content-Length Django's multipart parser needs (without one it sees no file at all).
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
                    return await self._refuse(send, upload=is_upload)
        if is_upload and declared is not None:
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                # Disconnected before the body arrived: let Django see it as it would.
                chunks.append(message)
                break
            size += len(message.get("body", b""))
            if size > limit:
                return await self._refuse(send, upload=is_upload)
            chunks.append(message)
            if not message.get("more_body", False):
                break

        async def replay():
            if chunks:
                return chunks.pop(0)
            return await receive()

        if is_upload:
            scope = {**scope, "headers": [*scope.get("headers", []), (b"content-length", str(size).encode())]}
        return await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(send, *, upload: bool = False) -> None:
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
            return self.__acall__(request)
        token = self._begin(request)
        try:
            response = self.get_response(request)
        finally:
            request_id_var.reset(token)
        return self._end(request, response)

    async def __acall__(self, request):
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
