"""Resuming a reply (docs/api.md §9): the events after the last one a client saw.

An event id names its reply (`chat.domain.event_ids`): a resume continues that reply, never
another; without an id, the session's latest reply from its start. The reply is followed from its
replay buffer (`chat.resume.replay`) while the buffer holds every event after that one; otherwise
— the window passed, the buffer was dropped, or the reply runs on a worker whose memory this one
can't see — the reply is awaited until it ends and its stored form is sent: `session`, one `delta`
with the rest of the answer, `completed` (or its `error`), `done`, with ids that continue the
original ones exactly (`_stored_entries`). Owner-scoped like every session operation: someone
else's session is `not_found`.

The waits are woken by the change itself (`chat.runtime.wakeups`, the reply's topic): its buffer
opening, its outcome stored, its end note written — in this worker or, with Redis, any other.
"""

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from django.db.models import F

from chat.access import rates
from chat.domain import event_ids
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


@db_async
def _mark_resumable_end(*, reply_pk: int, client_gone: bool) -> None:
    Reply.objects.filter(pk=reply_pk).update(resumable=True, ended_without_client=client_gone)


async def amark_resumable_end(*, reply_pk: int, client_gone: bool) -> None:
    """Note on a resumable reply, as it ends, whether its client had gone (for the admin)."""
    await _mark_resumable_end(reply_pk=reply_pk, client_gone=client_gone)
    wakeups.publish(wakeups.reply_topic(reply_pk))  # a resume may be waiting for this note


@db_async
def _end_noted(reply_pk: int) -> bool:
    return not Reply.objects.filter(pk=reply_pk, resumable=True, ended_without_client__isnull=True).exists()


@dataclass(frozen=True, slots=True)
class _StoredEvents:
    """A stored reply as numbered events: what each event before the last added to the answer
    (`Reply.answer_offsets`), then its last (`completed` or `error`), then `done`."""

    answer_chars: list[int]
    known: bool = True  # False: where the client's events were is not known (a crashed worker's reply)

    @classmethod
    def of(cls, answer_offsets: str, text: str) -> "_StoredEvents":
        if answer_offsets == event_ids.UNKNOWN_OFFSETS:
            return cls([0, len(text)] if text else [0], known=False)
        if answer_offsets:
            return cls([int(count) for count in answer_offsets.split(",")])
        # Stored before the offsets were (or by a path that had none): `session`, the whole answer.
        return cls([0, len(text)] if text else [0])

    @property
    def last(self) -> int:
        return len(self.answer_chars) + 1

    def position(self, number: int) -> int:
        """The characters of the answer delivered through event `number`."""
        return sum(self.answer_chars[:number])

    def last_delta(self) -> int:
        """The number of the last event that carried answer (0: none)."""
        carried = [number for number, chars in enumerate(self.answer_chars, 1) if chars]
        return carried[-1] if carried else 0


