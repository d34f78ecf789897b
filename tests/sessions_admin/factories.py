"""Chat records written directly through the ORM, shaped like the chat service writes them.

`make_turn` stores one reply with its user message, answer and follow-ups, and keeps the
conversation's and session's counters in step, as `turn_start`/`turn_finish` do; an ended reply
is added to the daily usage rollup by the same call `turn_finish` makes.
"""

import itertools
from datetime import datetime, timedelta

from django.contrib.auth import get_user_model
from django.db.models import F
from django.utils import timezone

from sessions_admin.models import ApiClient, ChatSession, Conversation, Message, Reply
from sessions_admin.rollup import record_reply

_serial = itertools.count(1)


def make_client(name: str = "", *, active: bool = True) -> ApiClient:
    client, _ = ApiClient.create_with_key(name=name or f"client-{next(_serial)}")
    if not active:
        client.is_active = False
        client.save(update_fields=["is_active"])
    return client


def make_user(username: str = "", *, staff: bool = False, superuser: bool = False, password: str = "pw"):
    User = get_user_model()
    username = username or f"user-{next(_serial)}"
    if superuser:
        return User.objects.create_superuser(username, f"{username}@example.com", password)
    return User.objects.create_user(username, f"{username}@example.com", password, is_staff=staff)


def make_session(
    *,
    client: ApiClient | None = None,
    user=None,
    browser: str = "",
    session_id: str = "",
    coze_user_id: str = "coze-user",
    bot_id: str = "bot-a",
    last_activity: datetime | None = None,
    locked_until: datetime | None = None,
) -> ChatSession:
    if client is not None:
        owner_key = client.owner_key
    elif user is not None:
        owner_key = f"user:{user.pk}"
    else:
        owner_key = f"browser:{browser or 'b' * 32}"
    now = timezone.now()
    return ChatSession.objects.create(
        owner_key=owner_key,
        api_client=client,
        user=user,
        session_id=session_id or f"s-{next(_serial)}",
        coze_user_id=coze_user_id,
        bot_id=bot_id,
        created_at=last_activity or now,
        last_activity=last_activity or now,
        lock_token="t0k3n" if locked_until else "",
        locked_until=locked_until,
    )


def make_conversation(session: ChatSession, *, coze_id: str = "", bot_id: str = "") -> Conversation:
    conversation = Conversation.objects.create(
        session=session,
        coze_conversation_id=coze_id or f"73{next(_serial):08d}",
        bot_id=bot_id or session.bot_id,
        created_at=session.last_activity,
        last_activity=session.last_activity,
    )
    ChatSession.objects.filter(pk=session.pk).update(current_conversation=conversation, message_count=0)
    session.current_conversation = conversation
    return conversation


def make_turn(
    conversation: Conversation,
    *,
    question: str = "hello",
    answer: str | None = "hi there",
    follow_ups: tuple[str, ...] = (),
    status: str = Reply.Status.COMPLETED,
    input_tokens: int = 10,
    output_tokens: int = 20,
    ttft_ms: int | None = 300,
    duration_ms: int | None = 1200,
    started_at: datetime | None = None,
    transport: str = Reply.Transport.SSE,
    error_code: str = "",
    error_detail: str = "",
    bot_id: str = "",
) -> Reply:
    session = conversation.session
    started_at = started_at or timezone.now()
    finished = status != Reply.Status.IN_PROGRESS
    total = input_tokens + output_tokens
    reply = Reply.objects.create(
        session=session,
        conversation=conversation,
        owner_key=session.owner_key,
        api_client=session.api_client,
        user=session.user,
        bot_id=bot_id or conversation.bot_id,
        coze_chat_id=f"75{next(_serial):08d}",
        status=status,
        error_code=error_code,
        error_detail=error_detail,
        transport=transport,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=total,
        time_to_first_token_ms=ttft_ms,
        duration_ms=duration_ms if finished else None,
        started_at=started_at,
        finished_at=started_at + timedelta(milliseconds=duration_ms or 0) if finished else None,
    )

    def message(role: str, kind: str, content: str, coze_message_id: str = "") -> None:
        Message.objects.create(
            conversation=conversation,
            reply=reply,
            role=role,
            kind=kind,
            content=content,
            coze_message_id=coze_message_id,
            created_at=started_at,
        )

    message("user", "question", question)
    stored = 1
    if answer is not None:
        message("assistant", "answer", answer, f"76{next(_serial):08d}")
        stored += 1
    for text in follow_ups:
        message("assistant", "follow_up", text)
    Conversation.objects.filter(pk=conversation.pk).update(
        message_count=F("message_count") + stored,
        total_tokens=F("total_tokens") + total,
        last_activity=started_at,
    )
    ChatSession.objects.filter(pk=session.pk).update(
        message_count=F("message_count") + stored,
        input_tokens=F("input_tokens") + input_tokens,
        output_tokens=F("output_tokens") + output_tokens,
        total_tokens=F("total_tokens") + total,
        last_activity=started_at,
    )
    if finished:
        record_reply(reply_pk=reply.pk)
    return reply


def make_chat(*, turns: int = 2, **session_kwargs) -> tuple[ChatSession, Conversation, list[Reply]]:
    """A session with one conversation of `turns` completed turns."""
    session = make_session(**session_kwargs)
    conversation = make_conversation(session)
    replies = [make_turn(conversation, question=f"question {n}", answer=f"answer {n}") for n in range(turns)]
    session.refresh_from_db()
    conversation.refresh_from_db()
    return session, conversation, replies
