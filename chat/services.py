"""The chat service: one path for a chat turn, shared by the sync API, SSE and WebSocket.

A turn is: `turn_start` (take the session's lock, store the user's message, open a Reply record)
→ the Coze stream, translated to our events → `turn_finish` (store the answer, follow-ups,
usage and timing, release the lock). The database is touched a constant number of times per
turn, never per delta. However a turn ends — completed, failed upstream, cancelled, client
gone, server shutting down — `turn_finish` runs and records how.

Transports call `achat_events()`, which runs the turn in its own task (so a cancel request from
anywhere can stop it) and adds heartbeats, and render the events in their own format.
"""

import asyncio
import contextlib
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.db.models import Case, F, OuterRef, Q, Subquery, Value, When
from django.db.models.functions import Substr
from django.utils import timezone

from chat import cancellation, coze, files, lifecycle, metrics, ratelimit
from chat.db import db_async
from chat.errors import ChatError
from chat.events import (
    ChatEvent,
    CompletedEvent,
    DeltaEvent,
    ErrorEvent,
    FollowUpEvent,
    ReasoningEvent,
    SessionEvent,
    Usage,
)
from chat.logging import coze_logid_var
from sessions_admin.models import ChatSession, Conversation, Message, Reply
from sessions_admin.rollup import record_reply

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Owner:
    """Who is asking: an API client, a logged-in user, or an anonymous browser."""

    key: str
    api_client_id: int | None = None
    user_id: int | None = None


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A validated chat request body (API.md §4)."""

    message: str | None = None
    session_id: str | None = None
    user_id: str | None = None
    bot_id: str | None = None
    custom_variables: dict[str, str] = field(default_factory=dict)
    meta_data: dict[str, str] = field(default_factory=dict)
    additional_messages: list[dict] | None = None
    # Validated `{"file_id"}` / `{"url", "type"}` items (API.md §12), resolved in turn_start.
    attachments: tuple[dict, ...] = ()

    @property
    def user_text(self) -> str:
        """The text stored as the user's message."""
        if self.message is not None:
            return self.message
        parts = [
            item.get("content", "") for item in self.additional_messages or [] if item.get("role", "user") == "user"
        ]
        return "\n".join(parts)


@dataclass(frozen=True, slots=True)
class TurnContext:
    session_pk: int
    session_id: str
    conversation_pk: int
    coze_conversation_id: str
    reply_pk: int
    lock_token: str
    coze_user_id: str
    bot_id: str
    owner_key: str
    transport: str
    attachments: tuple[dict, ...] = ()  # Coze items of the user's attachments (chat.files)


@dataclass(slots=True)
class TurnOutcome:
    status: str = Reply.Status.IN_PROGRESS
    answer_parts: list[str] = field(default_factory=list)
    follow_ups: list[str] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    error: ChatError | None = None
    chat_id: str = ""
    conversation_id: str = ""
    logid: str = ""
    message_id: str = ""
    first_token_at: float | None = None
    finished: bool = False


class Ping:
    """A heartbeat marker yielded by `achat_events` while the upstream is silent."""


PING = Ping()


# --- database steps ---------------------------------------------------------------------------


def _generated_session_id() -> str:
    return uuid.uuid4().hex


@db_async
def turn_start(*, owner: Owner, chat_request: ChatRequest, transport: str, worker_channel: str = "") -> TurnContext:
    """Lock the session (creating it if new), store the user's message and open the Reply — one
    transaction, committed before Coze is called.

    Raises ChatError("session_busy") when another reply holds the session's lock.
    """
    bot_id = chat_request.bot_id or settings.COZE_BOT_ID
    session_id = chat_request.session_id or _generated_session_id()
    for attempt in range(2):
        try:
            return _turn_start_once(
                owner=owner,
                chat_request=chat_request,
                transport=transport,
                worker_channel=worker_channel,
                bot_id=bot_id,
                session_id=session_id,
            )
        except IntegrityError:
            # Two first turns raced to create the session; the loser retries on the winner's row.
            if attempt:
                raise
    raise AssertionError("unreachable")


