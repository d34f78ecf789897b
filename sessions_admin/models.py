"""The records of every chat: who asked, in which session and Coze conversation, what was said,
and what each reply cost.

Ownership: every ChatSession belongs to exactly one owner, written as `owner_key`
("client:<id>", "user:<id>" or "browser:<uuid>"); `session_id` is unique per owner, so two owners
may both use "s1". The `api_client`/`user` foreign keys repeat the owner for admin filters.
"""

import hashlib
import re
import secrets

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

API_KEY_PREFIX = "cz_"
# What create_with_key makes: the prefix and 32 random bytes in URL-safe base64.
API_KEY_RE = re.compile(r"^cz_[A-Za-z0-9_-]{43}$")


def looks_like_api_key(raw_key: str) -> bool:
    """Whether `raw_key` could be one of our keys at all (checked before any database lookup)."""
    return API_KEY_RE.match(raw_key) is not None


def hash_api_key(raw_key: str) -> str:
    # Keys are 256-bit random values, so a fast hash is enough: there is nothing to brute-force.
    return hashlib.sha256(raw_key.encode()).hexdigest()


class ApiClient(models.Model):
    """An API consumer authenticating with `Authorization: Bearer <key>`; the key is stored hashed."""

    name = models.CharField(max_length=100)
    key_prefix = models.CharField(max_length=16, help_text="The key's first characters, to recognise it.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    # Limits of this client (docs/api.md §11); empty uses the server-wide default. Read by chat.access.client_limits,
    # which caches them for a few seconds, so an edit takes effect without a restart.
    rate_limit_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Requests a minute; 0 = no limit; empty = CHAT_RATE_LIMIT_PER_MINUTE."
    )
    max_concurrent_streams = models.PositiveIntegerField(
        null=True, blank=True, help_text="Replies streaming at once; 0 = no limit; empty = CHAT_MAX_CONCURRENT_STREAMS."
    )
    daily_token_budget = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Tokens per UTC day; empty = no budget."
    )
    monthly_token_budget = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Tokens per calendar month (UTC); empty = no budget."
    )
    allowed_bot_ids = models.CharField(
        max_length=1000,
        blank=True,
        default="",
        help_text="Comma-separated bot ids this client may use (within COZE_ALLOWED_BOT_IDS); empty = all of those.",
    )
    # Retention (docs/admin.md, "Retention"): read by `prune_chat_data`.
    retention_days = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Days this client's messages are kept (each by its own age); empty = CHAT_RETENTION_DAYS.",
    )

    class Meta:
        verbose_name = "API client"
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @classmethod
    def create_with_key(cls, *, name: str, **fields) -> tuple["ApiClient", str]:
        """Create a client (`fields`: its limits); returns it with its raw key, which is not stored
        and can't be shown again."""
        raw_key = API_KEY_PREFIX + secrets.token_urlsafe(32)
        client = cls.objects.create(name=name, key_prefix=raw_key[:10], key_hash=hash_api_key(raw_key), **fields)
        return client, raw_key

    @property
    def owner_key(self) -> str:
        return f"client:{self.pk}"

    @property
    def allowed_bots(self) -> list[str]:
        return [bot.strip() for bot in self.allowed_bot_ids.split(",") if bot.strip()]


