"""A direct ASGI route for API-key SSE streams, around Django's request handler.

Django runs every request in its own thread context: the sync `request_started` receivers and
each `MiddlewareMixin` middleware hop into a thread that lives as long as the response — for a
stream, as long as the reply. With a thousand open streams that is a thousand threads and about
60 KiB more memory per stream (measured in docs/performance.md).

API clients streaming with `Authorization: Bearer` need none of that: no session, no CSRF, no
CORS, no static files. For exactly those requests — `POST /api/chat/stream` or
`POST /v1/chat/completions` with a Bearer key and neither `Cookie` nor `Origin` — this calls the
same view code (`start_sse_stream`, the OpenAI view) straight from ASGI, adding what the
middleware would add (request id, security headers, request metrics) and cancelling the reply
when the client disconnects, as Django's handler does. Every other request, browsers included,
goes through Django unchanged.
"""

import asyncio
import contextlib
import io
import logging

from django.conf import settings
from django.core.handlers.asgi import ASGIRequest

from chat.logging import request_context_begin, request_context_end, request_id_var
from chat.openai_api import chat_completions_view
from chat.views import start_sse_stream
from sessions_admin.models import Reply

logger = logging.getLogger(__name__)


async def _chat_stream_view(request):
    return await start_sse_stream(request, transport=Reply.Transport.SSE)


# path -> (route label for the request metrics, view)
FAST_PATHS = {
    "/api/chat/stream": ("api/chat/stream", _chat_stream_view),
    "/v1/chat/completions": ("v1/chat/completions", chat_completions_view),
}


def security_headers() -> dict[str, str]:
    """What SecurityMiddleware and XFrameOptionsMiddleware add, from the same settings."""
    headers = {"X-Frame-Options": settings.X_FRAME_OPTIONS}
    if settings.SECURE_CONTENT_TYPE_NOSNIFF:
        headers["X-Content-Type-Options"] = "nosniff"
    if settings.SECURE_REFERRER_POLICY:
        headers["Referrer-Policy"] = settings.SECURE_REFERRER_POLICY
    return headers


def takes_fast_path(scope) -> bool:
    if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in FAST_PATHS:
        return False
    has_bearer = False
    for name, value in scope["headers"]:
        if name in (b"cookie", b"origin"):
            return False
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            has_bearer = True
    return has_bearer


class ApiKeyStreamFastPath:
    """ASGI middleware: API-key SSE streams straight to the view; everything else to `app`."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if not takes_fast_path(scope):
            return await self.app(scope, receive, send)
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        route, view = FAST_PATHS[scope["path"]]
        request = ASGIRequest(scope, io.BytesIO(bytes(body)))
        # As Django's handler does: a client that goes away cancels the view (a whole reply being
        # awaited) or the stream, and so the reply.
        gone = asyncio.ensure_future(_client_gone(receive))
        try:
            token = request_context_begin(request)
            try:
                response = await _unless_gone(view(request), gone)
            finally:
                request_id_var.reset(token)
            if response is None:
                return
            for name, value in security_headers().items():
                response.setdefault(name, value)
            request_context_end(request, response, route=route)
            await self._send_response(response, send, gone)
        finally:
            if not gone.done():
                gone.cancel()
            await asyncio.wait([gone])
            if not gone.cancelled():
                gone.exception()

    @staticmethod
    async def _send_response(response, send, gone: asyncio.Future) -> None:
        headers = [(name.encode("latin1"), value.encode("latin1")) for name, value in response.items()]
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        if not response.streaming:
            await send({"type": "http.response.body", "body": response.content})
            return

        async def stream_body() -> None:
            async with contextlib.aclosing(aiter(response)) as parts:
                async for part in parts:
                    await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

        streaming = asyncio.ensure_future(stream_body())
        try:
            await asyncio.wait([streaming, gone], return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not streaming.done():
                streaming.cancel()
            await asyncio.wait([streaming])
        if not streaming.cancelled() and streaming.exception() is not None:
            # The client vanished mid-send (the server raises on send); the reply is stored anyway.
            logger.debug("SSE send ended early: %r", streaming.exception())


async def _client_gone(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _unless_gone(view_call, gone: asyncio.Future):
    """The view's response, or None when the client went away first (the view is then cancelled)."""
    viewing = asyncio.ensure_future(view_call)
    try:
        await asyncio.wait([viewing, gone], return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not viewing.done():
            viewing.cancel()
            await asyncio.wait([viewing])
    if viewing.cancelled():
        return None
    return viewing.result()