def _turn_start_once(
    *, owner: Owner, chat_request: ChatRequest, transport: str, worker_channel: str, bot_id: str, session_id: str
) -> TurnContext:
    now = timezone.now()
    lock_token = secrets.token_hex(8)
    # Another owner's file_id fails the turn here, before anything is stored.
    resolved = (
        files.attachments_resolve(owner_key=owner.key, attachments=list(chat_request.attachments))
        if chat_request.attachments
        else files.ResolvedAttachments()
    )
    with transaction.atomic():
        session = (
            ChatSession.objects.select_related("current_conversation")
            .filter(owner_key=owner.key, session_id=session_id)
            .first()
        )
        if session is None:
            session = ChatSession.objects.create(
                owner_key=owner.key,
                session_id=session_id,
                api_client_id=owner.api_client_id,
                user_id=owner.user_id,
                coze_user_id=chat_request.user_id or settings.COZE_USER_ID,
                bot_id=bot_id,
                created_at=now,
                last_activity=now,
            )
        conversation = session.current_conversation
        new_conversation = conversation is None or conversation.bot_id != bot_id
        if new_conversation:
            # A new context: first turn, after a clear, or the client switched bots.
            conversation = Conversation.objects.create(
                session=session, bot_id=bot_id, created_at=now, last_activity=now, message_count=1
            )
        coze_user_id = chat_request.user_id or session.coze_user_id
        # Taking the lock and counting the message in one statement: zero rows means another reply
        # holds an unexpired lease, and the transaction (with the conversation above) rolls back.
        taken = (
            ChatSession.objects.filter(pk=session.pk)
            .filter(Q(locked_until__isnull=True) | Q(locked_until__lt=now))
            .update(
                lock_token=lock_token,
                locked_until=now + timedelta(seconds=settings.CHAT_SESSION_LOCK_TTL),
                current_conversation=conversation,
                bot_id=bot_id,
                coze_user_id=coze_user_id,
                last_activity=now,
                message_count=1 if new_conversation else F("message_count") + 1,
            )
        )
        if not taken:
            raise ChatError("session_busy")
        reply = Reply.objects.create(
            session=session,
            conversation=conversation,
            owner_key=owner.key,
            api_client_id=owner.api_client_id,
            user_id=owner.user_id,
            bot_id=bot_id,
            transport=transport,
            worker_channel=worker_channel,
            started_at=now,
        )
        question = Message.objects.create(
            conversation=conversation,
            reply=reply,
            role=Message.Role.USER,
            kind=Message.Kind.QUESTION,
            content=chat_request.user_text,
            content_type="object_string"
            if resolved.items
            or any(m.get("content_type") == "object_string" for m in chat_request.additional_messages or [])
            else "text",
            attachments=list(resolved.records),
            created_at=now,
        )
        files.attachments_link(message=question, resolved=resolved)
        if not new_conversation:
            Conversation.objects.filter(pk=conversation.pk).update(
                last_activity=now, message_count=F("message_count") + 1
            )
    return TurnContext(
        session_pk=session.pk,
        session_id=session.session_id,
        conversation_pk=conversation.pk,
        coze_conversation_id=conversation.coze_conversation_id,
        reply_pk=reply.pk,
        lock_token=lock_token,
        coze_user_id=coze_user_id,
        bot_id=bot_id,
        owner_key=owner.key,
        transport=transport,
        attachments=resolved.items,
    )


@db_async
def turn_upstream_started(*, turn: TurnContext, chat_id: str, logid: str) -> None:
    """Record Coze's chat id as soon as it is known, so the chat can be cancelled by id from any worker."""
    Reply.objects.filter(pk=turn.reply_pk).update(coze_chat_id=chat_id, coze_logid=logid)


