"""The chat turn: one path for every transport (sync API, SSE, WebSocket, compatibility paths).

A turn, top to bottom:

1. **Admit** (`achat_stream`): the owner's bots, budgets, rate and concurrent streams (`chat.limits`),
   before anything else.
2. **Start** (`_start`): store the turn's start — session lock, the user's message, the Reply — in
   one transaction (`turn_store.turn_start`), and open the Coze stream *at the same time*, so the
   commit costs the client no time. Coze needs the session's conversation before it is stored,
   so the turn sends it the route this process last saw for the session (or reads it once), and
   the start checks under the session's row lock that the route still holds; if the session moved
   on meanwhile (cleared or switched bots from another worker) the upstream chat is closed and
   cancelled and the turn starts again in order. If storing fails, the upstream chat is closed
   and cancelled and the client gets `session_busy` or `service_unavailable`: nothing streams
   and nothing is half-stored.
3. **Stream**: the first event (`session`) is yielded only once the start is committed, so the
   user's message is durable before the first byte of the reply reaches the client. Coze's
   events are translated into ours; nothing touches the database per delta.
4. **Finish** (`_finish`): close the upstream, then store the answer (whole or partial), usage
   and timing and release the lock (`turn_store.turn_finish`, idempotent), however the turn
   ended — completed, failed upstream, cancelled, client gone, server shutting down. If that
   store fails, the client gets `service_unavailable` instead of `completed`, and the store is
   retried in the background until the database is back.

Transports call `achat_events()` (or `achat_send()` for a whole reply), which runs the turn in its
own task, so a cancel request from anywhere can stop it, and adds heartbeats.
"""

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator

from django.conf import settings
from django.utils import timezone

from chat import cancellation, coze, files, limits, metrics, replay, resume, turn_store
from chat.control import TurnControl, active_turns, await_stopping_turn, in_background, running_turns
from chat.domain.errors import ChatError
from chat.domain.events import (  # PING and Ping: achat_events' heartbeat marker
    PING,
    ChatEvent,
    CompletedEvent,
    DeltaEvent,
    ErrorEvent,
    FollowUpEvent,
    Ping,
    ReasoningEvent,
    SessionEvent,
)
from chat.domain.inputs import ChatRequest, Owner
from chat.logging import coze_logid_var
from chat.turn_store import Route, TurnContext, TurnOutcome, TurnStart
from sessions_admin.models import Reply

logger = logging.getLogger(__name__)

# Seconds between retries of a finish that could not be stored (the database was away).
FINISH_RETRY_DELAYS = (1, 2, 4, 8, 16, 32)


# --- routes of known sessions -------------------------------------------------------------------

# The route of each session this process has seen recently, so its next turn can call Coze while
# its start is being stored. Only a hint: `turn_start` checks it under the session's row lock.
ROUTES_MAX = 10_000
_routes: OrderedDict[tuple[str, str], Route] = OrderedDict()


def remember_route(owner_key: str, session_id: str, route: Route) -> None:
    _routes[(owner_key, session_id)] = route
    _routes.move_to_end((owner_key, session_id))
    while len(_routes) > ROUTES_MAX:
        _routes.popitem(last=False)


def forget_route(owner_key: str, session_id: str) -> None:
    _routes.pop((owner_key, session_id), None)


async def _route_for(*, owner: Owner, chat_request: ChatRequest, session_id: str, bot_id: str) -> Route:
    if chat_request.session_id is None:  # a session this turn creates
        return Route(coze_conversation_id="", bot_id=bot_id, coze_user_id=chat_request.user_id or settings.COZE_USER_ID)
    known = _routes.get((owner.key, session_id))
    if known is not None and known.bot_id == bot_id:
        return Route(
            coze_conversation_id=known.coze_conversation_id,
            bot_id=bot_id,
            coze_user_id=chat_request.user_id or known.coze_user_id,
        )
    return await turn_store.session_route(
        owner=owner, session_id=session_id, bot_id=bot_id, requested_user_id=chat_request.user_id
    )


# --- the turn -----------------------------------------------------------------------------------


async def achat_stream(
    *, owner: Owner, chat_request: ChatRequest, transport: str, control: TurnControl | None = None
) -> AsyncIterator[ChatEvent]:
    """One chat turn as events, within the owner's limits and budgets (see `_turn_events`).

    Raises ChatError (`rate_limited`, `quota_exceeded`, `bot_not_allowed`; see chat.limits)
    before anything is stored when the owner may not start a turn now.
    """
    admission = await limits.aadmit_turn(owner=owner, bot_id=chat_request.bot_id or settings.COZE_BOT_ID)
    try:
        async with contextlib.aclosing(
            _turn_events(owner=owner, chat_request=chat_request, transport=transport, control=control)
        ) as events:
            async for event in events:
                yield event
    finally:
        in_background(limits.arelease_turn(admission))


