"""Fill a database with realistic chat records, for the admin benchmark and load tests.

Defaults are the scale the admin is built for: 100,000 conversations, 500,000 replies and
1,000,000 messages, spread over the last 90 days, owned by API clients, users and anonymous
browsers, talking to a few bots. Conversation lengths are heavy-tailed (most are a few turns, a
few run to hundreds), replies sometimes fail, get cancelled or are cut off, tokens grow with the
context. Everything is consistent with what the chat service writes: the counters and token sums
on conversations and sessions match their replies and messages.

Some answers are rated (`--ratings`, the share of answers; a quarter of the ratings down, more
for cut or failed replies, some with a comment), as the API's feedback would store them.

On PostgreSQL the rows go in with COPY in one transaction, with the tables' secondary indexes
dropped first and rebuilt at the end; a second thread writes each batch while the next one is
generated, so the database's work overlaps Python's. Elsewhere `bulk_create` in batches. The
tables are locked meanwhile: seed a benchmark database, not a live one. At the end the new
replies are added to the dashboard's daily rollup in one grouped pass
(`sessions_admin.rollup.record_replies`).
"""

import math
import queue
import random
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psycopg
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.core.management.color import no_style
from django.db import connection, transaction
from django.db.models import Max
from django.utils import timezone

from sessions_admin.models import ApiClient, ChatSession, Conversation, Feedback, Message, Reply, hash_api_key
from sessions_admin.rollup import record_replies

STATUS_WEIGHTS = {
    Reply.Status.COMPLETED: 940,
    Reply.Status.FAILED: 30,
    Reply.Status.CANCELLED: 20,
    Reply.Status.INTERRUPTED: 10,
}
TRANSPORT_WEIGHTS = {
    Reply.Transport.SSE: 50,
    Reply.Transport.SYNC: 25,
    Reply.Transport.WEBSOCKET: 20,
    Reply.Transport.COMPAT: 5,
}
FAILURES = [
    ("upstream_timeout", "Coze went silent for 60 seconds."),
    ("upstream_error", "Coze answered with an error: internal error (code 5000)."),
    ("upstream_unavailable", "Coze could not be reached."),
    ("upstream_rate_limited", "Coze asked us to slow down."),
]
WORDS = (
    "the a to and of is in it you that for on with as this be can your are have not or we will "
    "order account refund invoice payment delivery shipping address password login error app "
    "update price plan subscription trial cancel change help please thanks hello support team "
    "product feature issue problem question answer time today tomorrow week month number email "
    "phone card bank transfer receipt status tracking package warehouse return exchange size "
    "colour model version android iphone browser settings notification language chinese english "
    "translate summary report meeting schedule calendar travel hotel flight ticket weather city "
    "recommend compare best cheap fast quality review discount coupon member points level upgrade"
).split()
# Zipf-like: common words much more often than the tail, as in real text.
WORD_WEIGHTS = [1 / (rank + 8) for rank in range(len(WORDS))]
COMMENTS = [
    "Wrong order number.",
    "That is not what I asked.",
    "Too long.",
    "The price is out of date.",
    "It stopped in the middle.",
    "Helpful, thanks!",
    "Exactly right.",
]


@dataclass(slots=True)
class Batch:
    sessions: list[tuple] = field(default_factory=list)
    conversations: list[tuple] = field(default_factory=list)
    replies: list[tuple] = field(default_factory=list)
    messages: list[tuple] = field(default_factory=list)
    feedback: list[tuple] = field(default_factory=list)


