"""Retry moderation calls that failed or never ran (cases left `pending`)."""

import asyncio

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from chat import moderation


class Command(BaseCommand):
    help = (
        "Call moderation for pending cases that are due (failed calls back off, doubling), "
        "and open cases for recent answers that have none."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--now", action="store_true", help="retry every pending case now, ignoring backoff"
        )
        parser.add_argument(
            "--limit", type=int, default=moderation.BATCH, help="most cases to try (default 100)"
        )

    def handle(self, *args, **options) -> None:
        if not settings.MODERATION_ENABLED:
            raise CommandError("MODERATION_ENABLED is off: nothing to do.")
        report = asyncio.run(moderation.retry_pending(force=options["now"], limit=options["limit"]))
        self.stdout.write(
            f"opened {report.backfilled} case(s) for answers without one; "
            f"moderated {report.moderated} ({report.flagged} flagged), "
            f"{report.failed} failed; {report.still_pending} still pending"
        )
        if report.paused:
            self.stdout.write(
                f"stopped after {moderation.FAILURES_BEFORE_PAUSE} failures in a row: "
                "the moderation endpoint looks down; run again later"
            )
