"""The figures of one step, from the load generator's rounds and summary, the direct
reads, the CPU and memory samples and the Redis and PostgreSQL accounting: the keys of
a step in the results, and whether it holds."""

from __future__ import annotations

import statistics
from typing import Any

from bench.accounting import db_writes_per_message
from bench.console import log
from bench.modes import P99_LIMIT_MS
from bench.sampling import Sampler


def pct(values: list[float]) -> dict[str, float | None]:
    """p50, p90, p99 and max of `values`, rounded (None for each when empty)."""
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    import numpy as np

    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {
        "p50": round(float(p50), 2),
        "p90": round(float(p90), 2),
        "p99": round(float(p99), 2),
        "max": round(float(max(values)), 2),
    }


def step_result(
    name: str,
    streams: int,
    viewers: int,
    flush_ms: float | None,
    n_servers: int,
    words: int,
    connected: dict[str, Any],
    rounds: list[dict[str, Any]],
    summary: dict[str, Any],
    direct: list[dict[str, Any]],
    sampler: Sampler,
    commands: dict[str, int] | None,
    pg: dict[str, int],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """A step's figures (its key set is the results format), logged in one line. It holds
    when p99 is within P99_LIMIT_MS and nothing was lost, duplicated, out of order,
    corrupt, left incomplete or refused a connection."""
    app_streams = [s for r in rounds for s in r["streams"] if "ttft_ms" in s]
    direct_ttft = [d["ttft_ms"] for d in direct]
    direct_dur = [d["duration_ms"] for d in direct]
    direct_chunk = [x for d in direct for x in d["chunk_latency_ms"]]
    ttft_base = statistics.median(direct_ttft) if direct_ttft else float("nan")
    overhead = [s["ttft_ms"] - ttft_base for s in app_streams]
    app_dur = [s["duration_ms"] for s in app_streams]
    dur_ratio = (
        statistics.median(app_dur) / statistics.median(direct_dur)
        if app_dur and direct_dur
        else None
    )
    windows = [r["window"] for r in rounds if r["window"][1] > r["window"][0]]
    server_names = [f"server{i}" for i in range(n_servers)]
    cpu = []
    for w0, w1 in windows:
        cpu.append(
            {
                "server": sum(sampler.cpu_percent(n, w0, w1) for n in server_names),
                "simulator": sampler.cpu_percent("simulator", w0, w1),
                "loadgen": sampler.cpu_percent("loadgen", w0, w1),
                "redis": sampler.cpu_percent("redis", w0, w1) if "redis" in sampler.procs else None,
                "machine": sampler.cpu_percent(None, w0, w1),
                "orchestrator": sampler.cpu_percent("orchestrator", w0, w1),
            }
        )

    def mean(key: str) -> float | None:
        vals = [c[key] for c in cpu if c[key] is not None]
        return round(sum(vals) / len(vals), 1) if vals else None

    deliveries = [r["deliveries_per_s"] for r in rounds]
    flushes = sum(r["flushes"] for r in rounds)
    n_msgs = len(app_streams)
    lost = summary["lost"]
    result: dict[str, Any] = {
        "name": name,
        "streams": streams,
        "viewers": viewers,
        "servers": n_servers,
        "flush_ms": flush_ms if flush_ms is not None else "default",
        "words": words,
        "rounds": len(rounds),
        "added_latency_ms": summary["latency_ms"],
        "latency_samples": summary["latency_samples"],
        "latency_hist": summary["latency_hist"],
        "latency_by_second": summary["latency_by_second"],
        "first_delta_latency_ms": summary["first_delta_latency_ms"],
        "direct_chunk_latency_ms": pct(direct_chunk),
        "deliveries_per_s": round(sum(deliveries) / len(deliveries), 1) if deliveries else 0,
        "server_cpu_percent": mean("server"),
        "server_cpu_us_per_delivery": (
            round(mean("server") * 10_000 / sum(deliveries) * len(deliveries), 1)
            if mean("server") and sum(deliveries)
            else None
        ),
        "server_rss_mib": round(sum(sampler.rss_max(n) for n in server_names), 1),
        "simulator_cpu_percent": mean("simulator"),
        "loadgen_cpu_percent": mean("loadgen"),
        "redis_cpu_percent": mean("redis"),
        "machine_cpu_percent": mean("machine"),
        # Everything on the machine that is not a process of this benchmark (other
        # people's test suites; PostgreSQL backends are counted here too).
        "others_cpu_percent": round(
            (mean("machine") or 0)
            - sum(
                mean(k) or 0 for k in ("server", "simulator", "loadgen", "redis", "orchestrator")
            ),
            1,
        ),
        "loadgen_loop_lag_ms": summary["loadgen_loop_lag_ms"],
        "lost": lost,
        "duplicated": summary["duplicated"],
        "out_of_order": summary["out_of_order"],
        "corrupt_texts": summary["corrupt_texts"],
        "incomplete_viewers": summary["incomplete_viewers"],
        "resyncs": summary["resyncs"],
        "connect_failures": connected["failed"],
        "connect_seconds": connected["seconds"],
        **extra,
        "delta_frames": summary["delta_frames"],
        "flushes": flushes,
        "bytes_per_delta_frame": summary["bytes_per_delta_frame"],
        "overhead_bytes_per_delta_frame": summary["overhead_bytes_per_delta_frame"],
        "max_overhead_bytes": summary["max_overhead_bytes"],
        "compact_delta_frames": summary["compact_delta_frames"],
        "compact_bytes_per_delta_frame": summary["compact_bytes_per_delta_frame"],
        "compact_overhead_bytes_per_delta_frame": summary["compact_overhead_bytes_per_delta_frame"],
        "compact_max_overhead_bytes": summary["compact_max_overhead_bytes"],
        "ttft_ms": pct([s["ttft_ms"] for s in app_streams]),
        "direct_ttft_ms": pct(direct_ttft),
        "ttft_overhead_ms": pct(overhead),
        "server_side_ttft_overhead_ms": pct(
            [s["upstream_first_emit_ms"] - ttft_base for s in app_streams]
        ),
        "placeholder_ms": pct([s["placeholder_ms"] for s in app_streams]),
        "duration_ms": pct(app_dur),
        "direct_duration_ms": pct(direct_dur),
        "duration_ratio_vs_direct": round(dur_ratio, 4) if dur_ratio else None,
        "pg_writes": pg,
        "db_writes_per_message": db_writes_per_message(pg, n_msgs),
    }
    if commands is not None:
        total = sum(commands.values())
        result["redis_commands"] = commands
        result["redis_commands_per_flush"] = round(total / flushes, 3) if flushes else None
        if result.get("redis_monitor_bytes") and flushes:
            # MONITOR's text of our commands (arguments quoted): a proxy for bytes.
            result["redis_monitor_bytes_per_flush"] = round(
                result["redis_monitor_bytes"] / flushes, 1
            )
    p99 = result["added_latency_ms"]["p99"]
    result["holds"] = bool(
        p99 is not None
        and p99 <= P99_LIMIT_MS
        and lost == 0
        and result["duplicated"] == 0
        and result["out_of_order"] == 0
        and result["corrupt_texts"] == 0
        and result["incomplete_viewers"] == 0
        and result["connect_failures"] == 0
    )
    log(
        f"  latency p50={result['added_latency_ms']['p50']} p99={p99} "
        f"max={result['added_latency_ms']['max']} ms, "
        f"{result['deliveries_per_s']} deliveries/s, "
        f"server cpu {result['server_cpu_percent']}%, rss {result['server_rss_mib']} MiB, "
        f"lost {lost} dup {result['duplicated']} ooo {result['out_of_order']}, "
        f"ttft overhead p50 {result['ttft_overhead_ms']['p50']} ms, "
        f"duration x{result['duration_ratio_vs_direct']}, "
        f"loadgen {result['loadgen_cpu_percent']}% machine {result['machine_cpu_percent']}% "
        f"-> {'holds' if result['holds'] else 'FAILS'}"
    )
    return result
