"""Session operations: list, info, messages, clear, delete, and cancelling a reply in progress.

Every function is scoped to its owner (`Owner.scope`; an end-user token to its own user's
sessions): another owner's session or chat is `not_found`, never `forbidden`, so ids can't be
probed (docs/api.md §2).
"""

import asyncio
import time

from django.db.models import OuterRef, Q, Subquery
from django.db.models.functions import Substr
from django.utils import timezone

from chat.access.browsers import BROWSER_SESSION_KEY, owner_for_browser, owner_for_user
from chat.domain.errors import ChatError
from chat.domain.inputs import Owner
from chat.files import attachments
from chat.resume import resuming
from chat.runtime import wakeups
from chat.runtime.db import bounded_locks, db_async
from chat.turn import cancellation, recovery, start, tools
from chat.turn.control import active_turns, running_turns
from chat.turn.records import lock_free
from sessions_admin.models import ChatFile, ChatSession, Message, Reply

TITLE_CHARS = 80
MOVED_SUFFIX = "-guest"


def _sessions_of(owner: Owner):
    """The owner's sessions, each with a `title`: the start of its conversation's first question
    (computed in the same query, through the message index)."""
    first_question = (
        Message.objects.filter(conversation_id=OuterRef("current_conversation_id"), role=Message.Role.USER)
        .order_by("pk")
        .values(start=Substr("content", 1, TITLE_CHARS))[:1]
    )
    return (
        ChatSession.objects.select_related("current_conversation")
        .filter(**owner.scope())
        .annotate(title=Subquery(first_question))
    )


def session_get(*, owner: Owner, session_id: str) -> ChatSession:
    """The owner's session; ChatError("not_found") for unknown or someone else's."""
    session = _sessions_of(owner).filter(session_id=session_id).first()
    if session is None:
        raise ChatError("not_found", "No such session.")
    return session


def session_list(*, owner: Owner):
    return _sessions_of(owner).order_by("-last_activity", "-pk")


def session_messages(*, owner: Owner, session_id: str):
    session = session_get(owner=owner, session_id=session_id)
    if session.current_conversation_id is None:
        return Message.objects.none()
    return (
        Message.objects.filter(conversation_id=session.current_conversation_id)
        .select_related("reply", "feedback")  # each answer's rating in the same query
        .order_by("pk")
    )


def session_clear(*, owner: Owner, session_id: str) -> ChatSession:
    """Forget the context: the next turn starts a new Coze conversation; the old one is kept.

    One conditional UPDATE: it waits for a turn that is starting (which holds the session's row
    lock) and then finds the session busy, so a clear can never be undone by that turn.
    """
    session = session_get(owner=owner, session_id=session_id)
    with bounded_locks():
        cleared = (
            ChatSession.objects.filter(pk=session.pk)
            .filter(lock_free())
            .update(current_conversation=None, message_count=0, cleared_at=timezone.now())
        )
    if not cleared:
        raise ChatError("session_busy", "This session has a reply in progress; cancel it before clearing.")
    start.forget_route(owner.key, session_id)
    session.refresh_from_db()
    return session


def session_delete(*, owner: Owner, session_id: str) -> None:
    """Delete the session with its conversations and messages, unless a reply is in progress."""
    with bounded_locks():
        session = (
            ChatSession.objects.select_for_update()
            .filter(**owner.scope(), session_id=session_id)
            .filter(lock_free())
            .first()
        )
        if session is None:
            session_get(owner=owner, session_id=session_id)  # not_found when it does not exist
            raise ChatError("session_busy", "This session has a reply in progress; cancel it before deleting.")
        attachments.files_delete_for_sessions([session.pk])  # the session's files go with it (chat.files)
        session.delete()
    start.forget_route(owner.key, session_id)


def _free_session_id(session_id: str, taken: set[str]) -> str:
    """`session_id`, or `<id>-guest` (`-guest2`, …) when the new owner already has it."""
    if session_id not in taken:
        return session_id
    for number in range(1, len(taken) + 2):
        suffix = MOVED_SUFFIX if number == 1 else f"{MOVED_SUFFIX}{number}"
        candidate = session_id[: 128 - len(suffix)] + suffix
        if candidate not in taken:
            return candidate
    raise AssertionError("unreachable: one of len(taken) + 1 candidates is free")


