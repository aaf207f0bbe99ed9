"""Create two demo users and a conversation they share (idempotent).

The demo passwords are published (README), so an existing account's password is reset
to its demo password only in debug or with `--reset-passwords`: with debug off (a local
cluster, or a server someone runs `demo` on) an account that already exists keeps its
password. `--if-debug` (what `make run` passes) does nothing at all with debug off.
"""

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser

from chat.domain import services
from chat.models import Conversation, Role

DEMO_USERS = (("alice", "alice-demo-pass"), ("bob", "bob-demo-pass"))
DEMO_TITLE = "Demo: ask anything"

SKIPPED_NOT_DEBUG = (
    "Debug is off: no demo accounts created or changed (run `manage.py demo` to create them)."
)
CREATED = "  {username} / {password} (created)"
RESET = "  {username} / {password} (password reset)"
KEPT = "  {username}: exists, password unchanged (--reset-passwords sets the demo one)"


class Command(BaseCommand):
    help = (
        "Create demo users alice and bob (printed passwords) and a shared conversation. "
        "Existing accounts get the demo password back only in debug or with "
        "--reset-passwords."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--reset-passwords",
            action="store_true",
            help="Set the demo password on demo accounts that already exist, even with debug off.",
        )
        parser.add_argument(
            "--if-debug",
            action="store_true",
            help="Do nothing unless debug is on (`make run`).",
        )

    def handle(self, *args, **options) -> None:
        if options["if_debug"] and not settings.DEBUG:
            self.stdout.write(SKIPPED_NOT_DEBUG)
            return
        reset = settings.DEBUG or options["reset_passwords"]
        self.stdout.write("Demo accounts (sign in at /accounts/login/):")
        users = []
        for username, password in DEMO_USERS:
            user, created = get_user_model().objects.get_or_create(username=username)
            if created or reset:
                user.set_password(password)
                user.save()
            line = CREATED if created else RESET if reset else KEPT
            self.stdout.write(line.format(username=username, password=password))
            users.append(user)
        alice, bob = users
        conversation = Conversation.objects.filter(owner=alice, title=DEMO_TITLE).first()
        if conversation is None:
            conversation = services.conversation_create(owner=alice, title=DEMO_TITLE)
        services.member_set(
            conversation=conversation, actor=alice, username=bob.username, role=Role.MEMBER
        )
        self.stdout.write(
            f"Shared conversation: /c/{conversation.id}/ (alice owns it, bob is a member)"
        )
        self.stdout.write(
            "Sign in as alice in one window and as bob in a private window to watch an "
            "answer stream to both."
        )
