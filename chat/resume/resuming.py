"""Resuming a session's reply (docs/api.md §9): the events after the last one a client saw.

The session's latest reply is followed from its replay buffer (`chat.resume.replay`) while the buffer
holds every event after that one; otherwise — the window passed, the buffer was dropped, or the
reply runs on a worker whose memory this one can't see — the reply is awaited until it ends and
its stored form is sent: `session`, one `delta` with the rest of the answer, `completed` (or
its `error`), `done`. Owner-scoped like every session operation: someone else's session is `not_found`.

The waits are woken by the change itself (`chat.runtime.wakeups`, the reply's topic): its buffer
opening, its outcome stored, its end note written — in this worker or, with Redis, any other.
"""

import contextlib
import time
from collections.abc import AsyncIterator

from django.db.models import F

from chat.access import rates
from chat.domain.errors import ERROR_CODES, ChatError
from chat.domain.events import PING, CompletedEvent, DeltaEvent, ErrorEvent, Ping, SessionEvent, Usage
from chat.domain.inputs import Owner
from chat.domain.sse import encode_json
from chat.resume import replay
from chat.resume.replay import Entry
from chat.runtime import wakeups
from chat.runtime.db import db_async
from chat.runtime.tasks import in_background
from sessions_admin.models import ChatSession, Message, Reply


def latest_reply(*, owner: Owner, session_id: str) -> Reply:
    """The latest reply of the owner's session (what a resume follows and a session cancel stops).

    Raises ChatError("not_found") for an unknown session, someone else's, or one with no reply yet.
    """
    reply = (
        Reply.objects.filter(**owner.scope("session__"), session__session_id=session_id)
        .order_by("-pk")
        .only("pk", "status", "coze_chat_id", "worker_channel")
        .first()
    )
    if reply is not None:
        return reply
    if not ChatSession.objects.filter(**owner.scope(), session_id=session_id).exists():
        raise ChatError("not_found", "No such session.")
    raise ChatError("not_found", "This session has no reply yet.")


alatest_reply = db_async(latest_reply)


@db_async
def _reply_status(reply_pk: int) -> tuple[str, str]:
    """The reply's status and the channel of the worker it runs on."""
    row = Reply.objects.filter(pk=reply_pk).values_list("status", "worker_channel").first()
    return row or (Reply.Status.FAILED, "")


@db_async
def _count_resume(reply_pk: int) -> None:
    Reply.objects.filter(pk=reply_pk).update(resume_count=F("resume_count") + 1)


# How long a resume waits for a resumable reply's end note (written just after its outcome).
END_NOTE_WAIT_SECONDS = 5.0


async def amark_resumable_end(*, reply_pk: int, client_gone: bool, answer_offsets: str) -> None:
    """Note on a resumable reply, as it ends, whether its client had gone (for the admin) and how
    much of the answer each event carried (for a resume after the window)."""
    await _mark_resumable_end(reply_pk=reply_pk, client_gone=client_gone, answer_offsets=answer_offsets)
    wakeups.publish(wakeups.reply_topic(reply_pk))  # a resume may be waiting for this note


@db_async
def _mark_resumable_end(*, reply_pk: int, client_gone: bool, answer_offsets: str) -> None:
    Reply.objects.filter(pk=reply_pk).update(
        resumable=True, ended_without_client=client_gone, answer_offsets=answer_offsets
    )


@db_async
def _end_noted(reply_pk: int) -> bool:
    return not Reply.objects.filter(pk=reply_pk, resumable=True, ended_without_client__isnull=True).exists()


def _answer_after(text: str, answer_offsets: str, after_id: int) -> str:
    """The answer after event `after_id`, from a resumable reply's per-event character counts."""
    if not after_id or not answer_offsets:
        return text
    counts = answer_offsets.split(",")
    return text[sum(map(int, counts[:after_id])) :]


