"""The chat turn's database steps: start it (lock the session, store the user's message, open the
Reply), finish it (store the answer, usage and timing, release the lock). A reply that waits for
the client's local tools is paused and claimed back by `chat.turn.store_tools` (docs/api.md §13).

Each step is one short transaction, a constant amount of work per turn however long the reply.
On PostgreSQL the start and the finish are each one function call (migrations 0011, and 0013 with 0019) run
from the event loop on `chat.runtime.db`'s async connections; elsewhere the same steps run through the ORM
(`chat.turn.store_orm`) on the chat service's database threads. What they guarantee:

* `turn_start` commits the session lock, the user's message and the Reply together or not at
  all. It reads the session under a row lock (`SELECT … FOR UPDATE NOWAIT`, migration 0020), so
  a concurrent clear or delete waits for it (at most CHAT_DB_LOCK_TIMEOUT) and then sees the
  session busy, it can't continue a conversation that a clear has just left, and a session whose
  row another transaction holds is `session_busy` at once, never a wait.
* The lock is a lease in the database's clock (`NOW()`), never a worker's, so clock skew between
  hosts can't steal a live lock; a crashed worker's lease lapses after CHAT_SESSION_LOCK_TTL.
* `turn_finish` is idempotent: it stores an outcome only while the Reply is still in progress, so
  a retry after a commit whose acknowledgement was lost stores nothing twice.
"""

import asyncio
import json

from django.conf import settings
from django.db import IntegrityError, connection
from django.db.models import Q

from chat.domain import transcripts
from chat.domain.errors import ChatError
from chat.domain.inputs import Owner
from chat.files import attachments
from chat.runtime.db import apg_fetchone, bounded_locks, db_async, on_postgresql
from chat.turn import records, store_orm
from chat.turn.records import Route, RouteChanged, TurnContext, TurnOutcome, TurnStart
from sessions_admin.models import ChatSession, Conversation, Message, Reply
from sessions_admin.rollup import ttft_bucket


async def session_route(
    *, owner: Owner, session_id: str, bot_id: str, requested_user_id: str | None, existing: bool = False
) -> Route:
    """The route a turn of this session would take now (one indexed read; a new session's if none,
    or ChatError `not_found` when the session must be `existing`).

    A conversation created without a bot (Coze's API, docs/api.md §13) takes the bot of its first
    turn here, so that turn continues it (and the Coze conversation it may hold already).
    """
    if on_postgresql():
        row = await apg_fetchone(ROUTE_SQL, [owner.key, session_id])
    else:
        row = await _session_route_row(owner_key=owner.key, session_id=session_id)
    if row is None:
        if existing:
            raise records.no_conversation()
        return Route(
            coze_conversation_id="", bot_id=bot_id, coze_user_id=requested_user_id or records.default_user(owner)
        )
    coze_user_id, conversation_bot_id, coze_conversation_id, conversation_pk = row
    if conversation_pk is not None and conversation_bot_id == "":
        await conversation_adopt(conversation_pk=conversation_pk, bot_id=bot_id, owner_key=owner.key)
        conversation_bot_id = bot_id
    conversation = (
        {"bot_id": conversation_bot_id, "coze_conversation_id": coze_conversation_id}
        if conversation_bot_id is not None
        else None
    )
    return records.route_of(
        coze_user_id=coze_user_id, conversation=conversation, bot_id=bot_id, requested_user_id=requested_user_id
    )


ROUTE_SQL = (
    "SELECT s.coze_user_id, c.bot_id, c.coze_conversation_id, c.id FROM sessions_admin_chatsession s "
    "LEFT JOIN sessions_admin_conversation c ON c.id = s.current_conversation_id "
    "WHERE s.owner_key = %s AND s.session_id = %s"
)


@db_async
def _session_route_row(*, owner_key: str, session_id: str) -> tuple | None:
    return (
        ChatSession.objects.filter(owner_key=owner_key, session_id=session_id)
        .values_list(
            "coze_user_id",
            "current_conversation__bot_id",
            "current_conversation__coze_conversation_id",
            "current_conversation_id",
        )
        .first()
    )


@db_async
def conversation_adopt(*, conversation_pk: int, bot_id: str, owner_key: str) -> None:
    """Give a conversation created without a bot the bot of its first turn (and the transcript
    digest that goes with that bot). Only while it has none: a concurrent first turn's bot wins."""
    Conversation.objects.filter(pk=conversation_pk, bot_id="").update(
        bot_id=bot_id, transcript_hash=transcripts.transcript_start(owner_key=owner_key, bot_id=bot_id)
    )


resolve_attachments = db_async(attachments.attachments_resolve)


