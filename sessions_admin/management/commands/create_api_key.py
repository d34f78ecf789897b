from django.core.management.base import BaseCommand, CommandError

from sessions_admin.models import ApiClient


class Command(BaseCommand):
    help = (
        "Create an API client and print its secret key as the last line of output. "
        "The key is stored hashed and is never shown again."
    )

    def add_arguments(self, parser):
        parser.add_argument("name", help="A name to recognise the client by, e.g. 'mobile-app'.")

    def handle(self, *args, name: str, **options):
        name = name.strip()
        if not name:
            raise CommandError("The client needs a non-empty name.")
        if len(name) > 100:
            raise CommandError("The name is limited to 100 characters.")
        client, raw_key = ApiClient.create_with_key(name=name)
        self.stdout.write(
            f"Created API client {client.name!r} (id {client.pk}). Store this key now; it can't be shown again:"
        )
        self.stdout.write(raw_key)