@db_async
def _stored_entries(reply_pk: int, after_id: int) -> list[Entry]:
    """An ended reply as a resume sends it once its events are gone: `session`, the answer after
    event `after_id` as one `delta` (the whole answer if the reply was not resumable), `completed`
    or the `error` it ended with, `done`; numbered on from `after_id`."""
    reply = Reply.objects.select_related("session", "conversation").get(pk=reply_pk)
    answer = (
        Message.objects.filter(reply_id=reply_pk, kind=Message.Kind.ANSWER).values("content", "coze_message_id").first()
    )
    text = answer["content"] if answer else ""
    session_id, conversation_id = reply.session.session_id, reply.conversation.coze_conversation_id
    events = [SessionEvent(session_id=session_id, conversation_id=conversation_id, chat_id=reply.coze_chat_id)]
    rest = _answer_after(text, reply.answer_offsets, after_id)
    if rest:
        events.append(DeltaEvent(rest))
    if reply.status == Reply.Status.COMPLETED:
        usage = Usage(reply.input_tokens, reply.output_tokens, reply.total_tokens)
        message_id = (answer and answer["coze_message_id"]) or f"reply-{reply.pk}"
        events.append(
            CompletedEvent(
                message_id=message_id,
                content=text,
                usage=usage,
                conversation_id=conversation_id,
                session_id=session_id,
                chat_id=reply.coze_chat_id,
            )
        )
    else:
        code = reply.error_code if reply.error_code in ERROR_CODES else "internal_error"
        events.append(ErrorEvent.from_error(ChatError(code, reply.error_detail or None)))
    entries = [Entry(index, e.type, encode_json(e.as_dict())) for index, e in enumerate(events, after_id + 1)]
    return [*entries, Entry(after_id + len(entries) + 1, "done", "[DONE]")]


async def aopen_reply_stream(
    *, owner: Owner, session_id: str, after_id: int, heartbeat: float
) -> AsyncIterator[Entry | Ping]:
    """The events of the session's latest reply after `after_id` (0: all), live until `done`.

    Raises ChatError("not_found") for an unknown or someone else's session, or one with no reply,
    and ChatError("rate_limited") when the owner is over its requests per minute.
    """
    await rates.acheck_request(owner)  # a resume is a request like any other
    reply = await alatest_reply(owner=owner, session_id=session_id)
    in_background(_count_resume(reply.pk))
    return _reply_events(reply.pk, after_id, heartbeat)


async def _reply_events(reply_pk: int, after_id: int, heartbeat: float) -> AsyncIterator[Entry | Ping]:
    events = None
    async with wakeups.watching(wakeups.reply_topic(reply_pk)) as watch:
        # Watching before each look: a change published after it wakes the wait below.
        quiet_since = time.monotonic()
        while (events := await replay.afollow(reply_pk, after_id, heartbeat)) is None:
            status, worker_channel = await _reply_status(reply_pk)
            if status != Reply.Status.IN_PROGRESS:
                # Stored a moment ago; a resumable reply's end note (how much each event carried)
                # follows at once.
                deadline = time.monotonic() + END_NOTE_WAIT_SECONDS
                while not await _end_noted(reply_pk) and time.monotonic() < deadline:
                    await watch.wait(wakeups.wait_seconds(deadline - time.monotonic(), worker_channel))
                for entry in await _stored_entries(reply_pk, after_id):
                    yield entry
                return
            # Running, but its events are not here (not resumable, just starting, or in another
            # worker's memory): sleep until it is kept or stored; a ping per quiet heartbeat (and
            # a fresh look then, for an end stored by a process that does not publish).
            remaining = quiet_since + heartbeat - time.monotonic()
            if not await watch.wait(wakeups.wait_seconds(remaining, worker_channel)) and (
                time.monotonic() - quiet_since >= heartbeat * 0.99
            ):
                quiet_since = time.monotonic()
                yield PING
    async with contextlib.aclosing(events):
        async for item in events:
            yield item
