from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from sessions_admin.models import ApiClient


def whole_number(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(value)
    return number


def positive_number(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(value)
    return number


class Command(BaseCommand):
    help = (
        "Create an API client and print its secret key as the last line of output. "
        "The key is stored hashed and is never shown again. Limits left out use the server-wide "
        "defaults; staff can change them later in admin."
    )

    def add_arguments(self, parser):
        parser.add_argument("name", help="A name to recognise the client by, e.g. 'mobile-app'.")
        parser.add_argument(
            "--rpm", type=whole_number, help="Requests a minute (0: no limit). Default: CHAT_RATE_LIMIT_PER_MINUTE."
        )
        parser.add_argument(
            "--max-streams",
            type=whole_number,
            help="Replies streaming at once (0: no limit). Default: CHAT_MAX_CONCURRENT_STREAMS.",
        )
        parser.add_argument("--daily-tokens", type=whole_number, help="Token budget per UTC day. Default: none.")
        parser.add_argument("--monthly-tokens", type=whole_number, help="Token budget per month (UTC). Default: none.")
        parser.add_argument(
            "--bots", help="Comma-separated bot ids this client may use, within COZE_ALLOWED_BOT_IDS. Default: all."
        )
        parser.add_argument(
            "--retention-days",
            type=positive_number,
            metavar="N",
            help="Keep this client's messages N days; prune_chat_data deletes older ones. "
            "Default: CHAT_RETENTION_DAYS.",
        )

    def handle(self, *args, name: str, **options):
        name = name.strip()
        if not name:
            raise CommandError("The client needs a non-empty name.")
        if len(name) > 100:
            raise CommandError("The name is limited to 100 characters.")
        bots = [bot.strip() for bot in (options["bots"] or "").split(",") if bot.strip()]
        unknown = [bot for bot in bots if bot not in settings.COZE_ALLOWED_BOT_IDS]
        if unknown:
            raise CommandError(
                f"Not in COZE_ALLOWED_BOT_IDS: {', '.join(unknown)}. A client's bots narrow the server's list."
            )
        client, raw_key = ApiClient.create_with_key(
            name=name,
            rate_limit_per_minute=options["rpm"],
            max_concurrent_streams=options["max_streams"],
            daily_token_budget=options["daily_tokens"],
            monthly_token_budget=options["monthly_tokens"],
            allowed_bot_ids=",".join(bots),
            retention_days=options["retention_days"],
        )
        self.stdout.write(
            f"Created API client {client.name!r} (id {client.pk}). Store this key now; it can't be shown again:"
        )
        self.stdout.write(raw_key)