class _Upstream:
    """The Coze side of a turn once it started: the open stream and its events after the first."""

    def __init__(self, chat: coze.UpstreamChat, events: AsyncIterator, first: coze.UpstreamStarted):
        self.chat = chat
        self.events = events
        self.first = first


async def _open_upstream(*, chat_request: ChatRequest, route: Route, attachments: tuple[dict, ...]) -> _Upstream:
    """Send the chat to Coze and wait for its chat object. Raises ChatError; closes what it opened."""
    chat = await coze.achat_open(
        bot_id=route.bot_id,
        user_id=route.coze_user_id,
        conversation_id=route.coze_conversation_id,
        messages=coze.build_messages(
            message=chat_request.message,
            additional_messages=chat_request.additional_messages,
            attachments=attachments,
        ),
        custom_variables=chat_request.custom_variables,
        meta_data=chat_request.meta_data,
    )
    try:
        events = chat.events()
        try:
            first = await anext(events)
        except StopAsyncIteration:
            raise ChatError("upstream_error", "Coze ended the stream before it started.", logid=chat.logid) from None
        if not isinstance(first, coze.UpstreamStarted):
            raise ChatError("upstream_error", "Coze's stream did not start with the chat object.", logid=chat.logid)
    except BaseException:
        await chat.aclose()
        raise
    return _Upstream(chat, events, first)


# How long a new turn waits for the session's previous turn, stopping on this worker, to be stored.
PREVIOUS_TURN_WAIT_SECONDS = 3.0

# How long a turn that won't use its upstream chat waits for Coze's chat object, to cancel it by id.
ABANDON_WAIT_SECONDS = 5.0


async def _abandon_upstream(opening: asyncio.Task) -> None:
    """Stop an upstream chat the turn won't use: close its stream and ask Coze to cancel it.

    The chat is let open first (Coze's chat object comes at once), since only its id lets Coze's
    cancel stop it; a request that hangs is dropped instead.
    """
    await asyncio.wait([opening], timeout=ABANDON_WAIT_SECONDS)
    if not opening.done():
        opening.cancel()
        await asyncio.wait([opening])
    if opening.cancelled() or opening.exception() is not None:
        return
    upstream = opening.result()
    await upstream.chat.aclose()
    in_background(coze.achat_cancel(conversation_id=upstream.first.conversation_id, chat_id=upstream.first.chat_id))


async def _start(
    *, owner: Owner, chat_request: ChatRequest, transport: str, control: TurnControl, started: float
) -> tuple[TurnContext, asyncio.Task]:
    """Store the turn's start while its Coze chat opens. Returns the stored turn and the opening task.

    Raises ChatError (session_busy, service_unavailable) with the upstream chat stopped. If the
    caller is cancelled meanwhile, a start that still lands is finished as cancelled.
    """
    bot_id = chat_request.bot_id or settings.COZE_BOT_ID
    session_id = chat_request.session_id or uuid.uuid4().hex
    route = await _route_for(owner=owner, chat_request=chat_request, session_id=session_id, bot_id=bot_id)
    # Another owner's file_id fails the turn here (not_found), before anything is stored or sent.
    attachments = (
        await turn_store.resolve_attachments(owner_key=owner.key, attachments=list(chat_request.attachments))
        if chat_request.attachments
        else files.ResolvedAttachments()
    )
    start = TurnStart(
        owner=owner,
        chat_request=chat_request,
        session_id=session_id,
        bot_id=bot_id,
        transport=transport,
        worker_channel=await cancellation.aworker_channel(),
        lock_token=secrets.token_hex(8),
        attachments=attachments,
        expected_route=route,
    )
    # Coze's request goes out first: its round trip is the longer one, and the first byte waits for both.
    opening = in_background(_open_upstream(chat_request=chat_request, route=route, attachments=attachments.items))
    storing = in_background(_store_start(start))
    try:
        try:
            turn = await asyncio.shield(storing)
        except turn_store.RouteChanged:
            await _abandon_upstream(opening)
            storing = in_background(_store_start(dataclasses.replace(start, expected_route=None)))
            turn = await asyncio.shield(storing)
            opening = in_background(
                _open_upstream(chat_request=chat_request, route=turn.route, attachments=attachments.items)
            )
    except asyncio.CancelledError:
        in_background(_settle_cancelled_start(storing, opening, control, started))
        raise
    except BaseException:
        await _abandon_upstream(opening)
        raise
    remember_route(owner.key, turn.session_id, turn.route)
    return turn, opening


