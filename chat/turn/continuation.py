"""The rest of a reply that paused for the client's local tools, once their outputs came
(docs/api.md §13): claimed back from its pause, admitted like a turn, the same Coze chat
continued, and the same reply stored as it ends (or paused again). See `chat.turn.tools`."""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from chat.access import admission
from chat.domain.errors import ChatError
from chat.domain.events import ChatEvent
from chat.domain.inputs import Owner
from chat.runtime import metrics
from chat.runtime.logging import coze_logid_var
from chat.runtime.tasks import in_background
from chat.turn import finish, records, reply, start, store_tools, tools
from chat.turn.control import TurnControl, running_turns
from sessions_admin.models import Reply

logger = logging.getLogger(__name__)


async def achat_continue(
    *,
    owner: Owner,
    session_id: str,
    chat_id: str,
    outputs: dict[str, str],
    control: TurnControl | None = None,
    detailed: bool = False,
) -> AsyncIterator[ChatEvent]:
    """The rest of a reply that paused for local tools, once their `outputs` (by tool call id)
    came: the same Coze chat continued, the same reply stored as it ends (or paused again).

    Raises ChatError before the first event: `not_found` (no such chat of the owner's session),
    `invalid` (the chat does not wait for outputs, or they don't match its calls), the admission's
    refusals, and Coze's refusal of the outputs. Like `achat_stream` otherwise.
    """
    control = control or TurnControl(owner_key=owner.key)
    control.session_id = session_id
    waiting = await tools.await_paused(owner=owner, session_id=session_id, chat_id=chat_id)
    for_coze = tools.tool_outputs_for(waiting.required_action, outputs)
    admitted = await admission.aadmit_turn(owner=owner, bot_id=waiting.bot_id)
    try:
        paused = await store_tools.turn_resume(
            owner=owner, session_id=session_id, chat_id=chat_id, outputs=outputs, waiting_only=True
        )
        if paused is None:
            raise ChatError("invalid", tools.NOT_WAITING_DETAIL)
        turn, started = paused.turn, time.monotonic()
        metrics.turn_resumed(turn.transport)
        control.reply_pk, control.chat_id, control.coze_user_id = turn.reply_pk, chat_id, turn.route.coze_user_id
        running_turns[chat_id] = control
        outcome = tools.outcome_after_pause(paused, chat_id=chat_id)
        logger.info("Turn continued with %d tool output(s): chat %s", len(for_coze), chat_id)
        try:
            upstream = await tools.acontinue_upstream(paused, chat_id=chat_id, outputs=for_coze)
        except BaseException as exc:
            running_turns.pop(chat_id, None)
            if isinstance(exc, ChatError):
                outcome.status, outcome.error = Reply.Status.FAILED, exc
            elif isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
                outcome.status, outcome.error = start.stopped_status(control), ChatError(control.reason)
            else:
                logger.exception("Continuing chat %s failed", chat_id)
                outcome.status, outcome.error = Reply.Status.FAILED, ChatError("internal_error")
            await finish.afinish_turn(turn, outcome, started, cancel_upstream=True)
            raise
        outcome.logid = upstream.first.logid
        coze_logid_var.set(outcome.logid or "-")
        async with contextlib.aclosing(
            reply.areply_events(
                turn=turn,
                outcome=outcome,
                upstream=upstream,
                control=control,
                started=started,
                detailed=detailed,
                local_tools=True,
            )
        ) as events:
            async for event in events:
                outcome.event_chars.append(records.answer_chars(event))
                yield event
    finally:
        in_background(finish.arelease_when_stored(admitted, control.reply_pk))
