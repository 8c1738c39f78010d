"""`python3 manage.py notify_hub TYPE [MESSAGE] [--data JSON] [--user U] [--role R] [--channel C]`:
publish one event from the shell or cron, with the project's WSHUB_URL and WSHUB_API_KEY."""

import json

from django.core.management.base import BaseCommand, CommandError

from websocket_client import WshubError, notify


class Command(BaseCommand):
    help = "Publish one notification to wshub"

    def add_arguments(self, parser) -> None:
        parser.add_argument("type", help="event type, e.g. aviso")
        parser.add_argument("message", nargs="?", default="", help="text shown to users")
        parser.add_argument("--data", default="{}", help='payload as JSON, e.g. \'{"id": 7}\'')
        parser.add_argument("--user", action="append", help="deliver to this user (repeatable)")
        parser.add_argument("--role", action="append", help="deliver to this role (repeatable)")
        parser.add_argument("--channel", action="append", help="deliver to this channel (repeatable)")

    def handle(self, *args, **options) -> None:
        try:
            data = json.loads(options["data"])
        except json.JSONDecodeError as err:
            raise CommandError(f"--data is not JSON: {err}") from err
        try:
            answer = notify(
                options["type"],
                options["message"],
                data,
                user=options["user"],
                role=options["role"],
                channel=options["channel"],
            )
        except WshubError as err:
            raise CommandError(f"wshub refused the event: {err}") from err
        self.stdout.write(json.dumps(answer))
