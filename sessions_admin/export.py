"""Conversations as JSON Lines, one conversation a line with its messages, ratings, replies and
usage (the line schema is in docs/admin.md, "Export"). What `export_chat_data` writes and the
admin's "Export selected conversations" action downloads.

Constant memory however big the export or a conversation: conversations are read in keyset pages
by primary key, their messages and replies in keyset pages by (conversation, id) through the
indexes that order them, and each line is written piece by piece as its rows arrive, never held
whole. Output comes in chunks of about CHUNK_CHARS characters.
"""

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import Q, QuerySet
from django.http import StreamingHttpResponse
from django.utils import timezone

from sessions_admin.dashboard import owner_labels
from sessions_admin.models import Conversation, Message, Reply

SCHEMA = 1
CONVERSATION_PAGE = 500
ROW_PAGE = 2000
CHUNK_CHARS = 64 * 1024

MESSAGE_FIELDS = (
    "pk",
    "conversation_id",
    "role",
    "kind",
    "content",
    "content_type",
    "attachments",
    "created_at",
    "reply__coze_chat_id",
    "feedback__rating",
    "feedback__comment",
    "feedback__created_at",
    "feedback__updated_at",
)
REPLY_FIELDS = (
    "pk",
    "conversation_id",
    "coze_chat_id",
    "status",
    "error_code",
    "transport",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "time_to_first_token_ms",
    "duration_ms",
    "started_at",
    "finished_at",
)
CONVERSATION_FIELDS = (
    "pk",
    "coze_conversation_id",
    "bot_id",
    "created_at",
    "last_activity",
    "session__session_id",
    "session__owner_key",
    "session__coze_user_id",
)

_encoder = DjangoJSONEncoder(ensure_ascii=False, separators=(",", ":"))
dumps = _encoder.encode


@dataclass(slots=True)
class ExportStats:
    conversations: int = 0
    messages: int = 0
    replies: int = 0
    ratings: int = 0


def _rows(model, conversation_pks: list[int], fields: tuple[str, ...]) -> Iterator[tuple]:
    """The rows of `model` belonging to these conversations, by (conversation, id), a page at a time."""
    base = model.objects.filter(conversation_id__in=conversation_pks).order_by("conversation_id", "pk")
    after: tuple[int, int] | None = None
    while True:
        page = base
        if after is not None:
            page = page.filter(Q(conversation_id__gt=after[0]) | Q(conversation_id=after[0], pk__gt=after[1]))
        rows = list(page.values_list(*fields)[:ROW_PAGE])
        yield from rows
        if len(rows) < ROW_PAGE:
            return
        after = (rows[-1][1], rows[-1][0])


class _Peek:
    """An iterator whose next item can be looked at first."""

    def __init__(self, items: Iterator):
        self.items, self.head, self.done = items, None, False
        self._advance()

    def _advance(self) -> None:
        try:
            self.head = next(self.items)
        except StopIteration:
            self.head, self.done = None, True

    def take_while(self, conversation_pk: int) -> Iterator[tuple]:
        while not self.done and self.head[1] == conversation_pk:
            row = self.head
            self._advance()
            yield row


def message_json(row: tuple) -> dict:
    (pk, _, role, kind, content, content_type, attachments, created_at, chat_id, rating, comment, rated, updated) = row
    return {
        "id": pk,
        "role": role,
        "type": kind,
        "content": content,
        "content_type": content_type,
        "attachments": attachments or [],
        "chat_id": chat_id or None,
        "created_at": created_at,
        "feedback": None
        if rating is None
        else {"rating": rating, "comment": comment, "created_at": rated, "updated_at": updated},
    }


def reply_json(row: tuple) -> dict:
    (_, _, chat_id, status, error_code, transport, tokens_in, tokens_out, total, ttft, duration, started, finished) = (
        row
    )
    return {
        "chat_id": chat_id or None,
        "status": status,
        "error_code": error_code or None,
        "transport": transport,
        "usage": {"input_tokens": tokens_in, "output_tokens": tokens_out, "total_tokens": total},
        "time_to_first_token_ms": ttft,
        "duration_ms": duration,
        "started_at": started,
        "finished_at": finished,
    }


