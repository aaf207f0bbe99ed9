"""Summaries of py-spy raw (collapsed) profiles: where the server's time goes.

    .venv/bin/py-spy record -p <daphne pid> -r 50 -f raw -o profile.txt --nonblocking
    .venv/bin/python -m bench.profile profile.txt

Each line of a raw profile is `frame;frame;...;leaf count`. "Self" is time with the
function as the leaf; "inclusive" is time with the function anywhere on the stack.
Idle time (the event loop waiting in select/epoll) is reported apart.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

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


def main() -> None:
    s = summarize(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 30)
    print(f"samples {s['samples']}, idle {s['idle_fraction']:.1%}")
    print("\nself (% of busy samples):")
    for f, p in s["self_top"]:
        print(f"  {p:5.1f}  {f}")
    print("\ninclusive (% of busy samples):")
    for f, p in s["inclusive_top"]:
        print(f"  {p:5.1f}  {f}")


if __name__ == "__main__":
    main()
