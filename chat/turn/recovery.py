"""Crash recovery: ending the replies of workers that died, whichever worker notices.

A worker that dies mid-reply (killed, OOM, power loss) can't run `turn_finish`, so its Reply stays
`in_progress` and its session keeps a lock lease. The lease tells a dead reply from a live one,
which makes this safe to run at any time, from any worker, while others stream:

* a session's lock is taken before its reply is created and released in the same transaction
  that finishes it, and a live worker renews it every third of CHAT_SESSION_LOCK_TTL
  (`chat.turn.leases`), however quiet the reply;
* so an `in_progress` reply is still running only if its session holds an unexpired lease (in the
  database's clock) and it is the session's newest reply.

Every worker ends the others' lapsed replies as it renews its own (`chat.turn.leases`), at start-up
too, and `manage.py mark_interrupted_replies` does on demand: all through `mark_interrupted_replies`.
A reply is ended by the turn's own `turn_finish`, as `interrupted`, with the answer so far when its
Redis replay buffer still holds it whole (else stored without one, and its error says so); its
buffer is then closed with that error and `done`, so a resume replays what was kept, the error,
`done`. The session row and the reply are locked with SKIP LOCKED: a row another transaction
holds is left for the next round, never waited for.

A reply paused for the client's local tools (`requires_action`, docs/api.md §13) is not running
anywhere: its session's lease is its deadline (CHAT_TOOL_OUTPUT_TIMEOUT). It is left alone until
then; the worker that paused it ends it `failed` at the deadline, or, if that worker died,
`fail_expired_pauses` does, by the same rule.
"""

from datetime import timedelta

from django.db.models import Exists, OuterRef, Q
from django.db.models.functions import Now
from django.utils import timezone

from chat.domain.errors import ChatError
from chat.domain.events import ErrorEvent
from chat.resume import kept as kept_buffers
from chat.runtime.db import bounded_locks
from chat.turn import store
from chat.turn.records import Route, TurnContext, TurnOutcome
from sessions_admin.models import ChatSession, Reply
from sessions_admin.rollup import record_reply

INTERRUPTED_DETAIL = "The worker streaming this reply stopped before it ended."
ANSWER_KEPT = " The answer so far is kept."
ANSWER_NOT_KEPT = " Its answer so far was not kept (no replay buffer held it whole)."
EXPIRED_PAUSE_DETAIL = "The local tools' outputs did not arrive in time."
# Replies ended per round at most: a round stays short however many a dead worker left.
BATCH = 100


def _lease_gone() -> Q:
    """Replies whose session's lease has passed (in the database's clock), or that are not the
    session's newest any more."""
    later_reply = Reply.objects.filter(session=OuterRef("session"), pk__gt=OuterRef("pk"))
    return Q(session__locked_until__isnull=True) | Q(session__locked_until__lte=Now()) | Exists(later_reply)


def stuck_replies(*, older_than: timedelta | None = None):
    """The `in_progress` replies that nobody is running any more (see the module docstring)."""
    replies = Reply.objects.filter(status=Reply.Status.IN_PROGRESS).filter(_lease_gone())
    if older_than is not None:
        replies = replies.filter(started_at__lte=timezone.now() - older_than)
    return replies


def mark_interrupted_replies(*, older_than: timedelta | None = None) -> int:
    """End the replies dead workers left in progress as `interrupted` (at most BATCH a call) and
    release expired session locks. Returns how many replies it ended.

    A reply a live worker runs is never touched, whatever `older_than` says; `older_than` only
    narrows further, to replies started at least that long ago. Idempotent.
    """
    return len(end_dead_replies(older_than=older_than))