async def _store_start(start: TurnStart) -> TurnContext:
    try:
        turn = await turn_store.turn_start(start)
    except (ChatError, turn_store.RouteChanged):
        raise
    except Exception:
        logger.exception("Could not store the start of a turn")
        raise ChatError("service_unavailable", "The message could not be stored; retry shortly.") from None
    metrics.turn_started(turn.transport)  # every stored start is finished, and counted there, once
    return turn


async def _settle_cancelled_start(
    storing: asyncio.Task, opening: asyncio.Task, control: TurnControl, started: float
) -> None:
    """The caller went away while the start was being stored: stop the upstream and, if the start
    lands anyway, finish it as cancelled so the session is not left locked."""
    await _abandon_upstream(opening)
    await asyncio.wait([storing])
    if storing.cancelled() or storing.exception() is not None:
        return
    outcome = TurnOutcome(status=_stopped_status(control), error=ChatError(control.reason))
    await _finish(storing.result(), outcome, started)


def _stopped_status(control: TurnControl) -> str:
    return Reply.Status.INTERRUPTED if control.reason == "interrupted" else Reply.Status.CANCELLED


async def _turn_events(
    *, owner: Owner, chat_request: ChatRequest, transport: str, control: TurnControl | None = None
) -> AsyncIterator[ChatEvent]:
    """One chat turn as events.

    Raises ChatError before the first event (busy session, storage down, Coze refused or
    unreachable): the transports answer those as plain errors. After the `session` event,
    failures are yielded as an ErrorEvent, which is then the last event. The turn is stored
    however it ends, including when the consumer stops early (CancelledError / GeneratorExit):
    then it counts as cancelled.
    """
    control = control or TurnControl(owner_key=owner.key)
    control.session_id = chat_request.session_id or ""
    started = time.monotonic()
    try:
        turn, opening = await _start(
            owner=owner, chat_request=chat_request, transport=transport, control=control, started=started
        )
    except ChatError as error:
        # The session's previous reply may be ending here right now (its client just went away).
        if error.code != "session_busy" or not await await_stopping_turn(
            owner_key=owner.key, session_id=control.session_id, wait_seconds=PREVIOUS_TURN_WAIT_SECONDS
        ):
            raise
        turn, opening = await _start(
            owner=owner, chat_request=chat_request, transport=transport, control=control, started=started
        )
    control.reply_pk = turn.reply_pk
    logger.info("Turn started: session %s, reply %s, via %s", turn.session_id, turn.reply_pk, transport)
    outcome = TurnOutcome()
    upstream: _Upstream | None = None
    try:
        upstream = await opening
        first = upstream.first
        outcome.chat_id, outcome.conversation_id, outcome.logid = first.chat_id, first.conversation_id, first.logid
        coze_logid_var.set(first.logid or "-")
        control.chat_id = first.chat_id
        running_turns[first.chat_id] = control
        in_background(_record_upstream_ids(turn, outcome))
    except ChatError as error:
        outcome.status, outcome.error = Reply.Status.FAILED, error
        outcome.logid = outcome.logid or error.logid or ""
        await _finish(turn, outcome, started)
        raise
    except (asyncio.CancelledError, GeneratorExit):
        outcome.status, outcome.error = _stopped_status(control), ChatError(control.reason)
        await asyncio.shield(in_background(_abandon_upstream(opening)))
        await _finish(turn, outcome, started)
        raise
    except BaseException:
        logger.exception("Chat turn %s failed before the stream started", turn.reply_pk)
        outcome.status, outcome.error = Reply.Status.FAILED, ChatError("internal_error")
        await _abandon_upstream(opening)
        await _finish(turn, outcome, started)
        raise

    lock_renewed_at = started
    try:
        yield SessionEvent(session_id=turn.session_id, conversation_id=outcome.conversation_id, chat_id=outcome.chat_id)
        async for event in upstream.events:
            if isinstance(event, coze.UpstreamDelta):
                if outcome.first_token_at is None:
                    outcome.first_token_at = time.monotonic() - started
                outcome.answer_parts.append(event.content)
                yield DeltaEvent(event.content)
            elif isinstance(event, coze.UpstreamReasoning):
                if outcome.first_token_at is None:
                    outcome.first_token_at = time.monotonic() - started
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
                in_background(turn_store.turn_renew_lock(turn=turn))
        if not await _finish(turn, outcome, started, upstream):
            yield ErrorEvent.from_error(ChatError("service_unavailable", "The reply could not be stored; retry it."))
            return
        remember_route(turn.owner_key, turn.session_id, _route_after(turn, outcome))
        yield CompletedEvent(
            message_id=outcome.message_id or f"reply-{turn.reply_pk}",
            content=outcome.answer,
            usage=outcome.usage,
            conversation_id=outcome.conversation_id,
            session_id=turn.session_id,
            chat_id=outcome.chat_id,
            follow_ups=list(outcome.follow_ups),
            timestamp=timezone.now().isoformat(),
        )
    except ChatError as error:
        outcome.status, outcome.error = Reply.Status.FAILED, error
        await _finish(turn, outcome, started, upstream)
        yield ErrorEvent.from_error(error)
    except (asyncio.CancelledError, GeneratorExit):
        if outcome.status == Reply.Status.IN_PROGRESS:
            outcome.status, outcome.error = _stopped_status(control), ChatError(control.reason)
        await _finish(turn, outcome, started, upstream, cancel_upstream=True)
        raise
    except BaseException:
        logger.exception("Chat turn %s failed unexpectedly", outcome.chat_id or turn.reply_pk)
        outcome.status, outcome.error = Reply.Status.FAILED, ChatError("internal_error")
        await _finish(turn, outcome, started, upstream)
        raise
    finally:
        running_turns.pop(outcome.chat_id, None)


