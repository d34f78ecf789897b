"""Ratings of answers (docs/api.md §15), and the outbox that forwards them to Coze.

* `feedback_set` / `feedback_clear` are what the API, the WebSocket frame and Coze's own feedback
  path call. They are owner-scoped (an end-user token narrowed to its user by `coze_user_id`):
  another owner's message, or an unknown id, is `not_found` (never `forbidden`, so ids can't be
  probed); a message that is not an answer is `invalid`. A second rating replaces the first.
* Each change is written together with its row in the outbox (`FeedbackForward`), in one
  transaction: the rating and the promise to tell Coze commit together or not at all, and the
  user's request never waits for Coze. One outbox row per answer holds the state Coze should end
  up with (like / unlike with the comment, or delete), so ratings changed quickly one after the
  other send only the latest.
* A sender (any worker, any number of them) drains the outbox: `forward_claim` takes due rows
  (`SKIP LOCKED`, and moves each one's `next_attempt_at` past the claim so no one else sends it
  meanwhile), then reports each with `forward_done` or `forward_failed`. Both are conditional on
  the version the sender took: a rating changed while it was being sent stays pending, and is
  sent again in its new form. Failures are retried with exponential backoff
  (FORWARD_RETRY_BASE_SECONDS, doubled per attempt, at most FORWARD_RETRY_MAX_SECONDS) until
  MAX_FORWARD_ATTEMPTS (`forward_given_up` ends them at once when Coze refuses one for good); a
  row survives restarts because it is only ever a database row.
* Answers without Coze ids (a reply that never got them), and every answer when the upstream is a
  Coze Studio (`COZE_PLATFORM=studio`, which has no feedback API), are rated here but not forwarded.
* The sender itself, which calls Coze through the adapter, is `sessions_admin.feedback_outbox`.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from chat.domain.errors import ChatError
from chat.domain.redaction import redact
from sessions_admin.models import Feedback, FeedbackForward, Message

MAX_COMMENT_CHARS = 2000
MAX_FORWARD_ATTEMPTS = 10
FORWARD_RETRY_BASE_SECONDS = 5.0
FORWARD_RETRY_MAX_SECONDS = 3600.0
# How long a claimed row is left to its sender before another may take it (the sender died).
FORWARD_CLAIM_SECONDS = 60.0
RATINGS = tuple(Feedback.Rating.values)
ACTION_OF_RATING = {
    Feedback.Rating.UP: FeedbackForward.Action.LIKE,
    Feedback.Rating.DOWN: FeedbackForward.Action.UNLIKE,
}


def _answer_of(*, owner_key: str, coze_user_id: str | None, message_id) -> Message:
    """The owner's answer message `message_id` (narrowed to the sessions of `coze_user_id` when
    given: an end-user token's); ChatError not_found / invalid otherwise."""
    # A whole number, or its digits (a path segment); never a bool or a float that int() would take.
    if isinstance(message_id, str) and message_id.isascii() and message_id.isdigit():
        message_id = int(message_id)
    if isinstance(message_id, bool) or not isinstance(message_id, int) or not 0 < message_id < 2**63:
        raise ChatError("not_found", "No such message.")
    message_pk = message_id
    scope = {"conversation__session__owner_key": owner_key}
    if coze_user_id is not None:
        scope["conversation__session__coze_user_id"] = coze_user_id
    message = (
        Message.objects.select_related("conversation")
        .filter(pk=message_pk, **scope)
        .only("pk", "role", "kind", "coze_message_id", "created_at", "conversation__coze_conversation_id")
        .first()
    )
    if message is None:
        raise ChatError("not_found", "No such message.")
    if message.role != Message.Role.ASSISTANT or message.kind != Message.Kind.ANSWER:
        raise ChatError("invalid", "Only an answer can be rated, not a question or a suggestion.")
    return message


def _validated(rating, comment) -> tuple[str, str]:
    if rating not in RATINGS:
        raise ChatError("invalid", 'rating: must be "up" or "down".', errors={"rating": ['Must be "up" or "down".']})
    if comment is None:
        comment = ""
    if not isinstance(comment, str):
        raise ChatError("invalid", "comment: must be a string.", errors={"comment": ["Must be a string."]})
    if len(comment) > MAX_COMMENT_CHARS:
        detail = f"Ensure this field has no more than {MAX_COMMENT_CHARS} characters."
        raise ChatError("invalid", f"comment: {detail}", errors={"comment": [detail]})
    if "\x00" in comment:
        raise ChatError("invalid", "comment: must not contain NUL characters.", errors={"comment": ["No NUL bytes."]})
    return rating, comment