@db_async
def turn_finish(*, turn: TurnContext, outcome: TurnOutcome, started: float) -> None:
    """Store the answer (whole or partial), follow-ups, usage and timing; release the lock."""
    now = timezone.now()
    answer = "".join(outcome.answer_parts)
    usage = outcome.usage
    error = outcome.error
    stored_answer = bool(answer) or outcome.status == Reply.Status.COMPLETED
    messages = (
        [
            Message(
                conversation_id=turn.conversation_pk,
                reply_id=turn.reply_pk,
                role=Message.Role.ASSISTANT,
                kind=Message.Kind.ANSWER,
                content=answer,
                coze_message_id=outcome.message_id,
                created_at=now,
            )
        ]
        if stored_answer
        else []
    )
    messages += [
        Message(
            conversation_id=turn.conversation_pk,
            reply_id=turn.reply_pk,
            role=Message.Role.ASSISTANT,
            kind=Message.Kind.FOLLOW_UP,
            content=text,
            created_at=now,
        )
        for text in outcome.follow_ups
    ]
    with transaction.atomic():
        if messages:
            Message.objects.bulk_create(messages)
        Reply.objects.filter(pk=turn.reply_pk).update(
            status=outcome.status,
            coze_chat_id=outcome.chat_id,
            coze_logid=outcome.logid,
            error_code=error.code if error else "",
            error_detail=error.detail if error else "",
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            total_tokens=usage.total_tokens,
            time_to_first_token_ms=round((outcome.first_token_at - started) * 1000) if outcome.first_token_at else None,
            duration_ms=round((time.monotonic() - started) * 1000),
            finished_at=now,
        )
        conversation_update = {
            "last_activity": now,
            "message_count": F("message_count") + int(stored_answer),
            "total_tokens": F("total_tokens") + usage.total_tokens,
        }
        if outcome.conversation_id and not turn.coze_conversation_id:
            conversation_update["coze_conversation_id"] = outcome.conversation_id
        Conversation.objects.filter(pk=turn.conversation_pk).update(**conversation_update)
        ours = Q(lock_token=turn.lock_token)
        ChatSession.objects.filter(pk=turn.session_pk).update(
            last_activity=now,
            input_tokens=F("input_tokens") + usage.input_tokens,
            output_tokens=F("output_tokens") + usage.output_tokens,
            total_tokens=F("total_tokens") + usage.total_tokens,
            # The answer counts only if the session still talks in this conversation (not cleared meanwhile).
            message_count=Case(
                When(current_conversation_id=turn.conversation_pk, then=F("message_count") + int(stored_answer)),
                default=F("message_count"),
                output_field=models.PositiveIntegerField(),
            ),
            # Release the lock if it is still ours (a lease that lapsed may have passed to another reply).
            lock_token=Case(When(ours, then=Value("")), default=F("lock_token"), output_field=models.CharField()),
            locked_until=Case(
                When(ours, then=Value(None)), default=F("locked_until"), output_field=models.DateTimeField()
            ),
        )
        # The dashboard's daily rollup; last, so its row lock (shared by the owner's replies that day) is held briefly.
        record_reply(reply_pk=turn.reply_pk)


@db_async
def turn_renew_lock(*, turn: TurnContext) -> None:
    ChatSession.objects.filter(pk=turn.session_pk, lock_token=turn.lock_token).update(
        locked_until=timezone.now() + timedelta(seconds=settings.CHAT_SESSION_LOCK_TTL)
    )


# --- the turn ---------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class TurnControl:
    """Shared between a running turn and whoever may stop it (cancel API, WS cancel, shutdown)."""

    owner_key: str
    reason: str = "cancelled"  # or "interrupted" when the server shuts down
    task: asyncio.Task | None = None
    chat_id: str = ""

    def stop(self, reason: str = "cancelled") -> None:
        self.reason = reason
        if self.task is not None and not self.task.done():
            self.task.cancel()