def sessions_move(*, from_owner: Owner, to_owner: Owner) -> int:
    """Give all of `from_owner`'s sessions, with their replies and files, to `to_owner`: an
    anonymous browser's, to the user it signs in as (docs/api.md §2). A session id the new owner
    already uses is kept under another (`_free_session_id`). Returns how many sessions moved."""
    owner_fields = {"owner_key": to_owner.key, "user_id": to_owner.user_id, "api_client_id": to_owner.api_client_id}
    with bounded_locks():
        moving = list(
            ChatSession.objects.select_for_update().filter(owner_key=from_owner.key).values_list("pk", "session_id")
        )
        taken = set(ChatSession.objects.filter(owner_key=to_owner.key).values_list("session_id", flat=True))
        for pk, session_id in moving:
            new_id = _free_session_id(session_id, taken)
            taken.add(new_id)
            ChatSession.objects.filter(pk=pk).update(session_id=new_id, **owner_fields)
        Reply.objects.filter(owner_key=from_owner.key).update(**owner_fields)
        ChatFile.objects.filter(owner_key=from_owner.key).update(**owner_fields)
    for _, session_id in moving:
        start.forget_route(from_owner.key, session_id)
    return len(moving)


def browser_sessions_to_user(sender, request, user, **kwargs) -> None:
    """`user_logged_in` receiver: the conversations this browser had as a guest become the user's,
    rather than staying with an anonymous owner the browser no longer is once signed in."""
    session = getattr(request, "session", None)
    browser_id = session.pop(BROWSER_SESSION_KEY, None) if session is not None else None
    if browser_id:
        sessions_move(from_owner=owner_for_browser(browser_id), to_owner=owner_for_user(user))


@db_async
def _reply_by_chat_id(*, owner: Owner, chat_id: str) -> Reply | None:
    """The usual case, one indexed lookup: the id is recorded."""
    return (
        Reply.objects.filter(**owner.scope("session__"), coze_chat_id=chat_id)
        .select_related("session")
        .order_by("-pk")
        .first()
    )


@db_async
def _find_reply_for_cancel(*, owner: Owner, chat_id: str) -> tuple[Reply | None, list[str]]:
    """The owner's reply `chat_id`, or None and the worker channels of the owner's replies in
    progress that have not recorded their chat id yet (it may be one of them, just started)."""
    # One statement, one snapshot: with two, the id could be recorded between them and be missed
    # by both.
    candidates = list(
        Reply.objects.filter(**owner.scope("session__"))
        .filter(Q(coze_chat_id=chat_id) | Q(coze_chat_id="", status=Reply.Status.IN_PROGRESS))
        .select_related("session")
        .order_by("-pk")
    )
    reply = next((r for r in candidates if r.coze_chat_id == chat_id), None)
    return reply, [] if reply is not None else [r.worker_channel for r in candidates]


async def _reply_for_cancel(*, owner: Owner, chat_id: str) -> Reply:
    """The owner's reply `chat_id`; ChatError("not_found") when there is none.

    A client has the chat id from the reply's first event, before the worker streaming it has
    recorded it: while one of the owner's replies in progress has no chat id yet, the cancel waits
    for it (up to CHAT_ID_WAIT_SECONDS, woken as each is recorded) rather than lose the cancel."""
    reply = await _reply_by_chat_id(owner=owner, chat_id=chat_id)
    if reply is not None:
        return reply
    deadline = time.monotonic() + CHAT_ID_WAIT_SECONDS
    async with wakeups.watching(wakeups.owner_topic(owner.key)) as watch:
        while True:
            reply, unrecorded = await _find_reply_for_cancel(owner=owner, chat_id=chat_id)
            if reply is not None:
                return reply
            if not unrecorded or time.monotonic() > deadline:
                raise ChatError("not_found", "No such chat.")
            await watch.wait(wakeups.wait_seconds(deadline - time.monotonic(), *unrecorded))


# How long a cancel request waits for the reply to be stored, so the session is free when it answers.
CANCEL_WAIT_SECONDS = 5.0
# How long a cancel by chat id waits for a reply that has just started to record that id.
CHAT_ID_WAIT_SECONDS = 2.0


