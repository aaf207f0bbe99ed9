"""py-spy profiles of the server: recorded during a step (`bench.run --profile`), and
summarized from their raw (collapsed) form: where the server's time goes.

    .venv/bin/py-spy record -p <daphne pid> -r 50 -f raw -o profile.txt --nonblocking
    .venv/bin/python -m bench.profile profile.txt

Each line of a raw profile is `frame;frame;...;leaf count`. "Self" is time with the
function as the leaf; "inclusive" is time with the function anywhere on the stack.
Idle time (the event loop waiting in select/epoll) is reported apart.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from deploy.harness import Process, spawn

# Where a sample belongs, by the first rule that matches anywhere on its stack (order
# matters: the database thread first, as its stacks also hold ORM and psycopg frames).
PARTS = [
    ("database thread (mostly waiting for PostgreSQL)", r"_worker \(concurrent"),
    ("upstream read: SDK models per chunk", r"_process_response_data|construct_type"),
    ("upstream read: SSE decoding", r"_SSELineDecoder|SSEDecoder|_iter_events|aiter_bytes"),
    ("upstream read: HTTP stack", r"httpcore|h11|aiohttp|anyio"),
    ("upstream read: runner", r"StreamRunner\._read|AsyncStream"),
    ("hub: handing events to sockets", r"Hub\._pump"),
    ("flush: replay log + publish", r"StreamRunner\._flush|Relay\.__call__"),
    ("Redis client and the channel layer", r"redis/|chat/fanout/"),
    ("daphne/Twisted: websocket writes and reads", r"twisted|daphne|autobahn"),
]


def parts(path: Path) -> list[tuple[str, float]]:
    """Share of busy samples (idle excluded) per part of the server, in percent."""
    counts: Counter[str] = Counter()
    total = 0
    for line in Path(path).read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = stack.rsplit(";", 1)[-1]
        if "select" in leaf or "epoll" in leaf or "poll (" in leaf:
            continue
        total += int(count)
        name = next((n for n, rx in PARTS if re.search(rx, stack)), "other")
        counts[name] += int(count)
    return [(n, round(100 * c / max(total, 1), 1)) for n, c in counts.most_common()]


IDLE = re.compile(r"\b(select|poll|epoll|_run_once \(asyncio/base_events|wait \(threading)")
_LINE = re.compile(r" \(([^)]*?):\d+\)$")


def _name(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (path/to/file.py)"
    return _LINE.sub(r" (\1)", frame.strip())


def summarize(path: Path, top: int = 25) -> dict[str, Any]:
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = idle = 0
    for line in Path(path).read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += n
        leaf = frames[-1]
        if "select" in leaf or "epoll" in leaf or "poll (" in leaf:
            idle += n
            continue
        self_t[leaf] += n
        for f in set(frames):
            incl[f] += n
    busy = max(total - idle, 1)
    return {
        "samples": total,
        "idle_fraction": round(idle / max(total, 1), 3),
        "self_top": [(f, round(100 * n / busy, 1)) for f, n in self_t.most_common(top)],
        "inclusive_top": [(f, round(100 * n / busy, 1)) for f, n in incl.most_common(top * 2)],
    }


def record(pid: int, out: Path) -> tuple[Process, Path]:
    """py-spy recording process `pid` at 200 Hz into `out` (raw form) until `finish`."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    args = [exe, "record", "-p", str(pid), "-r", "200", "-f", "raw", "-o", str(out)]
    return spawn([*args, "--nonblocking"], dict(os.environ), out.with_suffix(".log")), out


def finish(recording: tuple[Process, Path]) -> dict[str, Any]:
    """Stop a `record`ing (SIGINT makes py-spy write its file) and summarize it."""
    process, out = recording
    process.stop(signal.SIGINT, 30)
    summary = summarize(out) if out.exists() else {}
    summary["file"] = str(out)
    return summary


def main() -> None:
    s = summarize(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 30)
    print(f"samples {s['samples']}, idle {s['idle_fraction']:.1%}")
    print("\nby part (% of busy samples):")
    for name, p in parts(Path(sys.argv[1])):
        print(f"  {p:5.1f}  {name}")
    print("\nself (% of busy samples):")
    for f, p in s["self_top"]:
        print(f"  {p:5.1f}  {f}")
    print("\ninclusive (% of busy samples):")
    for f, p in s["inclusive_top"]:
        print(f"  {p:5.1f}  {f}")


if __name__ == "__main__":
    main()
