"""Sessions as Coze's API sees them (docs/api.md §13): a Coze conversation is a session, each of
its contexts (the session's conversation records: a new one at each clear) a section, each reply a
chat. Owner-scoped like every session operation: another owner's conversation or chat is
`not_found` (Coze's 4002 and 4001).

A conversation created ahead of its first chat gets its session and its first section here; one
created with messages gets a Coze conversation holding them as context at once, so its first chat
continues that. A conversation created without a bot takes the bot of its first chat
(`chat.turn.store.session_route`).
"""

import secrets
import time
from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from chat import coze
from chat.conversations import sessions
from chat.domain import transcripts
from chat.domain.errors import ChatError
from chat.domain.inputs import Owner
from chat.runtime import wakeups
from chat.runtime.db import bounded_locks, db_async
from chat.turn import records
from chat.turn.records import no_chat, no_conversation
from sessions_admin.models import ChatSession, Conversation, Message, Reply

# Coze's own ids are 19-digit numbers beginning with 7; the conversations made here look alike.
ID_BASE = 7 * 10**18
MESSAGE_KINDS = (Message.Kind.QUESTION, Message.Kind.ANSWER)


def new_conversation_id() -> str:
    return str(ID_BASE + secrets.randbelow(10**18))


@dataclass(frozen=True, slots=True)
class EnteredMessage:
    """A message a client gives a new conversation, validated."""

    role: str  # "user" or "assistant"
    content: str
    content_type: str  # "text" or "object_string"
    meta_data: dict


async def aconversation_create(
    *, owner: Owner, bot_id: str, user_id: str, messages: list[EnteredMessage], meta_data: dict[str, str]
) -> ChatSession:
    """A new session (a conversation without a turn yet), with its first section. Its `messages`
    go to Coze at once, which keeps them as the conversation's context, and are stored in it."""
    coze_conversation_id = ""
    if messages:
        coze_conversation_id = await coze.aconversation_create(
            bot_id=bot_id,
            messages=[
                {"role": m.role, "content": m.content, "content_type": m.content_type, "meta_data": m.meta_data or None}
                for m in messages
            ],
            meta_data=meta_data,
        )
    return await _conversation_create(
        owner=owner,
        bot_id=bot_id,
        user_id=user_id,
        messages=messages,
        meta_data=meta_data,
        coze_conversation_id=coze_conversation_id,
    )


@db_async
def _conversation_create(
    *,
    owner: Owner,
    bot_id: str,
    user_id: str,
    messages: list[EnteredMessage],
    meta_data: dict,
    coze_conversation_id: str,
) -> ChatSession:
    for attempt in range(3):
        try:
            with transaction.atomic():
                return _create_rows(
                    owner=owner,
                    session_id=new_conversation_id(),
                    bot_id=bot_id,
                    user_id=user_id,
                    messages=messages,
                    meta_data=meta_data,
                    coze_conversation_id=coze_conversation_id,
                )
        except IntegrityError:
            if attempt == 2:  # three random 18-digit ids taken: something else is wrong
                raise
    raise AssertionError("unreachable")


def _create_rows(
    *,
    owner: Owner,
    session_id: str,
    bot_id: str,
    user_id: str,
    messages: list[EnteredMessage],
    meta_data: dict,
    coze_conversation_id: str,
) -> ChatSession:
    now = timezone.now()
    session = ChatSession.objects.create(
        owner_key=owner.key,
        session_id=session_id,
        api_client_id=owner.api_client_id,
        user_id=owner.user_id,
        coze_user_id=user_id or records.default_user(owner),
        bot_id=bot_id,
        meta_data=meta_data,
        created_at=now,
        last_activity=now,
        message_count=len(messages),
    )
    conversation = _new_section(session, coze_conversation_id=coze_conversation_id, messages=len(messages), now=now)
    Message.objects.bulk_create(
        Message(
            conversation=conversation,
            role=Message.Role.USER if m.role == "user" else Message.Role.ASSISTANT,
            kind=Message.Kind.QUESTION if m.role == "user" else Message.Kind.ANSWER,
            content=records.redacted(m.content),  # Coze got them as entered (aconversation_create)
            content_type=m.content_type,
            created_at=now,
        )
        for m in messages
    )
    session.current_conversation = conversation
    session.save(update_fields=["current_conversation"])
    return session