def _enqueue(message: Message, *, action: str, comment: str, now: datetime) -> None:
    """Write (or rewrite) the answer's outbox row with the state Coze should end up with."""
    quote = connection.ops.quote_name
    table = quote(FeedbackForward._meta.db_table)
    columns = [
        "message_id",
        "coze_conversation_id",
        "coze_message_id",
        "action",
        "comment",
        "version",
        "attempts",
        "next_attempt_at",
        "last_error",
        "done",
        "done_at",
        "created_at",
        "updated_at",
    ]
    values = [
        message.pk,
        message.conversation.coze_conversation_id,
        message.coze_message_id,
        action,
        comment,
        1,
        0,
        now,
        "",
        False,
        None,
        now,
        now,
    ]
    reset = ["action", "comment", "attempts", "next_attempt_at", "last_error", "done", "done_at", "updated_at"]
    updates = ", ".join(f"{quote(name)} = excluded.{quote(name)}" for name in reset)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} ({', '.join(quote(name) for name in columns)}) "  # noqa: S608 (names from the model)
            f"VALUES ({', '.join(['%s'] * len(columns))}) "
            f"ON CONFLICT ({quote('message_id')}) DO UPDATE SET {updates}, "
            f"{quote('version')} = {table}.{quote('version')} + 1",
            values,
        )


def _forwardable(message: Message) -> bool:
    # Coze Studio has no feedback API (docs/api.md §14): there ratings stay here.
    if settings.COZE_PLATFORM == "studio":
        return False
    return bool(message.coze_message_id and message.conversation.coze_conversation_id)


def feedback_set(*, owner_key: str, message_id, rating, comment="", coze_user_id: str | None = None) -> Feedback:
    """Rate the owner's answer `message_id` ("up" or "down", with an optional comment), replacing
    any earlier rating, and queue the rating for Coze. Returns the stored rating. `coze_user_id`
    narrows the owner to one end user's sessions (an end-user token, `Owner.end_user_id`).

    Raises ChatError: not_found (unknown or another owner's message), invalid (not an answer, a
    bad rating, a comment that is not a string or longer than MAX_COMMENT_CHARS).
    """
    rating, comment = _validated(rating, comment)
    # A comment is stored text like a message: CHAT_REDACT applies (and so to its copy for Coze).
    comment = redact(comment, settings.CHAT_REDACT)
    message = _answer_of(owner_key=owner_key, coze_user_id=coze_user_id, message_id=message_id)
    now = timezone.now()
    with transaction.atomic():
        # One statement, so two ratings of the same answer at once can't both insert.
        Feedback.objects.bulk_create(
            [
                Feedback(
                    message_id=message.pk,
                    conversation_id=message.conversation_id,
                    rating=rating,
                    comment=comment,
                    answered_at=message.created_at,
                    created_at=now,
                    updated_at=now,
                )
            ],
            update_conflicts=True,
            unique_fields=["message"],
            update_fields=["rating", "comment", "updated_at"],
        )
        if _forwardable(message):
            _enqueue(message, action=ACTION_OF_RATING[rating], comment=comment, now=now)
    return Feedback.objects.get(message_id=message.pk)


def feedback_clear(*, owner_key: str, message_id, coze_user_id: str | None = None) -> bool:
    """Remove the owner's rating of answer `message_id` (and, through the outbox, Coze's copy).
    Returns whether there was one. Clearing an answer that has no rating is not an error.

    Raises ChatError: not_found (unknown or another owner's message), invalid (not an answer).
    """
    message = _answer_of(owner_key=owner_key, coze_user_id=coze_user_id, message_id=message_id)
    with transaction.atomic():
        deleted, _ = Feedback.objects.filter(message_id=message.pk).delete()
        # Only where something was (or is about to be) sent: a row exists for every forwarded rating.
        if FeedbackForward.objects.filter(message_id=message.pk).exists():
            _enqueue(message, action=FeedbackForward.Action.DELETE, comment="", now=timezone.now())
    return bool(deleted)


def feedback_json(feedback: Feedback | None) -> dict | None:
    """A rating as the session API shows it on its answer: `{"rating","comment"}`, or None."""
    if feedback is None:
        return None
    return {"rating": feedback.rating, "comment": feedback.comment}


def messages_with_feedback(messages: QuerySet[Message]) -> QuerySet[Message]:
    """The same messages, each with its rating fetched in the same query (`message_feedback`)."""
    return messages.select_related("feedback")


def message_feedback(message: Message) -> dict | None:
    """The rating of a message from `messages_with_feedback`, as `feedback_json` shows it."""
    try:
        return feedback_json(message.feedback)
    except Feedback.DoesNotExist:
        return None


