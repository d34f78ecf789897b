"""Delete chat sessions and everything under them, in batches, safely while the server runs.

Not to be confused with Django's `clearsessions`, which removes expired login sessions and is
left alone.

How it stays safe on big tables and a live server:

* sessions are taken in batches by primary key, re-checking the filters each time (a session
  that became active again meanwhile no longer matches an `--idle-days` filter and stays);
* each batch deletes children before parents (messages, replies, conversations, then the
  sessions), each step in short transactions of at most `--chunk` rows, so locks are brief,
  memory stays flat, and an interruption at any point leaves no orphan rows: run it again to
  finish;
* sessions with a reply in progress (a live lock) are skipped unless `--include-busy`.

Uploaded files (`ChatFile`) attached by a deleted session's messages are deleted with it, first
(their link to the session goes through the messages); files never attached are not touched.
The deleting is done by the deletion engine `prune_chat_data` uses too (`sessions_admin.retention`):
ratings and replay buffers go with their messages and replies, the sessions' conversations are
deleted at Coze, and the daily usage rollup stays.
"""

from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Max, Q
from django.utils import timezone

from sessions_admin.dashboard import owner_labels
from sessions_admin.models import ChatSession
from sessions_admin.progress import ProgressBar
from sessions_admin.retention import DeletionEngine, coze_summary, summary


class Command(BaseCommand):
    help = (
        "Delete chat sessions with their conversations, messages and replies, in batches. Filters combine "
        "(all must match); with no filter it refuses unless --all is given. Unrelated to Django's clearsessions."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--session-id",
            action="append",
            dest="session_ids",
            default=[],
            metavar="ID",
            help="Sessions with this session id (any owner). Repeatable.",
        )
        parser.add_argument(
            "--user-id",
            action="append",
            dest="user_ids",
            default=[],
            metavar="U",
            help="Sessions of this Coze user_id. Repeatable.",
        )
        parser.add_argument(
            "--idle-days", type=int, metavar="N", help="Sessions without activity for at least N days (N >= 1)."
        )
        parser.add_argument("--all", action="store_true", help="Allow deleting every session (no filter needed).")
        parser.add_argument("--dry-run", action="store_true", help="Report what would be deleted; delete nothing.")
        parser.add_argument(
            "--noinput", "--no-input", action="store_false", dest="interactive", help="Don't ask for confirmation."
        )
        parser.add_argument(
            "--include-busy", action="store_true", help="Also delete sessions that have a reply in progress."
        )
        parser.add_argument("--batch-size", type=int, default=500, help="Sessions per batch (default 500).")
        parser.add_argument("--chunk", type=int, default=5000, help="Rows per delete statement (default 5000).")

    def handle(self, *args, **options):
        session_ids, user_ids, idle_days = options["session_ids"], options["user_ids"], options["idle_days"]
        if idle_days is not None and idle_days < 1:
            raise CommandError("--idle-days must be at least 1.")
        if options["batch_size"] < 1 or options["chunk"] < 1:
            raise CommandError("--batch-size and --chunk must be positive.")
        if not (session_ids or user_ids or idle_days is not None or options["all"]):
            raise CommandError(
                "Refusing to delete every chat session without --all. Filter with --session-id, --user-id or "
                "--idle-days, or pass --all to delete them all. (Django's own `clearsessions`, for expired "
                "login sessions, is a different command.)"
            )
        self.verbosity = options["verbosity"]
        now = timezone.now()

        wanted = Q()
        if session_ids:
            wanted &= Q(session_id__in=session_ids)
        if user_ids:
            wanted &= Q(coze_user_id__in=user_ids)
        if idle_days is not None:
            wanted &= Q(last_activity__lt=now - timedelta(days=idle_days))
        matching = ChatSession.objects.filter(wanted)
        # Sessions created after the start are never part of this run.
        upper = matching.aggregate(top=Max("pk"))["top"] or 0
        matching = matching.filter(pk__lte=upper)
        busy = Q(locked_until__gt=now)
        targets = matching if options["include_busy"] else matching.exclude(busy)
        skipped = 0 if options["include_busy"] else matching.filter(busy).count()

        plan = DeletionEngine(dry_run=True)
        plan.count_sessions(targets)
        planned = plan.counts
        skipped_note = f" (skipped {skipped:,} with a reply in progress)" if skipped else ""
        if options["dry_run"]:
            self.list_some(targets)
            self.stdout.write(
                f"Would delete {summary(planned)}{skipped_note}{coze_summary(plan)}. Dry run: nothing was deleted."
            )
            return
        if not planned["sessions"]:
            self.stdout.write(f"Deleted {summary(planned)}{skipped_note}: no matching sessions.")
            return
        if options["interactive"]:
            answer = input(f"This will permanently delete {summary(planned)}. Type 'yes' to continue: ")
            if answer.strip().lower() != "yes":
                self.stdout.write("Cancelled: nothing was deleted.")
                return

        engine = DeletionEngine(chunk=options["chunk"])
        bar = ProgressBar(
            self.stdout._out if self.verbosity else None, label="sessions", total=planned["sessions"], unit="sessions"
        )
        after = 0
        while True:
            batch_query = matching.filter(pk__gt=after)
            if not options["include_busy"]:
                # Re-checked per batch: a session may have started a reply since the run began.
                batch_query = batch_query.exclude(locked_until__gt=timezone.now())
            batch = list(batch_query.order_by("pk").values_list("pk", flat=True)[: options["batch_size"]])
            if not batch:
                break
            after = batch[-1]
            engine.sessions(batch, still=wanted, include_busy=options["include_busy"])
            bar.update(len(batch))
        bar.close()
        self.stdout.write(f"Deleted {summary(engine.counts)}{skipped_note}{coze_summary(engine)}.")

    def list_some(self, sessions, limit: int = 20) -> None:
        if not self.verbosity:
            return
        rows = list(
            sessions.order_by("-last_activity").values_list("owner_key", "session_id", "last_activity")[: limit + 1]
        )
        labels = owner_labels([owner_key for owner_key, _, _ in rows[:limit]])
        for owner_key, session_id, last_activity in rows[:limit]:
            self.stdout.write(f"  {session_id}  of {labels[owner_key]}, last activity {last_activity:%Y-%m-%d %H:%M}")
        if len(rows) > limit:
            self.stdout.write("  …")
