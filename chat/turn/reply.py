"""A reply once its Coze chat has started (or been continued with tool outputs): Coze's events
translated into ours as they come, nothing stored per delta, and its end stored however it ends —
finished (`finish.afinish_turn`), or parked when the bot waits for the client's local tools
(`tools.apause_turn`). The start and the continuation both hand their upstream to `areply_events`.
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from django.conf import settings
from django.utils import timezone

from chat import coze
from chat.domain.errors import ChatError
from chat.domain.events import (
    ChatEvent,
    CompletedEvent,
    DeltaEvent,
    ErrorEvent,
    FollowUpEvent,
    MessageEvent,
    ReasoningEvent,
    RequiresActionEvent,
    SessionEvent,
)
from chat.turn import finish, leases, start, tools
from chat.turn.control import TurnControl, running_turns
from chat.turn.records import TurnContext, TurnOutcome
from sessions_admin.models import Reply

logger = logging.getLogger(__name__)

TOOLS_UNSUPPORTED = (
    "The bot called a plugin that runs on the client, which this API can't carry; use Coze's API "
    "(/v3/chat) or the OpenAI-compatible API for bots with local plugins."
)
TOOLS_UNSUPPORTED_ON_STUDIO = (
    "The bot called a plugin that runs on the client, and Coze Studio can't continue a chat with "
    "the plugin's output (it has no submit_tool_outputs)."
)


async def areply_events(
    *,
    turn: TurnContext,
    outcome: TurnOutcome,
    upstream: finish.Upstream,
    control: TurnControl,
    started: float,
    detailed: bool,
    local_tools: bool,
) -> AsyncIterator[ChatEvent]:
    """A started (or continued) reply: Coze's events translated into ours, then its end stored —
    finished however it ends, or parked when it pauses for local tools."""
    leases.hold(turn, control)  # its worker's heartbeat renews its session's lease until it ends
    try:
        yield SessionEvent(
            session_id=turn.session_id,
            conversation_id=outcome.conversation_id,
            chat_id=outcome.chat_id,
            section_id=str(turn.conversation_pk),
        )
        async for event in upstream.events:
            if isinstance(event, coze.UpstreamDelta):
                if outcome.first_token_at is None:
                    outcome.first_token_at = time.monotonic() - started
                outcome.answer_parts.append(event.content)
                yield DeltaEvent(event.content, event.message_id)
            elif isinstance(event, coze.UpstreamReasoning):
                if outcome.first_token_at is None:
                    outcome.first_token_at = time.monotonic() - started
                yield ReasoningEvent(event.content, event.message_id)
            elif isinstance(event, coze.UpstreamFollowUp):
                outcome.follow_ups.append(event.content)
                yield FollowUpEvent(event.content, event.message_id)
            elif isinstance(event, coze.UpstreamAnswer):
                outcome.message_id = event.message_id
                if detailed:
                    yield MessageEvent("answer", event.message_id, outcome.answer)
            elif isinstance(event, coze.UpstreamMessage):
                if detailed:
                    yield MessageEvent(event.kind, event.message_id, event.content)
            elif isinstance(event, coze.UpstreamCompleted):
                outcome.usage = event.usage
                outcome.status = Reply.Status.COMPLETED
            elif isinstance(event, coze.UpstreamRequiresAction):
                outcome.tool_calls = event.tool_calls
                if settings.COZE_PLATFORM == "studio":
                    raise ChatError("upstream_error", TOOLS_UNSUPPORTED_ON_STUDIO, retryable=False)
                if not local_tools:
                    raise ChatError("upstream_error", TOOLS_UNSUPPORTED, retryable=False)
                outcome.status = Reply.Status.REQUIRES_ACTION
        if outcome.status == Reply.Status.REQUIRES_ACTION:
            if not await tools.apause_turn(turn, outcome, started, upstream):
                yield ErrorEvent.from_error(outcome.error)
                return
            yield RequiresActionEvent(
                tool_calls=outcome.tool_calls, chat_id=outcome.chat_id, session_id=turn.session_id
            )
            return
        if not await finish.afinish_turn(turn, outcome, started, upstream):
            yield ErrorEvent.from_error(ChatError("service_unavailable", "The reply could not be stored; retry it."))
            return
        start.remember_route(turn.owner_key, turn.session_id, start.route_after(turn, outcome))
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
        # A chat paused for tools nobody will run waits at Coze: cancel it.
        await finish.afinish_turn(turn, outcome, started, upstream, cancel_upstream=bool(outcome.tool_calls))
        yield ErrorEvent.from_error(error)
    except (asyncio.CancelledError, GeneratorExit):
        if outcome.status in (Reply.Status.IN_PROGRESS, Reply.Status.REQUIRES_ACTION):
            outcome.status, outcome.error = start.stopped_status(control), ChatError(control.reason)
        await finish.afinish_turn(turn, outcome, started, upstream, cancel_upstream=True)
        raise
    except BaseException:
        logger.exception("Chat turn %s failed unexpectedly", outcome.chat_id or turn.reply_pk)
        outcome.status, outcome.error = Reply.Status.FAILED, ChatError("internal_error")
        await finish.afinish_turn(turn, outcome, started, upstream)
        raise
    finally:
        leases.let_go(turn, control)
        running_turns.pop(outcome.chat_id, None)
