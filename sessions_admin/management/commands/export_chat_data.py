"""Export conversations as JSON Lines (one conversation a line; schema in docs/admin.md, "Export").

Streamed at constant memory (`sessions_admin.export`), with a progress bar on stderr and one
summary line at the end.
"""

import time
from datetime import date, datetime
from datetime import time as day_time

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from sessions_admin.export import ExportStats, iter_export
from sessions_admin.models import ApiClient, Conversation
from sessions_admin.progress import ProgressBar


def since_date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"--since takes a date as YYYY-MM-DD, got {value!r}.") from None


class Command(BaseCommand):
    help = (
        "Write conversations as JSON Lines, one conversation a line with its messages, ratings, replies and usage: "
        "all of them, or those active since a date, or of one API client."
    )

    def add_arguments(self, parser):
        parser.add_argument("--since", metavar="DATE", help="Conversations active on or after this day (YYYY-MM-DD).")
        parser.add_argument("--client", metavar="NAME", help="Only the conversations of this API client.")
        parser.add_argument("--output", metavar="FILE", help="Write to FILE instead of standard output.")

    def handle(self, *args, since=None, client=None, output=None, **options):
        conversations = Conversation.objects.all()
        if since is not None:
            start = timezone.make_aware(
                datetime.combine(since_date(since), day_time.min), timezone.get_default_timezone()
            )
            conversations = conversations.filter(last_activity__gte=start)
        if client is not None:
            matches = list(ApiClient.objects.filter(name=client))
            if len(matches) != 1:
                raise CommandError(
                    f"No API client is named {client!r}."
                    if not matches
                    else f"Several API clients are named {client!r}."
                )
            conversations = conversations.filter(session__owner_key=matches[0].owner_key)
        verbosity = options["verbosity"]
        bar = ProgressBar(
            self.stderr._out if verbosity else None,
            label="export",
            total=conversations.count() if verbosity else None,
            unit="conversations",
        )
        stats = ExportStats()
        started = time.monotonic()
        target = open(output, "w", encoding="utf-8") if output and output != "-" else None
        write = target.write if target else self.stdout._out.write
        try:
            for chunk in iter_export(conversations, stats=stats, progress=bar.update):
                write(chunk)
        finally:
            if target:
                target.close()
        bar.close()
        where = output if target else "standard output"
        line = (
            f"Exported {stats.conversations:,} conversations ({stats.messages:,} messages, {stats.ratings:,} ratings, "
            f"{stats.replies:,} replies) to {where} in {time.monotonic() - started:.1f} s."
        )
        # With the lines on standard output, the summary goes to stderr, so the output stays JSON Lines.
        (self.stderr if not target else self.stdout).write(line)
        if not target:
            self.stdout.flush()