@db_async
def _stored_entries(reply_pk: int, after: event_ids.EventRef) -> list[Entry]:
    """An ended reply as a resume sends it once its events are gone: `session`, the rest of the
    answer after the client's event as one `delta`, `completed` or the `error` it ended with, `done`.

    With the ids of the events they stand for, so that whatever id of them a client keeps resumes
    exactly after what it delivered: the `delta` has the id of the reply's last event that carried
    answer, `completed` (or `error`) and `done` their own; `session` the id of event 1 from the
    start, else the odd id just above the client's (`event_ids.replayed_session_id`), and none
    when the client's id was that very replay's `session`. A client that had the last event gets
    `done` alone, one that had `done` nothing.

    A redacted reply's stored answer is not the text its offsets count: the `delta` then carries it
    whole, and `completed` says `"redacted": true`."""
    reply = Reply.objects.select_related("session", "conversation").get(pk=reply_pk)
    answer = (
        Message.objects.filter(reply_id=reply_pk, kind=Message.Kind.ANSWER).values("content", "coze_message_id").first()
    )
    text = answer["content"] if answer else ""
    stored = _StoredEvents.of(reply.answer_offsets, text)
    number = after.number
    if not stored.known and number:
        # The client had events nobody kept (its worker died with them): it gets how the reply
        # ended, numbered on above its id; there is no stored answer to continue.
        stored = _StoredEvents([0] * number, known=False)
        text = ""
    if number > stored.last:
        return []
    done = Entry(event_ids.event_id(reply_pk, stored.last + 1), "done", "[DONE]")
    if number == stored.last:
        return [done]
    session_id, conversation_id = reply.session.session_id, reply.conversation.coze_conversation_id
    numbered: list[tuple[int, object]] = []
    if not after.replayed_session:
        session_event = SessionEvent(session_id=session_id, conversation_id=conversation_id, chat_id=reply.coze_chat_id)
        first = event_ids.event_id(reply_pk, 1) if number == 0 else event_ids.replayed_session_id(reply_pk, number)
        numbered.append((first, session_event))
    rest = text if reply.redacted else text[stored.position(number) :]
    if rest:
        numbered.append((event_ids.event_id(reply_pk, stored.last_delta()), DeltaEvent(rest)))
    if reply.status == Reply.Status.COMPLETED:
        usage = Usage(reply.input_tokens, reply.output_tokens, reply.total_tokens)
        message_id = (answer and answer["coze_message_id"]) or f"reply-{reply.pk}"
        final = CompletedEvent(
            message_id=message_id,
            content=text,
            usage=usage,
            conversation_id=conversation_id,
            session_id=session_id,
            chat_id=reply.coze_chat_id,
            redacted=reply.redacted,
        )
    else:
        code = reply.error_code if reply.error_code in ERROR_CODES else "internal_error"
        final = ErrorEvent.from_error(ChatError(code, reply.error_detail or None))
    numbered.append((event_ids.event_id(reply_pk, stored.last), final))
    return [*(Entry(event_id, e.type, encode_json(e.as_dict())) for event_id, e in numbered), done]


async def aopen_reply_stream(
    *, owner: Owner, session_id: str, after_id: int, heartbeat: float
) -> AsyncIterator[Entry | Ping]:
    """The events after event `after_id` of the reply that id names (0: the session's latest reply,
    from its start), live until `done`.

    Raises ChatError("not_found") for an unknown or someone else's session, or one with no reply;
    ChatError("gone") for an id that names no reply of this session that is still kept (deleted,
    pruned, or never one of its own); and ChatError("rate_limited") when the owner is over its
    requests per minute.
    """
    await rates.acheck_request(owner)  # a resume is a request like any other
    after = event_ids.parse(after_id)
    if after_id == 0:
        reply_pk = (await alatest_reply(owner=owner, session_id=session_id)).pk
    else:
        reply_pk = await _anamed_reply(owner=owner, session_id=session_id, reply_pk=after.reply_pk)
    in_background(_count_resume(reply_pk))
    return _reply_events(reply_pk, after, heartbeat)


@db_async
def _anamed_reply(*, owner: Owner, session_id: str, reply_pk: int | None) -> int:
    """`reply_pk` if it is a reply of the owner's session; ChatError `not_found` without such a
    session, `gone` without such a reply (an id of another reply is never taken for one of these)."""
    if (
        reply_pk is not None
        and Reply.objects.filter(pk=reply_pk, **owner.scope("session__"), session__session_id=session_id).exists()
    ):
        return reply_pk
    if not ChatSession.objects.filter(**owner.scope(), session_id=session_id).exists():
        raise ChatError("not_found", "No such session.")
    raise ChatError("gone", "The reply that event id belongs to is no longer kept.")


async def _reply_events(reply_pk: int, after: event_ids.EventRef, heartbeat: float) -> AsyncIterator[Entry | Ping]:
    events = None
    async with wakeups.watching(wakeups.reply_topic(reply_pk)) as watch:
        # Watching before each look: a change published after it wakes the wait below.
        quiet_since = time.monotonic()
        while (events := await replay.afollow(reply_pk, after.number, heartbeat)) is None:
            status, worker_channel = await _reply_status(reply_pk)
            if status != Reply.Status.IN_PROGRESS:
                # Stored a moment ago; a resumable reply's end note (how much each event carried)
                # follows at once.
                deadline = time.monotonic() + END_NOTE_WAIT_SECONDS
                while not await _end_noted(reply_pk) and time.monotonic() < deadline:
                    await watch.wait(wakeups.wait_seconds(deadline - time.monotonic(), worker_channel))
                for entry in await _stored_entries(reply_pk, after):
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