async def turn_start(start: TurnStart) -> TurnContext:
    """Lock the session (creating it if new), store the user's message and open the Reply, in one
    transaction.

    Raises ChatError("session_busy") when another reply holds the lock, and RouteChanged (storing
    nothing) when `expected_route` is given and is no longer the session's route. On PostgreSQL
    (without attachments to link) that is one function call from the event loop.
    """
    if on_postgresql() and not start.attachments.files:
        if _redacts_long(len(start.chat_request.user_text)):
            params = await asyncio.to_thread(_turn_start_params, start)
        else:
            params = _turn_start_params(start)
        row = await apg_fetchone(TURN_START_SQL, params)
        return _started_turn(row, start)
    return await _turn_start_in_thread(start)


@db_async
def _turn_start_in_thread(start: TurnStart) -> TurnContext:
    """`turn_start` on a database thread: the function with attachments to link on PostgreSQL, the
    ORM steps elsewhere."""
    if on_postgresql():
        return _turn_start_pg(start)
    for attempt in range(2):
        try:
            return store_orm.turn_start(start)
        except IntegrityError:
            # Two first turns raced to create the session; the loser retries on the winner's row.
            if attempt:
                raise
    raise AssertionError("unreachable")


# Redacting text costs about 0.1-0.3 ms per KB (chat/domain/redaction.py): a text longer than
# this is redacted on a thread rather than on the event loop, which the other streams share.
REDACT_ON_LOOP_MAX_CHARS = 4096


def _redacts_long(chars: int) -> bool:
    return bool(settings.CHAT_REDACT) and chars > REDACT_ON_LOOP_MAX_CHARS


def _turn_start_params(start: TurnStart) -> list:
    """The arguments of `cozeproject_turn_start` (sessions_admin/migrations/0011_turn_start_function.py)."""
    owner, chat_request, expected_route = start.owner, start.chat_request, start.expected_route
    return [
        owner.key,
        owner.api_client_id,
        owner.user_id,
        start.session_id,
        chat_request.user_id or "",
        records.default_user(owner),
        start.bot_id,
        start.transport,
        start.worker_channel,
        records.stored_question(chat_request),
        chat_request.content_type,
        json.dumps(list(start.attachments.records)),
        start.lock_token,
        settings.CHAT_SESSION_LOCK_TTL,
        expected_route is not None,
        expected_route.coze_conversation_id if expected_route else "",
        expected_route.coze_user_id if expected_route else "",
        transcripts.transcript_start(owner_key=owner.key, bot_id=start.bot_id),
        chat_request.resumable,
    ]


def _started_turn(row: tuple, start: TurnStart) -> TurnContext:
    """The TurnContext for a row of `cozeproject_turn_start`; raises for a busy or moved session."""
    outcome, session_pk, conversation_pk, reply_pk, _question_pk, coze_id, coze_user, digest, question = row
    if outcome == "busy":
        raise ChatError("session_busy")
    route = Route(coze_conversation_id=coze_id, bot_id=start.bot_id, coze_user_id=coze_user)
    if outcome == "route_changed":
        raise RouteChanged(route)
    return TurnContext(
        session_pk=session_pk,
        session_id=start.session_id,
        conversation_pk=conversation_pk,
        reply_pk=reply_pk,
        lock_token=start.lock_token,
        route=route,
        owner_key=start.owner.key,
        transport=start.transport,
        question=question,
        transcript_hash=digest,
    )


def _turn_start_pg(start: TurnStart) -> TurnContext:
    """`cozeproject_turn_start` and the attachments' links, in one transaction (on a thread)."""
    with bounded_locks(), connection.cursor() as cursor:
        cursor.execute(TURN_START_SQL, _turn_start_params(start))
        row = cursor.fetchone()
        turn = _started_turn(row, start)
        attachments.attachments_link(message=Message.objects.only("pk").get(pk=row[4]), resolved=start.attachments)
    return turn


# Nineteen arguments, the attachments as JSON; only placeholders are formatted in, never values.
TURN_START_SQL = "SELECT * FROM cozeproject_turn_start({})".format(  # noqa: S608
    ", ".join(["%s"] * 11 + ["%s::jsonb"] + ["%s"] * 7)
)


async def turn_upstream_started(*, turn: TurnContext, chat_id: str, logid: str) -> None:
    """Record Coze's chat id as soon as it is known, so the chat can be cancelled by id from any worker."""
    if on_postgresql():
        await apg_fetchone(UPSTREAM_STARTED_SQL, [chat_id, logid, turn.reply_pk])
    else:
        await _aupstream_started_orm(reply_pk=turn.reply_pk, chat_id=chat_id, logid=logid)


_aupstream_started_orm = db_async(store_orm.turn_upstream_started)
UPSTREAM_STARTED_SQL = "UPDATE sessions_admin_reply SET coze_chat_id = %s, coze_logid = %s WHERE id = %s RETURNING id"


