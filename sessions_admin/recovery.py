"""Recovering from crashed workers: replies left "in progress" and session locks nobody holds.

A worker that dies mid-reply (killed, OOM, power loss) can't run `turn_finish`, so its Reply
stays `in_progress` and its session keeps a lock lease until the lease runs out. The lease is
what tells a dead reply from a live one, which makes this safe to run at any time, from any
worker, while others stream:

* a session's lock is taken before its reply is created and released in the same transaction
  that finishes it, and a live worker renews it well before it expires;
* so an `in_progress` reply is still streaming only if its session holds an unexpired lock and
  it is the session's newest reply (the lock can't have been taken for a reply created later).

A reply paused for the client's local tools (`requires_action`, docs/api.md §13) is not running
anywhere: its session's lease is its deadline (CHAT_TOOL_OUTPUT_TIMEOUT), so it is left alone
until then. The worker that paused it ends it `failed` at the deadline; if that worker died,
`fail_expired_pauses` does, by the same rule as above.
"""

from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from sessions_admin.models import ChatSession, Reply
from sessions_admin.rollup import record_reply

INTERRUPTED_DETAIL = "The worker streaming this reply stopped before it ended."
EXPIRED_PAUSE_DETAIL = "The local tools' outputs did not arrive in time."


def _lease_gone(now: datetime) -> Q:
    """Replies whose session's lease has passed, or that are not the session's newest any more."""
    later_reply = Reply.objects.filter(session=OuterRef("session"), pk__gt=OuterRef("pk"))
    return Q(session__locked_until__isnull=True) | Q(session__locked_until__lte=now) | Exists(later_reply)


def stuck_replies(*, now: datetime | None = None, older_than: timedelta | None = None):
    """The `in_progress` replies that nobody is streaming any more (see the module docstring)."""
    now = now or timezone.now()
    replies = Reply.objects.filter(status=Reply.Status.IN_PROGRESS).filter(_lease_gone(now))
    if older_than is not None:
        replies = replies.filter(started_at__lte=now - older_than)
    return replies


def mark_interrupted_replies(older_than: timedelta | None = None) -> int:
    """Mark replies left in progress by a dead worker as `interrupted`; release expired session locks.

    Returns how many replies were marked. A reply another live worker is still streaming is never
    touched, whatever `older_than` says; `older_than` only narrows further, to replies started at
    least that long ago. Idempotent, and cheap: it reads only in-progress replies and locked
    sessions, through indexes.
    """
    now = timezone.now()
    with transaction.atomic():
        stuck = list(stuck_replies(now=now, older_than=older_than).values_list("pk", flat=True))
        marked = Reply.objects.filter(pk__in=stuck, status=Reply.Status.IN_PROGRESS).update(
            status=Reply.Status.INTERRUPTED,
            error_code="interrupted",
            error_detail=INTERRUPTED_DETAIL,
            finished_at=now,
        )
        # They ended now, so they count in the usage rollup now, as turn_finish counts a reply.
        for reply_pk in stuck:
            record_reply(reply_pk=reply_pk)
        # A lock past its lease is free already (the next turn may take it); clearing it keeps the
        # session's status honest in the admin and the API.
        ChatSession.objects.filter(locked_until__lte=now).update(lock_token="", locked_until=None)
    return marked


def fail_expired_pauses() -> int:
    """End replies whose wait for local tool outputs has passed as `failed`, as the worker that
    paused them would have (it died). Returns how many. Idempotent; a reply still within its wait
    is never touched."""
    now = timezone.now()
    with transaction.atomic():
        expired = list(
            Reply.objects.filter(status=Reply.Status.REQUIRES_ACTION)
            .filter(_lease_gone(now))
            .values_list("pk", flat=True)
        )
        failed = Reply.objects.filter(pk__in=expired, status=Reply.Status.REQUIRES_ACTION).update(
            status=Reply.Status.FAILED,
            error_code="tool_output_timeout",
            error_detail=EXPIRED_PAUSE_DETAIL,
            finished_at=now,
        )
        for reply_pk in expired:
            record_reply(reply_pk=reply_pk)
    return failed