class ChatSession(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active"
        BUSY = "busy"

    owner_key = models.CharField(max_length=80)
    api_client = models.ForeignKey(ApiClient, null=True, blank=True, on_delete=models.CASCADE)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE)
    session_id = models.CharField(max_length=128)
    coze_user_id = models.CharField(max_length=128)
    bot_id = models.CharField(max_length=64)
    current_conversation = models.ForeignKey(
        "Conversation", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    last_activity = models.DateTimeField(default=timezone.now)
    cleared_at = models.DateTimeField(null=True, blank=True)
    # Messages of the current conversation (user turns and answers), kept as a counter so session
    # info costs no COUNT.
    message_count = models.PositiveIntegerField(default=0)
    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    total_tokens = models.PositiveBigIntegerField(default=0)
    # The reply lock: one reply at a time per session, across worker processes. A lease that
    # expires so a crashed holder can't block the session forever.
    lock_token = models.CharField(max_length=32, blank=True, default="")
    locked_until = models.DateTimeField(null=True, blank=True)
    # The string map a Coze client gave the conversation when it created it (docs/api.md §13).
    # A database default too: the turn's start function and bulk loaders insert sessions naming
    # only the older columns.
    meta_data = models.JSONField(default=dict, db_default={}, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["owner_key", "session_id"], name="unique_session_per_owner"),
        ]
        indexes = [
            models.Index(fields=["owner_key", "-last_activity"], name="session_owner_activity"),
            models.Index(fields=["-last_activity"], name="session_last_activity"),
            # Admin search and `clear_chat_sessions --session-id/--user-id` match these exactly.
            models.Index(fields=["session_id"], name="session_session_id"),
            models.Index(fields=["coze_user_id"], name="session_coze_user_id"),
            # Only sessions holding a lock: the "busy" filter and startup recovery.
            models.Index(
                fields=["locked_until"], name="session_locked_until", condition=models.Q(locked_until__isnull=False)
            ),
        ]

    def __str__(self) -> str:
        return self.session_id

    @property
    def status(self) -> str:
        if self.locked_until and self.locked_until > timezone.now():
            return self.Status.BUSY
        return self.Status.ACTIVE


class Conversation(models.Model):
    """One Coze conversation of a session. Clearing a session starts a new one; old ones stay."""

    session = models.ForeignKey(ChatSession, on_delete=models.CASCADE, related_name="conversations")
    coze_conversation_id = models.CharField(max_length=64, blank=True, default="", db_index=True)
    bot_id = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)
    last_activity = models.DateTimeField(default=timezone.now)
    message_count = models.PositiveIntegerField(default=0)
    total_tokens = models.PositiveBigIntegerField(default=0)
    # A digest of the owner, the bot and the answered turns (`chat.domain.transcripts`), so the OpenAI
    # path finds the session a client's resent history belongs to with one index lookup.
    # (db_default: bulk loaders that COPY named columns leave it empty, i.e. never matched.)
    transcript_hash = models.CharField(max_length=32, blank=True, default="", db_default="")

    class Meta:
        indexes = [
            models.Index(fields=["-last_activity"], name="conversation_last_activity"),
            # The admin's bot filter and its sortable columns, each with the default order.
            models.Index(fields=["bot_id", "-last_activity"], name="conversation_bot_activity"),
            models.Index(fields=["total_tokens", "id"], name="conversation_tokens"),
            models.Index(fields=["message_count", "id"], name="conversation_messages"),
            models.Index(fields=["transcript_hash"], name="conversation_transcript"),
        ]

    def __str__(self) -> str:
        return self.coze_conversation_id or f"conversation {self.pk}"


