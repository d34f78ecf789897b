"""The start of a turn: send the chat to Coze while its start is stored (docs: chat.turn.service).

Coze needs the session's conversation before it is stored, so the turn sends it the route this
process last saw for the session (or reads it once), and `turn_start` checks under the session's
row lock that the route still holds; if the session moved on meanwhile (cleared or switched bots
from another worker) the upstream chat is closed and cancelled and the turn starts again in
order. If storing fails, the upstream chat is closed and cancelled and the client gets
`session_busy` or `service_unavailable`: nothing streams and nothing is half-stored.
"""

import asyncio
import dataclasses
import logging
import secrets
import uuid
from collections import OrderedDict

from django.conf import settings
from django.utils import timezone as django_timezone

from chat import coze
from chat.domain.errors import ChatError
from chat.domain.inputs import ChatRequest, Owner
from chat.files import uploads
from chat.files.attachments import ResolvedAttachments
from chat.runtime import metrics, wakeups
from chat.runtime.db import db_async
from chat.runtime.tasks import in_background
from chat.turn import cancellation, finish, records, store
from chat.turn.control import TurnControl
from chat.turn.records import Route, RouteChanged, TurnContext, TurnOutcome, TurnStart
from sessions_admin.models import ChatSession, Reply

logger = logging.getLogger(__name__)

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


def _reached(owner: Owner, route: Route) -> Route:
    """`route`, if its session is one the owner reaches: an end-user token only its own user's
    (docs/api.md §2); another's is `not_found`, as another owner's is. The turn's one check of
    that: on the route read before the start, and (as `expected_route`) under the row lock."""
    if owner.end_user_id is not None and route.coze_user_id != owner.end_user_id:
        raise ChatError("not_found", "No such session.")
    return route


async def _aroute_for(*, owner: Owner, chat_request: ChatRequest, session_id: str, bot_id: str) -> Route:
    if chat_request.session_id is None:  # a session this turn creates
        return Route(
            coze_conversation_id="", bot_id=bot_id, coze_user_id=chat_request.user_id or records.default_user(owner)
        )
    known = _routes.get((owner.key, session_id))
    if known is not None and known.bot_id == bot_id and (owner.end_user_id in (None, known.coze_user_id)):
        return Route(
            coze_conversation_id=known.coze_conversation_id,
            bot_id=bot_id,
            coze_user_id=chat_request.user_id or known.coze_user_id,
        )
    route = await store.session_route(
        owner=owner,
        session_id=session_id,
        bot_id=bot_id,
        requested_user_id=chat_request.user_id,
        existing=chat_request.existing_session,
    )
    return _reached(owner, route)


def _restart(start: TurnStart, moved: RouteChanged) -> TurnStart:
    """The start again once its session has moved on (cleared, another bot) since its route was
    read: unchecked, in order — unless the owner is narrowed to an end user: then the session must
    still be that user's, checked again under the row lock."""
    if start.owner.end_user_id is None:
        return dataclasses.replace(start, expected_route=None)
    return dataclasses.replace(start, expected_route=_reached(start.owner, moved.args[0]))


# --- the start -----------------------------------------------------------------------------------


@db_async
def _asession_locked(*, owner: Owner, session_id: str) -> bool:
    """Whether the owner's session has a reply in progress now (a read; `turn_start` decides under
    the row lock)."""
    return ChatSession.objects.filter(
        **owner.scope(), session_id=session_id, locked_until__gt=django_timezone.now()
    ).exists()


async def aopen_upstream(*, chat_request: ChatRequest, route: Route, attachments: tuple[dict, ...]) -> finish.Upstream:
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
    return finish.Upstream(chat, events, first)


# How long a new turn waits for the session's previous turn, stopping on this worker, to be stored.
PREVIOUS_TURN_WAIT_SECONDS = 3.0

# How long a turn that won't use its upstream chat waits for Coze's chat object, to cancel it by id.
ABANDON_WAIT_SECONDS = 5.0


async def aabandon_upstream(opening: asyncio.Task) -> None:
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