async def _record_upstream_ids(turn: TurnContext, outcome: TurnOutcome) -> None:
    """Record Coze's chat id on the Reply while the reply streams, so any worker can cancel it by id.

    This runs once the event loop is free. A short reply may have ended by then: its finish stores
    the ids with the rest, so the extra round trip is skipped (and one still in flight as the finish
    runs writes the same values).
    """
    if not outcome.finishing:
        await turn_store.turn_upstream_started(turn=turn, chat_id=outcome.chat_id, logid=outcome.logid)


def _route_after(turn: TurnContext, outcome: TurnOutcome) -> Route:
    """The session's route once this turn is stored: a new conversation has Coze's id now."""
    route = turn.route
    if route.coze_conversation_id or not outcome.conversation_id:
        return route
    return Route(coze_conversation_id=outcome.conversation_id, bot_id=route.bot_id, coze_user_id=route.coze_user_id)


async def _finish(
    turn: TurnContext,
    outcome: TurnOutcome,
    started: float,
    upstream: _Upstream | None = None,
    *,
    cancel_upstream: bool = False,
) -> bool:
    """Close the upstream, then store the outcome. Returns whether it was stored.

    Runs as its own task behind a shield: when the turn is being cancelled (client gone, cancel
    request, shutdown), a further cancellation must neither leave the connection open nor lose
    the record.
    """
    return await asyncio.shield(in_background(_close_and_store(turn, outcome, started, upstream, cancel_upstream)))


async def _close_and_store(
    turn: TurnContext,
    outcome: TurnOutcome,
    started: float,
    upstream: _Upstream | None,
    cancel_upstream: bool,
) -> bool:
    if upstream is not None:
        try:
            # Closing the HTTP response is what stops the stream reaching us (and Coze sending it).
            await upstream.chat.aclose()
        except Exception:
            logger.debug("closing the upstream stream failed", exc_info=True)
    if cancel_upstream and outcome.chat_id and outcome.conversation_id:
        # Coze's cancel stops generation and billing on its side; closing alone may not.
        in_background(coze.achat_cancel(conversation_id=outcome.conversation_id, chat_id=outcome.chat_id))
    outcome.finishing = True
    outcome.duration = time.monotonic() - started
    try:
        await turn_store.turn_finish(turn=turn, outcome=outcome)
        stored = True
    except Exception:
        logger.exception("Could not store the outcome of reply %s; retrying in the background", turn.reply_pk)
        in_background(_store_finish_later(turn, outcome))
        stored = False
    error = outcome.error
    metrics.turn_finished(
        transport=turn.transport,
        status=outcome.status,
        bot_id=turn.route.bot_id,
        input_tokens=outcome.usage.input_tokens,
        output_tokens=outcome.usage.output_tokens,
        time_to_first_token=outcome.first_token_at,
        duration=outcome.duration,
        error_code=error.code if error else None,
        upstream_error=bool(error and (error.code.startswith("upstream") or error.upstream_code is not None)),
    )
    logger.info(
        "Turn ended %s: chat %s, %d tokens, %.0f ms%s",
        outcome.status,
        outcome.chat_id or "-",
        outcome.usage.total_tokens,
        outcome.duration * 1000,
        f", {error.code}: {error.detail}" if error else "",
    )
    return stored


