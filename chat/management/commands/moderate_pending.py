"""Retry moderation calls that failed or never ran (cases left `pending`), once, or as
the moderation worker (`--watch`) that MODERATION_WORKER leaves the calls to."""

import asyncio
import contextlib
import signal

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from chat import moderation
from chat.upstream.client import close_client


class Command(BaseCommand):
    help = (
        "Call moderation for pending cases that are due (failed calls back off, doubling), "
        "and open cases for recent answers that have none. With --watch, keep doing it: "
        "the moderation worker of MODERATION_WORKER."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--now", action="store_true", help="retry every pending case now, ignoring backoff"
        )
        parser.add_argument(
            "--limit", type=int, default=moderation.BATCH, help="most cases to try (default 100)"
        )
        parser.add_argument(
            "--watch",
            action="store_true",
            help="run until stopped: a pass every --interval seconds (the moderation worker)",
        )
        parser.add_argument(
            "--interval", type=float, default=1.0, help="seconds between passes (default 1)"
        )
        parser.add_argument(
            "--concurrency", type=int, default=4, help="calls at a time with --watch (default 4)"
        )
        parser.add_argument(
            "--batch", type=int, default=16, help="texts per call with --watch (default 16)"
        )

    def handle(self, *args, **options) -> None:
        if not settings.MODERATION_ENABLED:
            raise CommandError("MODERATION_ENABLED is off: nothing to do.")
        if options["watch"]:
            if options["interval"] <= 0 or min(options["concurrency"], options["batch"]) < 1:
                raise CommandError(
                    "--interval must be positive, --concurrency and --batch at least 1."
                )
            self.stdout.write(
                f"moderation worker: a pass every {options['interval']:g} s, "
                f"{options['batch']} text(s) per call, {options['concurrency']} call(s) at "
                "a time; Ctrl-C stops"
            )
            asyncio.run(
                _work_until_stopped(options["interval"], options["concurrency"], options["batch"])
            )
            self.stdout.write("moderation worker stopped")
            return
        report = asyncio.run(_retry_once(force=options["now"], limit=options["limit"]))
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


async def _work_until_stopped(interval_s: float, concurrency: int, batch: int) -> None:
    # SIGTERM (docker stop) as Ctrl-C: a call in flight is abandoned, its case stays
    # leased until the lease runs out and is called again then.
    work = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, work.cancel)
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await moderation.watch(interval_s=interval_s, concurrency=concurrency, batch=batch)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        # Its HTTP session, or aiohttp logs an error for it as the process exits.
        await close_client()


async def _retry_once(*, force: bool, limit: int) -> moderation.RetryReport:
    try:
        return await moderation.retry_pending(force=force, limit=limit)
    finally:
        await close_client()
