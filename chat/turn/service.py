"""The chat turn: one path for every transport (sync API, SSE, WebSocket, compatibility paths).

A turn, top to bottom:

1. **Admit** (`achat_stream`): the owner's bots, budgets, rate and concurrent streams (`chat.access.admission`),
   before anything else.
2. **Start** (`start.astart_turn`): store the turn's start — session lock, the user's message, the Reply — in
   one transaction (`store.turn_start`), and open the Coze stream *at the same time*, so the
   commit costs the client no time. Coze needs the session's conversation before it is stored,
   so the turn sends it the route this process last saw for the session (or reads it once), and
   the start checks under the session's row lock that the route still holds; if the session moved
   on meanwhile (cleared or switched bots from another worker) the upstream chat is closed and
   cancelled and the turn starts again in order. If storing fails, the upstream chat is closed
   and cancelled and the client gets `session_busy` or `service_unavailable`: nothing streams
   and nothing is half-stored.
3. **Stream** (`reply.areply_events`): the first event (`session`) is yielded only once the start
   is committed, so the user's message is durable before the first byte of the reply reaches the
   client. Coze's events are translated into ours; nothing touches the database per delta.
4. **Finish** (`finish.afinish_turn`): close the upstream, then store the answer (whole or partial), usage
   and timing and release the lock (`store.turn_finish`, idempotent), however the turn
   ended — completed, failed upstream, cancelled, client gone, server shutting down. If that
   store fails, the client gets `service_unavailable` instead of `completed`, and the store is
   retried in the background until the database is back.

Local tools (docs/api.md §13): when the bot calls a plugin that runs on the client, a transport
that can carry tool calls (`local_tools=True`: Coze's API, the OpenAI-compatible API) gets a
`RequiresActionEvent` as the reply's last event and the reply waits, parked by `chat.turn.tools`;
`achat_continue_events` (`chat.turn.continuation`) goes on with the outputs, on the same Coze chat
and the same stored reply. Other transports fail such a turn (`upstream_error`) and cancel its
Coze chat.

Transports call `achat_events()` (or `achat_send()` for a whole reply), which runs the turn in its
own task, so a cancel request from anywhere can stop it, and adds heartbeats. `detailed=True`
adds Coze's other messages of the reply (`MessageEvent`: the whole answer, verbose,
function_call, tool_response) for the transport that renders Coze's own stream.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from django.conf import settings

from chat.access import admission
from chat.domain.errors import ChatError
from chat.domain.events import (  # PING and Ping: achat_events' heartbeat marker
    PING,
    ChatEvent,
    CompletedEvent,
    ErrorEvent,
    Ping,
)
from chat.domain.inputs import ChatRequest, Owner
from chat.resume import replay, resuming
from chat.runtime.logging import coze_logid_var
from chat.runtime.tasks import in_background
from chat.turn import continuation, finish, leases, records, reply, start
from chat.turn.control import TurnControl, active_turns, await_stopping_turn, running_turns
from chat.turn.records import TurnOutcome
from sessions_admin.models import Reply

logger = logging.getLogger(__name__)

# How long a new turn waits for the session's previous turn, stopping on this worker, to be stored.
PREVIOUS_TURN_WAIT_SECONDS = 3.0


# --- the turn -----------------------------------------------------------------------------------


async def achat_stream(
    *,
    owner: Owner,
    chat_request: ChatRequest,
    transport: str,
    control: TurnControl | None = None,
    detailed: bool = False,
    local_tools: bool = False,
) -> AsyncIterator[ChatEvent]:
    """One chat turn as events, within the owner's limits and budgets (see `_turn_events`).

    Raises ChatError (`rate_limited`, `quota_exceeded`, `bot_not_allowed`; see chat.access.admission)
    before anything is stored when the owner may not start a turn now, and `forbidden` when an
    end-user token names another user (`ChatRequest.narrowed_to`).
    """
    chat_request = chat_request.narrowed_to(owner)
    admitted = await admission.aadmit_turn(owner=owner, bot_id=chat_request.bot_id or settings.COZE_BOT_ID)
    control = control or TurnControl(owner_key=owner.key)
    try:
        async with contextlib.aclosing(
            _turn_events(
                owner=owner,
                chat_request=chat_request,
                transport=transport,
                control=control,
                detailed=detailed,
                local_tools=local_tools,
            )
        ) as events:
            async for event in events:
                yield event
    finally:
        # control.reply_pk: the reply this turn stored, whose finish the release waits for.
        in_background(finish.arelease_when_stored(admitted, control.reply_pk))


async def _turn_events(
    *,
    owner: Owner,
    chat_request: ChatRequest,
    transport: str,
    control: TurnControl | None = None,
    detailed: bool = False,
    local_tools: bool = False,
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
        turn, opening = await start.astart_turn(
            owner=owner, chat_request=chat_request, transport=transport, control=control, started=started
        )
    except ChatError as error:
        # The session's previous reply may be ending here right now (its client just went away).
        if error.code != "session_busy" or not await await_stopping_turn(
            owner_key=owner.key, session_id=control.session_id, wait_seconds=PREVIOUS_TURN_WAIT_SECONDS
        ):
            raise
        turn, opening = await start.astart_turn(
            owner=owner, chat_request=chat_request, transport=transport, control=control, started=started
        )
    control.reply_pk, control.coze_user_id = turn.reply_pk, turn.route.coze_user_id
    leases.hold(turn, control)  # from its start: Coze may take a while to accept the chat
    logger.info("Turn started: session %s, reply %s, via %s", turn.session_id, turn.reply_pk, transport)
    outcome = TurnOutcome()
    upstream: finish.Upstream | None = None
    try:
        upstream = await opening
        first = upstream.first
        outcome.chat_id, outcome.conversation_id, outcome.logid = first.chat_id, first.conversation_id, first.logid
        coze_logid_var.set(first.logid or "-")
        control.chat_id = first.chat_id
        running_turns[first.chat_id] = control
        control.ids_recorded = in_background(start.arecord_upstream_ids(turn, outcome))
    except ChatError as error:
        outcome.status, outcome.error = Reply.Status.FAILED, error
        outcome.logid = outcome.logid or error.logid or ""
        await finish.afinish_turn(turn, outcome, started)
        leases.let_go(turn, control)
        raise
    except (asyncio.CancelledError, GeneratorExit):
        outcome.status, outcome.error = start.stopped_status(control), ChatError(control.reason)
        await asyncio.shield(in_background(start.aabandon_upstream(opening)))
        await finish.afinish_turn(turn, outcome, started)
        leases.let_go(turn, control)
        raise
    except BaseException:
        logger.exception("Chat turn %s failed before the stream started", turn.reply_pk)
        outcome.status, outcome.error = Reply.Status.FAILED, ChatError("internal_error")
        await start.aabandon_upstream(opening)
        await finish.afinish_turn(turn, outcome, started)
        leases.let_go(turn, control)
        raise

    async with contextlib.aclosing(
        reply.areply_events(
            turn=turn,
            outcome=outcome,
            upstream=upstream,
            control=control,
            started=started,
            detailed=detailed,
            local_tools=local_tools,
        )
    ) as events:
        async for event in events:
            outcome.event_chars.append(records.answer_chars(event))  # before its finish reads them
            yield event


async def achat_events(
    *,
    owner: Owner,
    chat_request: ChatRequest,
    transport: str,
    heartbeat: float | None = None,
    control: TurnControl | None = None,
    detailed: bool = False,
    local_tools: bool = False,
) -> AsyncIterator[ChatEvent | Ping]:
    """Run a turn in its own task and yield its events, plus PING every `heartbeat` seconds of silence.

    Raises ChatError before the first event, like `achat_stream`. If the turn is stopped through
    its TurnControl (cancel request, shutdown), yields an ErrorEvent with code `cancelled` or
    `interrupted` and ends. If the consumer goes away, the turn is cancelled and stored — unless
    it is resumable (docs/api.md §9): then it runs on to its end, recording its events for
    `replay.afollow`, and is stored as it ends.
    """
    control = control or TurnControl(owner_key=owner.key)
    control.resumable = chat_request.resumable
    turn = achat_stream(
        owner=owner,
        chat_request=chat_request,
        transport=transport,
        control=control,
        detailed=detailed,
        local_tools=local_tools,
    )
    async for item in _events_in_task(turn, control=control, heartbeat=heartbeat, resumable=chat_request.resumable):
        yield item


async def achat_continue_events(
    *,
    owner: Owner,
    session_id: str,
    chat_id: str,
    outputs: dict[str, str],
    heartbeat: float | None = None,
    control: TurnControl | None = None,
    detailed: bool = False,
) -> AsyncIterator[ChatEvent | Ping]:
    """`achat_continue` in its own task, as `achat_events` runs a turn."""
    control = control or TurnControl(owner_key=owner.key)
    rest = continuation.achat_continue(
        owner=owner, session_id=session_id, chat_id=chat_id, outputs=outputs, control=control, detailed=detailed
    )
    async for item in _events_in_task(rest, control=control, heartbeat=heartbeat, resumable=False):
        yield item


async def _events_in_task(
    events: AsyncIterator[ChatEvent], *, control: TurnControl, heartbeat: float | None, resumable: bool
) -> AsyncIterator[ChatEvent | Ping]:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    end = object()
    last_event_at = loop.time()
    consumer_gone = False

    async def pump() -> None:
        recording = replay.Recording() if resumable else None
        try:
            async for event in events:
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
        if resumable and not task.done():
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
        in_background(resuming.amark_resumable_end(reply_pk=control.reply_pk, client_gone=client_gone))


async def achat_send(*, owner: Owner, chat_request: ChatRequest, transport: str) -> CompletedEvent:
    """A whole reply: consumes the same event stream. Raises ChatError for any failure."""
    async for event in achat_events(owner=owner, chat_request=chat_request, transport=transport):
        if isinstance(event, CompletedEvent):
            return event
        if isinstance(event, ErrorEvent):
            raise ChatError(event.code, event.detail, retryable=event.retryable)
    raise ChatError("upstream_error", "The reply ended without completing.")
