"""The chat turn's database steps: start it (lock the session, store the user's message, open the
Reply) and finish it (store the answer, usage and timing, release the lock).

Each step is one short transaction, a constant amount of work per turn however long the reply.
On PostgreSQL the start and the finish are each one function call (migrations 0011 and 0013) run
from the event loop on `chat.db`'s async connections; elsewhere the same steps run through the ORM
on the chat service's database threads. What they guarantee:

* `turn_start` commits the session lock, the user's message and the Reply together or not at
  all. It reads the session under a row lock (`SELECT … FOR UPDATE`), so a concurrent clear or
  delete waits for it and then sees the session busy, and it can't continue a conversation that
  a clear has just left.
* The lock is a lease in the database's clock (`NOW()`), never a worker's, so clock skew between
  hosts can't steal a live lock; a crashed worker's lease lapses after CHAT_SESSION_LOCK_TTL.
* `turn_finish` is idempotent: it stores an outcome only while the Reply is still in progress, so
  a retry after a commit whose acknowledgement was lost stores nothing twice.
"""

import json
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, connection, models, transaction
from django.db.models import Case, ExpressionWrapper, F, Q, Value, When
from django.db.models.functions import Now
from django.utils import timezone

from chat import files
from chat.db import apg_fetchone, db_async, on_postgresql
from chat.domain import transcripts
from chat.domain.errors import ChatError
from chat.domain.events import Usage
from chat.domain.inputs import ChatRequest, Owner
from sessions_admin.models import ChatSession, Conversation, Message, Reply
from sessions_admin.rollup import record_reply, ttft_bucket


@dataclass(frozen=True, slots=True)
class Route:
    """What the Coze request of a turn needs from its session: where and as whom to ask."""

    coze_conversation_id: str  # "" when the turn starts a new Coze conversation
    bot_id: str
    coze_user_id: str


class RouteChanged(Exception):
    """The session moved on (cleared, another bot) since the route the turn was sent with was read."""


@dataclass(frozen=True, slots=True)
class TurnStart:
    """What storing the start of a turn needs: who asks what, in which session, with which lock."""

    owner: Owner
    chat_request: ChatRequest
    session_id: str
    bot_id: str
    transport: str
    worker_channel: str
    lock_token: str
    attachments: files.ResolvedAttachments
    # The route the turn's Coze chat was sent with; checked under the session's row lock when given.
    expected_route: Route | None = None


@dataclass(frozen=True, slots=True)
class TurnContext:
    session_pk: int
    session_id: str
    conversation_pk: int
    reply_pk: int
    lock_token: str
    route: Route
    owner_key: str
    transport: str
    question: str = ""
    transcript_hash: str = ""  # the conversation's digest before this turn (see chat.domain.transcripts)


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
    duration: float = 0.0
    finishing: bool = False  # the finish is being stored (and stores Coze's ids with it)

    @property
    def answer(self) -> str:
        return "".join(self.answer_parts)


def _lease_end():
    """The end of a lock lease taken now, in the database's clock."""
    return ExpressionWrapper(
        Now() + Value(timedelta(seconds=settings.CHAT_SESSION_LOCK_TTL)), output_field=models.DateTimeField()
    )


def lock_free() -> Q:
    """Sessions whose lock is free now, in the database's clock."""
    return Q(locked_until__isnull=True) | Q(locked_until__lt=Now())


def _route(*, coze_user_id: str, conversation: dict | None, bot_id: str, requested_user_id: str | None) -> Route:
    continues = conversation is not None and conversation["bot_id"] == bot_id
    return Route(
        coze_conversation_id=conversation["coze_conversation_id"] if continues else "",
        bot_id=bot_id,
        coze_user_id=requested_user_id or coze_user_id,
    )