def _conversation_pieces(row: tuple, owner_name: str, messages: _Peek, replies: _Peek, stats: ExportStats):
    """One conversation's line, in pieces: the head, each message, each reply, the usage."""
    pk, coze_id, bot_id, created_at, last_activity, session_id, owner_key, coze_user_id = row
    head = {
        "schema": SCHEMA,
        "id": pk,
        "conversation_id": coze_id or None,
        "session_id": session_id,
        "owner": owner_key,
        "owner_name": owner_name,
        "user_id": coze_user_id,
        "bot_id": bot_id,
        "created_at": created_at,
        "last_activity": last_activity,
    }
    yield dumps(head)[:-1] + ',"messages":['
    separator = ""
    for message in messages.take_while(pk):
        yield separator + dumps(message_json(message))
        separator = ","
        stats.messages += 1
        stats.ratings += message[9] is not None
    yield '],"replies":['
    usage = {"replies": 0, "input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
    separator = ""
    for reply in replies.take_while(pk):
        yield separator + dumps(reply_json(reply))
        separator = ","
        usage["replies"] += 1
        usage["input_tokens"] += reply[6]
        usage["output_tokens"] += reply[7]
        usage["total_tokens"] += reply[8]
        stats.replies += 1
    yield '],"usage":' + dumps(usage) + "}\n"
    stats.conversations += 1


def iter_export(
    conversations: QuerySet[Conversation],
    *,
    stats: ExportStats | None = None,
    progress: Callable[[int], None] | None = None,
) -> Iterator[str]:
    """JSON Lines for `conversations` (any filtered queryset), in primary key order, in chunks of
    about CHUNK_CHARS (a long conversation's line spans several). `stats` is filled as it goes;
    `progress` is called with the number of conversations of each page written."""
    stats = stats if stats is not None else ExportStats()
    conversations = conversations.order_by()
    buffer: list[str] = []
    size = 0
    after = 0
    while True:
        page = list(
            conversations.filter(pk__gt=after).order_by("pk").values_list(*CONVERSATION_FIELDS)[:CONVERSATION_PAGE]
        )
        if not page:
            break
        after = page[-1][0]
        pks = [row[0] for row in page]
        labels = owner_labels(sorted({row[6] for row in page}))
        messages = _Peek(_rows(Message, pks, MESSAGE_FIELDS))
        replies = _Peek(_rows(Reply, pks, REPLY_FIELDS))
        for row in page:
            for piece in _conversation_pieces(row, labels[row[6]], messages, replies, stats):
                buffer.append(piece)
                size += len(piece)
                if size >= CHUNK_CHARS:
                    yield "".join(buffer)
                    buffer, size = [], 0
        if progress:
            progress(len(page))
    if buffer:
        yield "".join(buffer)


async def aiter_export(conversations: QuerySet[Conversation]) -> AsyncIterator[str]:
    """`iter_export` for an ASGI response: each chunk is produced on the thread Django's sync
    code runs on (one database connection), the event loop never blocks."""
    chunks = iter_export(conversations)
    done = object()
    step = sync_to_async(lambda: next(chunks, done))
    while True:
        chunk = await step()
        if chunk is done:
            return
        yield chunk


def export_response(request, conversations: QuerySet[Conversation]) -> StreamingHttpResponse:
    """The conversations as a streamed JSON Lines download."""
    content = aiter_export(conversations) if isinstance(request, ASGIRequest) else iter_export(conversations)
    response = StreamingHttpResponse(content, content_type="application/jsonl; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="conversations-{timezone.now():%Y%m%d-%H%M%S}.jsonl"'
    response["Cache-Control"] = "no-store"
    return response