# --- the outbox's senders ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ForwardTask:
    """One claimed outbox row: what to send to Coze, and the version it was taken at."""

    pk: int
    version: int
    attempt: int  # this attempt's number, 1 for the first
    coze_conversation_id: str
    coze_message_id: str
    action: str  # "like", "unlike" (POST with feedback_type and comment) or "delete" (DELETE)
    comment: str

    @property
    def path(self) -> str:
        return f"/v1/conversations/{self.coze_conversation_id}/messages/{self.coze_message_id}/feedback"

    @property
    def body(self) -> dict | None:
        """The POST body, or None for a DELETE."""
        if self.action == FeedbackForward.Action.DELETE:
            return None
        body = {"feedback_type": self.action}
        if self.comment:
            body["comment"] = self.comment
        return body


def _due(now: datetime):
    return FeedbackForward.objects.filter(done=False, attempts__lt=MAX_FORWARD_ATTEMPTS, next_attempt_at__lte=now)


def forward_claim(*, limit: int = 50, now: datetime | None = None) -> list[ForwardTask]:
    """Take up to `limit` due outbox rows for one sending attempt each, oldest due first.

    Rows another sender holds (locked or claimed) are skipped; a claim lapses after
    FORWARD_CLAIM_SECONDS, so the rows of a sender that died are taken again.
    """
    now = now or timezone.now()
    with transaction.atomic():
        rows = list(
            _due(now)
            .select_for_update(skip_locked=True)
            .order_by("next_attempt_at", "pk")
            .values("pk", "version", "attempts", "coze_conversation_id", "coze_message_id", "action", "comment")[:limit]
        )
        if rows:
            FeedbackForward.objects.filter(pk__in=[row["pk"] for row in rows]).update(
                next_attempt_at=now + timedelta(seconds=FORWARD_CLAIM_SECONDS)
            )
    return [
        ForwardTask(
            pk=row["pk"],
            version=row["version"],
            attempt=row["attempts"] + 1,
            coze_conversation_id=row["coze_conversation_id"],
            coze_message_id=row["coze_message_id"],
            action=row["action"],
            comment=row["comment"],
        )
        for row in rows
    ]


def forward_done(task: ForwardTask) -> bool:
    """Coze took `task`: mark its row done, unless the rating changed meanwhile (then the row stays
    pending, due now, to send the new state). Returns whether the row was marked done."""
    now = timezone.now()
    marked = FeedbackForward.objects.filter(pk=task.pk, version=task.version).update(
        done=True, done_at=now, attempts=F("attempts") + 1, last_error="", updated_at=now
    )
    return bool(marked)


def forward_retry_delay(attempt: int) -> float:
    """Seconds before the attempt after failed attempt number `attempt` (1, 2, …)."""
    return min(FORWARD_RETRY_BASE_SECONDS * 2 ** (attempt - 1), FORWARD_RETRY_MAX_SECONDS)


def forward_failed(task: ForwardTask, error: str) -> None:
    """Sending `task` failed: count the attempt and schedule the next (none after
    MAX_FORWARD_ATTEMPTS). A rating changed meanwhile is left as it is: its row was reset."""
    now = timezone.now()
    FeedbackForward.objects.filter(pk=task.pk, version=task.version).update(
        attempts=F("attempts") + 1,
        last_error=error[:300],
        next_attempt_at=now + timedelta(seconds=forward_retry_delay(task.attempt)),
        updated_at=now,
    )


def forward_given_up(task: ForwardTask, error: str) -> None:
    """Coze refused `task` for good (a message it does not know, a route it does not have): count
    the attempt and stop, as after the last attempt. A rating changed meanwhile is left as it is."""
    now = timezone.now()
    FeedbackForward.objects.filter(pk=task.pk, version=task.version).update(
        attempts=MAX_FORWARD_ATTEMPTS, last_error=error[:300], updated_at=now
    )


def forward_counts() -> dict[str, int]:
    """The outbox's rows by state: `pending` (to be sent, now or after a backoff), `given_up`, `sent`."""
    rows = FeedbackForward.objects
    return {
        "pending": rows.filter(done=False, attempts__lt=MAX_FORWARD_ATTEMPTS).count(),
        "given_up": rows.filter(done=False, attempts__gte=MAX_FORWARD_ATTEMPTS).count(),
        "sent": rows.filter(done=True).count(),
    }


def forward_retry_given_up() -> int:
    """Make every given-up row pending again, due now, with its attempts counted afresh (after an
    operator fixed what made Coze refuse them). Returns how many."""
    now = timezone.now()
    return FeedbackForward.objects.filter(done=False, attempts__gte=MAX_FORWARD_ATTEMPTS).update(
        attempts=0, next_attempt_at=now, updated_at=now
    )
