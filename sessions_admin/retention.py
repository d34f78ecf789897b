"""The one deletion engine, and retention: what `clear_chat_sessions` and `prune_chat_data` delete.

`DeletionEngine` deletes chat records in the order their references require, children first,
in chunks of at most `chunk` rows, each chunk in its own short transaction, so memory and lock
time stay bounded, it is safe while the server runs, and an interruption leaves no orphans (run
it again to finish). With `dry_run` it counts what it would delete instead, by kind. It deletes:

* whole **sessions** (`sessions`): their conversations, messages, replies, ratings and the files
  their messages attached; at Coze, their conversations;
* whole **conversations** of sessions that live on (`conversations`); at Coze, those conversations;
* single **turns** of conversations that live on (`turns`: a reply with its messages) and
  messages not tied to a reply (`loose_messages`); at Coze, those messages;
* **files** (`files`), and the **replay buffers** (Redis, docs/api.md §9) of every reply it deletes.

Deleting a reply never touches the daily usage rollup: spend history and budgets outlive the
transcripts. The days whose replies it deletes are noted (`PrunedUsageDay`), so
`rebuild_daily_usage` leaves them as they are instead of rebuilding them from what remains.

Coze: for each chunk the engine writes what to delete at Coze into the outbox
(`sessions_admin.coze_outbox`) in the deleting transaction, and sends it through the Coze adapter
once that has committed; what fails stays and is retried by the next prune.
Retention (`retention_windows`, `prune`) decides which sessions, conversations, turns and files
are past their window, and hands them to the engine.
"""

import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import redis
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, F, Max, OuterRef, Q, QuerySet
from django.db.models.functions import Greatest
from django.utils import timezone

from chat import coze
from chat.files.attachments import files_of_sessions
from chat.resume.replay import KEY_PREFIX as REPLAY_KEY_PREFIX
from sessions_admin import coze_outbox
from sessions_admin.coze_outbox import CozeDeletions, CozeOutcome, CozeTurn, send_coze_deletions
from sessions_admin.models import (
    ApiClient,
    ChatFile,
    ChatSession,
    Conversation,
    Feedback,
    FeedbackForward,
    Message,
    PrunedUsageDay,
    Reply,
)
from sessions_admin.rollup import usage_day

logger = logging.getLogger(__name__)

KINDS = ("sessions", "conversations", "messages", "replies", "feedback", "files", "replay_buffers")
# The messages counted in the conversations' and sessions' `message_count` (follow-ups are not).
COUNTED_KINDS = (Message.Kind.QUESTION, Message.Kind.ANSWER)
FILE_LINKS = ChatFile.messages.through
# Every table that references a message, reply, conversation or session, and the column: the
# engine deletes these rows first. A new model referencing one of them belongs here too
# (tests/sessions_admin/test_retention.py checks that none is missing).
REFERENCES = {
    Message: [(FeedbackForward, "message_id"), (Feedback, "message_id"), (FILE_LINKS, "message_id")],
    Reply: [(Message, "reply_id")],
    Conversation: [(Message, "conversation_id"), (Reply, "conversation_id"), (Feedback, "conversation_id")],
    ChatSession: [(Conversation, "session_id"), (Reply, "session_id")],
}
SESSION_BATCH = 500
REPLAY_KEYS_PER_CALL = 1000


# --- Coze: what to delete there, and the outbox that does it (sessions_admin.coze_outbox) ---------

__all__ = ["CozeDeletions", "CozeOutcome", "CozeTurn", "send_coze_deletions"]


# --- the engine ------------------------------------------------------------------------------------


def _in(column: str, values: list) -> tuple[str, list]:
    """`column` among `values`, as SQL and parameters (one array parameter on PostgreSQL)."""
    if connection.vendor == "postgresql":
        return f"{column} = ANY(%s)", [list(values)]
    return f"{column} IN ({', '.join(['%s'] * len(values))})", list(values)