async def session_route(*, owner: Owner, session_id: str, bot_id: str, requested_user_id: str | None) -> Route:
    """The route a turn of this session would take now (one indexed read; a new session's if none)."""
    if on_postgresql():
        row = await apg_fetchone(ROUTE_SQL, [owner.key, session_id])
    else:
        row = await _session_route_row(owner_key=owner.key, session_id=session_id)
    if row is None:
        return Route(coze_conversation_id="", bot_id=bot_id, coze_user_id=requested_user_id or settings.COZE_USER_ID)
    coze_user_id, conversation_bot_id, coze_conversation_id = row
    conversation = (
        {"bot_id": conversation_bot_id, "coze_conversation_id": coze_conversation_id}
        if conversation_bot_id is not None
        else None
    )
    return _route(
        coze_user_id=coze_user_id, conversation=conversation, bot_id=bot_id, requested_user_id=requested_user_id
    )


ROUTE_SQL = (
    "SELECT s.coze_user_id, c.bot_id, c.coze_conversation_id FROM sessions_admin_chatsession s "
    "LEFT JOIN sessions_admin_conversation c ON c.id = s.current_conversation_id "
    "WHERE s.owner_key = %s AND s.session_id = %s"
)


@db_async
def _session_route_row(*, owner_key: str, session_id: str) -> tuple | None:
    return (
        ChatSession.objects.filter(owner_key=owner_key, session_id=session_id)
        .values_list("coze_user_id", "current_conversation__bot_id", "current_conversation__coze_conversation_id")
        .first()
    )


resolve_attachments = db_async(files.attachments_resolve)


async def turn_start(start: TurnStart) -> TurnContext:
    """Lock the session (creating it if new), store the user's message and open the Reply, in one
    transaction.

    Raises ChatError("session_busy") when another reply holds the lock, and RouteChanged (storing
    nothing) when `expected_route` is given and is no longer the session's route. On PostgreSQL
    (without attachments to link) that is one function call from the event loop.
    """
    if on_postgresql() and not start.attachments.files:
        row = await apg_fetchone(TURN_START_SQL, _turn_start_params(start))
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
            return _turn_start_orm(start)
        except IntegrityError:
            # Two first turns raced to create the session; the loser retries on the winner's row.
            if attempt:
                raise
    raise AssertionError("unreachable")


