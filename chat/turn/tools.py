"""Replies that wait for the client's local tools (docs/api.md §13).

A bot whose plugin runs on the client pauses its Coze chat (`conversation.chat.requires_action`).
The turn then parks its reply (`store_tools.turn_pause`): status `requires_action`, its session locked,
so busy, until CHAT_TOOL_OUTPUT_TIMEOUT from now; the upstream stream is closed and the turn's
admission slot given back, so a waiting reply holds no stream slot; crash recovery leaves it alone
until that deadline. The client's outputs claim it back (`store_tools.turn_resume`) and the chat
service continues the same Coze chat (`chat.turn.service.achat_continue`); it is then finished like
any other reply. Outputs that don't come in time end it `failed` (`tool_output_timeout`): by a timer
in the worker that paused it, or, if that worker died, by crash recovery once the deadline passed.
A cancel ends a waiting reply `cancelled` the same way.
"""

import asyncio
import logging
import time
from dataclasses import dataclass

from django.conf import settings
from django.utils import timezone

from chat import coze
from chat.domain.errors import ChatError
from chat.domain.inputs import Owner
from chat.runtime import metrics, wakeups
from chat.runtime.db import db_async
from chat.runtime.tasks import in_background
from chat.turn import finish, records, store, store_tools
from chat.turn.records import PausedTurn, TurnContext, TurnOutcome, no_chat, no_conversation, pending_calls
from sessions_admin.models import ChatSession, Reply

logger = logging.getLogger(__name__)


NOT_WAITING_DETAIL = (
    "This chat is not waiting for tool outputs: they came already, or it ended (cancelled, failed, "
    "or its wait of CHAT_TOOL_OUTPUT_TIMEOUT passed)."
)


@dataclass(frozen=True, slots=True)
class Waiting:
    """A reply waiting for its tool outputs, as read before claiming it."""

    bot_id: str
    required_action: dict


@db_async
def await_paused(*, owner: Owner, session_id: str, chat_id: str) -> Waiting:
    """The owner's reply `chat_id` of session `session_id`, waiting for tool outputs; ChatError
    `not_found` (no such session or chat of this owner) or `invalid` (it does not wait)."""
    session_pk = ChatSession.objects.filter(**owner.scope(), session_id=session_id).values_list("pk", flat=True).first()
    if session_pk is None:
        raise no_conversation()
    reply = (
        Reply.objects.filter(session_id=session_pk, coze_chat_id=chat_id)
        .order_by("-pk")
        .values("status", "bot_id", "required_action")
        .first()
    )
    if reply is None:
        raise no_chat()
    if reply["status"] != Reply.Status.REQUIRES_ACTION:
        raise ChatError("invalid", NOT_WAITING_DETAIL)
    return Waiting(bot_id=reply["bot_id"], required_action=reply["required_action"] or {})


async def apause_turn(turn: TurnContext, outcome: TurnOutcome, started: float, upstream: finish.Upstream) -> bool:
    """Close the upstream stream (Coze's chat waits on its side) and park the reply for its tool
    outputs. Returns whether it is parked; if not (the database failed), the reply is finished
    `failed` and Coze's chat cancelled. Shielded, like `finish.afinish_turn`."""
    return await asyncio.shield(in_background(_aclose_and_pause(turn, outcome, started, upstream)))


async def _aclose_and_pause(turn: TurnContext, outcome: TurnOutcome, started: float, upstream: finish.Upstream) -> bool:
    try:
        await upstream.chat.aclose()
    except Exception:
        logger.debug("closing the upstream stream failed", exc_info=True)
    outcome.duration = time.monotonic() - started
    wait_seconds = settings.CHAT_TOOL_OUTPUT_TIMEOUT
    try:
        paused = await store_tools.turn_pause(turn=turn, outcome=outcome, wait_seconds=wait_seconds)
    except Exception:
        logger.exception("Could not store the pause of reply %s for local tools", turn.reply_pk)
        paused = False
    if not paused:
        outcome.status = Reply.Status.FAILED
        outcome.error = ChatError("service_unavailable", "The reply's wait for local tools could not be stored.")
        await finish.afinish_turn(turn, outcome, started, cancel_upstream=True)
        return False
    if records.answer_was_redacted(outcome):
        # The answer kept for the continuation is redacted: the reply's stored answer will be too.
        await store.turn_mark_redacted(turn=turn)
    metrics.turn_paused(turn.transport)
    wakeups.publish(wakeups.reply_topic(turn.reply_pk), wakeups.owner_topic(turn.owner_key))  # no longer running
    _schedule_expiry(owner_key=turn.owner_key, session_id=turn.session_id, chat_id=outcome.chat_id)
    logger.info(
        "Turn paused for %d local tool call(s): chat %s waits up to %g s for their outputs",
        len(outcome.tool_calls),
        outcome.chat_id,
        wait_seconds,
    )
    return True


def _schedule_expiry(*, owner_key: str, session_id: str, chat_id: str, delay: float | None = None) -> None:
    def expire() -> None:
        in_background(aexpire_pause(owner=Owner(key=owner_key), session_id=session_id, chat_id=chat_id))

    wait = settings.CHAT_TOOL_OUTPUT_TIMEOUT if delay is None else delay
    asyncio.get_running_loop().call_later(max(0.0, wait), expire)


