"""CPU and memory of the benchmark's processes and of the machine: sampled during a
step, and waited on before one (a quiet machine, idle servers)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from typing import Any

import psutil


class Sampler:
    """Samples CPU time and RSS of named processes (and the whole machine) every 0.2 s."""

    def __init__(self, procs: dict[str, psutil.Process]) -> None:
        self.procs = procs
        self.samples: list[tuple[float, dict[str, tuple[float, float]], float]] = []
        self._task: asyncio.Task[None] | None = None

    def _sample(self) -> None:
        now = time.time()
        values = {}
        for name, p in self.procs.items():
            try:
                t = p.cpu_times()
                values[name] = (t.user + t.system, p.memory_info().rss / 2**20)
            except psutil.Error:
                values[name] = (float("nan"), float("nan"))
        sys_t = psutil.cpu_times()
        busy = (
            sys_t.user
            + sys_t.system
            + sys_t.nice
            + getattr(sys_t, "irq", 0)
            + getattr(sys_t, "softirq", 0)
        )
        self.samples.append((now, values, busy))

    async def _run(self) -> None:
        while True:
            self._sample()
            await asyncio.sleep(0.2)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._sample()

    def _at(self, t: float, name: str | None) -> float:
        """Cumulative CPU seconds of `name` (None: the machine) at time t, interpolated."""
        s = self.samples
        pick = (lambda x: x[2]) if name is None else (lambda x: x[1][name][0])
        if t <= s[0][0]:
            return pick(s[0])
        for a, b in itertools.pairwise(s):
            if a[0] <= t <= b[0]:
                f = (t - a[0]) / max(b[0] - a[0], 1e-9)
                return pick(a) + f * (pick(b) - pick(a))
        return pick(s[-1])

    def cpu_percent(self, name: str | None, t0: float, t1: float) -> float:
        """CPU of `name` (None: the machine) between t0 and t1, in percent of one core."""
        if len(self.samples) < 2 or t1 <= t0:
            return float("nan")
        return round(100 * (self._at(t1, name) - self._at(t0, name)) / (t1 - t0), 1)

    def rss_max(self, name: str) -> float:
        return round(max(v[1][name][1] for v in self.samples), 1)

    def rss_last(self, name: str) -> float:
        return round(self.samples[-1][1][name][1], 1)


async def wait_for_quiet(limit_s: float, quiet_percent: float) -> dict[str, Any]:
    """On a shared machine, wait (up to `limit_s`) until the rest of the machine uses
    under `quiet_percent` of one core, so steps do not start in someone else's burst.
    Returns what was waited and found, kept with the step."""
    t0 = time.monotonic()
    busy = 0.0
    while True:
        busy = await asyncio.to_thread(psutil.cpu_percent, 1.0)
        busy *= os.cpu_count() or 1
        if busy < quiet_percent or time.monotonic() - t0 > limit_s:
            break
    return {"waited_s": round(time.monotonic() - t0, 1), "machine_cpu_percent": round(busy, 1)}


async def settle(procs: list[psutil.Process], quiet: float = 5.0, limit: float = 60) -> float:
    """Wait until the servers are idle (under `quiet`% CPU over 0.5 s): the frames of the
    joins are delivered before anything is measured. Returns the seconds waited."""
    t0 = time.monotonic()
    await asyncio.sleep(0.5)
    while time.monotonic() - t0 < limit:
        c0 = sum(sum(p.cpu_times()[:2]) for p in procs)
        await asyncio.sleep(0.5)
        if (sum(sum(p.cpu_times()[:2]) for p in procs) - c0) / 0.5 * 100 < quiet:
            break
    return round(time.monotonic() - t0, 1)