# Turns running in this process: by Coze chat id for cancel requests, and all of them (also those
# not yet accepted by Coze) for graceful shutdown.
running_turns: dict[str, TurnControl] = {}
active_turns: set[TurnControl] = set()
_background_tasks: set[asyncio.Task] = set()


def _in_background(coro) -> asyncio.Task:
    task = asyncio.create_task(coro)
    _background_tasks.add(task)
    task.add_done_callback(_background_tasks.discard)
    return task


async def achat_stream(
    *, owner: Owner, chat_request: ChatRequest, transport: str, control: TurnControl | None = None
) -> AsyncIterator[ChatEvent]:
    """One chat turn as events, within the owner's rate limits (see `_turn_events`).

    Raises ChatError("rate_limited") before anything is stored when the owner is over its
    requests per minute or concurrent streams.
    """
    await ratelimit.acheck_request(owner.key)
    slot_id = uuid.uuid4().hex
    slot_taken = await ratelimit.aacquire_stream(owner.key, slot_id)
    try:
        async with contextlib.aclosing(
            _turn_events(owner=owner, chat_request=chat_request, transport=transport, control=control)
        ) as events:
            async for event in events:
                yield event
    finally:
        if slot_taken:
            _in_background(ratelimit.arelease_stream(owner.key, slot_id))


