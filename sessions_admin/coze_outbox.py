"""Deletions at Coze, durably (docs/api.md §15): the outbox of the deletion engine.

When the engine (`sessions_admin.retention`) deletes sessions, conversations or turns that Coze
holds too, it writes what to delete at Coze (`CozeDeletion` rows: a whole conversation, or one
turn's messages) in the same transaction as the deletion itself, so the promise to delete at Coze
commits with it or not at all. Once the transaction has committed, the rows are sent at once
through the Coze adapter (`chat.coze.delete_at_coze`); a row goes when Coze confirms (or says the
conversation is gone already). A failed row stays, with its error, and is retried with backoff
(RETRY_BASE_SECONDS doubled per attempt, at most RETRY_MAX_SECONDS) by the next run of
`prune_chat_data` (daily, deploy/) until MAX_ATTEMPTS; the rows hold Coze ids only, never text.
"""

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from chat import coze
from sessions_admin.models import CozeDeletion

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 10
RETRY_BASE_SECONDS = 60.0
RETRY_MAX_SECONDS = 86400.0
# Rows sent to Coze per call of the sender.
DELIVER_BATCH = 500


@dataclass(frozen=True, slots=True)
class CozeTurn:
    """One deleted turn's messages at Coze: the answer's ids as recorded, and the chat's id, which
    finds the user's question (whose Coze id is not recorded)."""

    conversation_id: str
    chat_id: str
    message_ids: tuple[str, ...]


@dataclass(slots=True)
class CozeDeletions:
    """What to delete at Coze for one chunk: whole conversations (their session or conversation
    went) and single turns (their conversation lives on)."""

    conversations: list[str] = field(default_factory=list)
    turns: list[CozeTurn] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.conversations) + len(self.turns)


@dataclass(slots=True)
class CozeOutcome:
    """What became of deletions handed to Coze: done, failed (kept in the outbox to retry), or not
    sent at all (demo mode). `failures` maps the failed items (a conversation id or a CozeTurn) to
    why; a sender that gives none of them for its failures failed them all."""

    deleted: int = 0
    failed: int = 0
    not_sent: int = 0
    failures: dict = field(default_factory=dict)

    def add(self, other: "CozeOutcome") -> None:
        self.deleted += other.deleted
        self.failed += other.failed
        self.not_sent += other.not_sent


def send_coze_deletions(deletions: CozeDeletions) -> CozeOutcome:
    """Delete `deletions` at Coze through the Coze adapter: each conversation
    (`DELETE /v1/conversations/{id}`) and the messages of each turn
    (`POST /v1/conversation/message/delete`: the answers recorded, and every message Coze lists
    for the turn's chat, the question among them)."""
    by_adapter_turn = {
        coze.TurnAtCoze(conversation_id=turn.conversation_id, chat_id=turn.chat_id, message_ids=turn.message_ids): turn
        for turn in deletions.turns
    }
    result = coze.delete_at_coze(conversations=list(deletions.conversations), turns=list(by_adapter_turn))
    failures = {by_adapter_turn.get(item, item): reason for item, reason in result.failures.items()}
    return CozeOutcome(deleted=result.deleted, failed=result.failed, failures=failures)


def enqueue(deletions: CozeDeletions, *, now: datetime | None = None) -> list[int]:
    """Write `deletions` as outbox rows, in the caller's transaction; returns their keys."""
    now = now or timezone.now()
    rows = [
        CozeDeletion(kind=CozeDeletion.Kind.CONVERSATION, coze_conversation_id=conversation_id, next_attempt_at=now)
        for conversation_id in deletions.conversations
    ]
    rows += [
        CozeDeletion(
            kind=CozeDeletion.Kind.TURN,
            coze_conversation_id=turn.conversation_id,
            coze_chat_id=turn.chat_id,
            coze_message_ids=list(turn.message_ids),
            next_attempt_at=now,
        )
        for turn in deletions.turns
    ]
    return [row.pk for row in CozeDeletion.objects.bulk_create(rows)]


def _item(row: CozeDeletion):
    if row.kind == CozeDeletion.Kind.CONVERSATION:
        return row.coze_conversation_id
    return CozeTurn(
        conversation_id=row.coze_conversation_id, chat_id=row.coze_chat_id, message_ids=tuple(row.coze_message_ids)
    )


def retry_delay(attempts: int) -> float:
    """Seconds before the next try of a row that failed `attempts` times."""
    return min(RETRY_BASE_SECONDS * 2 ** max(attempts - 1, 0), RETRY_MAX_SECONDS)


def _claim(pks: list[int] | None, now: datetime) -> list[CozeDeletion]:
    """Take rows to send: these (`pks`), or every due one under MAX_ATTEMPTS. Skips rows another
    run holds, and moves the taken ones' `next_attempt_at` past the attempt, so that a concurrent
    run does not send them too."""
    with transaction.atomic():
        rows = CozeDeletion.objects.select_for_update(skip_locked=True).order_by("pk")
        if pks is not None:
            rows = rows.filter(pk__in=pks)
        else:
            rows = rows.filter(next_attempt_at__lte=now, attempts__lt=MAX_ATTEMPTS)[:DELIVER_BATCH]
        taken = list(rows)
        CozeDeletion.objects.filter(pk__in=[row.pk for row in taken]).update(
            next_attempt_at=now + timedelta(minutes=10)
        )
    return taken


def deliver(pks: list[int] | None, *, send) -> CozeOutcome:
    """Send outbox rows to Coze with `send` (a `send_coze_deletions`): the rows `pks` (just
    committed), or with None every due row from earlier runs. Rows Coze confirmed go; the others
    stay with their error and the time of their next try. Never raises for Coze's failures."""
    total = CozeOutcome()
    while True:
        now = timezone.now()
        rows = _claim(pks, now)
        if not rows:
            return total
        by_item: dict = {}
        for row in rows:
            by_item.setdefault(_item(row), []).append(row)
        deletions = CozeDeletions(
            conversations=[item for item in by_item if isinstance(item, str)],
            turns=[item for item in by_item if isinstance(item, CozeTurn)],
        )
        try:
            outcome = send(deletions)
        except Exception:
            logger.exception("Coze deletions failed for %d outbox rows; kept to retry", len(rows))
            outcome = CozeOutcome(failed=len(deletions))
        if outcome.failed and not outcome.failures:
            failures = dict.fromkeys(by_item, "failed")
        else:
            failures = outcome.failures
        done = [row.pk for item, item_rows in by_item.items() if item not in failures for row in item_rows]
        CozeDeletion.objects.filter(pk__in=done).delete()
        for item, reason in failures.items():
            for row in by_item.get(item, []):
                attempts = row.attempts + 1
                CozeDeletion.objects.filter(pk=row.pk).update(
                    attempts=attempts,
                    last_error=str(reason)[:300],
                    next_attempt_at=now + timedelta(seconds=retry_delay(attempts)),
                )
        total.add(CozeOutcome(deleted=len(by_item) - len(failures), failed=len(failures)))
        if pks is not None:
            return total
