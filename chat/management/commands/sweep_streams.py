"""Store `streaming` messages whose runner died as `interrupted`."""

import asyncio

from django.core.management.base import BaseCommand

from chat.generation import sweeper


class Command(BaseCommand):
    help = "Mark streaming messages with a stale heartbeat as interrupted (and tell viewers)."

    def handle(self, *args, **options) -> None:
        count = asyncio.run(sweeper.sweep())
        self.stdout.write(f"interrupted {count} stale streaming message(s)")
