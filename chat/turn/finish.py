"""The end of a turn: close the upstream, then store the outcome, however the turn ended.

The answer (whole or partial), usage and timing are stored and the session's lock released by
`turn_finish` (idempotent), whether the turn completed, failed upstream, was cancelled, lost its
client or was stopped by a shutdown. If that store fails, the store is retried in the background
until the database is back, and the caller is told so (the client gets `service_unavailable`).
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from chat import coze
from chat.access import admission
from chat.runtime import metrics, wakeups
from chat.runtime.tasks import in_background
from chat.turn import leases, records, store
from chat.turn.records import TurnContext, TurnOutcome

logger = logging.getLogger(__name__)

# Seconds between retries of a finish that could not be stored (the database was away).
FINISH_RETRY_DELAYS = (1, 2, 4, 8, 16, 32)

# The finishes not yet stored, by reply pk: the storing task, or the background retry that took
# over from it. A turn gives back its admission slot only once its finish (and so its spend, which
# the same transaction adds to the daily rollup) is stored or given up (`astored`): an admission
# must never find the slot free while the reply's tokens are missing from the spend it reads.
_storing: dict[int, asyncio.Task] = {}


def _track(reply_pk: int, task: asyncio.Task) -> None:
    _storing[reply_pk] = task

    def forget(done: asyncio.Task) -> None:
        if _storing.get(reply_pk) is done:  # not when a retry took over
            del _storing[reply_pk]

    task.add_done_callback(forget)


async def astored(reply_pk: int | None) -> None:
    """Wait until the finish of reply `reply_pk` is stored, or given up after its retries (at once
    when none is pending). Never raises what the storing raised."""
    while reply_pk is not None and (task := _storing.get(reply_pk)) is not None:
        await asyncio.wait([task])


class Upstream:
    """The Coze side of a turn once it started: the open stream and its events after the first."""

    def __init__(self, chat: coze.UpstreamChat, events: AsyncIterator, first: coze.UpstreamStarted):
        self.chat = chat
        self.events = events
        self.first = first


async def afinish_turn(
    turn: TurnContext,
    outcome: TurnOutcome,
    started: float,
    upstream: Upstream | None = None,
    *,
    cancel_upstream: bool = False,
) -> bool:
    """Close the upstream, then store the outcome. Returns whether it was stored.

    Runs as its own task behind a shield: when the turn is being cancelled (client gone, cancel
    request, shutdown), a further cancellation must neither leave the connection open nor lose
    the record.
    """
    task = in_background(_aclose_and_store(turn, outcome, started, upstream, cancel_upstream))
    _track(turn.reply_pk, task)
    return await asyncio.shield(task)


async def arelease_when_stored(admitted: admission.Admission, reply_pk: int | None) -> None:
    """Give back a turn's admission (its stream slot, its reservation) once its spend is stored:
    the order that keeps a concurrent admission from reading a budget without this reply."""
    await astored(reply_pk)
    await admission.arelease_turn(admitted)


async def _aclose_and_store(
    turn: TurnContext,
    outcome: TurnOutcome,
    started: float,
    upstream: Upstream | None,
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
        await _astore(turn, outcome)
        stored = True
        _published_end(turn)
    except Exception:
        logger.exception("Could not store the outcome of reply %s; retrying in the background", turn.reply_pk)
        leases.hold(turn)  # this worker has the answer: its lease stays renewed while it retries
        _track(turn.reply_pk, in_background(_astore_finish_later(turn, outcome)))
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


async def _astore(turn: TurnContext, outcome: TurnOutcome) -> None:
    """Store the outcome; then, only when CHAT_REDACT changed the stored answer, mark the reply
    redacted (a separate UPDATE outside the turn's SQL function, see `store.turn_mark_redacted`).
    Both are idempotent, so a retry repeats them safely."""
    await store.turn_finish(turn=turn, outcome=outcome)
    if records.answer_was_redacted(outcome):
        await store.turn_mark_redacted(turn=turn)


def _published_end(turn: TurnContext) -> None:
    """Wake whoever waits for this reply's end (a cancel, a resume) in any worker; the owner's
    topic too, since a short reply records its chat id only here."""
    wakeups.publish(wakeups.reply_topic(turn.reply_pk), wakeups.owner_topic(turn.owner_key))


async def _astore_finish_later(turn: TurnContext, outcome: TurnOutcome) -> None:
    """Retry a finish the database refused: `turn_finish` is idempotent, so a retry after a commit
    whose acknowledgement was lost stores nothing twice."""
    try:
        for delay in FINISH_RETRY_DELAYS:
            await asyncio.sleep(delay)
            try:
                await _astore(turn, outcome)
                _published_end(turn)
            except Exception as exc:  # noqa: BLE001 - logged; the next retry or crash recovery takes over
                logger.warning("Storing the outcome of reply %s failed again: %s", turn.reply_pk, exc)
                continue
            logger.info("Stored the outcome of reply %s after a retry", turn.reply_pk)
            return
        logger.error("Gave up storing the outcome of reply %s; crash recovery will mark it interrupted", turn.reply_pk)
    finally:
        leases.let_go(turn)