SESSION_COLUMNS = (
    "id owner_key api_client_id user_id session_id coze_user_id bot_id current_conversation_id created_at "
    "last_activity cleared_at message_count input_tokens output_tokens total_tokens lock_token locked_until"
).split()
CONVERSATION_COLUMNS = (
    "id session_id coze_conversation_id bot_id created_at last_activity message_count total_tokens"
).split()
REPLY_COLUMNS = (
    "id session_id conversation_id owner_key api_client_id user_id bot_id coze_chat_id coze_logid status "
    "error_code error_detail transport input_tokens output_tokens total_tokens time_to_first_token_ms "
    "duration_ms worker_channel started_at finished_at"
).split()
MESSAGE_COLUMNS = ("id conversation_id reply_id role kind content content_type coze_message_id created_at").split()
FEEDBACK_COLUMNS = "id message_id conversation_id rating comment answered_at created_at updated_at".split()
TABLES = [
    (ChatSession, SESSION_COLUMNS, "sessions"),
    (Conversation, CONVERSATION_COLUMNS, "conversations"),
    (Reply, REPLY_COLUMNS, "replies"),
    (Message, MESSAGE_COLUMNS, "messages"),
    (Feedback, FEEDBACK_COLUMNS, "ratings"),
]


def split_counts(rng: random.Random, total: int, parts: int, *, heavy_tail: float) -> list[int]:
    """`parts` positive counts summing to `total`, heavy-tailed (Pareto weights with shape `heavy_tail`)."""
    counts = [1] * parts
    weights = [rng.paretovariate(heavy_tail) for _ in range(parts)]
    for index in rng.choices(range(parts), weights=weights, k=total - parts):
        counts[index] += 1
    return counts