class Reply(models.Model):
    """One turn's answer, i.e. one Coze chat: how it ended, its tokens and its timing."""

    class Status(models.TextChoices):
        IN_PROGRESS = "in_progress"
        # Paused for the client's local tool outputs (Coze's API, docs/api.md §13): not running.
        REQUIRES_ACTION = "requires_action"
        COMPLETED = "completed"
        FAILED = "failed"
        CANCELLED = "cancelled"
        INTERRUPTED = "interrupted"

    class Transport(models.TextChoices):
        SYNC = "sync", "Sync API"
        SSE = "sse", "SSE"
        WEBSOCKET = "websocket", "WebSocket"
        COMPAT = "compat", "Compatibility paths"
        OPENAI = "openai", "OpenAI"
        COZE = "coze", "Coze API"

    session = models.ForeignKey(ChatSession, on_delete=models.CASCADE, related_name="replies")
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="replies")
    owner_key = models.CharField(max_length=80)
    api_client = models.ForeignKey(ApiClient, null=True, blank=True, on_delete=models.CASCADE)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE)
    bot_id = models.CharField(max_length=64)
    coze_chat_id = models.CharField(max_length=64, blank=True, default="", db_index=True)
    coze_logid = models.CharField(max_length=128, blank=True, default="")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.IN_PROGRESS)
    error_code = models.CharField(max_length=40, blank=True, default="")
    error_detail = models.TextField(blank=True, default="")
    transport = models.CharField(max_length=16, choices=Transport.choices)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    total_tokens = models.PositiveIntegerField(default=0)
    time_to_first_token_ms = models.PositiveIntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    # Channel-layer name of the worker streaming this reply, so a cancel can reach it from any worker.
    worker_channel = models.CharField(max_length=200, blank=True, default="")
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Resumable replies (docs/api.md §9), noted as they end: whether the client that asked was
    # still reading then (or the reply ran on alone), and how many times a client resumed it.
    # Database defaults too: seed_chat_data loads replies with COPY, naming only the older columns.
    resumable = models.BooleanField(default=False, db_default=False)
    ended_without_client = models.BooleanField(
        null=True, blank=True, help_text="A resumable reply that ended after its client had gone."
    )
    resume_count = models.PositiveIntegerField(default=0, db_default=0, help_text="Times a client resumed this reply.")
    # Per event of the reply before its last (numbers 1, 2, …; docs/api.md §9), the characters it
    # added to the answer, comma-separated, stored by its finish: a resume after the events expired
    # sends the answer after the client's event.
    answer_offsets = models.TextField(blank=True, default="", db_default="", editable=False)
    # The stored answer differs from the one streamed: CHAT_REDACT replaced personal data in it
    # (docs/api.md §15). Its answer_offsets then count the streamed text, not the stored one, so a
    # resume after the window sends the stored answer whole. Set after the turn's finish, by a
    # separate UPDATE only when something was redacted (chat/turn/finish.py).
    redacted = models.BooleanField(default=False, db_default=False, editable=False)
    # A reply that paused for the client's local tools (docs/api.md §13): Coze's tool calls, each
    # with the output the client sent once it did, and the answer written before the pause:
    # `{"tool_calls": [{"id", "name", "arguments", "output"?}], "answer": "…"}`. Kept after the
    # reply ends, as the record of what the tools were asked and answered.
    required_action = models.JSONField(null=True, blank=True, editable=False)

    class Meta:
        verbose_name_plural = "replies"
        indexes = [
            models.Index(fields=["-started_at"], name="reply_started"),
            models.Index(fields=["status", "-started_at"], name="reply_status_started"),
            models.Index(fields=["bot_id", "-started_at"], name="reply_bot_started"),
            # The admin's owner filter, and its sortable columns.
            models.Index(fields=["owner_key", "-started_at"], name="reply_owner_started"),
            # A conversation's replies in order: transcripts, its last reply (status column, filter).
            models.Index(fields=["conversation", "id"], name="reply_conversation_order"),
            models.Index(fields=["total_tokens", "id"], name="reply_tokens"),
            models.Index(fields=["time_to_first_token_ms", "id"], name="reply_ttft"),
            models.Index(fields=["duration_ms", "id"], name="reply_duration"),
        ]

    def __str__(self) -> str:
        return self.coze_chat_id or f"reply {self.pk}"


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    class Kind(models.TextChoices):
        QUESTION = "question"
        ANSWER = "answer"
        FOLLOW_UP = "follow_up"

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    reply = models.ForeignKey(Reply, null=True, blank=True, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=16, choices=Role.choices)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    content = models.TextField()
    content_type = models.CharField(max_length=32, default="text")
    coze_message_id = models.CharField(max_length=64, blank=True, default="")
    # What the user attached to this turn, as the session API shows it (docs/api.md §12): uploaded
    # files `{file_id, file_name, content_type, bytes}` or links `{url, type}`. A copy, so the
    # transcript still says what was sent after the file's record is gone.
    # The database default too, so bulk loads that name their columns (seed_chat_data's COPY) need not.
    attachments = models.JSONField(default=list, db_default=[], blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["conversation", "id"], name="message_conversation_order")]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:40]}"


