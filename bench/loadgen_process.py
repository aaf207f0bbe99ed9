"""The load generator as the orchestrator drives it: `python -m bench.loadgen` as a
child process, one JSON command per line on its stdin, one JSON reply per line back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import psutil

from deploy.harness import ROOT


class LoadGenProc:
    """The running load generator; `ps` samples its CPU and memory."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.ps = psutil.Process(proc.pid)

    @classmethod
    async def start(cls, log_path: Path) -> LoadGenProc:
        """Start it, its stderr to `log_path`."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.loadgen",
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log_path.open("w"),
            limit=1 << 27,
        )
        return cls(proc)

    async def call(self, cmd: str, **kwargs: Any) -> dict[str, Any]:
        """Send one command and return its reply; raises RuntimeError if it failed or the
        load generator exited."""
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write((json.dumps({"cmd": cmd, **kwargs}) + "\n").encode())
        await self.proc.stdin.drain()
        line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"load generator exited during {cmd}")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(f"load generator failed {cmd}: {reply.get('trace') or reply}")
        return reply

    async def stop(self) -> None:
        """Ask it to quit; kill it if it does not."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.call("quit"), 10)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.proc.wait(), 5)
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