async def _turn_events(
    *, owner: Owner, chat_request: ChatRequest, transport: str, control: TurnControl | None = None
) -> AsyncIterator[ChatEvent]:
    """One chat turn as events.

    Raises ChatError before the first event (busy session, Coze refused or unreachable): the
    transports answer those as plain errors. After the `session` event, failures are yielded as
    an ErrorEvent, which is then the last event. The turn is stored however it ends, including
    when the consumer stops early (CancelledError / GeneratorExit): then it counts as cancelled.
    """
    control = control or TurnControl(owner_key=owner.key)
    started = time.monotonic()
    turn = await turn_start(
        owner=owner,
        chat_request=chat_request,
        transport=transport,
        worker_channel=await cancellation.aworker_channel(),
    )
    metrics.turn_started(transport)
    logger.info("Turn started: session %s, reply %s, via %s", turn.session_id, turn.reply_pk, transport)
    outcome = TurnOutcome()
    upstream: coze.UpstreamChat | None = None
    ids_recorded: asyncio.Task | None = None
    lock_renewed_at = started
    try:
        try:
            upstream = await coze.achat_open(
                bot_id=turn.bot_id,
                user_id=turn.coze_user_id,
                conversation_id=turn.coze_conversation_id,
                messages=coze.build_messages(
                    message=chat_request.message,
                    additional_messages=chat_request.additional_messages,
                    attachments=turn.attachments,
                ),
                custom_variables=chat_request.custom_variables,
                meta_data=chat_request.meta_data,
            )
            events = upstream.events()
            first = await anext(events)
        except StopAsyncIteration:
            raise ChatError("upstream_error", "Coze ended the stream before it started.") from None
        if not isinstance(first, coze.UpstreamStarted):
            raise ChatError("upstream_error", "Coze's stream did not start with the chat object.")
        outcome.chat_id, outcome.conversation_id, outcome.logid = first.chat_id, first.conversation_id, first.logid
        coze_logid_var.set(first.logid or "-")
        control.chat_id = first.chat_id
        running_turns[first.chat_id] = control
        ids_recorded = _in_background(turn_upstream_started(turn=turn, chat_id=first.chat_id, logid=first.logid))
    except ChatError as error:
        outcome.status, outcome.error = Reply.Status.FAILED, error
        if error.logid and not outcome.logid:
            outcome.logid = error.logid
        await _finish(turn, outcome, started, upstream)
        raise
    except (asyncio.CancelledError, GeneratorExit):
        outcome.status = Reply.Status.INTERRUPTED if control.reason == "interrupted" else Reply.Status.CANCELLED
        outcome.error = ChatError(control.reason)
        await _finish(turn, outcome, started, upstream)
        raise
    except BaseException:
        logger.exception("Chat turn %s failed before the stream started", turn.reply_pk)
        outcome.status, outcome.error = Reply.Status.FAILED, ChatError("internal_error")
        await _finish(turn, outcome, started, upstream)
        raise

    try:
        yield SessionEvent(session_id=turn.session_id, conversation_id=outcome.conversation_id, chat_id=outcome.chat_id)
        async for event in events:
            if isinstance(event, coze.UpstreamDelta):
                if outcome.first_token_at is None:
                    outcome.first_token_at = time.monotonic()
                outcome.answer_parts.append(event.content)
                yield DeltaEvent(event.content)
            elif isinstance(event, coze.UpstreamReasoning):
                if outcome.first_token_at is None:
                    outcome.first_token_at = time.monotonic()
                yield ReasoningEvent(event.content)
            elif isinstance(event, coze.UpstreamFollowUp):
                outcome.follow_ups.append(event.content)
                yield FollowUpEvent(event.content)
            elif isinstance(event, coze.UpstreamAnswer):
                outcome.message_id = event.message_id
            elif isinstance(event, coze.UpstreamCompleted):
                outcome.usage = event.usage
                outcome.status = Reply.Status.COMPLETED
            now = time.monotonic()
            if now - lock_renewed_at > settings.CHAT_SESSION_LOCK_TTL / 3:
                # Long replies keep their lease; this runs a few times per hour at most.
                lock_renewed_at = now
                _in_background(turn_renew_lock(turn=turn))
        await _finish(turn, outcome, started, upstream, ids_recorded)
        yield CompletedEvent(
            message_id=outcome.message_id or f"reply-{turn.reply_pk}",
            content="".join(outcome.answer_parts),
            usage=outcome.usage,
            conversation_id=outcome.conversation_id,
            session_id=turn.session_id,
            chat_id=outcome.chat_id,
            follow_ups=list(outcome.follow_ups),
            timestamp=timezone.now().isoformat(),
        )
    except ChatError as error:
        outcome.status, outcome.error = Reply.Status.FAILED, error
        await _finish(turn, outcome, started, upstream, ids_recorded)
        yield ErrorEvent.from_error(error)
    except (asyncio.CancelledError, GeneratorExit):
        if outcome.status == Reply.Status.IN_PROGRESS:
            outcome.status = Reply.Status.INTERRUPTED if control.reason == "interrupted" else Reply.Status.CANCELLED
            outcome.error = ChatError(control.reason)
        await _finish(turn, outcome, started, upstream, ids_recorded, cancel_upstream=True)
        raise
    except BaseException:
        logger.exception("Chat turn %s failed unexpectedly", outcome.chat_id or turn.reply_pk)
        outcome.status, outcome.error = Reply.Status.FAILED, ChatError("internal_error")
        await _finish(turn, outcome, started, upstream, ids_recorded)
        raise
    finally:
        running_turns.pop(outcome.chat_id, None)


async def _finish(
    turn: TurnContext,
    outcome: TurnOutcome,
    started: float,
    upstream: "coze.UpstreamChat | None",
    ids_recorded: asyncio.Task | None = None,
    *,
    cancel_upstream: bool = False,
) -> None:
    """Close the upstream, then store the outcome, exactly once per turn.

    Runs as its own task behind a shield: when the turn is being cancelled (client gone, cancel
    request, shutdown), a further cancellation must neither leave the connection open nor lose
    the record.
    """
    if outcome.finished:
        return
    outcome.finished = True
    await asyncio.shield(
        _in_background(_close_and_store(turn, outcome, started, upstream, ids_recorded, cancel_upstream))
    )