def _delete_rows(model, column: str, values: list) -> int:
    """DELETE the rows of `model` whose `column` is among `values`; returns how many went."""
    if not values:
        return 0
    quote = connection.ops.quote_name
    where, params = _in(quote(column), values)
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {quote(model._meta.db_table)} WHERE {where}", params)  # noqa: S608
        return cursor.rowcount


def _chunks(values: list, size: int) -> Iterator[list]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _lock_free(now: datetime) -> Q:
    return Q(locked_until__isnull=True) | Q(locked_until__lte=now)


class DeletionEngine:
    """Deletes (or, with `dry_run`, counts) chat records; see the module's docstring.

    `counts` holds what went (or would go) by kind (KINDS); `coze_planned` the Coze deletions
    collected ("conversations", "turns"), `coze` what became of them. `progress`, when given, is
    called with the number of rows of the step's unit handled after each chunk.
    """

    def __init__(
        self,
        *,
        dry_run: bool = False,
        chunk: int = 5000,
        coze: Callable[[CozeDeletions], CozeOutcome] | None = None,
    ):
        self.dry_run = dry_run
        self.chunk = chunk
        self.counts: Counter = Counter(dict.fromkeys(KINDS, 0))
        self.coze_planned: Counter = Counter(conversations=0, turns=0)
        self.coze = CozeOutcome()
        self.coze_retried = CozeOutcome()  # outbox rows of earlier runs, sent again (`retry_coze`)
        self._coze_send = coze
        self._replay_failed = False
        self._redis: redis.Redis | None = None

    # --- whole sessions

    def count_sessions(self, sessions: QuerySet) -> None:
        """Add what deleting `sessions` (a queryset or primary keys) would delete to `counts`."""
        conversations = Conversation.objects.filter(session__in=sessions)
        replies = Reply.objects.filter(session__in=sessions)
        self.counts["sessions"] += ChatSession.objects.filter(pk__in=sessions).count()
        self.counts["conversations"] += conversations.count()
        self.counts["messages"] += Message.objects.filter(conversation__session__in=sessions).count()
        self.counts["replies"] += replies.count()
        self.counts["feedback"] += Feedback.objects.filter(conversation__session__in=sessions).count()
        self.counts["files"] += files_of_sessions(sessions).count()
        self.coze_planned["conversations"] += conversations.exclude(coze_conversation_id="").count()
        self.counts["replay_buffers"] += self._replay_buffers(list(replies.values_list("pk", flat=True)), drop=False)

    def sessions(self, session_pks: list[int], *, still: Q | None = None, include_busy: bool = False) -> None:
        """Delete these sessions with everything under them.

        In one short transaction: the sessions are locked (skipping any a turn holds this moment)
        and re-checked against `still` (a filter on ChatSession they must still match) and, unless
        `include_busy`, against having no live reply lock; what they hold is deleted table by table
        with one statement each, and then they are. The messages of a long conversation among them
        (over `chunk` / 2 counted messages) go first, chunk by chunk, so no statement grows past a
        few thousand rows.
        """
        if not session_pks:
            return
        if self.dry_run:
            self.count_sessions(session_pks)
            return
        now = timezone.now()
        long = Conversation.objects.filter(session__in=session_pks, message_count__gt=self.chunk // 2)
        if still is not None:
            long = long.filter(session__in=ChatSession.objects.filter(still))
        self._empty_conversations(list(long.values_list("pk", flat=True)))
        with transaction.atomic():
            keep = ChatSession.objects.select_for_update(skip_locked=True).filter(pk__in=session_pks)
            if not include_busy:
                keep = keep.filter(_lock_free(now))
            if still is not None:
                keep = keep.filter(still)
            keep = list(keep.values_list("pk", flat=True))
            conversations = list(
                Conversation.objects.filter(session__in=keep).values_list("pk", "coze_conversation_id")
            )
            gone = [pk for pk, _ in conversations]
            self._delete_files(list(files_of_sessions(keep).values_list("pk", flat=True)))
            replies = self._delete_conversation_children(gone)
            # The sessions pointing at these conversations go in this transaction too: the
            # foreign keys, checked at commit, hold without clearing `current_conversation` first.
            self.counts["conversations"] += _delete_rows(Conversation, "id", gone)
            self.counts["sessions"] += _delete_rows(ChatSession, "id", keep)
            outbox = self._queue_coze(CozeDeletions(conversations=[coze_id for _, coze_id in conversations if coze_id]))
        self._replay_buffers(replies, drop=True)
        self._deliver_coze(outbox)

    # --- whole conversations of sessions that live on

    def count_conversations(self, conversation_pks: list[int]) -> None:
        conversations = Conversation.objects.filter(pk__in=conversation_pks)
        replies = Reply.objects.filter(conversation__in=conversation_pks)
        self.counts["conversations"] += conversations.count()
        self.counts["messages"] += Message.objects.filter(conversation__in=conversation_pks).count()
        self.counts["replies"] += replies.count()
        self.counts["feedback"] += Feedback.objects.filter(conversation__in=conversation_pks).count()
        self.coze_planned["conversations"] += conversations.exclude(coze_conversation_id="").count()
        self.counts["replay_buffers"] += self._replay_buffers(list(replies.values_list("pk", flat=True)), drop=False)

    def conversations(self, conversation_pks: list[int]) -> None:
        """Delete these conversations (not their sessions) with everything under them. A
        conversation that is its session's current one by the end is left."""
        if not conversation_pks:
            return
        if self.dry_run:
            self.count_conversations(conversation_pks)
            return
        self._empty_conversations(
            list(
                Conversation.objects.filter(pk__in=conversation_pks, message_count__gt=self.chunk // 2).values_list(
                    "pk", flat=True
                )
            )
        )
        with transaction.atomic():
            current = ChatSession.objects.filter(current_conversation__in=conversation_pks).values_list(
                "current_conversation_id", flat=True
            )
            rows = list(
                Conversation.objects.filter(pk__in=conversation_pks)
                .exclude(pk__in=list(current))
                .values_list("pk", "coze_conversation_id")
            )
            gone = [pk for pk, _ in rows]
            replies = self._delete_conversation_children(gone)
            self.counts["conversations"] += _delete_rows(Conversation, "id", gone)
            outbox = self._queue_coze(CozeDeletions(conversations=[coze_id for _, coze_id in rows if coze_id]))
        self._replay_buffers(replies, drop=True)
        self._deliver_coze(outbox)

    # --- single turns and messages of conversations that live on

    def turns(self, reply_pks: list[int]) -> None:
        """Delete these replies with their messages; the conversations and sessions stay, their
        message counts drop by the questions and answers that went."""
        for chunk in _chunks(reply_pks, self.chunk):
            if self.dry_run:
                self._count_turns(chunk)
                continue
            with transaction.atomic():
                messages = list(
                    Message.objects.filter(reply__in=chunk).values_list(
                        "pk", "conversation_id", "kind", "coze_message_id", "reply_id"
                    )
                )
                self.counts["messages"] += self._delete_messages([row[0] for row in messages])
                replies = list(
                    Reply.objects.filter(pk__in=chunk).values_list(
                        "pk", "started_at", "coze_chat_id", "conversation__coze_conversation_id"
                    )
                )
                self._delete_replies([(pk, started_at) for pk, started_at, _, _ in replies])
                answers = defaultdict(list)
                for _, _, _, coze_message_id, reply_pk in messages:
                    if coze_message_id:
                        answers[reply_pk].append(coze_message_id)
                outbox = self._queue_coze(
                    CozeDeletions(
                        turns=[
                            CozeTurn(conversation_id=coze_conversation, chat_id=chat_id, message_ids=tuple(answers[pk]))
                            for pk, _, chat_id, coze_conversation in replies
                            if coze_conversation and (chat_id or answers[pk])
                        ]
                    )
                )
            self._uncount(messages)
            self._deliver_coze(outbox)
            self._replay_buffers([row[0] for row in replies], drop=True)

    def _count_turns(self, reply_pks: list[int]) -> None:
        messages = Message.objects.filter(reply__in=reply_pks)
        self.counts["replies"] += len(reply_pks)
        self.counts["messages"] += messages.count()
        self.counts["feedback"] += Feedback.objects.filter(message__reply__in=reply_pks).count()
        self.coze_planned["turns"] += (
            Reply.objects.filter(pk__in=reply_pks)
            .exclude(conversation__coze_conversation_id="")
            .filter(~Q(coze_chat_id="") | Exists(messages.filter(reply=OuterRef("pk")).exclude(coze_message_id="")))
            .count()
        )
        self.counts["replay_buffers"] += self._replay_buffers(reply_pks, drop=False)

    def loose_messages(self, message_pks: list[int]) -> None:
        """Delete messages not tied to a reply (the conversation stays)."""
        for chunk in _chunks(message_pks, self.chunk):
            rows = list(
                Message.objects.filter(pk__in=chunk).values_list(
                    "pk", "conversation_id", "kind", "coze_message_id", "conversation__coze_conversation_id"
                )
            )
            if self.dry_run:
                self.counts["messages"] += len(rows)
                self.counts["feedback"] += Feedback.objects.filter(message__in=chunk).count()
                self.coze_planned["turns"] += sum(1 for row in rows if row[3] and row[4])
                continue
            with transaction.atomic():
                self.counts["messages"] += self._delete_messages([row[0] for row in rows])
                outbox = self._queue_coze(
                    CozeDeletions(
                        turns=[
                            CozeTurn(conversation_id=coze_conversation, chat_id="", message_ids=(coze_message,))
                            for _, _, _, coze_message, coze_conversation in rows
                            if coze_message and coze_conversation
                        ]
                    )
                )
            self._uncount([(*row[:4], None) for row in rows])
            self._deliver_coze(outbox)

    # --- files

    def files(self, file_pks: list[int]) -> None:
        """Delete these uploaded files' records (the messages that attached them keep their copy
        of the attachment's description)."""
        if self.dry_run:
            self.counts["files"] += len(file_pks)
            return
        self._delete_files(file_pks)

    # --- the pieces

    def _empty_conversations(self, conversation_pks: list[int]) -> None:
        """Delete the messages and replies of these conversations, chunk by chunk."""
        for group in _chunks(conversation_pks, SESSION_BATCH):
            while True:
                pks = list(Message.objects.filter(conversation__in=group).values_list("pk", flat=True)[: self.chunk])
                if not pks:
                    break
                with transaction.atomic():
                    self.counts["messages"] += self._delete_messages(pks)
            while True:
                replies = list(
                    Reply.objects.filter(conversation__in=group).values_list("pk", "started_at")[: self.chunk]
                )
                if not replies:
                    break
                with transaction.atomic():
                    # A turn that raced us may have added a message to one of them.
                    self.counts["messages"] += self._delete_messages(
                        list(Message.objects.filter(reply__in=[pk for pk, _ in replies]).values_list("pk", flat=True))
                    )
                    self._delete_replies(replies)
                self._replay_buffers([pk for pk, _ in replies], drop=True)

    def _delete_conversation_children(self, conversation_pks: list[int]) -> list[int]:
        """Inside the caller's transaction: everything under these conversations, one statement a
        table (the foreign keys are checked at commit, so the order within it is free). Returns the
        replies deleted, whose replay buffers the caller drops once this has committed."""
        if not conversation_pks:
            return []
        quote = connection.ops.quote_name
        where, params = _in(quote("conversation_id"), conversation_pks)
        messages = f"SELECT {quote('id')} FROM {quote(Message._meta.db_table)} WHERE {where}"  # noqa: S608
        replies = list(Reply.objects.filter(conversation__in=conversation_pks).values_list("pk", "started_at"))
        with connection.cursor() as cursor:
            for model in (FeedbackForward, FILE_LINKS):
                cursor.execute(
                    f"DELETE FROM {quote(model._meta.db_table)} WHERE {quote('message_id')} IN ({messages})",  # noqa: S608
                    params,
                )
        self.counts["feedback"] += _delete_rows(Feedback, "conversation_id", conversation_pks)
        self.counts["messages"] += _delete_rows(Message, "conversation_id", conversation_pks)
        self._delete_replies(replies)
        return [pk for pk, _ in replies]

    def _delete_messages(self, message_pks: list[int]) -> int:
        """Inside the caller's transaction: the messages with their ratings, outbox rows and file links."""
        if not message_pks:
            return 0
        _delete_rows(FeedbackForward, "message_id", message_pks)
        self.counts["feedback"] += _delete_rows(Feedback, "message_id", message_pks)
        _delete_rows(FILE_LINKS, "message_id", message_pks)
        return _delete_rows(Message, "id", message_pks)

    def _delete_replies(self, replies: list[tuple[int, datetime]]) -> None:
        """Inside the caller's transaction: the replies (their messages gone already), noting their days."""
        if not replies:
            return
        self.counts["replies"] += _delete_rows(Reply, "id", [pk for pk, _ in replies])
        per_day = Counter(usage_day(started_at) for _, started_at in replies)
        _note_pruned_days(per_day)

    def _delete_files(self, file_pks: list[int]) -> None:
        for chunk in _chunks(file_pks, self.chunk):
            with transaction.atomic():
                _delete_rows(FILE_LINKS, "chatfile_id", chunk)
                self.counts["files"] += _delete_rows(ChatFile, "id", chunk)

    def _uncount(self, messages: Iterable[tuple]) -> None:
        """Lower the message counters of the conversations (and of the sessions whose current
        conversation they are) by the questions and answers that went. One short statement each,
        outside the deleting transaction, so a turn finishing in the same session waits for
        nothing but the statement itself."""
        per_conversation = Counter(row[1] for row in messages if row[2] in COUNTED_KINDS)
        for conversation_pk, count in per_conversation.items():
            Conversation.objects.filter(pk=conversation_pk).update(
                message_count=Greatest(F("message_count") - count, 0)
            )
            ChatSession.objects.filter(current_conversation=conversation_pk).update(
                message_count=Greatest(F("message_count") - count, 0)
            )

    def _queue_coze(self, deletions: CozeDeletions) -> list[int]:
        """Inside the deleting transaction: the Coze deletions as outbox rows, committed with it.
        In demo mode there is no Coze: nothing is queued, and they count as not sent."""
        if not len(deletions):
            return []
        self.coze_planned["conversations"] += len(deletions.conversations)
        self.coze_planned["turns"] += len(deletions.turns)
        if coze.coze_mode() == "simulator":
            self.coze.not_sent += len(deletions)
            return []
        return coze_outbox.enqueue(deletions)

    def _deliver_coze(self, outbox: list[int]) -> None:
        """After the commit: send the rows just queued (those that fail stay for a retry)."""
        if outbox:
            self.coze.add(coze_outbox.deliver(outbox, send=self._coze_send or send_coze_deletions))

    def retry_coze(self) -> None:
        """Send the outbox rows of earlier runs that are due (`coze_retried` says what came of them)."""
        if self.dry_run or coze.coze_mode() == "simulator":
            return
        self.coze_retried.add(coze_outbox.deliver(None, send=self._coze_send or send_coze_deletions))

    @staticmethod
    def coze_counts(deletions: CozeDeletions) -> tuple[int, int]:
        return len(deletions.conversations), len(deletions.turns)

    def _replay_buffers(self, reply_pks: list[int], *, drop: bool) -> int:
        """Drop (or count) the replay buffers of these replies in Redis; returns how many there were."""
        if not reply_pks or not settings.REDIS_URL or self._replay_failed:
            return 0
        found = 0
        try:
            if self._redis is None:
                self._redis = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=2)
            client = self._redis
            for chunk in _chunks(reply_pks, REPLAY_KEYS_PER_CALL):
                keys = [f"{REPLAY_KEY_PREFIX}{pk}" for pk in chunk]
                found += client.unlink(*keys) if drop else client.exists(*keys)
        except (redis.RedisError, OSError) as exc:
            # They expire on their own (CHAT_RESUME_WINDOW after their reply ended); say so once.
            logger.warning("Replay buffers: Redis unavailable, leaving them to expire: %s", exc)
            self._replay_failed = True
        if drop:
            self.counts["replay_buffers"] += found
        return found