async def achat_cancel(*, owner: Owner, chat_id: str) -> dict:
    """Stop a reply in progress: the upstream stream is closed and Coze's cancel is called.

    Answers once the reply is stored as cancelled (waiting up to CANCEL_WAIT_SECONDS), so the
    client's next message finds the session free.
    """
    control = running_turns.get(chat_id)
    if control is not None and owner.reaches(owner_key=control.owner_key, coze_user_id=control.coze_user_id):
        control.stop("cancelled")
        await asyncio.wait([control.task], timeout=CANCEL_WAIT_SECONDS)
        return {"chat_id": chat_id, "status": "cancelled"}
    reply = await _reply_for_cancel(owner=owner, chat_id=chat_id)
    if reply.status == Reply.Status.REQUIRES_ACTION:
        # Waiting for local tool outputs: running nowhere, so ended here.
        await tools.acancel_paused(owner=owner, session_id=reply.session.session_id, chat_id=chat_id)
        reply = await _reply_for_cancel(owner=owner, chat_id=chat_id)
        return {"chat_id": chat_id, "status": reply.status}
    if reply.status == Reply.Status.IN_PROGRESS and await _aend_reply_if_dead(reply.pk):
        # Its worker died (the lease lapsed): ended here as crash recovery ends it, `interrupted`.
        wakeups.publish(wakeups.reply_topic(reply.pk))
        reply = await _reply_for_cancel(owner=owner, chat_id=chat_id)
    if reply.status != Reply.Status.IN_PROGRESS:
        return {"chat_id": chat_id, "status": reply.status}
    # Running in another worker process: reach it through the channel layer, then wait for its
    # record to change (woken by its worker's publish once the outcome is stored).
    deadline = time.monotonic() + CANCEL_WAIT_SECONDS
    async with wakeups.watching(wakeups.reply_topic(reply.pk)) as watch:
        await cancellation.asend_cancel(worker_channel=reply.worker_channel, chat_id=chat_id)
        reply = await _reply_for_cancel(owner=owner, chat_id=chat_id)
        while reply.status == Reply.Status.IN_PROGRESS and time.monotonic() < deadline:
            await watch.wait(wakeups.wait_seconds(deadline - time.monotonic(), reply.worker_channel))
            reply = await _reply_for_cancel(owner=owner, chat_id=chat_id)
    # What happened, not what was asked: still `in_progress` if its worker did not stop it in time
    # (it ends `interrupted` once its lease lapses, if that worker died meanwhile).
    return {"chat_id": chat_id, "status": reply.status}


_aend_reply_if_dead = db_async(recovery.end_reply_if_dead)


async def asession_cancel(*, owner: Owner, session_id: str) -> dict:
    """Stop the session's current reply (its latest, if still in progress), like `achat_cancel`.

    A reply that has only just started may not know Coze's chat id yet: in this worker it is
    stopped through its control at once; in another, the cancel waits (up to CANCEL_WAIT_SECONDS)
    for the id to be recorded, then goes through the channel layer.
    """
    reply = await resuming.alatest_reply(owner=owner, session_id=session_id)
    if reply.status == Reply.Status.REQUIRES_ACTION:
        return {"session_id": session_id, **await achat_cancel(owner=owner, chat_id=reply.coze_chat_id)}
    deadline = time.monotonic() + CANCEL_WAIT_SECONDS
    async with wakeups.watching(wakeups.reply_topic(reply.pk)) as watch:
        reply = await resuming.alatest_reply(owner=owner, session_id=session_id)  # again, now watched
        while reply.status == Reply.Status.IN_PROGRESS:
            control = next((c for c in list(active_turns) if c.reply_pk == reply.pk and c.owner_key == owner.key), None)
            if control is not None and control.task is not None:
                control.stop("cancelled")
                await asyncio.wait([control.task], timeout=CANCEL_WAIT_SECONDS)
                return {"session_id": session_id, "chat_id": control.chat_id, "status": "cancelled"}
            if reply.coze_chat_id:
                answer = await achat_cancel(owner=owner, chat_id=reply.coze_chat_id)
                return {"session_id": session_id, **answer}
            # Running elsewhere without its chat id yet: woken when it is recorded (or the reply ends).
            if time.monotonic() > deadline:
                break
            await watch.wait(wakeups.wait_seconds(deadline - time.monotonic(), reply.worker_channel))
            reply = await resuming.alatest_reply(owner=owner, session_id=session_id)
    return {"session_id": session_id, "chat_id": reply.coze_chat_id, "status": reply.status}
