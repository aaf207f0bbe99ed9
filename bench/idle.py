"""What idle viewers cost one server: memory per open socket, and CPU while nothing
streams."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psutil

from bench.console import log
from bench.deployment import Bench
from bench.modes import DEFAULT_FLUSH_MS


async def idle(bench: Bench, n: int) -> dict[str, Any]:
    """`n` viewers (10 per conversation) open on a fresh server: RSS before, with them
    and after they close, and the server's CPU while they sit idle."""
    assert bench.loadgen
    log(f"idle: {n} viewers")
    bench.stop_servers()
    servers = await bench.servers_for(1, DEFAULT_FLUSH_MS)
    ps = psutil.Process(servers[0].process.pid)
    # Warm every code path a connect takes before the baseline.
    convs = bench.conversations(max(n // 10, 1) + 1)
    warm = bench.viewer_specs(convs[-1:], 10, servers)
    await bench.loadgen.call("connect", viewers=warm)
    await bench.loadgen.call("close")
    short = bench.mode.name != "full"
    await asyncio.sleep(1 if short else 2)
    rss0 = ps.memory_info().rss
    specs = bench.viewer_specs(convs[:-1], 10, servers)[:n]
    connected = await bench.loadgen.call("connect", viewers=specs, concurrency=50)
    await asyncio.sleep(2 if short else 5)
    rss1 = ps.memory_info().rss
    c0, t0 = sum(ps.cpu_times()[:2]), time.time()
    await asyncio.sleep(4 if short else 10)
    cpu = 100 * (sum(ps.cpu_times()[:2]) - c0) / (time.time() - t0)
    stats = await bench.loadgen.call("stats")
    await bench.loadgen.call("close")
    await asyncio.sleep(1 if short else 3)
    rss2 = ps.memory_info().rss
    bench.stop_servers()
    n_ok = connected["connected"]
    result = {
        "viewers": n_ok,
        "connect_seconds": connected["seconds"],
        "connect_failures": connected["failed"],
        "connects_per_s": round(n_ok / connected["seconds"], 1) if connected["seconds"] else None,
        "rss_before_mib": round(rss0 / 2**20, 1),
        "rss_with_viewers_mib": round(rss1 / 2**20, 1),
        "rss_after_close_mib": round(rss2 / 2**20, 1),
        "idle_kib_per_viewer": round((rss1 - rss0) / 1024 / max(n_ok, 1), 1),
        "idle_cpu_percent": round(cpu, 2),
        "idle_cpu_percent_per_1000_viewers": round(cpu * 1000 / max(n_ok, 1), 2),
        "still_open": stats["open"],
    }
    log(f"  idle: {result}")
    return result