def _note_pruned_days(per_day: Counter) -> None:
    """Count deleted replies per day in PrunedUsageDay (in the deleting transaction)."""
    quote = connection.ops.quote_name
    table = quote(PrunedUsageDay._meta.db_table)
    day, deleted, last = quote("day"), quote("replies_deleted"), quote("last_deleted_at")
    now = timezone.now()
    with connection.cursor() as cursor:
        for usage_date, count in per_day.items():
            cursor.execute(
                f"INSERT INTO {table} ({day}, {deleted}, {last}) VALUES (%s, %s, %s) "  # noqa: S608
                f"ON CONFLICT ({day}) DO UPDATE SET {deleted} = {table}.{deleted} + excluded.{deleted}, "
                f"{last} = excluded.{last}",
                [usage_date, count, now],
            )


# --- retention --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Window:
    """Owners whose records are kept `days` days: those in `include` (owner keys), or when it is
    None everyone but those in `exclude` (clients with a window of their own)."""

    label: str
    days: int
    cutoff: datetime
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()

    def owners(self, field_name: str) -> Q:
        if self.include is not None:
            return Q(**{f"{field_name}__in": self.include})
        if self.exclude:
            return ~Q(**{f"{field_name}__in": self.exclude})
        return Q()

    def describe(self) -> str:
        return f"{self.label}: {self.days} days (before {timezone.localtime(self.cutoff):%Y-%m-%d %H:%M %Z})"


