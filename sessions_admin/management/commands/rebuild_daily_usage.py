"""Recompute the usage dashboard's daily rollup (DailyUsage) from the replies.

The rollup is kept up to date as replies end; this is for data that predates it, and for replies
changed outside the chat service (e.g. marked interrupted after a crash). It never erases what it
cannot recompute: days some of whose replies were deleted keep their rows (spend history and
budgets rely on them). One short transaction per day, safe while the server runs: see
`sessions_admin.rollup.rebuild_days`.
"""

import time

from django.core.management.base import BaseCommand, CommandError

from sessions_admin.rollup import Progress, rebuild


class Command(BaseCommand):
    help = (
        "Recompute the usage dashboard's daily rollup from the replies: the last N days with --days, otherwise "
        "every day since the first reply. Days and rows whose replies were partly deleted are kept as they are."
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
        kept = []
        if result.days_kept:
            kept.append(f"{result.days_kept:,} day{'' if result.days_kept == 1 else 's'} with deleted replies")
        if result.rows_kept:
            kept.append(f"{result.rows_kept:,} row{'' if result.rows_kept == 1 else 's'} counting deleted replies")
        if kept:
            line += f"; kept as {'they are' if not dry_run else 'they would be'}: {', '.join(kept)}"
        self.stdout.write(f"{line}; {time.monotonic() - started:.1f} s.")
