"""Two or more commits, the same load steps, one machine, one run: before/after figures
that share the machine's state (this machine is shared and its speed drifts by the hour).

    .venv/bin/python -m bench.compare aa1bd7e HEAD --steps 10x10,30x10 --rounds 2

Each commit is checked out into a temporary git worktree and benchmarked there with
this checkout's virtualenv (`bench.run --only sweep`, one step per invocation so a
failing step does not end the others), alternating commits round by round so drift hits
both alike. Prints one row per commit, step and round; the JSON of every run stays in
`--out`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _worktree(rev: str, parent: Path) -> Path:
    sha = subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    path = parent / sha
    subprocess.run(
        ["git", "worktree", "add", "--detach", "-q", str(path), sha], cwd=ROOT, check=True
    )
    return path


def _row(rev: str, step: str, rnd: int, result: dict) -> str:
    s = result["steps"][0]
    lat = s["added_latency_ms"]
    ttft = result.get("ttft_overhead_ms") or {}
    return (
        f"| {rev} | {step} | {rnd} | {lat['p50']} | {lat['p99']} | {s['deliveries_per_s']} "
        f"| {s['server_cpu_percent']} | {s.get('server_cpu_us_per_delivery', '-')} "
        f"| {ttft.get('p50', '-')} | {s['machine_cpu_percent']} "
        f"| {'yes' if s['holds'] else 'no'} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("revs", nargs="+", help="two or more commits, e.g. aa1bd7e HEAD")
    parser.add_argument("--steps", default="10x10,30x10")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=None, help="where the runs' JSON goes")
    args = parser.parse_args()
    if len(args.revs) < 2:
        parser.error("give at least two commits")
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-compare-"))
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="bench-worktrees-"))
    trees = {rev: _worktree(rev, scratch) for rev in args.revs}
    print(
        "| commit | step | round | p50 ms | p99 ms | deliveries/s | server CPU % "
        "| µs/delivery | TTFT overhead p50 ms | machine CPU % | holds |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    try:
        for rnd in range(1, args.rounds + 1):
            for rev, tree in trees.items():
                for step in args.steps.split(","):
                    dest = out / f"{rev}-{step}-{rnd}"
                    cmd = [sys.executable, "-m", "bench.run", "--only", "sweep"]
                    cmd += ["--steps", step, "--out", str(dest), "--no-plots"]
                    with (out / f"{rev}-{step}-{rnd}.log").open("w") as log:
                        subprocess.run(cmd, cwd=tree, stdout=log, stderr=subprocess.STDOUT)
                    latest = dest / "latest.json"
                    if latest.exists():
                        print(_row(rev, step, rnd, json.loads(latest.read_text())), flush=True)
                    else:
                        print(f"| {rev} | {step} | {rnd} | failed: see {dest}.log |", flush=True)
    finally:
        for tree in trees.values():
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT)
    print(f"JSON and logs: {out}")


if __name__ == "__main__":
    main()