async def astart_turn(
    *, owner: Owner, chat_request: ChatRequest, transport: str, control: TurnControl, started: float
) -> tuple[TurnContext, asyncio.Task]:
    """Store the turn's start while its Coze chat opens. Returns the stored turn and the opening task.

    Raises ChatError (session_busy, service_unavailable) with the upstream chat stopped. If the
    caller is cancelled meanwhile, a start that still lands is finished as cancelled.
    """
    bot_id = chat_request.bot_id or settings.COZE_BOT_ID
    session_id = chat_request.session_id or uuid.uuid4().hex
    route = await _aroute_for(owner=owner, chat_request=chat_request, session_id=session_id, bot_id=bot_id)
    if uploads.has_pending_uploads(chat_request.attachments):
        # Images sent inline (OpenAI's data: URLs) go to Coze only for a turn that will run: the
        # admission let it in; a busy session is refused here, before the upload, not after.
        if chat_request.session_id is not None and await _asession_locked(owner=owner, session_id=session_id):
            raise ChatError("session_busy")
        chat_request = dataclasses.replace(
            chat_request, attachments=await uploads.aupload_pending(owner=owner, attachments=chat_request.attachments)
        )
    # Another owner's file_id fails the turn here (not_found), before anything is stored or sent.
    attachments = (
        await store.resolve_attachments(owner=owner, attachments=list(chat_request.attachments))
        if chat_request.attachments
        else ResolvedAttachments()
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
    opening = in_background(aopen_upstream(chat_request=chat_request, route=route, attachments=attachments.items))
    storing = in_background(_astore_start(start))
    try:
        try:
            turn = await asyncio.shield(storing)
        except records.RouteChanged as moved:
            await aabandon_upstream(opening)
            storing = in_background(_astore_start(_restart(start, moved)))
            try:
                turn = await asyncio.shield(storing)
            except records.RouteChanged:  # moved on again (a narrowed start is checked twice)
                raise ChatError("session_busy", "The session changed while this turn started; send it again.") from None
            opening = in_background(
                aopen_upstream(chat_request=chat_request, route=turn.route, attachments=attachments.items)
            )
    except asyncio.CancelledError:
        in_background(_asettle_cancelled_start(storing, opening, control, started))
        raise
    except BaseException:
        await aabandon_upstream(opening)
        raise
    remember_route(owner.key, turn.session_id, turn.route)
    return turn, opening


async def _astore_start(start: TurnStart) -> TurnContext:
    try:
        turn = await store.turn_start(start)
    except (ChatError, records.RouteChanged):
        raise
    except Exception:
        logger.exception("Could not store the start of a turn")
        raise ChatError("service_unavailable", "The message could not be stored; retry shortly.") from None
    metrics.turn_started(turn.transport)  # every stored start is finished, and counted there, once
    return turn


async def _asettle_cancelled_start(
    storing: asyncio.Task, opening: asyncio.Task, control: TurnControl, started: float
) -> None:
    """The caller went away while the start was being stored: stop the upstream and, if the start
    lands anyway, finish it as cancelled so the session is not left locked."""
    await aabandon_upstream(opening)
    await asyncio.wait([storing])
    if storing.cancelled() or storing.exception() is not None:
        return
    outcome = TurnOutcome(status=stopped_status(control), error=ChatError(control.reason))
    await finish.afinish_turn(storing.result(), outcome, started)


def stopped_status(control: TurnControl) -> str:
    return Reply.Status.INTERRUPTED if control.reason == "interrupted" else Reply.Status.CANCELLED


async def arecord_upstream_ids(turn: TurnContext, outcome: TurnOutcome) -> bool:
    """Record Coze's chat id on the Reply while the reply streams, so any worker can cancel it by id.
    Returns whether it stored them.

    This runs once the event loop is free. A short reply may have ended by then: its finish stores
    the ids with the rest, so the extra round trip is skipped (and one still in flight as the finish
    runs writes the same values).
    """
    if outcome.finishing:
        return False
    await store.turn_upstream_started(turn=turn, chat_id=outcome.chat_id, logid=outcome.logid)
    # A cancel or lookup by this chat id, or a session cancel, may be waiting in any worker.
    wakeups.publish(wakeups.reply_topic(turn.reply_pk), wakeups.owner_topic(turn.owner_key))
    return True


def route_after(turn: TurnContext, outcome: TurnOutcome) -> Route:
    """The session's route once this turn is stored: a new conversation has Coze's id now."""
    route = turn.route
    if route.coze_conversation_id or not outcome.conversation_id:
        return route
    return Route(coze_conversation_id=outcome.conversation_id, bot_id=route.bot_id, coze_user_id=route.coze_user_id)