class ChatFile(models.Model):
    """A file an owner uploaded to Coze through `POST /api/files`.

    The file itself lives at Coze; this is the record that makes its id usable only by its
    owner. `coze_file_id` is also the `file_id` of the API. Files belong to their owner and are
    linked to the messages that attached them; deleting a session (API or
    `clear_chat_sessions`) deletes the files its messages used. Files never attached stay
    with the owner's records.
    """

    owner_key = models.CharField(max_length=80)
    api_client = models.ForeignKey(ApiClient, null=True, blank=True, on_delete=models.CASCADE)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE)
    # The end user of the token that uploaded it (docs/api.md §2): only that user's turns may attach
    # it. Empty for an upload with the client's key, a user's or a browser's own.
    coze_user_id = models.CharField(
        "end user",
        max_length=128,
        blank=True,
        default="",
        help_text="The user_id of the end-user token that uploaded it; empty: uploaded with a key or by a browser.",
    )
    file_name = models.CharField(max_length=255)
    bytes = models.PositiveBigIntegerField()
    content_type = models.CharField(max_length=127)
    coze_file_id = models.CharField(max_length=64)
    uploaded_at = models.DateTimeField(default=timezone.now)
    messages = models.ManyToManyField(Message, blank=True, related_name="files")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["owner_key", "coze_file_id"], name="unique_file_per_owner"),
        ]
        indexes = [models.Index(fields=["-uploaded_at"], name="file_uploaded")]

    def __str__(self) -> str:
        return self.file_name

    def as_attachment(self) -> dict:
        """The attachment as the session API shows it (docs/api.md §12)."""
        return {
            "file_id": self.coze_file_id,
            "file_name": self.file_name,
            "content_type": self.content_type,
            "bytes": self.bytes,
        }


class Feedback(models.Model):
    """A rating of one answer (docs/api.md §15): up or down, with an optional comment.

    One per answer message; a second rating replaces the first. Its owner is the owner of the
    message's session. `conversation` and `answered_at` repeat the message's, so the admin's
    rating filter and the dashboard's ratings per day read this (small) table through its own
    indexes instead of joining the messages.
    """

    class Rating(models.TextChoices):
        UP = "up"
        DOWN = "down"

    message = models.OneToOneField(Message, on_delete=models.CASCADE, related_name="feedback")
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="feedback")
    rating = models.CharField(max_length=4, choices=Rating.choices)
    comment = models.TextField(blank=True, default="")
    answered_at = models.DateTimeField(help_text="When the rated answer was written (the message's time).")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "feedback"
        indexes = [
            # The admin's "has a thumbs-down / thumbs-up" filters.
            models.Index(fields=["rating", "conversation"], name="feedback_rating_conversation"),
            # The dashboard's share of down ratings per day.
            models.Index(fields=["answered_at"], name="feedback_answered"),
        ]

    def __str__(self) -> str:
        return f"{self.rating} on message {self.message_id}"


class FeedbackForward(models.Model):
    """The outbox that forwards ratings to Coze's feedback API, durably.

    One row per rated answer, holding the state Coze should end up with: `like` / `unlike` with
    the comment (`POST /v1/conversations/{cid}/messages/{mid}/feedback`), or `delete` after a
    rating was removed (`DELETE` on the same path). Each change of the rating rewrites the row
    and bumps `version`, so a sender that took an older version never marks the newer one done.
    Senders claim due rows by moving `next_attempt_at` forward, retry with backoff, and give up
    after `sessions_admin.feedback.MAX_FORWARD_ATTEMPTS`. The Coze ids are copied, so the row
    says where to send without joins.
    """

    class Action(models.TextChoices):
        LIKE = "like"
        UNLIKE = "unlike"
        DELETE = "delete"

    message = models.OneToOneField(Message, on_delete=models.CASCADE, related_name="feedback_forward")
    coze_conversation_id = models.CharField(max_length=64)
    coze_message_id = models.CharField(max_length=64)
    action = models.CharField(max_length=8, choices=Action.choices)
    comment = models.TextField(blank=True, default="")
    version = models.PositiveIntegerField(default=1)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_error = models.CharField(max_length=300, blank=True, default="")
    done = models.BooleanField(default=False)
    done_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            # What senders look for: rows not yet done, by when they are due.
            models.Index(fields=["next_attempt_at"], name="feedback_forward_due", condition=models.Q(done=False)),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.coze_message_id} v{self.version}"