class NoWindow(ValueError):
    """Nothing to prune by: no retention is set for the owners asked about."""


def retention_windows(*, days: int | None = None, client: ApiClient | None = None, now: datetime) -> list[Window]:
    """The retention windows in force: each API client with `retention_days`, and everyone else
    with CHAT_RETENTION_DAYS (unset: kept). `days` replaces them all for this run; `client`
    narrows to that client. Raises NoWindow when `client` has no window."""

    def cutoff(number: int) -> datetime:
        return now - timedelta(days=number)

    if client is not None:
        number = days or client.retention_days or settings.CHAT_RETENTION_DAYS
        if not number:
            raise NoWindow(
                f"API client {client.name!r} has no retention window: give --days, set its retention days, "
                "or set CHAT_RETENTION_DAYS."
            )
        return [Window(f"API client {client.name}", number, cutoff(number), include=(client.owner_key,))]
    if days:
        return [Window("every owner (--days)", days, cutoff(days))]
    windows = []
    own = list(ApiClient.objects.filter(retention_days__isnull=False).order_by("name"))
    for each in own:
        windows.append(
            Window(
                f"API client {each.name}", each.retention_days, cutoff(each.retention_days), include=(each.owner_key,)
            )
        )
    if settings.CHAT_RETENTION_DAYS:
        label = "every other owner (CHAT_RETENTION_DAYS)" if own else "every owner (CHAT_RETENTION_DAYS)"
        windows.append(
            Window(
                label,
                settings.CHAT_RETENTION_DAYS,
                cutoff(settings.CHAT_RETENTION_DAYS),
                exclude=tuple(each.owner_key for each in own),
            )
        )
    return windows