class TextMaker:
    """Cheap realistic-looking text: sentences from a Zipf vocabulary, plus rare order numbers."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.sentences = []
        for _ in range(4000):
            words = rng.choices(WORDS, weights=WORD_WEIGHTS, k=rng.randint(4, 16))
            self.sentences.append(" ".join(words).capitalize() + rng.choice(".?.!."))

    def text(self, sentences: int) -> str:
        parts = self.rng.choices(self.sentences, k=sentences)
        if self.rng.random() < 0.2:
            # Unique-ish tokens, like real order numbers: what staff search for.
            parts.append(f"My order is ORD-{self.rng.randint(100000, 999999)}.")
        return " ".join(parts)


class Command(BaseCommand):
    help = (
        "Fill the database with realistic chat records (defaults: 100,000 conversations, 500,000 replies, "
        "1,000,000 messages) for the admin benchmark. Adds to what is there; never deletes."
    )

    def add_arguments(self, parser):
        parser.add_argument("--conversations", type=int, default=100_000)
        parser.add_argument("--replies", type=int, default=500_000, help="At least one per conversation.")
        parser.add_argument("--messages", type=int, default=1_000_000, help="At least one per reply.")
        parser.add_argument(
            "--sessions", type=int, default=None, help="Default: 87%% of the conversations (the rest are clears)."
        )
        parser.add_argument("--clients", type=int, default=20, help="API clients owning most sessions.")
        parser.add_argument("--users", type=int, default=50, help="Logged-in users owning some sessions.")
        parser.add_argument("--bots", type=int, default=3)
        parser.add_argument("--days", type=int, default=90, help="Spread activity over this many past days.")
        parser.add_argument("--seed", type=int, default=1, help="Random seed, for repeatable data.")
        parser.add_argument("--chunk", type=int, default=5000, help="Sessions generated and written per step.")
        parser.add_argument(
            "--ratings", type=float, default=0.04, help="Share of the answers rated up or down (default 0.04)."
        )

    def handle(self, *args, **options):
        conversations = options["conversations"]
        replies = options["replies"]
        messages = options["messages"]
        sessions = options["sessions"] if options["sessions"] is not None else max(1, round(conversations * 0.87))
        if conversations < 1 or not 1 <= sessions <= conversations:
            raise CommandError("Need at least one conversation, and between 1 and --conversations sessions.")
        if replies < conversations:
            raise CommandError("--replies must be at least --conversations (every conversation has a reply).")
        if messages < replies:
            raise CommandError("--messages must be at least --replies (every reply has the user's message).")
        if options["days"] < 1 or options["bots"] < 1 or options["clients"] < 0 or options["users"] < 0:
            raise CommandError("--days and --bots must be positive; --clients and --users not negative.")
        if not 0 <= options["ratings"] <= 1:
            raise CommandError("--ratings is a share of the answers, from 0 to 1.")

        self.verbosity = options["verbosity"]
        self.next_id = {model: (model.objects.aggregate(m=Max("id"))["m"] or 0) + 1 for model, _, _ in TABLES}
        # Repeatable for a seed and what is already there, and never the same ids as an earlier run.
        self.rng = random.Random(f"{options['seed']}:{self.next_id[ChatSession]}")
        self.rating_share = options["ratings"]
        self.text = TextMaker(self.rng)
        self.now = timezone.now()
        self.days = options["days"]
        self.started = time.monotonic()
        self.bots = [f"74{self.rng.randrange(10**16, 10**17)}" for _ in range(options["bots"])]
        self.bot_weights = [1 / (rank + 1) ** 1.5 for rank in range(len(self.bots))]
        self.clients, self.users = self._owners(options["clients"], options["users"])
        self.log(
            f"Seeding {sessions:,} sessions, {conversations:,} conversations, {replies:,} replies, "
            f"{messages:,} messages over {self.days} days ({connection.vendor})."
        )

        rng = self.rng
        conversations_per_session = split_counts(rng, conversations, sessions, heavy_tail=3.0)
        replies_per_conversation = split_counts(rng, replies, conversations, heavy_tail=1.6)
        statuses = rng.choices(list(STATUS_WEIGHTS), weights=list(STATUS_WEIGHTS.values()), k=replies)
        # Which replies end with an answer message: completed ones, and most cut ones (partial).
        has_answer = bytearray(
            1 if status == Reply.Status.COMPLETED or (status != Reply.Status.FAILED and rng.random() < 0.7) else 0
            for status in statuses
        )
        follow_ups = self._follow_ups(statuses, has_answer, messages - replies - sum(has_answer))
        self.statuses, self.has_answer, self.follow_ups = statuses, has_answer, follow_ups

        first_reply_pk = self.next_id[Reply]
        self.chat_serial = self.rng.randrange(10**17, 10**18 - replies - 1)
        self.reply_index = 0
        written = dict.fromkeys(TABLES_NAMES, 0)
        # Inside an outer transaction (a test's) everything happens in it; otherwise the rows commit
        # first and the indexes are then built on two connections at once.
        outer = connection.in_atomic_block
        with transaction.atomic():
            dropped = self._drop_indexes()
            foreign_keys = self._drop_foreign_keys()
            if connection.vendor == "postgresql":
                # Sessions point at conversations written after them: the checks wait for the end
                # (also when an outer transaction, e.g. a test's, made them immediate before).
                with connection.cursor() as cursor:
                    cursor.execute("SET CONSTRAINTS ALL DEFERRED")
            writer = BatchWriter() if connection.vendor == "postgresql" else None
            session_index = 0
            conversation_index = 0
            try:
                while session_index < sessions:
                    batch = Batch()
                    for _ in range(min(options["chunk"], sessions - session_index)):
                        count = conversations_per_session[session_index]
                        self._session(batch, replies_per_conversation[conversation_index : conversation_index + count])
                        session_index += 1
                        conversation_index += count
                    if writer is not None:
                        writer.put(self._batch_rows(batch))
                    else:
                        self._write(self._batch_rows(batch))
                    for name, rows in zip(TABLES_NAMES, self._batch_rows(batch), strict=True):
                        written[name] += len(rows)
                    self.log(
                        f"  {written['sessions']:,}/{sessions:,} sessions, {written['conversations']:,} "
                        f"conversations, {written['replies']:,} replies, {written['messages']:,} messages, "
                        f"{written['ratings']:,} ratings"
                    )
            finally:
                if writer is not None:
                    writer.finish()
            self._reset_sequences()
            self._add_foreign_keys(foreign_keys)
            if outer:
                self._validate_foreign_keys(foreign_keys)
            if dropped and outer:
                self.log(f"Rebuilding {len(dropped)} indexes…")
                self._create_indexes(dropped)
        if foreign_keys and not outer:
            self._validate_foreign_keys(foreign_keys)
        if dropped and not outer:
            self.log(f"Rebuilding {len(dropped)} indexes, two at a time…")
            self._create_indexes_in_parallel(dropped)
        if connection.vendor == "postgresql":
            # VACUUM sets the visibility map (index-only scans) and fresh statistics; inside an outer
            # transaction (tests) only ANALYZE is possible.
            command = "ANALYZE" if connection.in_atomic_block else "VACUUM ANALYZE"
            self.log(f"{command}…")
            with connection.cursor() as cursor:
                for model, _, _ in TABLES:
                    cursor.execute(f"{command} {connection.ops.quote_name(model._meta.db_table)}")
        rollup_rows = self._add_to_rollup(first_reply_pk)
        self.stdout.write(
            f"Seeded {written['sessions']:,} sessions, {written['conversations']:,} conversations, "
            f"{written['replies']:,} replies, {written['messages']:,} messages, {written['ratings']:,} ratings "
            f"({rollup_rows:,} daily usage rows) in {self.elapsed()}."
        )

    def _add_to_rollup(self, first_reply_pk: int) -> int:
        """Add the new replies to the daily usage rollup; returns the rows written."""
        self.log("Adding the new replies to the daily usage rollup…")
        return record_replies(Reply.objects.filter(pk__gte=first_reply_pk))

    # --- generation ---------------------------------------------------------------------------

    def _owners(self, clients: int, users: int) -> tuple[list[ApiClient], list]:
        run = secrets.token_hex(3)
        ApiClient.objects.bulk_create(
            ApiClient(
                name=f"seed-{run}-client-{index}",
                key_prefix="cz_seed",
                key_hash=hash_api_key(secrets.token_hex(16)),
                created_at=self.now - timedelta(days=self.days + 1),
                last_used_at=self.now - timedelta(minutes=self.rng.randint(1, 600)),
            )
            for index in range(clients)
        )
        User = get_user_model()
        User.objects.bulk_create(
            User(username=f"seed-{run}-user-{index}", password="!", email=f"user{index}@example.com")
            for index in range(users)
        )
        # Fetched back: not every database returns primary keys from a bulk insert.
        return (
            list(ApiClient.objects.filter(name__startswith=f"seed-{run}-").order_by("pk")),
            list(User.objects.filter(username__startswith=f"seed-{run}-").order_by("pk")),
        )

    def _follow_ups(self, statuses: list[str], has_answer: bytearray, extra: int) -> bytearray:
        """How many follow-up suggestions each reply gets (0 to 3), so the message total comes out exact."""
        counts = bytearray(len(statuses))
        completed = [index for index, status in enumerate(statuses) if status == Reply.Status.COMPLETED]
        if extra <= 0 or not completed:
            if extra < 0:
                self.log(f"  (--messages is {-extra:,} below one question and one answer per reply; using more)")
            return counts
        extra = min(extra, 3 * len(completed))
        for slot in self.rng.sample(range(3 * len(completed)), extra):
            counts[completed[slot // 3]] += 1
        return counts

    def _owner(self) -> tuple[str, int | None, int | None]:
        roll = self.rng.random()
        if self.clients and (roll < 0.7 or (not self.users and roll < 0.8)):
            # A few clients carry most of the traffic.
            client = self.clients[min(int(self.rng.paretovariate(1.2)) - 1, len(self.clients) - 1)]
            return f"client:{client.pk}", client.pk, None
        if self.users and roll < 0.8:
            user = self.rng.choice(self.users)
            return f"user:{user.pk}", None, user.pk
        return f"browser:{uuid.UUID(int=self.rng.getrandbits(128)).hex}", None, None

    def _session(self, batch: Batch, replies_per_conversation: list[int]) -> None:
        rng = self.rng
        session_pk = self._take_id(ChatSession)
        owner_key, client_id, user_id = self._owner()
        bot = rng.choices(self.bots, weights=self.bot_weights)[0]
        session_id = uuid.UUID(int=rng.getrandbits(128)).hex if rng.random() < 0.6 else f"s-{session_pk}"
        coze_user_id = f"user_{rng.randint(1, 40_000)}"
        # Generated from a provisional start, then shifted so the session ends where it should:
        # most activity is recent; turns are minutes apart, a session's conversations days apart.
        marks = (len(batch.conversations), len(batch.replies), len(batch.messages), len(batch.feedback))
        clock = created_at = self.now
        ends_ago = timedelta(seconds=self.days * 86400 * rng.betavariate(1.1, 1.8) + 30)
        tokens_in = tokens_out = 0
        # A few sessions end with a reply still in progress: most held by a live lock (busy), some
        # whose worker died (lock expired), for the status filter and `mark_interrupted_replies`.
        live = rng.random() < 0.0005
        locked_until = None
        if live:
            ends_ago = timedelta(seconds=rng.randint(5, 60))
            locked_until = self.now + timedelta(minutes=10) if rng.random() < 0.7 else self.now - timedelta(hours=1)
        conversation_pk = None
        conversation_messages = 0
        cleared_at = None
        for number, reply_count in enumerate(replies_per_conversation):
            if number:
                clock += timedelta(seconds=rng.expovariate(1 / 86400))
                cleared_at = clock
            conversation_pk = self._take_id(Conversation)
            conversation_started = clock
            conversation_tokens = conversation_messages = 0
            coze_conversation_id = f"73{self.chat_serial + conversation_pk}"
            for turn in range(reply_count):
                clock += timedelta(seconds=rng.expovariate(1 / 80) + 5)
                reply = self._reply(
                    batch,
                    session_pk=session_pk,
                    conversation_pk=conversation_pk,
                    owner=(owner_key, client_id, user_id),
                    bot=bot,
                    turn=turn,
                    started_at=clock,
                    in_progress=live and number == len(replies_per_conversation) - 1 and turn == reply_count - 1,
                )
                clock = reply["finished_at"]
                conversation_tokens += reply["total"]
                conversation_messages += reply["counted_messages"]
                tokens_in += reply["input"]
                tokens_out += reply["output"]
            batch.conversations.append(
                (
                    conversation_pk,
                    session_pk,
                    coze_conversation_id,
                    bot,
                    conversation_started,
                    clock,
                    conversation_messages,
                    conversation_tokens,
                )
            )
        shift = clock - (self.now - ends_ago)
        self._shift(batch, marks, shift)
        created_at, clock = created_at - shift, clock - shift
        cleared_at = cleared_at - shift if cleared_at else None
        batch.sessions.append(
            (
                session_pk,
                owner_key,
                client_id,
                user_id,
                session_id,
                coze_user_id,
                bot,
                conversation_pk,
                created_at,
                clock,
                cleared_at,
                conversation_messages,
                tokens_in,
                tokens_out,
                tokens_in + tokens_out,
                secrets.token_hex(8) if locked_until else "",
                locked_until,
            )
        )

    def _reply(
        self, batch: Batch, *, session_pk, conversation_pk, owner, bot, turn, started_at: datetime, in_progress: bool
    ) -> dict:
        rng = self.rng
        index = self.reply_index
        self.reply_index += 1
        status = Reply.Status.IN_PROGRESS if in_progress else self.statuses[index]
        has_answer = self.has_answer[index] and not in_progress
        follow_ups = 0 if in_progress else self.follow_ups[index]
        reply_pk = self._take_id(Reply)
        owner_key, client_id, user_id = owner
        error_code = error_detail = ""
        ttft = round(rng.lognormvariate(math.log(650), 0.45))
        input_tokens = min(60 + 140 * turn + rng.randint(0, 80), 12_000)
        output_tokens = max(5, round(rng.lognormvariate(math.log(220), 0.6)))
        if status == Reply.Status.FAILED:
            error_code, error_detail = rng.choice(FAILURES)
            ttft, input_tokens, output_tokens = None, 0, 0
        elif status != Reply.Status.COMPLETED:
            error_code = "cancelled" if status == Reply.Status.CANCELLED else "interrupted"
            error_detail = "The reply was stopped before it ended."
            output_tokens = output_tokens // 3 if has_answer else 0
            input_tokens = 0  # Coze reports usage only for completed chats.
        duration = (ttft or rng.randint(200, 60_000)) + output_tokens * rng.randint(15, 35)
        finished_at = started_at + timedelta(milliseconds=duration)
        if in_progress:
            ttft = duration = None
            input_tokens = output_tokens = 0
        total = input_tokens + output_tokens
        chat_id = f"75{self.chat_serial + reply_pk}"
        batch.replies.append(
            (
                reply_pk,
                session_pk,
                conversation_pk,
                owner_key,
                client_id,
                user_id,
                bot,
                chat_id,
                f"{rng.getrandbits(120):030x}",
                status,
                error_code,
                error_detail,
                rng.choices(list(TRANSPORT_WEIGHTS), weights=list(TRANSPORT_WEIGHTS.values()))[0],
                input_tokens,
                output_tokens,
                total,
                ttft,
                duration,
                "",
                started_at,
                None if in_progress else finished_at,
            )
        )
        messages = batch.messages
        question = self.text.text(rng.randint(1, 3))
        messages.append(
            (self._take_id(Message), conversation_pk, reply_pk, "user", "question", question, "text", "", started_at)
        )
        counted = 1
        if has_answer:
            answer = self.text.text(max(1, round(rng.lognormvariate(math.log(4), 0.6))))
            if status != Reply.Status.COMPLETED:
                answer = answer[: max(1, len(answer) // 3)]
            answer_pk = self._take_id(Message)
            messages.append(
                (
                    answer_pk,
                    conversation_pk,
                    reply_pk,
                    "assistant",
                    "answer",
                    answer,
                    "text",
                    f"76{self.chat_serial + reply_pk}",
                    finished_at,
                )
            )
            counted += 1
            if rng.random() < self.rating_share:
                # Cut answers are disliked more often than whole ones.
                down = rng.random() < (0.25 if status == Reply.Status.COMPLETED else 0.7)
                comment = rng.choice(COMMENTS[:5] if down else COMMENTS[5:]) if rng.random() < 0.3 else ""
                rated_at = finished_at + timedelta(seconds=rng.expovariate(1 / 120) + 2)
                batch.feedback.append(
                    (
                        self._take_id(Feedback),
                        answer_pk,
                        conversation_pk,
                        "down" if down else "up",
                        comment,
                        finished_at,
                        rated_at,
                        rated_at,
                    )
                )
        for _ in range(follow_ups):
            messages.append(
                (
                    self._take_id(Message),
                    conversation_pk,
                    reply_pk,
                    "assistant",
                    "follow_up",
                    self.text.text(1),
                    "text",
                    "",
                    finished_at,
                )
            )
        return {
            "finished_at": started_at if in_progress else finished_at,
            "total": total,
            "input": input_tokens,
            "output": output_tokens,
            "counted_messages": counted,
        }

    @staticmethod
    def _shift(batch: Batch, marks: tuple[int, int, int, int], shift: timedelta) -> None:
        """Move the rows appended since `marks` back in time by `shift`."""
        for rows, start, columns in zip(
            (batch.conversations, batch.replies, batch.messages, batch.feedback),
            marks,
            ((4, 5), (19, 20), (8,), (5, 6, 7)),
            strict=True,
        ):
            for position in range(start, len(rows)):
                row = list(rows[position])
                for column in columns:
                    if row[column] is not None:
                        row[column] -= shift
                rows[position] = tuple(row)

    def _take_id(self, model) -> int:
        value = self.next_id[model]
        self.next_id[model] = value + 1
        return value

    # --- writing ------------------------------------------------------------------------------

    @staticmethod
    def _batch_rows(batch: Batch) -> list[list[tuple]]:
        return [batch.sessions, batch.conversations, batch.replies, batch.messages, batch.feedback]

    def _write(self, tables_rows: list[list[tuple]]) -> None:
        """Elsewhere than on PostgreSQL (BatchWriter does it there)."""
        for (model, columns, _), rows in zip(TABLES, tables_rows, strict=True):
            attnames = [column if column == "id" else self._attname(model, column) for column in columns]
            model.objects.bulk_create((model(**dict(zip(attnames, row, strict=True))) for row in rows), batch_size=500)

    @staticmethod
    def _attname(model, column: str) -> str:
        for model_field in model._meta.concrete_fields:
            if model_field.column == column:
                return model_field.attname
        raise LookupError(column)

    def _drop_indexes(self) -> list[str]:
        """PostgreSQL: drop the seeded tables' secondary indexes; returns their definitions."""
        if connection.vendor != "postgresql":
            return []
        tables = [model._meta.db_table for model, _, _ in TABLES]
        with connection.cursor() as cursor:
            cursor.execute(
                """
                SELECT i.indexname, i.indexdef FROM pg_indexes i
                WHERE i.schemaname = current_schema() AND i.tablename = ANY(%s)
                  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)
                """,
                [tables],
            )
            indexes = cursor.fetchall()
            for name, _ in indexes:
                cursor.execute(f"DROP INDEX {connection.ops.quote_name(name)}")
        return [definition for _, definition in indexes]

    def _drop_foreign_keys(self) -> list[tuple[str, str, str]]:
        """PostgreSQL: drop the seeded tables' foreign keys; returns (table, name, definition) of each.

        Checked row by row at commit, they were the slowest part of a big seed (2 minutes for 5
        million messages); added back NOT VALID and then validated, each is one join instead."""
        if connection.vendor != "postgresql":
            return []
        tables = [model._meta.db_table for model, _, _ in TABLES]
        with connection.cursor() as cursor:
            cursor.execute(
                """
                SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c
                WHERE c.contype = 'f' AND c.conrelid = ANY(%s::regclass[])
                """,
                [tables],
            )
            keys = cursor.fetchall()
            for table, name, _ in keys:
                cursor.execute(f"ALTER TABLE {table} DROP CONSTRAINT {connection.ops.quote_name(name)}")
        return keys

    def _add_foreign_keys(self, keys: list[tuple[str, str, str]]) -> None:
        """Add the foreign keys back, NOT VALID: they hold for new rows at once; see `_validate_foreign_keys`."""
        with connection.cursor() as cursor:
            for table, name, definition in keys:
                cursor.execute(
                    f"ALTER TABLE {table} ADD CONSTRAINT {connection.ops.quote_name(name)} {definition} NOT VALID"
                )

    def _validate_foreign_keys(self, keys: list[tuple[str, str, str]]) -> None:
        """Check the seeded rows against their foreign keys, one join per key."""
        started = time.monotonic()
        with connection.cursor() as cursor:
            for table, name, _ in keys:
                cursor.execute(f"ALTER TABLE {table} VALIDATE CONSTRAINT {connection.ops.quote_name(name)}")
        self.log(f"  {len(keys)} foreign keys validated ({time.monotonic() - started:.1f} s)")

    def _create_indexes(self, definitions: list[str]) -> None:
        with connection.cursor() as cursor:
            # The deferred foreign-key checks must run first: PostgreSQL won't index a table that has some pending.
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            cursor.execute("SET LOCAL maintenance_work_mem = '512MB'")
            for definition in definitions:
                started = time.monotonic()
                cursor.execute(definition)
                took = time.monotonic() - started
                if took > 1 or self.verbosity > 1:
                    self.log(f"  {definition.split(' ON ')[0].removeprefix('CREATE ')} ({took:.1f} s)")

    def _create_indexes_in_parallel(self, definitions: list[str]) -> None:
        """Build the indexes after the rows have committed, on this connection and a second one: the
        trigram (GIN) index, about half of the work and never built in parallel by PostgreSQL
        itself, goes on the second while the others go on this one (B-trees use PostgreSQL's own
        parallel workers). If this fails, the missing indexes are named: create them with psql."""
        gin = [definition for definition in definitions if " USING gin " in definition]
        rest = [definition for definition in definitions if definition not in gin]
        errors: list[BaseException] = []

        def build(cursor, batch: list[str]) -> None:
            cursor.execute("SET maintenance_work_mem = '512MB'")
            for definition in batch:
                started = time.monotonic()
                cursor.execute(definition)
                took = time.monotonic() - started
                if took > 1 or self.verbosity > 1:
                    self.log(f"  {definition.split(' ON ')[0].removeprefix('CREATE ')} ({took:.1f} s)")

        def second() -> None:
            try:
                with psycopg.connect(self._conninfo(), autocommit=True) as conn:
                    build(conn.cursor(), gin)
            except BaseException as exc:  # noqa: BLE001 - raised below, on the main thread
                errors.append(exc)

        thread = threading.Thread(target=second, name="seed-gin-index")
        thread.start()
        try:
            with connection.cursor() as cursor:
                build(cursor, rest)
        finally:
            thread.join()
        if errors:
            raise CommandError(f"Building the trigram index failed ({errors[0]}); create it with: {'; '.join(gin)}")

    @staticmethod
    def _conninfo() -> str:
        """The command's database, for a second connection of its own."""
        params = connection.get_connection_params()
        return psycopg.conninfo.make_conninfo(
            **{key: value for key, value in params.items() if key in CONNINFO_KEYS and value not in (None, "")}
        )

    def _reset_sequences(self) -> None:
        models = [ApiClient, get_user_model(), *(model for model, _, _ in TABLES)]
        with connection.cursor() as cursor:
            for statement in connection.ops.sequence_reset_sql(no_style(), models):
                cursor.execute(statement)

    def elapsed(self) -> str:
        return f"{time.monotonic() - self.started:.1f} s"

    def log(self, line: str) -> None:
        if self.verbosity:
            self.stdout.write(f"[{self.elapsed():>8}] {line}")
            self.stdout.flush()


