"""The sender of the ratings' outbox: forwards each `FeedbackForward` row to Coze's feedback API
through the adapter (`chat.coze.afeedback_create` / `afeedback_delete`), in the background.

* Every worker process runs one sender on its event loop, started with the worker
  (`chat.turn.lifecycle`); `python manage.py forward_feedback` runs one pass by hand. Any number
  of them may run at once: `sessions_admin.feedback.forward_claim` hands each due row to one of
  them (`FOR UPDATE SKIP LOCKED`), and its claim lapses if that sender dies.
* A sender wakes when a rating is made in its own process (`wake`), and otherwise looks for due
  rows every CHAT_FEEDBACK_POLL_SECONDS: retries fall due by their backoff, and rows left by a
  stopped worker are found by the next one to start. Nothing is kept in memory between passes.
* A failure is recorded on the row and retried with exponential backoff
  (`sessions_admin.feedback.forward_failed`); a refusal that can never succeed (Coze does not know
  the message, or has no feedback route, as Coze Studio) gives up at once. The user's request
  never waits for any of this: it only writes the row.
"""

import asyncio
import contextlib
import logging
import weakref
from dataclasses import dataclass, field

from django.conf import settings

from chat import coze
from chat.domain.errors import ChatError
from chat.runtime.db import db_async
from sessions_admin import feedback as fb
from sessions_admin.models import FeedbackForward

logger = logging.getLogger(__name__)

CLAIM_BATCH = 50
CONCURRENT_SENDS = 8
# One call to Coze's feedback API; past this it counts as a failed attempt (retried later).
SEND_TIMEOUT_SECONDS = 15.0


@dataclass
class PassOutcome:
    """What one pass over the due rows did."""

    sent: int = 0
    failed: int = 0
    given_up: int = 0

    @property
    def claimed(self) -> int:
        return self.sent + self.failed + self.given_up


def _describe(error: ChatError) -> str:
    """The error as the row keeps it (and admin shows it): our code, Coze's code and message."""
    text = error.code
    if error.upstream_code is not None:
        text += f" (Coze {error.upstream_code}"
        text += f": {error.upstream_msg})" if error.upstream_msg else ")"
    elif error.detail:
        text += f": {error.detail}"
    return text


def _refused_for_good(error: ChatError) -> bool:
    # Coze answered, and said the request can never succeed as sent. Auth failures are retried:
    # an operator may fix the token within the backoff.
    return error.code == "upstream_error" and not error.retryable


async def _send(task: fb.ForwardTask) -> str:
    """Send one claimed row and record the outcome on it: "sent", "failed" or "given_up"."""
    try:
        async with asyncio.timeout(SEND_TIMEOUT_SECONDS):
            if task.action == FeedbackForward.Action.DELETE:
                await coze.afeedback_delete(conversation_id=task.coze_conversation_id, message_id=task.coze_message_id)
            else:
                await coze.afeedback_create(
                    conversation_id=task.coze_conversation_id,
                    message_id=task.coze_message_id,
                    feedback_type=task.action,
                    comment=task.comment,
                )
    except TimeoutError:
        error = ChatError("upstream_timeout", f"No answer within {SEND_TIMEOUT_SECONDS:g} s.")
    except ChatError as caught:
        error = caught
    except Exception:  # a bug here must not stop the sender; the row is retried
        logger.exception("Forwarding a rating to Coze failed unexpectedly")
        error = ChatError("internal_error")
    else:
        await db_async(fb.forward_done)(task)
        return "sent"
    reason = _describe(error)
    if _refused_for_good(error):
        await db_async(fb.forward_given_up)(task, reason)
        logger.warning("Coze refused a rating for good (message %s): %s", task.coze_message_id, reason)
        return "given_up"
    await db_async(fb.forward_failed)(task, reason)
    logger.info("Forwarding a rating to Coze failed (attempt %d): %s", task.attempt, reason)
    return "failed"


async def aforward_due(*, limit: int = CLAIM_BATCH) -> PassOutcome:
    """Claim up to `limit` due rows and send them, CONCURRENT_SENDS at a time."""
    tasks = await db_async(fb.forward_claim)(limit=limit)
    outcome = PassOutcome()
    if not tasks:
        return outcome
    slots = asyncio.Semaphore(CONCURRENT_SENDS)

    async def send(task: fb.ForwardTask) -> str:
        async with slots:
            return await _send(task)

    for result in await asyncio.gather(*(send(task) for task in tasks)):
        setattr(outcome, result, getattr(outcome, result) + 1)
    return outcome


async def aforward_all() -> PassOutcome:
    """Pass over the due rows until none is left (what the management command runs)."""
    total = PassOutcome()
    while True:
        outcome = await aforward_due()
        total.sent += outcome.sent
        total.failed += outcome.failed
        total.given_up += outcome.given_up
        if outcome.claimed < CLAIM_BATCH:
            return total


# --- the worker's sender -------------------------------------------------------------------------


@dataclass
class _Sender:
    task: asyncio.Task
    woken: asyncio.Event = field(default_factory=asyncio.Event)


# One sender per event loop (a worker has one; the tests' servers each have their own).
_senders: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Sender]" = weakref.WeakKeyDictionary()


def start() -> None:
    """Start this event loop's sender unless it runs already. Called on the loop, at every request
    (cheap): a sender that died of a bug is started again."""
    loop = asyncio.get_running_loop()
    sender = _senders.get(loop)
    if sender is not None and not sender.task.done():
        return
    woken = asyncio.Event()
    task = loop.create_task(_run(woken), name="feedback-outbox-sender")
    _senders[loop] = _Sender(task=task, woken=woken)


def wake() -> None:
    """A rating was just committed: let this process's sender look now rather than at its next
    poll. Safe from any thread (DRF views run in threads)."""
    for loop, sender in list(_senders.items()):
        with contextlib.suppress(RuntimeError):  # that loop has closed
            loop.call_soon_threadsafe(sender.woken.set)


async def _run(woken: asyncio.Event) -> None:
    while True:
        woken.clear()
        try:
            outcome = await aforward_due()
        except Exception:  # the database away, for instance: try again at the next poll
            logger.warning("The ratings' outbox sender could not read the outbox", exc_info=True)
            outcome = PassOutcome()
        if outcome.claimed >= CLAIM_BATCH:
            continue  # more may be due
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(settings.CHAT_FEEDBACK_POLL_SECONDS):
                await woken.wait()
