"""The benchmark's bare Django view, served by the product's own ASGI application.

`bench.bare:application` is `cozeproject.asgi:application` with this module as its URLconf: the
project's routes unchanged, plus two routes after them that do what a bare async Django view
would do with the same upstream client and nothing else — no database, no authentication, no
rate limits, nothing stored:

- `POST /bare/stream`: opens the chat with the product's cozepy client (`chat.coze.achat_open`,
  the sharded pool) and relays the deltas as SSE, framed like the product's stream (`session`,
  `delta`…, `completed`, `done`) so the benchmark's client checks both the same way;
- `POST /bare/chat`: the whole reply as JSON (`{"response", "session_id"}`), as `POST /api/chat`.

Both run under the same middleware as the product (host validation, security headers, CSRF
exemption, request context and metrics), so the difference between a bare route and the product's
is what the product's own work per turn costs: authentication, limits, storing the turn.
"""

import os
import uuid

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cozeproject.settings")

import django

django.setup()

from django.conf import settings  # noqa: E402

settings.ROOT_URLCONF = __name__  # before the ASGI handler resolves its first request

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402
from django.views.decorators.http import require_POST  # noqa: E402

from chat import coze  # noqa: E402
from chat.domain.errors import ChatError  # noqa: E402
from chat.domain.sse import sse_done, sse_event  # noqa: E402
from chat.transports.errors import json_error_response  # noqa: E402
from chat.transports.serializers import parse_json_bytes  # noqa: E402
from cozeproject import urls as project_urls  # noqa: E402
from cozeproject.asgi import application  # noqa: E402, F401  (the served app)
from cozeproject.urls import handler400, handler403, handler404, handler500  # noqa: E402, F401


async def _open(request: HttpRequest) -> tuple[coze.UpstreamChat, object, str]:
    """Open the upstream chat for the body's message; returns it, its events and a session id."""
    body = parse_json_bytes(request.body, request.content_type or "")
    chat = await coze.achat_open(
        bot_id=settings.COZE_BOT_ID,
        user_id=settings.COZE_USER_ID,
        conversation_id=None,
        messages=coze.build_messages(message=body.get("message", ""), additional_messages=None),
    )
    events = chat.events()
    try:
        first = await anext(events)
        if not isinstance(first, coze.UpstreamStarted):
            raise ChatError("upstream_error", "Coze's stream did not start with the chat object.")
    except BaseException:
        await chat.aclose()
        raise
    return chat, events, body.get("session_id") or uuid.uuid4().hex


async def _relay(chat: coze.UpstreamChat, events, session_id: str):
    event_id = 1
    parts: list[str] = []
    try:
        yield sse_event(event_id, "session", {"session_id": session_id})
        try:
            async for event in events:
                if isinstance(event, coze.UpstreamDelta):
                    parts.append(event.content)
                    event_id += 1
                    yield sse_event(event_id, "delta", {"content": event.content})
                elif isinstance(event, coze.UpstreamCompleted):
                    event_id += 1
                    yield sse_event(event_id, "completed", {"content": "".join(parts)})
        except ChatError as error:
            event_id += 1
            yield sse_event(event_id, "error", {"code": error.code, "detail": error.detail})
        yield sse_done(event_id + 1)
    finally:
        await chat.aclose()


@csrf_exempt
@require_POST
async def bare_stream_view(request: HttpRequest) -> HttpResponse:
    try:
        chat, events, session_id = await _open(request)
    except ChatError as error:
        return json_error_response(error)
    return StreamingHttpResponse(
        _relay(chat, events, session_id),
        content_type="text/event-stream; charset=utf-8",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@csrf_exempt
@require_POST
async def bare_chat_view(request: HttpRequest) -> HttpResponse:
    try:
        chat, events, session_id = await _open(request)
        try:
            parts = [event.content async for event in events if isinstance(event, coze.UpstreamDelta)]
        finally:
            await chat.aclose()
    except ChatError as error:
        return json_error_response(error)
    return JsonResponse({"response": "".join(parts), "session_id": session_id})


# The project's routes first and unchanged; the bare ones after them.
urlpatterns = [
    *project_urls.urlpatterns,
    path("bare/stream", bare_stream_view, name="bare-stream"),
    path("bare/chat", bare_chat_view, name="bare-chat"),
]
