"""Delete chat records past their retention window (docs/admin.md, "Retention").

Each record goes by its own age, also inside sessions still in use: sessions idle since the
cutoff go whole; in the others, old conversations and old turns go, and a session left with no
message goes too. Files go by their upload time, files never attached after
CHAT_ORPHAN_FILE_HOURS. The daily usage rollup stays (spend history and budgets). Runs through
the same deletion engine as `clear_chat_sessions` (`sessions_admin.retention`), in short
transactions, safe while the server runs; `deploy/` runs it daily.
"""

from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db.models import Q
from django.utils import timezone

from sessions_admin.models import ApiClient
from sessions_admin.progress import ProgressBar
from sessions_admin.retention import (
    DeletionEngine,
    NoWindow,
    counted,
    coze_summary,
    prune,
    retention_windows,
    summary,
)


class Command(BaseCommand):
    help = (
        "Delete chat messages, replies, ratings, files, sessions and replay buffers older than the retention "
        "window: CHAT_RETENTION_DAYS, or an API client's own retention days, or --days for this run."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--days", type=int, metavar="N", help="Keep N days for every owner in scope, instead of the settings."
        )
        parser.add_argument("--client", metavar="NAME", help="Only the records of this API client.")
        parser.add_argument(
            "--dry-run", action="store_true", help="Say what would be deleted, by kind; delete nothing."
        )
        parser.add_argument(
            "--noinput", "--no-input", action="store_false", dest="interactive", help="Don't ask for confirmation."
        )
        parser.add_argument("--chunk", type=int, default=5000, help="Rows per delete statement (default 5000).")

    def handle(self, *args, days=None, client=None, dry_run=False, interactive=True, chunk=5000, **options):
        if days is not None and days < 1:
            raise CommandError("--days must be at least 1.")
        if chunk < 1:
            raise CommandError("--chunk must be positive.")
        api_client = None
        if client is not None:
            matches = list(ApiClient.objects.filter(name=client))
            if not matches:
                raise CommandError(f"No API client is named {client!r}.")
            if len(matches) > 1:
                raise CommandError(f"{len(matches)} API clients are named {client!r}; rename one in admin first.")
            api_client = matches[0]
        now = timezone.now()
        try:
            windows = retention_windows(days=days, client=api_client, now=now)
        except NoWindow as exc:
            raise CommandError(str(exc)) from None
        verbosity = options["verbosity"]
        if verbosity:
            if windows:
                for window in windows:
                    self.stdout.write(f"Keeping {window.describe()}")
            else:
                self.stdout.write(
                    "No retention window is set (CHAT_RETENTION_DAYS, or per API client): messages are kept."
                )
            self.stdout.write(
                f"Files never attached: {settings.CHAT_ORPHAN_FILE_HOURS:g} hours (CHAT_ORPHAN_FILE_HOURS)."
            )
        if interactive and not dry_run:
            answer = input("This permanently deletes what is older, here and at Coze. Type 'yes' to continue: ")
            if answer.strip().lower() != "yes":
                self.stdout.write("Cancelled: nothing was deleted.")
                return

        engine = DeletionEngine(dry_run=dry_run, chunk=chunk)
        stream = self.stderr._out if verbosity else None

        def progress(**kwargs):
            return ProgressBar(stream, **kwargs)

        report = prune(
            engine,
            windows,
            orphan_files_before=now - timedelta(hours=settings.CHAT_ORPHAN_FILE_HOURS),
            orphan_owners=Q(owner_key=api_client.owner_key) if api_client else None,
            progress=progress,
        )
        skipped = (
            f" (left {counted(report.skipped_busy, 'sessions')} with a reply streaming)" if report.skipped_busy else ""
        )
        coze = coze_summary(engine)
        if dry_run:
            self.stdout.write(f"Would delete {summary(engine.counts)}{skipped}{coze}. Dry run: nothing was deleted.")
        else:
            self.stdout.write(f"Deleted {summary(engine.counts)}{skipped}{coze}.")