# The time-to-first-token histogram of DailyUsage: bucket 0 counts replies under 50 ms, bucket i
# those from TTFT_BUCKET_BOUNDS_MS[i - 1] up to (not including) TTFT_BUCKET_BOUNDS_MS[i], and the
# last one everything from 25.6 s up. The bounds grow by √2 (50 · √2^i, rounded), so a
# percentile read from the buckets is within about one bucket, i.e. a factor of √2, of the exact
# one; see `sessions_admin.dashboard.histogram_percentile`.
TTFT_BUCKET_BOUNDS_MS = tuple(round(50 * 2 ** (index / 2)) for index in range(19))  # 50, 71, 100, … 25600
TTFT_BUCKET_FIELDS = tuple(f"ttft_bucket_{index:02d}" for index in range(len(TTFT_BUCKET_BOUNDS_MS) + 1))


class DailyUsage(models.Model):
    """Finished replies summed per calendar day (in TIME_ZONE, by start time), bot and owner.

    What the usage dashboard reads instead of the replies: a row per bot and owner active that
    day (28,558 rows for the benchmark's 90 days and 500,000 replies).
    `turn_finish` adds each reply as it ends, in the transaction that stores it (on PostgreSQL
    in `cozeproject_turn_finish`, elsewhere by `sessions_admin.rollup.record_reply`), and
    `rebuild_daily_usage` recomputes days from the replies. Rows are not deleted with sessions,
    so spend history outlives `clear_chat_sessions`.
    """

    day = models.DateField()
    bot_id = models.CharField(max_length=64)
    owner_key = models.CharField(max_length=80)
    replies = models.PositiveIntegerField(default=0)
    # Replies by how they ended; the completed ones are the rest.
    failed = models.PositiveIntegerField(default=0)
    cancelled = models.PositiveIntegerField(default=0)
    interrupted = models.PositiveIntegerField(default=0)
    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    total_tokens = models.PositiveBigIntegerField(default=0)
    # Replies that had a first token, the sum of those times, and their histogram (see above).
    ttft_count = models.PositiveIntegerField(default=0)
    ttft_sum_ms = models.PositiveBigIntegerField(default=0)
    ttft_bucket_00 = models.PositiveIntegerField(default=0)
    ttft_bucket_01 = models.PositiveIntegerField(default=0)
    ttft_bucket_02 = models.PositiveIntegerField(default=0)
    ttft_bucket_03 = models.PositiveIntegerField(default=0)
    ttft_bucket_04 = models.PositiveIntegerField(default=0)
    ttft_bucket_05 = models.PositiveIntegerField(default=0)
    ttft_bucket_06 = models.PositiveIntegerField(default=0)
    ttft_bucket_07 = models.PositiveIntegerField(default=0)
    ttft_bucket_08 = models.PositiveIntegerField(default=0)
    ttft_bucket_09 = models.PositiveIntegerField(default=0)
    ttft_bucket_10 = models.PositiveIntegerField(default=0)
    ttft_bucket_11 = models.PositiveIntegerField(default=0)
    ttft_bucket_12 = models.PositiveIntegerField(default=0)
    ttft_bucket_13 = models.PositiveIntegerField(default=0)
    ttft_bucket_14 = models.PositiveIntegerField(default=0)
    ttft_bucket_15 = models.PositiveIntegerField(default=0)
    ttft_bucket_16 = models.PositiveIntegerField(default=0)
    ttft_bucket_17 = models.PositiveIntegerField(default=0)
    ttft_bucket_18 = models.PositiveIntegerField(default=0)
    ttft_bucket_19 = models.PositiveIntegerField(default=0)

    class Meta:
        verbose_name_plural = "daily usage"
        constraints = [
            # Also the index of the dashboard's window (day range) and of the upsert's conflict target.
            models.UniqueConstraint(fields=["day", "bot_id", "owner_key"], name="daily_usage_day_bot_owner"),
        ]
        indexes = [
            # One owner's days: what a budget check reads before each turn (chat.access.budgets.spend_of).
            models.Index(fields=["owner_key", "day"], name="daily_usage_owner_day"),
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.bot_id} {self.owner_key}"

    @property
    def ttft_buckets(self) -> list[int]:
        return [getattr(self, name) for name in TTFT_BUCKET_FIELDS]


