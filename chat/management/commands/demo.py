"""Create two demo users and a conversation they share (idempotent)."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from chat import services
from chat.models import Conversation, Role

DEMO_USERS = (("alice", "alice-demo-pass"), ("bob", "bob-demo-pass"))
DEMO_TITLE = "Demo: ask anything"


class Command(BaseCommand):
    help = "Create demo users alice and bob (printed passwords) and a shared conversation."

    def handle(self, *args, **options) -> None:
        users = []
        for username, password in DEMO_USERS:
            user, _ = get_user_model().objects.get_or_create(username=username)
            # Reset every time, so the printed passwords are always the right ones.
            user.set_password(password)
            user.save()
            users.append(user)
        alice, bob = users
        conversation = Conversation.objects.filter(owner=alice, title=DEMO_TITLE).first()
        if conversation is None:
            conversation = services.conversation_create(owner=alice, title=DEMO_TITLE)
        services.member_set(
            conversation=conversation, actor=alice, username=bob.username, role=Role.MEMBER
        )
        self.stdout.write("Demo accounts (sign in at /accounts/login/):")
        for username, password in DEMO_USERS:
            self.stdout.write(f"  {username} / {password}")
        self.stdout.write(
            f"Shared conversation: /c/{conversation.id}/ (alice owns it, bob is a member)"
        )
        self.stdout.write(
            "Sign in as alice in one window and as bob in a private window to watch an "
            "answer stream to both."
        )
