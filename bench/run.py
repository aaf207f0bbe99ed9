"""The benchmark: one command, real processes, figures next to their baselines.

    .venv/bin/python -m bench.run            # full (make bench), several minutes
    .venv/bin/python -m bench.run --quick    # about a minute (make bench-quick)
    .venv/bin/python -m bench.run --smoke    # seconds: the CI guard checks these numbers

Processes (all on this machine, against the local Redis and PostgreSQL):
- the simulator, `manage.py simulate_openai` with a `sim_ts` recorder (bench/simulator.py),
  at about 60 tokens/s per stream, one token per chunk, first token after `--ttft-ms`;
- daphne serving the project (one, or two for scale-out), started by deploy.harness as
  every server process is;
- the load generator (bench/loadgen.py): every viewer a real websocket;
- this orchestrator: it creates the database, signs users in over HTTP, drives rounds,
  reads the simulator directly with the openai client as the baseline (concurrently with
  the viewers, same simulator, same moment), samples CPU and memory, and writes
  `bench/results/latest.json` and a dated copy.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: `bench` and `deploy` beside this folder

from bench import ceilings, idle, scaleout, steps  # noqa: E402
from bench.console import log  # noqa: E402
from bench.deployment import Bench  # noqa: E402
from bench.machine import machine_info, server_default_flush_ms  # noqa: E402
from bench.modes import MODES, P99_LIMIT_MS, TOKENS_PER_S, Mode, parse_steps, restrict  # noqa: E402
from bench.output import RESULTS, write_results  # noqa: E402
from bench.targets import summarize  # noqa: E402


async def run(
    mode: Mode,
    out_dir: Path,
    write_plots: bool = True,
    profile: bool = False,
) -> dict[str, Any]:
    """The whole run of `mode`, in this order: ceilings, the sweep (until a step fails),
    the MONITOR steps, coalescing off, scale-out, idle cost.
    Writes and returns the results."""
    started = time.time()
    tmp = Path(os.environ.get("BENCH_TMP", "/tmp")) / f"livechat-bench-{uuid.uuid4().hex[:6]}"
    tmp.mkdir(parents=True, exist_ok=True)
    bench = Bench(mode=mode, tmp=tmp, profile=profile, quiet_wait_s=mode.quiet_wait_s)
    results: dict[str, Any] = {
        "mode": mode.name,
        "command": " ".join(
            ["python", "-m", "bench.run"] + ([f"--{mode.name}"] if mode.name != "full" else [])
        ),
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "tokens_per_s": TOKENS_PER_S,
        "simulator_ttft_ms": mode.ttft_ms,
        "words_per_answer": mode.words,
        "p99_limit_ms": P99_LIMIT_MS,
        "logs": str(tmp),
    }
    flush_default = server_default_flush_ms()
    results["default_flush_ms"] = flush_default
    log(f"mode {mode.name}; default STREAM_FLUSH_MS={flush_default}; logs in {tmp}")
    try:
        await bench.setup()
        # Ceilings first, on a quiet machine.
        if mode.redis_n:
            results["ceilings"] = ceilings.redis_benchmark(bench)
            results["ceilings"][
                "redis_py_sequential_publish_per_s"
            ] = await ceilings.redis_py_publish(bench, mode.redis_n // 5)
            log("redis ceilings:", results["ceilings"])
        if mode.asgi_viewers:
            results.setdefault("ceilings", {})["asgi"] = await ceilings.asgi_ceiling(bench)

        # The main sweep: default window, one server, until a step fails.
        sweep = []
        for streams, viewers in mode.sweep:
            step = await steps.step(
                bench,
                streams,
                viewers,
                rounds=mode.rounds.get((streams, viewers), 1),
                monitor=(streams, viewers) == (10, 10) or mode.name == "smoke",
            )
            sweep.append(step)
            if not step["holds"]:
                log(f"  step {streams}x{viewers} does not hold: the sweep stops here")
                break
        results["steps"] = sweep
        results["steps_skipped"] = [f"{s}x{v}" for s, v in mode.sweep[len(sweep) :]]

        # MONITOR counting the layer's Redis commands, on the sweep's server
        # configuration (quick mode reuses its servers).
        results["monitored_steps"] = [
            await steps.step(bench, s, v, monitor=True, label=f"{s}x{v} MONITOR")
            for s, v in mode.monitor_steps
        ]

        # Coalescing off.
        uncoalesced = []
        for streams, viewers in mode.uncoalesced:
            step = await steps.step(
                bench,
                streams,
                viewers,
                flush_ms=0,
                rounds=mode.rounds.get((streams, viewers), 1),
                label=f"{streams}x{viewers} W=0",
            )
            uncoalesced.append(step)
            if not step["holds"]:
                break
        results["uncoalesced_steps"] = uncoalesced

        # Scale-out: the heaviest step that holds with two servers (viewers split).
        if mode.scale_out:
            results["scale_out"] = await scaleout.scale_out(bench, mode, sweep)

        if mode.idle_viewers:
            results["idle"] = await idle.idle(bench, mode.idle_viewers)
    finally:
        await bench.teardown()
    results["seconds"] = round(time.time() - started, 1)
    summarize(results)
    write_results(results, mode.name, out_dir, plots=write_plots)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="about a minute")
    group.add_argument("--smoke", action="store_true", help="seconds (CI guard)")
    parser.add_argument("--out", default=str(RESULTS), help="results directory")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument(
        "--steps", help="the sweep's steps instead of the mode's, e.g. 10x10,50x10 (development)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the (first) server during each step"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        help="seconds to wait at most for a quiet machine before each step",
    )
    parser.add_argument("--words", type=int, help="words per answer instead of the mode's")
    parser.add_argument(
        "--only",
        help="run only these parts: ceilings,sweep,uncoalesced,monitor,scaleout,idle (development)",
    )
    args = parser.parse_args()
    mode = MODES["quick" if args.quick else "smoke" if args.smoke else "full"]
    if args.steps:
        mode.sweep = parse_steps(args.steps)
    if args.words:
        mode.words = args.words
    if args.quiet_wait is not None:
        mode.quiet_wait_s = args.quiet_wait
    if args.only:
        restrict(mode, set(args.only.split(",")))
    asyncio.run(run(mode, Path(args.out), write_plots=not args.no_plots, profile=args.profile))


if __name__ == "__main__":
    main()