TABLES_NAMES = [name for _, _, name in TABLES]
CONNINFO_KEYS = {"dbname", "user", "password", "host", "port", "sslmode", "options"}


class BatchWriter:
    """COPYs batches into PostgreSQL on a second thread, so generating the next batch (Python, one
    core) overlaps the database's work on this one (the server, the other core).

    It uses the command's own connection, inside its transaction: the main thread doesn't touch
    the connection between `put`s and `finish`. At most two batches wait, so memory stays bounded.
    A failure on the writer is raised on the main thread at the next `put` or at `finish`.
    """

    def __init__(self):
        self.raw = connection.connection  # psycopg's connection, in the command's transaction
        self.pending: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="seed-copy", daemon=True)
        self.thread.start()

    def put(self, tables_rows: list[list[tuple]]) -> None:
        self._raise()
        self.pending.put(tables_rows)

    def finish(self) -> None:
        self.pending.put(None)
        self.thread.join()
        self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        while True:
            tables_rows = self.pending.get()
            if tables_rows is None:
                return
            if self.error is not None:
                continue  # drain, so `put` never blocks on a dead writer
            try:
                for (model, columns, _), rows in zip(TABLES, tables_rows, strict=True):
                    if not rows:
                        continue
                    table = connection.ops.quote_name(model._meta.db_table)
                    names = ", ".join(connection.ops.quote_name(column) for column in columns)
                    with self.raw.cursor() as cursor, cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                self.error = exc
