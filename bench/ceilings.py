"""The ceilings the fan-out is compared with, measured on the same machine in the same
run: Redis PUBLISH (redis-benchmark, and redis-py one command at a time), and a bare
ASGI broadcast app under daphne with the same load generator."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from typing import Any

import psutil

from bench.console import log
from bench.deployment import Bench
from bench.server_env import scrubbed_env
from deploy.harness import free_port, ready, spawn


def redis_benchmark(bench: Bench) -> dict[str, Any]:
    """`redis-benchmark ... PUBLISH` with a message the size of a delta event (nothing
    when redis-benchmark is not installed)."""
    host, port = bench.redis_url.removeprefix("redis://").split("/")[0].split(":")
    out: dict[str, Any] = {}
    exe = shutil.which("redis-benchmark")
    if exe:
        channel = f"{bench.prefix}-ceiling"
        message = "x" * 120  # about the size of one published delta event
        n = str(bench.mode.redis_n)
        res = subprocess.run(
            [exe, "-h", host, "-p", port, "-n", n, "-q", "PUBLISH", channel, message],
            capture_output=True,
            text=True,
            timeout=120,
        )
        m = re.search(r"([\d.]+) requests per second", res.stdout)
        out["redis_benchmark_publish_per_s"] = float(m.group(1)) if m else None
        out["redis_benchmark_output"] = res.stdout.strip().splitlines()[-1:] if res.stdout else []
        out["redis_benchmark_command"] = (
            f"redis-benchmark -h {host} -p {port} -n {bench.mode.redis_n} -q PUBLISH ch <120 bytes>"
        )
    return out


async def redis_py_publish(bench: Bench, n: int) -> float:
    """PUBLISHes per second through redis-py, one connection, one at a time."""
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(bench.redis_url)
    channel = f"{bench.prefix}-ceiling-py"
    message = b"x" * 120
    await r.publish(channel, message)
    t0 = time.perf_counter()
    for _ in range(n):
        await r.publish(channel, message)
    elapsed = time.perf_counter() - t0
    await r.aclose()
    return round(n / elapsed, 1)


async def asgi_ceiling(bench: Bench) -> dict[str, Any]:
    """Frames per second the bare ASGI app (bench/asgi_ceiling.py) under daphne gets to
    the load generator's sockets; the second of two rounds."""
    assert bench.loadgen
    port = free_port()
    app = "bench.asgi_ceiling:application"
    proc = spawn(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), app],
        scrubbed_env(PYTHONUNBUFFERED="1"),
        bench.tmp / "asgi-ceiling.log",
    )
    try:
        ready(proc, f"http://127.0.0.1:{port}/")
        specs = [
            {
                "id": i,
                "conv": i // 10,
                "host": "127.0.0.1",
                "port": port,
                "path": "/ws/",
                "cookie": "",
                "origin": f"http://127.0.0.1:{port}",
            }
            for i in range(bench.mode.asgi_viewers)
        ]
        await bench.loadgen.call("connect", viewers=specs, raw=True, concurrency=100)
        ps = psutil.Process(proc.pid)
        results = []
        for _ in range(2):  # the first round warms up; the second is reported
            c0, t0 = sum(ps.cpu_times()[:2]), time.time()
            res = await bench.loadgen.call(
                "blast", rounds=bench.mode.asgi_rounds, size=12, timeout=120
            )
            res["server_cpu_percent"] = round(
                100 * (sum(ps.cpu_times()[:2]) - c0) / max(time.time() - t0, 1e-9), 1
            )
            results.append(res)
        await bench.loadgen.call("close")
    finally:
        proc.stop()
    best = results[-1]
    log(f"asgi ceiling: {best['frames_per_s']} frames/s ({best})")
    return {**best, "viewers": bench.mode.asgi_viewers, "rounds": bench.mode.asgi_rounds}
