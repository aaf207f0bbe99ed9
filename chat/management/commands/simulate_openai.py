"""Run the OpenAI-compatible simulator over HTTP until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from chat.simulator import SimSettings, serve
from chat.simulator.limits import MAX_DELAY_MS


class Command(BaseCommand):
    help = "Serve the deterministic OpenAI-compatible simulator (see chat/simulator/script.py)."
    # The simulator touches neither models nor the database: start fast.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        defaults = SimSettings()
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8100, help="0 picks a free port")
        limit = f"in ms (at most {MAX_DELAY_MS:,.0f})"
        parser.add_argument(
            "--chunk-ms",
            type=float,
            default=defaults.chunk_ms,
            help=f"delay between tokens, {limit}",
        )
        parser.add_argument(
            "--ttft-ms", type=float, default=defaults.ttft_ms, help=f"delay to first token, {limit}"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        settings = SimSettings(chunk_ms=options["chunk_ms"], ttft_ms=options["ttft_ms"])
        asyncio.run(self._run(options["host"], options["port"], settings))

    async def _run(self, host: str, port: int, settings: SimSettings) -> None:
        """Serve until a stop signal arrives, then close every connection."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        server = await serve(host, port, settings)
        self.stdout.write(f"simulator listening on http://{host}:{server.port}/v1")
        self.stdout.flush()
        try:
            await stop.wait()
        finally:
            await server.close()