def _turn_start_params(start: TurnStart) -> list:
    """The arguments of `cozeproject_turn_start` (sessions_admin/migrations/0011_turn_start_function.py)."""
    owner, chat_request, expected_route = start.owner, start.chat_request, start.expected_route
    return [
        owner.key,
        owner.api_client_id,
        owner.user_id,
        start.session_id,
        chat_request.user_id or "",
        settings.COZE_USER_ID,
        start.bot_id,
        start.transport,
        start.worker_channel,
        chat_request.user_text,
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
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(TURN_START_SQL, _turn_start_params(start))
        row = cursor.fetchone()
        turn = _started_turn(row, start)
        files.attachments_link(message=Message.objects.only("pk").get(pk=row[4]), resolved=start.attachments)
    return turn


# Nineteen arguments, the attachments as JSON; only placeholders are formatted in, never values.
TURN_START_SQL = "SELECT * FROM cozeproject_turn_start({})".format(  # noqa: S608
    ", ".join(["%s"] * 11 + ["%s::jsonb"] + ["%s"] * 7)
)


def _turn_start_orm(start: TurnStart) -> TurnContext:
    """`cozeproject_turn_start`'s steps through the ORM (databases other than PostgreSQL)."""
    owner, chat_request, session_id, bot_id = start.owner, start.chat_request, start.session_id, start.bot_id
    transport, lock_token, attachments = start.transport, start.lock_token, start.attachments
    now = timezone.now()
    with transaction.atomic():
        session = (
            ChatSession.objects.select_for_update(of=("self",))
            .select_related("current_conversation")
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
        elif session.lock_token == lock_token:
            # This very start committed before (a retry after its acknowledgement was lost).
            return _committed_start(session=session, lock_token=lock_token, owner=owner, transport=transport)
        conversation = session.current_conversation
        route = _route(
            coze_user_id=session.coze_user_id,
            conversation=None
            if conversation is None
            else {"bot_id": conversation.bot_id, "coze_conversation_id": conversation.coze_conversation_id},
            bot_id=bot_id,
            requested_user_id=chat_request.user_id,
        )
        if start.expected_route is not None and route != start.expected_route:
            raise RouteChanged(route)
        new_conversation = conversation is None or conversation.bot_id != bot_id
        if new_conversation:
            # A new context: first turn, after a clear, or the client switched bots.
            conversation = Conversation.objects.create(
                session=session,
                bot_id=bot_id,
                created_at=now,
                last_activity=now,
                message_count=1,
                transcript_hash=transcripts.transcript_start(owner_key=owner.key, bot_id=bot_id),
            )
        # Take the lock and count the message in one statement; zero rows means another reply
        # holds an unexpired lease, and the transaction (with the conversation above) rolls back.
        taken = (
            ChatSession.objects.filter(pk=session.pk)
            .filter(lock_free())
            .update(
                lock_token=lock_token,
                locked_until=_lease_end(),
                current_conversation=conversation,
                bot_id=bot_id,
                coze_user_id=route.coze_user_id,
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
            worker_channel=start.worker_channel,
            started_at=now,
            resumable=chat_request.resumable,
        )
        question = Message.objects.create(
            conversation=conversation,
            reply=reply,
            role=Message.Role.USER,
            kind=Message.Kind.QUESTION,
            content=chat_request.user_text,
            content_type=chat_request.content_type,
            attachments=list(attachments.records),
            created_at=now,
        )
        if attachments.records:
            files.attachments_link(message=question, resolved=attachments)
        if not new_conversation:
            Conversation.objects.filter(pk=conversation.pk).update(
                last_activity=now, message_count=F("message_count") + 1
            )
    return TurnContext(
        session_pk=session.pk,
        session_id=session.session_id,
        conversation_pk=conversation.pk,
        reply_pk=reply.pk,
        lock_token=lock_token,
        route=route,
        owner_key=owner.key,
        transport=transport,
        question=chat_request.user_text,
        transcript_hash=conversation.transcript_hash,
    )


def _committed_start(*, session: ChatSession, lock_token: str, owner: Owner, transport: str) -> TurnContext:
    reply = Reply.objects.filter(session=session).select_related("conversation").order_by("-pk").first()
    conversation = reply.conversation
    return TurnContext(
        session_pk=session.pk,
        session_id=session.session_id,
        conversation_pk=conversation.pk,
        reply_pk=reply.pk,
        lock_token=lock_token,
        route=Route(conversation.coze_conversation_id, conversation.bot_id, session.coze_user_id),
        owner_key=owner.key,
        transport=transport,
        question=reply.messages.get(kind=Message.Kind.QUESTION).content,
        transcript_hash=conversation.transcript_hash,
    )


async def turn_upstream_started(*, turn: TurnContext, chat_id: str, logid: str) -> None:
    """Record Coze's chat id as soon as it is known, so the chat can be cancelled by id from any worker."""
    if on_postgresql():
        await apg_fetchone(UPSTREAM_STARTED_SQL, [chat_id, logid, turn.reply_pk])
    else:
        await _record_upstream_ids(reply_pk=turn.reply_pk, chat_id=chat_id, logid=logid)


UPSTREAM_STARTED_SQL = "UPDATE sessions_admin_reply SET coze_chat_id = %s, coze_logid = %s WHERE id = %s RETURNING id"


@db_async
def _record_upstream_ids(*, reply_pk: int, chat_id: str, logid: str) -> None:
    Reply.objects.filter(pk=reply_pk).update(coze_chat_id=chat_id, coze_logid=logid)


@db_async
def turn_renew_lock(*, turn: TurnContext) -> None:
    ChatSession.objects.filter(pk=turn.session_pk, lock_token=turn.lock_token).update(locked_until=_lease_end())


async def turn_finish(*, turn: TurnContext, outcome: TurnOutcome) -> None:
    """Store the answer (whole or partial), follow-ups, usage and timing, release the lock and add
    the reply to the daily usage rollup, in one transaction.

    Idempotent: a Reply that is no longer in progress is left as it is (only the lock, if still
    this turn's, is released). On PostgreSQL that is one function call from the event loop.
    """
    if on_postgresql():
        await apg_fetchone(TURN_FINISH_SQL, _turn_finish_params(turn, outcome))
    else:
        await _turn_finish_in_thread(turn=turn, outcome=outcome)


def _stored_answer(outcome: TurnOutcome) -> str | None:
    """The answer message the turn leaves: what came of it, or an empty one for a completed reply;
    None when nothing came and the reply did not complete. (Joined once: a long reply has
    thousands of parts.)"""
    answer = outcome.answer
    return answer if answer or outcome.status == Reply.Status.COMPLETED else None


def _ttft_ms(outcome: TurnOutcome) -> int | None:
    return round(outcome.first_token_at * 1000) if outcome.first_token_at is not None else None


def _new_transcript_hash(turn: TurnContext, answer: str | None) -> str | None:
    """The conversation's digest after a turn that stored `answer` (what the OpenAI path finds
    resent histories by); None when it stays as it is."""
    if answer is None or not turn.transcript_hash:
        return None
    return transcripts.transcript_extend(
        turn.transcript_hash, [(transcripts.USER, turn.question), (transcripts.ASSISTANT, answer)]
    )


def _turn_finish_params(turn: TurnContext, outcome: TurnOutcome) -> list:
    """The arguments of `cozeproject_turn_finish` (sessions_admin/migrations/0013_turn_finish_function.py)."""
    usage, error, ttft_ms = outcome.usage, outcome.error, _ttft_ms(outcome)
    answer = _stored_answer(outcome)
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
        list(outcome.follow_ups),
        outcome.conversation_id if not turn.route.coze_conversation_id else "",
        _new_transcript_hash(turn, answer),
        settings.TIME_ZONE,
    ]


# Twenty-one arguments; only placeholders are formatted in, never values.
TURN_FINISH_SQL = "SELECT * FROM cozeproject_turn_finish({})".format(  # noqa: S608
    ", ".join(["%s"] * 12 + ["%s::integer"] * 3 + ["%s"] * 2 + ["%s::text[]"] + ["%s"] * 3)
)


@db_async
def _turn_finish_in_thread(*, turn: TurnContext, outcome: TurnOutcome) -> None:
    _turn_finish_orm(turn=turn, outcome=outcome)


def _turn_finish_orm(*, turn: TurnContext, outcome: TurnOutcome) -> None:
    """`cozeproject_turn_finish`'s steps through the ORM (databases other than PostgreSQL)."""
    now = timezone.now()
    answer = _stored_answer(outcome)
    stored_answer = answer is not None
    usage = outcome.usage
    error = outcome.error
    with transaction.atomic():
        ended = Reply.objects.filter(pk=turn.reply_pk, status=Reply.Status.IN_PROGRESS).update(
            status=outcome.status,
            coze_chat_id=outcome.chat_id,
            coze_logid=outcome.logid,
            error_code=error.code if error else "",
            error_detail=error.detail if error else "",
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            total_tokens=usage.total_tokens,
            time_to_first_token_ms=_ttft_ms(outcome),
            duration_ms=round(outcome.duration * 1000),
            finished_at=now,
        )
        ours = Q(lock_token=turn.lock_token)
        release_lock = {
            # Release the lock if it is still ours (a lease that lapsed may have passed to another reply).
            "lock_token": Case(When(ours, then=Value("")), default=F("lock_token"), output_field=models.CharField()),
            "locked_until": Case(
                When(ours, then=Value(None)), default=F("locked_until"), output_field=models.DateTimeField()
            ),
        }
        if not ended:
            ChatSession.objects.filter(pk=turn.session_pk).update(**release_lock)
            return
        answers = (
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
        messages = answers + [
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
        if messages:
            Message.objects.bulk_create(messages)
        conversation_update = {
            "last_activity": now,
            "message_count": F("message_count") + int(stored_answer),
            "total_tokens": F("total_tokens") + usage.total_tokens,
        }
        if outcome.conversation_id and not turn.route.coze_conversation_id:
            conversation_update["coze_conversation_id"] = outcome.conversation_id
        transcript_hash = _new_transcript_hash(turn, answer)
        if transcript_hash is not None:
            conversation_update["transcript_hash"] = transcript_hash
        Conversation.objects.filter(pk=turn.conversation_pk).update(**conversation_update)
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
            **release_lock,
        )
        # The dashboard's daily rollup; last, so its row lock (shared by the owner's replies that day) is held briefly.
        record_reply(reply_pk=turn.reply_pk)