def _keyset(queryset: QuerySet, batch: int) -> Iterator[list[int]]:
    """The primary keys of `queryset` in batches, by key, up to the largest there was at the start
    (rows that appear meanwhile are not this run's). Works whether or not the batches get deleted."""
    upper = queryset.aggregate(top=Max("pk"))["top"]
    if upper is None:
        return
    after = 0
    while True:
        pks = list(queryset.filter(pk__gt=after, pk__lte=upper).order_by("pk").values_list("pk", flat=True)[:batch])
        if not pks:
            return
        after = pks[-1]
        yield pks


@dataclass(slots=True)
class PruneReport:
    windows: list[Window]
    skipped_busy: int = 0


ProgressFactory = Callable[..., object]


def prune(
    engine: DeletionEngine,
    windows: list[Window],
    *,
    orphan_files_before: datetime | None,
    orphan_owners: Q | None = None,
    progress: ProgressFactory | None = None,
) -> PruneReport:
    """Delete (or count, with a dry-run engine) what is past each window; then files never
    attached that were uploaded before `orphan_files_before` (of `orphan_owners`, if given).

    Per window, each record by its own age: (1) sessions with no activity since the cutoff go
    whole; in the sessions that live on, (2) conversations left before the cutoff (not the
    current one) go whole, (3) turns that started before it and messages older than it go one by
    one; (4) a session left with no message goes; (5) files uploaded before it go. A session
    with a reply streaming is left alone this time.
    """
    report = PruneReport(windows=windows)
    # Deletions at Coze that failed in earlier runs first (sessions_admin.coze_outbox).
    engine.retry_coze()
    now = timezone.now()

    def bar(label: str, total: int | None, unit: str):
        return progress(label=label, total=total, unit=unit) if progress else None

    def step(label: str, queryset: QuerySet, unit: str, handle, batch: int) -> None:
        total = queryset.count()
        meter = bar(label, total, unit)
        for pks in _keyset(queryset, batch):
            handle(pks)
            if meter:
                meter.update(len(pks))
        if meter:
            meter.close()

    counted_files = Q(pk__in=[])  # files the windows take by age (a dry run counts them once)
    for window in windows:
        cutoff = window.cutoff
        busy = Q(locked_until__gt=now)
        old_sessions = ChatSession.objects.filter(window.owners("owner_key"), last_activity__lt=cutoff)
        report.skipped_busy += old_sessions.filter(busy).count()
        still_old = Q(last_activity__lt=cutoff)
        step(
            f"{window.label}: sessions",
            old_sessions.exclude(busy),
            "sessions",
            lambda pks, still=still_old: engine.sessions(pks, still=still),
            SESSION_BATCH,
        )

        living = Q(session__last_activity__gte=cutoff)
        old_conversation = Q(last_activity__lt=cutoff) & ~Q(pk=F("session__current_conversation_id"))
        old_conversations = Conversation.objects.filter(window.owners("session__owner_key"), living, old_conversation)
        touched: set[int] = set(old_conversations.values_list("session_id", flat=True).distinct())
        step(f"{window.label}: conversations", old_conversations, "conversations", engine.conversations, SESSION_BATCH)

        in_old_conversation = Q(conversation__last_activity__lt=cutoff) & ~Q(
            conversation_id=F("session__current_conversation_id")
        )
        old_turns = (
            Reply.objects.filter(window.owners("owner_key"), living, started_at__lt=cutoff)
            .exclude(in_old_conversation)
            .exclude(status=Reply.Status.IN_PROGRESS, session__locked_until__gt=now)
        )
        touched.update(old_turns.values_list("session_id", flat=True).distinct())
        step(f"{window.label}: turns", old_turns, "replies", engine.turns, engine.chunk)
        old_loose = Message.objects.filter(
            window.owners("conversation__session__owner_key"),
            reply__isnull=True,
            created_at__lt=cutoff,
            conversation__session__last_activity__gte=cutoff,
        ).exclude(
            Q(conversation__last_activity__lt=cutoff)
            & ~Q(conversation_id=F("conversation__session__current_conversation_id"))
        )
        touched.update(old_loose.values_list("conversation__session_id", flat=True).distinct())
        step(f"{window.label}: messages without a reply", old_loose, "messages", engine.loose_messages, engine.chunk)

        # Sessions that (will) have nothing left: no message since the cutoff.
        recent = Message.objects.filter(conversation__session=OuterRef("pk"), created_at__gte=cutoff)
        emptied = ChatSession.objects.filter(pk__in=sorted(touched)).exclude(busy).exclude(Exists(recent))
        left_empty = ~Exists(
            Message.objects.filter(conversation__session=OuterRef("pk"), created_at__gte=cutoff)
        ) & _lock_free(timezone.now())
        if engine.dry_run:
            # What steps 2 and 3 counted is not counted again: only the sessions and the
            # conversations that would be left in them.
            pks = list(emptied.values_list("pk", flat=True))
            engine.counts["sessions"] += len(pks)
            remaining = Conversation.objects.filter(session__in=pks).exclude(old_conversation)
            engine.counts["conversations"] += remaining.count()
            engine.coze_planned["conversations"] += remaining.exclude(coze_conversation_id="").count()
        else:
            for pks in _chunks(list(emptied.values_list("pk", flat=True)), SESSION_BATCH):
                engine.sessions(pks, still=left_empty)

        window_files = window.owners("owner_key") & Q(uploaded_at__lt=cutoff)
        old_files = ChatFile.objects.filter(window_files)
        if engine.dry_run:
            # Counted with their sessions in step 1 already.
            with_sessions = FILE_LINKS.objects.filter(
                chatfile_id=OuterRef("pk"), message__conversation__session__in=old_sessions.exclude(busy)
            )
            old_files = old_files.exclude(Exists(with_sessions))
        counted_files |= window_files
        step(f"{window.label}: files", old_files, "files", engine.files, engine.chunk)

    if orphan_files_before is not None:
        linked = FILE_LINKS.objects.filter(chatfile_id=OuterRef("pk"))
        orphans = ChatFile.objects.filter(uploaded_at__lt=orphan_files_before).exclude(Exists(linked))
        if orphan_owners is not None:
            orphans = orphans.filter(orphan_owners)
        if engine.dry_run:
            orphans = orphans.exclude(counted_files)
        step("files never attached", orphans, "files", engine.files, engine.chunk)
    return report