async def _close_and_store(
    turn: TurnContext,
    outcome: TurnOutcome,
    started: float,
    upstream: "coze.UpstreamChat | None",
    ids_recorded: asyncio.Task | None,
    cancel_upstream: bool,
) -> None:
    if upstream is not None:
        try:
            # Closing the HTTP response is what stops the stream reaching us (and Coze sending it).
            await upstream.aclose()
        except Exception:
            logger.debug("closing the upstream stream failed", exc_info=True)
    if cancel_upstream and outcome.chat_id and outcome.conversation_id:
        # Coze's cancel stops generation and billing on its side; closing alone may not.
        _in_background(coze.achat_cancel(conversation_id=outcome.conversation_id, chat_id=outcome.chat_id))
    if ids_recorded is not None:
        await asyncio.wait([ids_recorded])
    try:
        await turn_finish(turn=turn, outcome=outcome, started=started)
    except Exception:
        # Nothing more to do here: the lock lease expires and startup recovery marks the reply.
        logger.exception("Could not store the outcome of reply %s", turn.reply_pk)
    duration = time.monotonic() - started
    error = outcome.error
    metrics.turn_finished(
        transport=turn.transport,
        status=outcome.status,
        bot_id=turn.bot_id,
        input_tokens=outcome.usage.input_tokens,
        output_tokens=outcome.usage.output_tokens,
        time_to_first_token=outcome.first_token_at - started if outcome.first_token_at else None,
        duration=duration,
        error_code=error.code if error else None,
        upstream_error=bool(error and (error.code.startswith("upstream") or error.upstream_code is not None)),
    )
    logger.info(
        "Turn ended %s: chat %s, %d tokens, %.0f ms%s",
        outcome.status,
        outcome.chat_id or "-",
        outcome.usage.total_tokens,
        duration * 1000,
        f", {error.code}: {error.detail}" if error else "",
    )


async def achat_events(
    *,
    owner: Owner,
    chat_request: ChatRequest,
    transport: str,
    heartbeat: float | None = None,
    control: TurnControl | None = None,
) -> AsyncIterator[ChatEvent | Ping]:
    """Run a turn in its own task and yield its events, plus PING every `heartbeat` seconds of silence.

    Raises ChatError before the first event, like `achat_stream`. If the turn is stopped through
    its TurnControl (cancel request, shutdown), yields an ErrorEvent with code `cancelled` or
    `interrupted` and ends. If the consumer goes away, the turn is cancelled and stored.
    """
    loop = asyncio.get_running_loop()
    control = control or TurnControl(owner_key=owner.key)
    queue: asyncio.Queue = asyncio.Queue()
    end = object()
    last_event_at = loop.time()

    async def pump() -> None:
        try:
            async for event in achat_stream(
                owner=owner, chat_request=chat_request, transport=transport, control=control
            ):
                queue.put_nowait(event)
        except BaseException as exc:
            queue.put_nowait((end, exc))
            raise
        queue.put_nowait((end, None))

    timer: asyncio.TimerHandle | None = None

    def tick() -> None:
        nonlocal timer
        if loop.time() - last_event_at >= heartbeat * 0.99:
            queue.put_nowait(PING)
        timer = loop.call_later(heartbeat, tick)

    lifecycle.ensure_process_started()
    control.task = loop.create_task(pump())
    active_turns.add(control)
    if heartbeat:
        timer = loop.call_later(heartbeat, tick)
    started_streaming = False
    try:
        while True:
            item = await queue.get()
            if isinstance(item, tuple) and item and item[0] is end:
                exc = item[1]
                if exc is None:
                    return
                if isinstance(exc, asyncio.CancelledError):
                    if not started_streaming:
                        raise ChatError(control.reason)
                    error = ChatError(control.reason)
                    yield ErrorEvent.from_error(error)
                    return
                if isinstance(exc, ChatError) and not started_streaming:
                    raise exc
                raise exc
            if item is not PING:
                started_streaming = True
                last_event_at = loop.time()
            yield item
    finally:
        active_turns.discard(control)
        if timer is not None:
            timer.cancel()
        task = control.task
        if not task.done():
            if not task.cancelling():
                task.cancel()
            # The turn stores its own outcome; wait for that, whatever it raises.
            await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log it as never retrieved


