"""The turn's start and finish through the ORM: the steps of `cozeproject_turn_start` and
`cozeproject_turn_finish` (sessions_admin migrations 0011, and 0013 with 0019) for databases other than
PostgreSQL, and the pause and resume of a reply waiting for local tools (the statements of
`chat.turn.store`). `chat.turn.store` decides which path runs; both keep the contract its
docstring states.
"""

from datetime import timedelta

from django.db import models, transaction
from django.db.models import Case, Exists, F, OuterRef, Q, Value, When
from django.db.models.functions import Now
from django.utils import timezone

from chat.domain import transcripts
from chat.domain.errors import ChatError
from chat.domain.inputs import Owner
from chat.files.attachments import attachments_link
from chat.turn import records
from chat.turn.records import PausedTurn, Route, RouteChanged, TurnContext, TurnOutcome, TurnStart, lock_free
from sessions_admin.models import ChatSession, Conversation, Message, Reply
from sessions_admin.rollup import record_reply


def turn_start(start: TurnStart) -> TurnContext:
    """`cozeproject_turn_start`'s steps through the ORM (databases other than PostgreSQL)."""
    owner, chat_request, session_id, bot_id = start.owner, start.chat_request, start.session_id, start.bot_id
    transport, lock_token, attachments = start.transport, start.lock_token, start.attachments
    now = timezone.now()
    with transaction.atomic():
        session = (
            # NOWAIT, as the function (migration 0020): a row held elsewhere is `session_busy` at once.
            ChatSession.objects.select_for_update(of=("self",), nowait=True)
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
                coze_user_id=chat_request.user_id or records.default_user(owner),
                bot_id=bot_id,
                created_at=now,
                last_activity=now,
            )
        elif session.lock_token == lock_token:
            # This very start committed before (a retry after its acknowledgement was lost).
            return _committed_start(session=session, lock_token=lock_token, owner=owner, transport=transport)
        conversation = session.current_conversation
        route = records.route_of(
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
                locked_until=records.lease_end(),
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
            content=records.stored_question(chat_request),
            content_type=chat_request.content_type,
            attachments=list(attachments.records),
            created_at=now,
        )
        if attachments.records:
            attachments_link(message=question, resolved=attachments)
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
        question=records.stored_question(chat_request),
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


def turn_upstream_started(*, reply_pk: int, chat_id: str, logid: str) -> None:
    """`turn_upstream_started` through the ORM: Coze's ids on the Reply."""
    Reply.objects.filter(pk=reply_pk).update(coze_chat_id=chat_id, coze_logid=logid)


def turn_finish(*, turn: TurnContext, outcome: TurnOutcome) -> None:
    """`cozeproject_turn_finish`'s steps through the ORM (databases other than PostgreSQL)."""
    now = timezone.now()
    answer = records.stored_answer(outcome)
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
            time_to_first_token_ms=records.ttft_ms(outcome),
            duration_ms=round(outcome.duration * 1000),
            finished_at=now,
            answer_offsets=records.answer_offsets(outcome),
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
            for text in records.stored_follow_ups(outcome)
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
        transcript_hash = records.new_transcript_hash(turn, answer)
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


def turn_pause(*, turn: TurnContext, outcome: TurnOutcome, wait_seconds: float) -> bool:
    """`turn_pause` through the ORM (chat.turn.store_tools.TURN_PAUSE_SQL's steps)."""
    now = timezone.now()
    with transaction.atomic():
        paused = Reply.objects.filter(pk=turn.reply_pk, status=Reply.Status.IN_PROGRESS).update(
            status=Reply.Status.REQUIRES_ACTION,
            coze_chat_id=outcome.chat_id,
            coze_logid=outcome.logid,
            required_action=records.required_action_of(outcome),
        )
        if not paused:
            return False
        if outcome.conversation_id and not turn.route.coze_conversation_id:
            Conversation.objects.filter(pk=turn.conversation_pk, coze_conversation_id="").update(
                coze_conversation_id=outcome.conversation_id
            )
        ChatSession.objects.filter(pk=turn.session_pk, lock_token=turn.lock_token).update(
            locked_until=Now() + Value(timedelta(seconds=wait_seconds)), last_activity=now
        )
    return True


def turn_resume(
    *, owner_key: str, session_id: str, chat_id: str, outputs: dict[str, str], waiting_only: bool
) -> PausedTurn | None:
    """`turn_resume` through the ORM (chat.turn.store_tools.TURN_RESUME_SQL's steps)."""
    now = timezone.now()
    later = Reply.objects.filter(session=OuterRef("session"), pk__gt=OuterRef("pk"))
    with transaction.atomic():
        replies = Reply.objects.select_for_update(of=("self", "session")).select_related("session", "conversation")
        replies = replies.filter(
            session__owner_key=owner_key,
            session__session_id=session_id,
            coze_chat_id=chat_id,
            status=Reply.Status.REQUIRES_ACTION,
        ).filter(~Exists(later))
        if waiting_only:
            replies = replies.filter(session__locked_until__gt=Now())
        reply = replies.first()
        if reply is None:
            return None
        required_action = records.with_outputs(reply.required_action or {}, outputs)
        Reply.objects.filter(pk=reply.pk).update(status=Reply.Status.IN_PROGRESS, required_action=required_action)
        ChatSession.objects.filter(pk=reply.session_id).update(locked_until=records.lease_end(), last_activity=now)
        session, conversation = reply.session, reply.conversation
        question = (
            reply.messages.filter(kind=Message.Kind.QUESTION).order_by("pk").values_list("content", flat=True).first()
        )
    turn = TurnContext(
        session_pk=session.pk,
        session_id=session.session_id,
        conversation_pk=conversation.pk,
        reply_pk=reply.pk,
        lock_token=session.lock_token,
        route=Route(conversation.coze_conversation_id, reply.bot_id, session.coze_user_id),
        owner_key=owner_key,
        transport=reply.transport,
        question=question or "",
        transcript_hash=conversation.transcript_hash,
    )
    return PausedTurn(turn=turn, required_action=required_action)