@db_async
def _waiting_replies() -> list[tuple[str, str, str, float]]:
    now = timezone.now()
    waiting = Reply.objects.filter(status=Reply.Status.REQUIRES_ACTION, session__locked_until__gt=now).values_list(
        "owner_key", "session__session_id", "coze_chat_id", "session__locked_until"
    )
    return [(owner, session, chat, (until - now).total_seconds()) for owner, session, chat, until in waiting]


async def arearm_expiries() -> int:
    """At a worker's start: a timer for each reply still waiting for its tool outputs, so that one
    whose worker was restarted ends at its deadline too (every worker arms one; the first claims it,
    the others find it ended). Returns how many."""
    waiting = await _waiting_replies()
    for owner_key, session_id, chat_id, seconds in waiting:
        _schedule_expiry(owner_key=owner_key, session_id=session_id, chat_id=chat_id, delay=seconds)
    return len(waiting)


async def aexpire_pause(*, owner: Owner, session_id: str, chat_id: str) -> bool:
    """End a reply still waiting for its tool outputs as `failed` (their time is up). Returns
    whether it was still waiting."""
    paused = await _aclaim(owner=owner, session_id=session_id, chat_id=chat_id)
    if paused is None:
        return False  # continued, cancelled, or ended elsewhere
    timeout = settings.CHAT_TOOL_OUTPUT_TIMEOUT
    error = ChatError("tool_output_timeout", f"The local tools' outputs did not arrive within {timeout:g} s.")
    await aend_paused(paused, chat_id=chat_id, status=Reply.Status.FAILED, error=error)
    return True


async def acancel_paused(*, owner: Owner, session_id: str, chat_id: str) -> bool:
    """Cancel a reply waiting for its tool outputs (and its Coze chat). Returns whether it was waiting."""
    paused = await _aclaim(owner=owner, session_id=session_id, chat_id=chat_id)
    if paused is None:
        return False
    await aend_paused(paused, chat_id=chat_id, status=Reply.Status.CANCELLED, error=ChatError("cancelled"))
    return True


async def _aclaim(*, owner: Owner, session_id: str, chat_id: str) -> PausedTurn | None:
    return await store_tools.turn_resume(
        owner=owner, session_id=session_id, chat_id=chat_id, outputs={}, waiting_only=False
    )


async def aend_paused(paused: PausedTurn, *, chat_id: str, status: str, error: ChatError) -> None:
    """Finish a reply claimed back from its pause without continuing it: stored with the answer
    written before the pause, its Coze chat cancelled."""
    turn = paused.turn
    metrics.turn_resumed(turn.transport)  # counted out when it paused; its finish counts it out again
    answer = paused.required_action.get("answer") or ""
    outcome = TurnOutcome(
        status=status,
        error=error,
        chat_id=chat_id,
        conversation_id=turn.route.coze_conversation_id,
        answer_parts=[answer] if answer else [],
    )
    await finish.afinish_turn(turn, outcome, time.monotonic(), cancel_upstream=True)


def outcome_after_pause(paused: PausedTurn, *, chat_id: str) -> TurnOutcome:
    """The outcome a continued reply starts from: its chat, the answer written before the pause and
    the calls answered so far."""
    answer = paused.required_action.get("answer") or ""
    return TurnOutcome(
        chat_id=chat_id,
        conversation_id=paused.turn.route.coze_conversation_id,
        answer_parts=[answer] if answer else [],
        tools_answered=list(paused.required_action.get("tool_calls", [])),
        # The part before the pause counts as one event of the stored reply: a resume of it knows
        # only the whole answer, the continuation's own events come after.
        event_chars=[0, len(answer)] if answer else [0],
    )


def tool_outputs_for(required_action: dict | None, outputs: dict[str, str]) -> list[tuple[str, str]]:
    """The outputs for Coze, in the calls' order: exactly one for each pending call, else
    ChatError("invalid") naming what is wrong."""
    pending = [call["id"] for call in pending_calls(required_action)]
    unknown = sorted(set(outputs) - set(pending))
    if unknown:
        raise ChatError("invalid", f"tool_outputs: {', '.join(unknown)} is not a pending tool call of this chat.")
    missing = [call_id for call_id in pending if call_id not in outputs]
    if missing:
        raise ChatError("invalid", f"tool_outputs: no output for the tool call {', '.join(missing)}.")
    return [(call_id, outputs[call_id]) for call_id in pending]


async def acontinue_upstream(paused: PausedTurn, *, chat_id: str, outputs: list[tuple[str, str]]) -> finish.Upstream:
    """Send the outputs to Coze and return the continued chat's stream (its first event read)."""
    chat = await coze.achat_submit_tool_outputs(
        conversation_id=paused.turn.route.coze_conversation_id, chat_id=chat_id, tool_outputs=outputs
    )
    try:
        events = chat.events()
        first = await anext(events, None)
        if not isinstance(first, coze.UpstreamStarted):
            raise ChatError("upstream_error", "Coze's continued chat did not start as it should.", logid=chat.logid)
    except BaseException:
        await chat.aclose()
        raise
    return finish.Upstream(chat, events, first)