def _new_section(session: ChatSession, *, coze_conversation_id: str = "", messages: int = 0, now=None) -> Conversation:
    """A new conversation record for the session: Coze's API calls it a section. Messages entered
    at creation make a context the OpenAI path's history digest can't name: it never matches."""
    now = now or timezone.now()
    digest = transcripts.transcript_start(owner_key=session.owner_key, bot_id=session.bot_id)
    return Conversation.objects.create(
        session=session,
        bot_id=session.bot_id,
        coze_conversation_id=coze_conversation_id,
        created_at=now,
        last_activity=now,
        message_count=messages,
        transcript_hash="" if messages or not session.bot_id else digest,
    )


@db_async
def conversation_get(*, owner: Owner, session_id: str) -> ChatSession:
    session = ChatSession.objects.filter(**owner.scope(), session_id=session_id).first()
    if session is None:
        raise no_conversation()
    return session


@db_async
def conversation_list(*, owner: Owner, bot_id: str, page_num: int, page_size: int) -> tuple[list[ChatSession], bool]:
    """The owner's conversations with `bot_id`, newest first: one page, and whether more follow."""
    start = (page_num - 1) * page_size
    found = list(
        ChatSession.objects.filter(**owner.scope(), bot_id=bot_id).order_by("-created_at", "-pk")[
            start : start + page_size + 1
        ]
    )
    return found[:page_size], len(found) > page_size


@db_async
def conversation_clear(*, owner: Owner, session_id: str) -> ChatSession:
    """A new context, as Coze's clear starts a new section: the session's context is forgotten
    (`sessions.session_clear`: `session_busy` while a reply runs or waits) and a new section begins."""
    try:
        session = sessions.session_clear(owner=owner, session_id=session_id)
    except ChatError as error:
        if error.code == "not_found":
            raise no_conversation() from None
        raise
    with bounded_locks():
        locked = ChatSession.objects.select_for_update().get(pk=session.pk)
        if locked.current_conversation_id is None:  # no turn took it meanwhile
            locked.current_conversation = _new_section(locked)
            locked.save(update_fields=["current_conversation"])
    return locked


@db_async
def conversation_delete(*, owner: Owner, session_id: str) -> None:
    try:
        sessions.session_delete(owner=owner, session_id=session_id)
    except ChatError as error:
        if error.code == "not_found":
            raise no_conversation() from None
        raise


@dataclass(frozen=True, slots=True)
class MessagePage:
    messages: list[Message]
    has_more: bool


@db_async
def message_list(
    *,
    owner: Owner,
    session_id: str,
    order: str,
    chat_id: str | None,
    before_id: str | None,
    after_id: str | None,
    limit: int,
) -> MessagePage:
    """A page of the conversation's questions and answers, all sections, in `order` ("desc":
    newest first). `after_id` goes on in that order from the message it names, `before_id` goes
    back from it (the page nearest to it, still in `order`). A message is named by its Coze id or,
    for one Coze gave none (questions), by ours."""
    session = ChatSession.objects.filter(**owner.scope(), session_id=session_id).only("pk").first()
    if session is None:
        raise no_conversation()
    listed = Message.objects.filter(conversation__session=session, kind__in=MESSAGE_KINDS).select_related(
        "conversation", "reply"
    )
    if chat_id:
        listed = listed.filter(reply__coze_chat_id=chat_id)
    newest_first = order == "desc"
    cursor = before_id or after_id
    if cursor:
        cursor_pk = _message_pk(session, cursor)
        onward = (after_id and newest_first) or (before_id and not newest_first)
        listed = listed.filter(pk__lt=cursor_pk) if onward else listed.filter(pk__gt=cursor_pk)
        if before_id:  # the page nearest the cursor, then shown in the list's order
            nearest = list(listed.order_by("pk" if newest_first else "-pk")[: limit + 1])
            page = nearest[:limit]
            page.sort(key=lambda m: m.pk, reverse=newest_first)
            return MessagePage(messages=page, has_more=len(nearest) > limit)
    found = list(listed.order_by("-pk" if newest_first else "pk")[: limit + 1])
    return MessagePage(messages=found[:limit], has_more=len(found) > limit)


