import asyncio

from django.core.management.base import BaseCommand

from sessions_admin import feedback, feedback_outbox


class Command(BaseCommand):
    help = (
        "Send the ratings waiting in the outbox to Coze's feedback API now: one pass over the rows that are due "
        "(the workers' senders do the same in the background; running this beside them is safe, each row goes "
        "to one sender). Failures are retried later with backoff, as the workers retry them."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--retry-given-up",
            action="store_true",
            help="First make the rows that were given up pending again (after fixing what made Coze refuse them).",
        )

    def handle(self, *args, retry_given_up=False, **options):
        if retry_given_up:
            revived = feedback.forward_retry_given_up()
            self.stdout.write(f"Made {revived:,} given-up ratings pending again.")
        outcome = asyncio.run(feedback_outbox.aforward_all())
        left = feedback.forward_counts()
        self.stdout.write(
            f"Sent {outcome.sent:,} ratings to Coze, {outcome.failed:,} failed (retried later), "
            f"{outcome.given_up:,} refused for good; now {left['pending']:,} pending, "
            f"{left['given_up']:,} given up."
        )
