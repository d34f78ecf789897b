"""Recompute the usage dashboard's daily rollup (DailyUsage) from the replies.

The rollup is kept up to date as replies end; this is for data that predates it, for replies
changed outside the chat service (e.g. marked interrupted after a crash), and for making the
rollup forget sessions deleted by `clear_chat_sessions` (it keeps their history otherwise). One
short transaction per day, safe while the server runs: see `sessions_admin.rollup.rebuild_days`.
"""

import time

from django.core.management.base import BaseCommand, CommandError

from sessions_admin.rollup import Progress, rebuild


class Command(BaseCommand):
    help = (
        "Recompute the usage dashboard's daily rollup from the replies: the last N days with --days, otherwise "
        "every day since the first reply (rows of older days are removed). Deleted sessions' usage is forgotten "
        "for the days rebuilt."
    )

    def add_arguments(self, parser):
        parser.add_argument("--days", type=int, metavar="N", help="Only the last N days, today included (N >= 1).")
        parser.add_argument("--dry-run", action="store_true", help="Report what would be written; write nothing.")

    def handle(self, *args, days=None, dry_run=False, **options):
        if days is not None and days < 1:
            raise CommandError("--days must be at least 1.")
        started = time.monotonic()
        progress = Progress(self.stdout.write) if options["verbosity"] else None
        result = rebuild(days=days, dry_run=dry_run, progress=progress)
        verb = "Would rebuild" if dry_run else "Rebuilt"
        days_text = f"{result.days:,} day{'' if result.days == 1 else 's'}"
        line = (
            f"{verb} {days_text}: {result.rows:,} rows counting {result.replies:,} replies "
            f"(before: {result.replies_before:,})"
        )
        if result.rows_removed_outside:
            line += f"; {'would remove' if dry_run else 'removed'} {result.rows_removed_outside:,} rows of older days"
        self.stdout.write(f"{line}; {time.monotonic() - started:.1f} s.")