async def _store_finish_later(turn: TurnContext, outcome: TurnOutcome) -> None:
    """Retry a finish the database refused: `turn_finish` is idempotent, so a retry after a commit
    whose acknowledgement was lost stores nothing twice."""
    for delay in FINISH_RETRY_DELAYS:
        await asyncio.sleep(delay)
        try:
            await turn_store.turn_finish(turn=turn, outcome=outcome)
        except Exception as exc:  # noqa: BLE001 - logged; the next retry or crash recovery takes over
            logger.warning("Storing the outcome of reply %s failed again: %s", turn.reply_pk, exc)
            continue
        logger.info("Stored the outcome of reply %s after a retry", turn.reply_pk)
        return
    logger.error("Gave up storing the outcome of reply %s; crash recovery will mark it interrupted", turn.reply_pk)


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
    `interrupted` and ends. If the consumer goes away, the turn is cancelled and stored — unless
    it is resumable (docs/api.md §9): then it runs on to its end, recording its events for
    `replay.afollow`, and is stored as it ends.
    """
    loop = asyncio.get_running_loop()
    control = control or TurnControl(owner_key=owner.key)
    control.resumable = chat_request.resumable
    queue: asyncio.Queue = asyncio.Queue()
    end = object()
    last_event_at = loop.time()
    consumer_gone = False

    async def pump() -> None:
        recording = replay.Recording() if chat_request.resumable else None
        try:
            async for event in achat_stream(
                owner=owner, chat_request=chat_request, transport=transport, control=control
            ):
                if recording is not None:
                    recording.add(event, control.reply_pk)
                if not consumer_gone:
                    queue.put_nowait(event)
        except BaseException as exc:
            if recording is not None:
                _end_recording(recording, exc, control, consumer_gone)
            queue.put_nowait((end, exc))
            raise
        if recording is not None:
            _end_recording(recording, None, control, consumer_gone)
        queue.put_nowait((end, None))

    timer: asyncio.TimerHandle | None = None

    def tick() -> None:
        nonlocal timer
        if loop.time() - last_event_at >= heartbeat * 0.99:
            queue.put_nowait(PING)
        timer = loop.call_later(heartbeat, tick)

    control.task = loop.create_task(pump())
    active_turns.add(control)
    control.task.add_done_callback(lambda _: active_turns.discard(control))
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
                    yield ErrorEvent.from_error(ChatError(control.reason))
                    return
                raise exc
            if item is not PING:
                started_streaming = True
                last_event_at = loop.time()
            yield item
    finally:
        consumer_gone = True
        if timer is not None:
            timer.cancel()
        task = control.task
        if chat_request.resumable and not task.done():
            # Client gone, reply not: it runs on (in active_turns, so a shutdown still stops it)
            # and stores itself as it ends.
            task.add_done_callback(_retrieve_exception)
        else:
            if not task.done():
                if not task.cancelling():
                    task.cancel()
                # The turn stores its own outcome; wait for that, whatever it raises.
                await asyncio.wait([task])
            _retrieve_exception(task)


def _retrieve_exception(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved


def _end_recording(
    recording: replay.Recording, exc: BaseException | None, control: TurnControl, client_gone: bool
) -> None:
    """Close a resumable reply's recording as its stream ends, and note on the Reply how it ended.

    A stopped turn's stream ends with the `error` that `achat_events` adds; any other failure
    after the start with `internal_error` (the live client's connection just breaks there).
    """
    if exc is None:
        recording.end()
    elif isinstance(exc, asyncio.CancelledError):
        recording.end(ErrorEvent.from_error(ChatError(control.reason)))
    elif isinstance(exc, ChatError):
        recording.end(ErrorEvent.from_error(exc))
    else:
        recording.end(ErrorEvent.from_error(ChatError("internal_error")))
    if control.reply_pk is not None:
        in_background(
            resume.amark_resumable_end(
                reply_pk=control.reply_pk, client_gone=client_gone, answer_offsets=recording.answer_offsets()
            )
        )


async def achat_send(*, owner: Owner, chat_request: ChatRequest, transport: str) -> CompletedEvent:
    """A whole reply: consumes the same event stream. Raises ChatError for any failure."""
    async for event in achat_events(owner=owner, chat_request=chat_request, transport=transport):
        if isinstance(event, CompletedEvent):
            return event
        if isinstance(event, ErrorEvent):
            raise ChatError(event.code, event.detail, retryable=event.retryable)
    raise ChatError("upstream_error", "The reply ended without completing.")