NOUNS = {
    "sessions": ("session", "sessions"),
    "conversations": ("conversation", "conversations"),
    "messages": ("message", "messages"),
    "replies": ("reply", "replies"),
    "feedback": ("rating", "ratings"),
    "files": ("file", "files"),
    "replay_buffers": ("replay buffer", "replay buffers"),
}


def counted(number: int, kind: str) -> str:
    """ "1 session", "2 sessions", "1,024 replies"."""
    singular, plural = NOUNS[kind]
    return f"{number:,} {singular if number == 1 else plural}"


def summary(counts: Counter) -> str:
    # Ratings, files and replay buffers are named only when there are some.
    optional = {"files", "feedback", "replay_buffers"}
    return ", ".join(counted(counts.get(kind, 0), kind) for kind in KINDS if kind not in optional or counts.get(kind))


def coze_summary(engine: DeletionEngine) -> str:
    """What the run asked of Coze, for the summary line ("" when nothing)."""
    planned = engine.coze_planned
    items = " and ".join(
        f"{planned[kind]:,} {kind if planned[kind] != 1 else kind[:-1]}"
        for kind in ("conversations", "turns")
        if planned[kind]
    )
    retried = engine.coze_retried
    earlier = ""
    if retried.deleted or retried.failed:
        earlier = f"; earlier Coze deletions retried: {retried.deleted:,} deleted"
        if retried.failed:
            earlier += f", {retried.failed:,} failed again"
    if not items:
        return earlier
    if engine.dry_run:
        return f"; at Coze: {items}"
    outcome = engine.coze
    if outcome.deleted == planned["conversations"] + planned["turns"]:
        return f"; at Coze: {items} deleted{earlier}"
    if outcome.not_sent and not outcome.deleted and not outcome.failed:
        return f"; at Coze: {items} (not sent: demo mode, no Coze to delete them at){earlier}"
    parts = [f"{outcome.deleted:,} deleted"]
    if outcome.failed:
        parts.append(f"{outcome.failed:,} failed and kept to retry, see the log")
    if outcome.not_sent:
        parts.append(f"{outcome.not_sent:,} not sent")
    return f"; at Coze: {items} ({', '.join(parts)}){earlier}"