async def achat_send(*, owner: Owner, chat_request: ChatRequest, transport: str) -> CompletedEvent:
    """A whole reply: consumes the same event stream. Raises ChatError for any failure."""
    async for event in achat_events(owner=owner, chat_request=chat_request, transport=transport):
        if isinstance(event, CompletedEvent):
            return event
        if isinstance(event, ErrorEvent):
            raise ChatError(event.code, event.detail, retryable=event.retryable)
    raise ChatError("upstream_error", "The reply ended without completing.")


# --- cancel -----------------------------------------------------------------------------------


@db_async
def _reply_for_cancel(*, owner: Owner, chat_id: str) -> Reply:
    reply = Reply.objects.filter(owner_key=owner.key, coze_chat_id=chat_id).order_by("-pk").first()
    if reply is None:
        raise ChatError("not_found", "No such chat.")
    return reply


async def achat_cancel(*, owner: Owner, chat_id: str) -> dict:
    """Stop a reply in progress: the upstream stream is closed and Coze's cancel is called."""
    control = running_turns.get(chat_id)
    if control is not None and control.owner_key == owner.key:
        control.stop("cancelled")
        return {"chat_id": chat_id, "status": "cancelled"}
    reply = await _reply_for_cancel(owner=owner, chat_id=chat_id)
    if reply.status != Reply.Status.IN_PROGRESS:
        return {"chat_id": chat_id, "status": reply.status}
    # Running in another worker process: reach it through the channel layer.
    await cancellation.asend_cancel(worker_channel=reply.worker_channel, chat_id=chat_id)
    return {"chat_id": chat_id, "status": "cancelled"}


# --- sessions ---------------------------------------------------------------------------------


TITLE_CHARS = 80


def _sessions_of(owner: Owner):
    """The owner's sessions, each with a `title`: the start of its conversation's first question
    (computed in the same query, through the message index)."""
    first_question = (
        Message.objects.filter(conversation_id=OuterRef("current_conversation_id"), role=Message.Role.USER)
        .order_by("pk")
        .values(start=Substr("content", 1, TITLE_CHARS))[:1]
    )
    return (
        ChatSession.objects.select_related("current_conversation")
        .filter(owner_key=owner.key)
        .annotate(title=Subquery(first_question))
    )


def session_get(*, owner: Owner, session_id: str) -> ChatSession:
    """The owner's session; ChatError("not_found") for unknown or someone else's."""
    session = _sessions_of(owner).filter(session_id=session_id).first()
    if session is None:
        raise ChatError("not_found", "No such session.")
    return session


def session_list(*, owner: Owner):
    return _sessions_of(owner).order_by("-last_activity", "-pk")


def session_messages(*, owner: Owner, session_id: str):
    session = session_get(owner=owner, session_id=session_id)
    if session.current_conversation_id is None:
        return Message.objects.none()
    return (
        Message.objects.filter(conversation_id=session.current_conversation_id).select_related("reply").order_by("pk")
    )


def session_clear(*, owner: Owner, session_id: str) -> ChatSession:
    """Forget the context: the next turn starts a new Coze conversation; the old one is kept."""
    session = session_get(owner=owner, session_id=session_id)
    if session.status == ChatSession.Status.BUSY:
        raise ChatError("session_busy", "This session has a reply in progress; cancel it before clearing.")
    now = timezone.now()
    ChatSession.objects.filter(pk=session.pk).update(current_conversation=None, message_count=0, cleared_at=now)
    session.refresh_from_db()
    return session


def session_delete(*, owner: Owner, session_id: str) -> None:
    session = session_get(owner=owner, session_id=session_id)
    if session.status == ChatSession.Status.BUSY:
        raise ChatError("session_busy", "This session has a reply in progress; cancel it before deleting.")
    with transaction.atomic():
        files.files_delete_for_sessions([session.pk])  # the session's files go with it (chat.files)
        session.delete()