async def turn_mark_redacted(*, turn: TurnContext) -> None:
    """Note on the reply that its stored answer was redacted (`Reply.redacted`). Deliberately not
    a step of `cozeproject_turn_finish`: a separate UPDATE, sent only for the replies CHAT_REDACT
    changed, so the turn's SQL functions stay as they are and other turns pay nothing for it."""
    if on_postgresql():
        await apg_fetchone(MARK_REDACTED_SQL, [turn.reply_pk])
    else:
        await _amark_redacted_orm(reply_pk=turn.reply_pk)


@db_async
def _amark_redacted_orm(*, reply_pk: int) -> None:
    Reply.objects.filter(pk=reply_pk).update(redacted=True)


MARK_REDACTED_SQL = "UPDATE sessions_admin_reply SET redacted = true WHERE id = %s RETURNING id"


@db_async
def turn_renew_leases(leases: list[tuple[int, int, str]]) -> list[int]:
    """Renew the session leases of running replies, given as (reply, session, lock token), for
    CHAT_SESSION_LOCK_TTL from now. Returns the replies crash recovery has ended meanwhile
    (`interrupted`: their lease had lapsed), which their worker must stop.

    A session row another transaction holds is skipped, not waited for: renewed next round."""
    with bounded_locks():
        held = Q()
        for _, session_pk, lock_token in leases:
            held |= Q(pk=session_pk, lock_token=lock_token)
        sessions = ChatSession.objects.select_for_update(skip_locked=True).filter(held)
        ChatSession.objects.filter(pk__in=list(sessions.values_list("pk", flat=True))).update(
            locked_until=records.lease_end()
        )
        replies = [reply_pk for reply_pk, _, _ in leases]
        return list(Reply.objects.filter(pk__in=replies, status=Reply.Status.INTERRUPTED).values_list("pk", flat=True))


async def turn_finish(*, turn: TurnContext, outcome: TurnOutcome) -> None:
    """Store the answer (whole or partial), follow-ups, usage and timing, release the lock and add
    the reply to the daily usage rollup, in one transaction.

    Idempotent: a Reply that is no longer in progress is left as it is (only the lock, if still
    this turn's, is released). On PostgreSQL that is one function call from the event loop.
    """
    if on_postgresql():
        if _redacts_long(sum(map(len, outcome.answer_parts))):
            params = await asyncio.to_thread(_turn_finish_params, turn, outcome)
        else:
            params = _turn_finish_params(turn, outcome)
        await apg_fetchone(TURN_FINISH_SQL, params)
    else:
        await _turn_finish_in_thread(turn=turn, outcome=outcome)


def _turn_finish_params(turn: TurnContext, outcome: TurnOutcome) -> list:
    """The arguments of `cozeproject_turn_finish` (sessions_admin/migrations/0013_turn_finish_function.py,
    with `answer_offsets` since 0019_turn_finish_answer_offsets.py)."""
    usage, error, ttft_ms = outcome.usage, outcome.error, records.ttft_ms(outcome)
    answer = records.stored_answer(outcome)
    return [
        turn.reply_pk,
        turn.session_pk,
        turn.conversation_pk,
        turn.lock_token,
        outcome.status,
        outcome.chat_id,
        outcome.logid,
        error.code if error else "",
        error.detail if error else "",
        usage.input_tokens,
        usage.output_tokens,
        usage.total_tokens,
        ttft_ms,
        ttft_bucket(ttft_ms) if ttft_ms is not None else None,
        round(outcome.duration * 1000),
        answer,
        outcome.message_id,
        records.stored_follow_ups(outcome),
        outcome.conversation_id if not turn.route.coze_conversation_id else "",
        records.new_transcript_hash(turn, answer),
        settings.TIME_ZONE,
        records.answer_offsets(outcome),
    ]


# Twenty-two arguments; only placeholders are formatted in, never values.
TURN_FINISH_SQL = "SELECT * FROM cozeproject_turn_finish({})".format(  # noqa: S608
    ", ".join(["%s"] * 12 + ["%s::integer"] * 3 + ["%s"] * 2 + ["%s::text[]"] + ["%s"] * 4)
)


@db_async
def _turn_finish_in_thread(*, turn: TurnContext, outcome: TurnOutcome) -> None:
    store_orm.turn_finish(turn=turn, outcome=outcome)


def turn_finish_here(*, turn: TurnContext, outcome: TurnOutcome) -> None:
    """`turn_finish` on this thread's connection, inside the caller's transaction (crash recovery
    ends a dead worker's reply with it): the function on PostgreSQL, the ORM's steps elsewhere."""
    if on_postgresql():
        with connection.cursor() as cursor:
            cursor.execute(TURN_FINISH_SQL, _turn_finish_params(turn, outcome))
    else:
        store_orm.turn_finish(turn=turn, outcome=outcome)