class BudgetAlert(models.Model):
    """A budget threshold crossed by an API client, and its delivery to CHAT_BUDGET_ALERT_WEBHOOK.

    The unique constraint makes the alert happen once per client, period and threshold, even when
    several workers notice the crossing at the same moment: only the one whose insert wins sends it.
    """

    class Period(models.TextChoices):
        DAY = "day"
        MONTH = "month"

    api_client = models.ForeignKey(ApiClient, on_delete=models.CASCADE, related_name="budget_alerts")
    period = models.CharField(max_length=8, choices=Period.choices)
    period_start = models.DateField(help_text="The UTC day, or the first day of the month.")
    threshold = models.PositiveSmallIntegerField(help_text="Percent of the budget.")
    used = models.PositiveBigIntegerField()
    limit = models.PositiveBigIntegerField()
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    # A sender claims the alert by moving this forward, so two workers never post it at once.
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_error = models.CharField(max_length=300, blank=True, default="")

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["api_client", "period", "period_start", "threshold"], name="budget_alert_once_per_threshold"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.api_client_id} {self.period} {self.period_start} {self.threshold}%"


class PrunedUsageDay(models.Model):
    """A day (in TIME_ZONE, by reply start) some of whose replies were deleted.

    The daily usage rollup keeps counting them (spend history and budgets rely on it), so these
    days can no longer be recomputed from the replies: `rebuild_daily_usage` leaves them as they
    are. Written by the deletion engine (`sessions_admin.retention`).
    """

    day = models.DateField(primary_key=True)
    replies_deleted = models.PositiveBigIntegerField(default=0)
    last_deleted_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-day"]

    def __str__(self) -> str:
        return f"{self.day}: {self.replies_deleted} replies deleted"


class CozeDeletion(models.Model):
    """The outbox of deletions at Coze (docs/api.md §15, `sessions_admin.coze_outbox`).

    Written by the deletion engine in the transaction that deletes the records here: a whole Coze
    conversation (`conversation`: its session or conversation went) or one turn's messages
    (`turn`: the answer ids recorded, and the chat whose messages Coze lists). A row goes once Coze
    confirms; a failed one keeps its error and is retried with backoff by the next prune until
    `coze_outbox.MAX_ATTEMPTS`. Coze ids only: the records that held the text are gone.
    """

    class Kind(models.TextChoices):
        CONVERSATION = "conversation"
        TURN = "turn"

    kind = models.CharField(max_length=12, choices=Kind.choices)
    coze_conversation_id = models.CharField(max_length=64)
    coze_chat_id = models.CharField(max_length=64, blank=True, default="")
    coze_message_ids = models.JSONField(default=list, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_error = models.CharField(max_length=300, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["next_attempt_at"], name="coze_deletion_due")]

    def __str__(self) -> str:
        target = self.coze_chat_id or ",".join(self.coze_message_ids) if self.kind == self.Kind.TURN else ""
        return f"{self.kind} {self.coze_conversation_id} {target}".strip()