def end_dead_replies(*, older_than: timedelta | None = None) -> list[int]:
    """`mark_interrupted_replies`, returning the primary keys of the replies it ended."""
    candidates = list(stuck_replies(older_than=older_than).order_by("pk").values_list("pk", flat=True)[:BATCH])
    ended = [reply_pk for reply_pk in candidates if end_reply_if_dead(reply_pk)]
    with bounded_locks():
        # A lock past its lease is free already (the next turn may take it); clearing it keeps the
        # session's status honest in the admin and the API.
        expired = ChatSession.objects.select_for_update(skip_locked=True).filter(locked_until__lte=Now())
        ChatSession.objects.filter(pk__in=list(expired.values_list("pk", flat=True))).update(
            lock_token="", locked_until=None
        )
    return ended


def end_reply_if_dead(reply_pk: int) -> bool:
    """End one reply as `interrupted` if nobody runs it (its lease gone); returns whether it did."""
    kept = kept_buffers.kept_reply(reply_pk)
    error = _end_dead_reply(reply_pk, kept)
    if error is None:
        return False
    if kept is not None:
        kept_buffers.close_kept(reply_pk, kept, ErrorEvent.from_error(error))
    return True


def _end_dead_reply(reply_pk: int, kept: kept_buffers.KeptReply | None) -> ChatError | None:
    """Store the end of a dead reply (one transaction, rows held elsewhere skipped); the error it
    ended with, or None when it was not dead (or is being handled elsewhere right now)."""
    with bounded_locks():
        session_pk = Reply.objects.filter(pk=reply_pk).values_list("session_id", flat=True).first()
        session = ChatSession.objects.select_for_update(skip_locked=True).filter(pk=session_pk).first()
        reply = (
            Reply.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("conversation")
            .filter(pk=reply_pk, status=Reply.Status.IN_PROGRESS)
            .filter(_lease_gone())
            .first()
        )
        if session is None or reply is None:
            return None
        newest = not Reply.objects.filter(session_id=session.pk, pk__gt=reply.pk).exists()
        answer = kept.answer if kept is not None and kept.answer else ""
        error = ChatError("interrupted", INTERRUPTED_DETAIL + (ANSWER_KEPT if answer else ANSWER_NOT_KEPT))
        turn = TurnContext(
            session_pk=session.pk,
            session_id=session.session_id,
            conversation_pk=reply.conversation_id,
            reply_pk=reply.pk,
            # The lock is released only if it is still this reply's.
            lock_token=session.lock_token if newest else "",
            route=Route(reply.conversation.coze_conversation_id, reply.bot_id, session.coze_user_id),
            owner_key=reply.owner_key,
            transport=reply.transport,
        )
        outcome = TurnOutcome(
            status=Reply.Status.INTERRUPTED,
            answer_parts=[answer] if answer else [],
            error=error,
            chat_id=reply.coze_chat_id,
            logid=reply.coze_logid,
            duration=(timezone.now() - reply.started_at).total_seconds(),
            finishing=True,
            # The kept events, each with what it added: a resume after the window continues any of
            # their ids exactly (chat.resume.resuming).
            event_chars=list(kept.answer_chars) if answer else None,
        )
        store.turn_finish_here(turn=turn, outcome=outcome)
        if reply.resumable:
            Reply.objects.filter(pk=reply.pk).update(ended_without_client=True)  # as a live end notes it
    return error


def fail_expired_pauses() -> int:
    """End replies whose wait for local tool outputs has passed as `failed`, as the worker that
    paused them would have (it died). Returns how many. Idempotent; a reply still within its wait
    is never touched."""
    with bounded_locks():
        expired = list(
            Reply.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(status=Reply.Status.REQUIRES_ACTION)
            .filter(_lease_gone())
            .values_list("pk", flat=True)
        )
        failed = Reply.objects.filter(pk__in=expired, status=Reply.Status.REQUIRES_ACTION).update(
            status=Reply.Status.FAILED,
            error_code="tool_output_timeout",
            error_detail=EXPIRED_PAUSE_DETAIL,
            finished_at=timezone.now(),
        )
        for reply_pk in expired:
            record_reply(reply_pk=reply_pk)
    return failed
