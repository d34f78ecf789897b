from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError

from chat.turn.recovery import BATCH, fail_expired_pauses, mark_interrupted_replies, stuck_replies


class Command(BaseCommand):
    help = (
        "Mark replies left 'in progress' by a crashed worker as interrupted (keeping the answer so far when "
        "its Redis replay buffer holds it), fail replies whose wait for local tool outputs has passed, and "
        "release expired session locks. Replies still streaming in a live worker (their session's lease is "
        "renewed) are never touched, so this is safe to run at any time; every server does the same at "
        "startup and every few seconds while it runs."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than-minutes",
            type=float,
            metavar="M",
            help="Only replies started at least M minutes ago (in addition to the lock check).",
        )
        parser.add_argument("--dry-run", action="store_true", help="Report how many would be marked; change nothing.")

    def handle(self, *args, older_than_minutes=None, dry_run=False, **options):
        if older_than_minutes is not None and older_than_minutes < 0:
            raise CommandError("--older-than-minutes can't be negative.")
        older_than = timedelta(minutes=older_than_minutes) if older_than_minutes is not None else None
        if dry_run:
            count = stuck_replies(older_than=older_than).count()
            self.stdout.write(f"Would mark {count:,} replies as interrupted. Dry run: nothing was changed.")
            return
        count = 0
        while True:  # in rounds of recovery.BATCH
            ended = mark_interrupted_replies(older_than=older_than)
            count += ended
            if ended < BATCH:
                break
        expired = fail_expired_pauses()
        self.stdout.write(f"Marked {count:,} replies as interrupted; released expired session locks.")
        if expired:
            self.stdout.write(f"Failed {expired:,} replies whose wait for local tool outputs had passed.")
