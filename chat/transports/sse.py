"""Async Django views: the SSE chat stream, the chat page and the health check."""

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator

from channels.layers import get_channel_layer
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import connection
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt, ensure_csrf_cookie
from django.views.decorators.http import require_GET, require_POST

from chat import coze
from chat.access.auth import aresolve_owner
from chat.access.browsers import ensure_browser_id
from chat.domain.errors import ChatError
from chat.domain.events import PING, ChatEvent, ErrorEvent, Ping
from chat.domain.inputs import ChatRequest, Owner
from chat.domain.sse import PING as SSE_PING
from chat.domain.sse import sse_done, sse_event
from chat.resume import resuming
from chat.runtime import metrics
from chat.runtime.db import db_async
from chat.transports.errors import json_error_response, json_response
from chat.transports.serializers import parse_chat_request, parse_json_bytes
from chat.turn import service
from sessions_admin.models import Reply

logger = logging.getLogger(__name__)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def stream_items(first, events: AsyncIterator) -> AsyncIterator[ChatEvent | Ping]:
    """`first`, then the rest of `events`, for the SSE renderers.

    A ChatError from `events` (only possible when a heartbeat went out before Coze accepted the
    chat) becomes a final ErrorEvent. `events` is closed however this ends, so a client that goes
    away cancels its turn at once rather than when the generator is garbage-collected.
    """
    try:
        yield first
        try:
            async for item in events:
                yield item
        except ChatError as error:
            yield ErrorEvent.from_error(error)
    finally:
        await events.aclose()


async def _render_sse(first: ChatEvent | Ping, events: AsyncIterator) -> AsyncIterator[bytes]:
    event_id = 0
    async with contextlib.aclosing(stream_items(first, events)) as items:
        async for item in items:
            if item is PING:
                yield SSE_PING
                continue
            event_id += 1
            yield sse_event(event_id, item.type, item.as_dict())
    yield sse_done(event_id + 1)


async def _parse_standard(owner: Owner, body) -> ChatRequest:
    return parse_chat_request(body)


async def start_sse_stream(
    request: HttpRequest, *, transport: str, parse=_parse_standard, render=_render_sse
) -> HttpResponse:
    """Authenticate, validate, start the turn; errors before the first event are JSON responses.

    `parse(owner, body)` turns the decoded body into a ChatRequest; `render(first, events)`
    yields the bytes of the stream. Both are swappable for the compatibility paths.
    """
    try:
        owner = await aresolve_owner(request)
        body = parse_json_bytes(request.body, request.content_type or "")
        chat_request = await parse(owner, body)
        events = service.achat_events(
            owner=owner,
            chat_request=chat_request,
            transport=transport,
            heartbeat=settings.CHAT_SSE_HEARTBEAT,
        )
        first = await anext(events)
    except RequestDataTooBig:
        return json_error_response(ChatError("payload_too_large"))
    except ChatError as error:
        return json_error_response(error)
    return StreamingHttpResponse(
        render(first, events), content_type="text/event-stream; charset=utf-8", headers=SSE_HEADERS
    )


@csrf_exempt  # API-key clients have no CSRF token; session callers are checked in aresolve_owner.
@require_POST
async def chat_stream_view(request: HttpRequest) -> HttpResponse:
    """POST /api/chat/stream: the reply as Server-Sent Events (docs/api.md §5)."""
    return await start_sse_stream(request, transport=Reply.Transport.SSE)


def _last_event_id(request: HttpRequest) -> int:
    """The `Last-Event-ID` header (what EventSource sends on reconnecting) or `?last_event_id=`."""
    raw = request.headers.get("Last-Event-ID") or request.GET.get("last_event_id") or "0"
    raw = raw.strip()
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise ChatError("invalid", "Last-Event-ID must be the id of an event: a whole number.")
    return int(raw)


async def _render_replay(events: AsyncIterator) -> AsyncIterator[bytes]:
    async with contextlib.aclosing(events):
        async for item in events:
            yield SSE_PING if item is PING else item.sse()


@require_GET
async def session_stream_view(request: HttpRequest, session_id: str) -> HttpResponse:
    """GET /api/sessions/{id}/stream: the session's latest reply after Last-Event-ID, live to its end
    (docs/api.md §9)."""
    try:
        owner = await aresolve_owner(request)
        events = await resuming.aopen_reply_stream(
            owner=owner,
            session_id=session_id,
            after_id=_last_event_id(request),
            heartbeat=settings.CHAT_SSE_HEARTBEAT,
        )
    except ChatError as error:
        return json_error_response(error)
    return StreamingHttpResponse(
        _render_replay(events), content_type="text/event-stream; charset=utf-8", headers=SSE_HEADERS
    )


@require_GET
@ensure_csrf_cookie
def chat_page_view(request: HttpRequest) -> HttpResponse:
    """The browser chat page."""
    if settings.CHAT_ALLOW_ANONYMOUS or request.user.is_authenticated:
        ensure_browser_id(request)
    return render(
        request,
        "chat/index.html",
        {
            "demo_mode": coze.coze_mode() == "simulator",
            "allow_anonymous": settings.CHAT_ALLOW_ANONYMOUS,
            "heartbeat_seconds": settings.CHAT_SSE_HEARTBEAT,
        },
    )


@db_async(pool="health")
def _database_ok() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


async def _channel_layer_ok() -> None:
    layer = get_channel_layer()
    channel = await layer.new_channel()  # default prefix: see chat.turn.cancellation
    await layer.send(channel, {"type": "health.check"})
    await layer.receive(channel)


@csrf_exempt  # GET only: another method gets its 405, not a CSRF 403 (there is no cookie to protect).
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """GET /metrics: Prometheus text format, for the bearer of CHAT_METRICS_TOKEN when it is set,
    for anyone with CHAT_METRICS_PUBLIC (the default only in debug), else for no one.

    Closed answers 403 `forbidden`, not 401: no credential a caller could send would open it,
    and it is not a 404 because the route is documented, so an operator reading the answer
    learns which switch to turn rather than hunting for a missing route.
    """
    token = settings.CHAT_METRICS_TOKEN
    if token:
        # Compared as bytes: compare_digest refuses non-ASCII str, and a header may hold any byte.
        sent = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        if not secrets.compare_digest(sent, f"Bearer {token}".encode()):
            return json_error_response(
                ChatError("unauthenticated", "Send 'Authorization: Bearer <CHAT_METRICS_TOKEN>'.")
            )
    elif not settings.CHAT_METRICS_PUBLIC:
        return json_error_response(
            ChatError(
                "forbidden",
                "/metrics is closed on this server: its operator opens it with CHAT_METRICS_TOKEN "
                "(scrapers send 'Authorization: Bearer <token>') or CHAT_METRICS_PUBLIC=1.",
            )
        )
    body, content_type = metrics.render()
    return HttpResponse(body, content_type=content_type)


@csrf_exempt  # as metrics_view
@require_GET
async def health_view(request: HttpRequest) -> HttpResponse:
    """GET /health: 200 when the database and channel layer answer, else 503 naming the failing part."""
    body = {"status": "ok", "database": "ok", "channel_layer": "ok", "coze": coze.coze_mode()}
    checks = {"database": _database_ok(), "channel_layer": _channel_layer_ok()}
    for name, check in checks.items():
        try:
            await asyncio.wait_for(check, timeout=3)
        except Exception as exc:  # noqa: BLE001 - any failure makes that part unavailable
            logger.warning("Health check: %s unavailable: %s", name, exc)
            body[name] = "unavailable"
            body["status"] = "unavailable"
    return json_response(body, status=200 if body["status"] == "ok" else 503)