def _message_pk(session: ChatSession, message_id: str) -> int:
    mine = Message.objects.filter(conversation__session=session)
    pk = mine.filter(coze_message_id=message_id).values_list("pk", flat=True).first()
    if pk is None and message_id.isascii() and message_id.isdigit() and len(message_id) < 19:
        pk = mine.filter(coze_message_id="", pk=int(message_id)).values_list("pk", flat=True).first()
    if pk is None:
        raise ChatError("invalid", f"No message {message_id} in this conversation.")
    return pk


@db_async
def message_pk(*, owner: Owner, session_id: str, message_id: str) -> int:
    """Our id of the message `message_id` (Coze's id, or ours for one Coze gave none) in the
    owner's conversation `session_id`: `not_found` for an unknown conversation (4002) or a message
    not in it (naming `message_id`)."""
    session = ChatSession.objects.filter(**owner.scope(), session_id=session_id).only("pk").first()
    if session is None:
        raise no_conversation()
    try:
        return _message_pk(session, message_id)
    except ChatError:
        detail = f"No message {message_id} in this conversation."
        raise ChatError("not_found", detail, errors={"message_id": [detail]}) from None


# How long a lookup of a chat waits for the id of a reply that has just started to be recorded.
CHAT_ID_WAIT_SECONDS = 2.0


async def achat_get(*, owner: Owner, session_id: str, chat_id: str) -> Reply:
    """The owner's reply `chat_id` in session `session_id` (with its conversation record).

    A client has the chat id from Coze's first event, as the reply starts, and may look it up
    (retrieve, cancel) before the turn has recorded it, from any worker: while the session has a
    reply whose id is not recorded yet, the lookup waits for it (up to CHAT_ID_WAIT_SECONDS),
    woken as the owner's replies record theirs.
    """
    deadline = time.monotonic() + CHAT_ID_WAIT_SECONDS
    async with wakeups.watching(wakeups.owner_topic(owner.key)) as watch:
        while True:
            reply, unrecorded = await _chat_get(owner=owner, session_id=session_id, chat_id=chat_id)
            if reply is not None:
                return reply
            if not unrecorded or time.monotonic() > deadline:
                raise no_chat()
            await watch.wait(wakeups.wait_seconds(deadline - time.monotonic(), *unrecorded))


@db_async
def _chat_get(*, owner: Owner, session_id: str, chat_id: str) -> tuple[Reply | None, list[str]]:
    """The reply, or None and the worker channels of the session's replies in progress whose chat
    id is not recorded yet."""
    session_pk = ChatSession.objects.filter(**owner.scope(), session_id=session_id).values_list("pk", flat=True).first()
    if session_pk is None:
        raise no_conversation()
    # One statement, one snapshot: with two, the id could be recorded between them and be missed
    # by both.
    candidates = list(
        Reply.objects.filter(session_id=session_pk)
        .filter(Q(coze_chat_id=chat_id) | Q(coze_chat_id="", status=Reply.Status.IN_PROGRESS))
        .select_related("conversation")
        .order_by("-pk")
    )
    reply = next((r for r in candidates if r.coze_chat_id == chat_id), None)
    return reply, [] if reply is not None else [r.worker_channel for r in candidates]


@db_async
def chat_messages(*, reply: Reply) -> list[Message]:
    """The reply's stored answer and follow-ups, in order."""
    return list(
        reply.messages.filter(Q(kind=Message.Kind.ANSWER) | Q(kind=Message.Kind.FOLLOW_UP))
        .select_related("conversation")
        .order_by("pk")
    )
