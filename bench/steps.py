"""One load step: connect the viewers, run its rounds of concurrent answers, read the
simulator directly at the same moment as the baseline, and account for CPU, memory,
Redis commands and database writes over it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import psutil

from bench import profile
from bench.accounting import RedisMonitor, pg_counts, pg_delta, redis_pid, wait_for_moderation
from bench.console import log
from bench.deployment import Bench, stream_spec
from bench.modes import CHUNK_MS, DEFAULT_FLUSH_MS
from bench.sampling import Sampler, settle, wait_for_quiet
from bench.step_figures import step_result


async def direct_read(bench: Bench, label: str, words: int, delay: float) -> dict[str, Any]:
    """The same simulator read with the openai client, no server in between."""
    import openai

    await asyncio.sleep(delay)
    client = openai.AsyncOpenAI(base_url=bench.sim_url, api_key="sk-bench", max_retries=0)
    prompt = f"Bench {label} [[sim words={words}]]"
    t0 = time.time()
    first = last = None
    lat = []
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": prompt}],
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            now = time.time()
            first = first or now
            last = now
            sim_ts = (chunk.model_extra or {}).get("sim_ts")
            if sim_ts:
                lat.append((now - sim_ts) * 1000)
    await client.close()
    return {
        "ttft_ms": (first - t0) * 1000,
        "duration_ms": (last - t0) * 1000,
        "chunk_latency_ms": lat,
    }


async def step(
    bench: Bench,
    streams: int,
    viewers: int,
    *,
    flush_ms: float | None = DEFAULT_FLUSH_MS,
    n_servers: int = 1,
    rounds: int = 1,
    words: int | None = None,
    monitor: bool = False,
    label: str = "",
) -> dict[str, Any]:
    """`streams` conversations of `viewers` sockets each, on `n_servers` servers: the
    step's figures (bench.step_figures)."""
    assert bench.loadgen and bench.sim and bench.moderation_worker
    mode = bench.mode
    words = words or mode.words
    bench.step_counter += 1
    name = label or f"{streams}x{viewers}"
    quiet = await wait_for_quiet(bench.quiet_wait_s, bench.quiet_percent)
    log(
        f"step {name}: {streams} streams x {viewers} viewers, flush={flush_ms}, "
        f"servers={n_servers}, rounds={rounds} "
        f"(machine {quiet['machine_cpu_percent']}% busy after {quiet['waited_s']} s)"
    )
    servers = await bench.servers_for(n_servers, flush_ms)
    convs = bench.conversations(streams)
    specs = bench.viewer_specs(convs, viewers, servers)
    askers = {s["conv"]: s["id"] for s in specs if s.get("asker")}
    connected = await bench.loadgen.call("connect", viewers=specs, concurrency=50)
    log(f"  connected {connected['connected']} in {connected['seconds']} s")
    procs = {f"server{i}": psutil.Process(s.process.pid) for i, s in enumerate(servers)}
    procs["simulator"] = psutil.Process(bench.sim.pid)
    worker = psutil.Process(bench.moderation_worker.pid)
    worker_cpu_s = sum(worker.cpu_times()[:2])
    procs["loadgen"] = bench.loadgen.ps
    procs["orchestrator"] = psutil.Process()
    pid = redis_pid(bench.redis_url)
    if pid:
        with contextlib.suppress(psutil.Error):
            procs["redis"] = psutil.Process(pid)
    sampler = Sampler(procs)
    settled = await settle([procs[f"server{i}"] for i in range(len(servers))])
    stats = await bench.loadgen.call("stats")
    log(
        f"  settled in {settled} s; {stats['presence_frames']} presence frames "
        f"reached the viewers while they joined"
    )
    sampler.start()
    profiler = (
        profile.record(procs["server0"].pid, bench.tmp / profile_name(bench, name))
        if bench.profile
        else None
    )
    pg_before = pg_counts(bench.db_url)
    mon = None
    if monitor:
        mon = RedisMonitor.for_url(bench.redis_url, bench.prefix)
        mon.start()
    round_results = []
    direct: list[dict[str, Any]] = []
    for r in range(rounds):
        stagger = mode.stagger_s if streams > 1 else 0.0
        delays = [bench.rng.uniform(0, stagger) for _ in range(streams)]
        round_streams = [
            stream_spec(
                ci, askers[ci], f"{bench.tag} s{bench.step_counter} r{r} c{ci}", words, delays[ci]
            )
            for ci in range(streams)
        ]
        n_direct = min(mode.direct_probes, max(1, streams))
        direct_tasks = [
            asyncio.create_task(
                direct_read(
                    bench,
                    f"{bench.tag} s{bench.step_counter} r{r} direct{k}",
                    words,
                    bench.rng.uniform(0, stagger),
                )
            )
            for k in range(n_direct)
        ]
        await bench.loadgen.call("round", streams=round_streams)
        tokens = len(round_streams[0]["ends"])
        timeout = mode.ttft_ms / 1000 + tokens * CHUNK_MS / 1000 * 4 + 30
        waited = await bench.loadgen.call("wait", timeout=timeout)
        direct.extend(await asyncio.gather(*direct_tasks))
        collected = await bench.loadgen.call("collect", sim_url=bench.sim_url)
        collected["loadgen_cpu_percent"] = waited["loadgen_cpu_percent"]
        collected["done"] = waited["done"]
        round_results.append(collected)
    pause = 1.0 if mode.name == "full" else 0.5
    await asyncio.sleep(pause)  # the final writes and publishes of the last answers
    await asyncio.to_thread(wait_for_moderation, bench.db_url)
    worker_cpu_s = sum(worker.cpu_times()[:2]) - worker_cpu_s
    commands = mon.stop() if mon else None
    profiled = profile.finish(profiler) if profiler else None
    await sampler.stop()
    await asyncio.sleep(pause)  # PostgreSQL publishes its counters
    if mode.pg_stats_wait_s:
        await asyncio.sleep(mode.pg_stats_wait_s)  # ... every pooled backend's too
    pg_after = pg_counts(bench.db_url)
    summary = await bench.loadgen.call("summary")
    await bench.loadgen.call("close")
    return step_result(
        name,
        streams,
        viewers,
        flush_ms,
        n_servers,
        words,
        connected,
        round_results,
        summary,
        direct,
        sampler,
        commands,
        pg_delta(pg_before, pg_after),
        {
            "settle_seconds": settled,
            "redis_monitor_bytes": mon.bytes if mon else None,
            "quiet_wait": quiet,
            "presence_frames_while_joining": stats["presence_frames"],
            "profile": profiled,
            # Its work follows each answer's end, mostly after the round's window.
            "moderation_worker_cpu_ms_per_answer": round(
                worker_cpu_s * 1000 / (streams * len(round_results)), 2
            ),
        },
    )


def profile_name(bench: Bench, name: str) -> str:
    """The file name of a step's py-spy profile."""
    return f"profile-{bench.step_counter}-{name.replace(' ', '_')}.txt"
