"""Scale-out: the sweep's steps again on two servers (viewers split between them), from
the heaviest step that held on one."""

from __future__ import annotations

from typing import Any

from bench import steps
from bench.deployment import Bench
from bench.modes import Mode


async def scale_out(bench: Bench, mode: Mode, one_server: list[dict[str, Any]]) -> dict[str, Any]:
    """Two-server steps, from the heaviest one-server step that held (from 100x10 at the
    latest, whose targets are judged on two servers too) until one fails."""
    holding = [s for s in one_server if s["holds"]]
    one = holding[-1] if holding else None
    sweep = mode.sweep or mode.scale_out_sweep or []
    start = sweep.index((one["streams"], one["viewers"])) if one else 0
    if (100, 10) in sweep:
        start = min(start, sweep.index((100, 10)))
    two_steps = []
    for streams, viewers in sweep[start:]:
        if (streams, viewers) == (1, 1):
            continue
        if len(two_steps) >= mode.scale_out_max_steps:
            break
        step = await steps.step(
            bench, streams, viewers, n_servers=2, label=f"{streams}x{viewers} 2 servers"
        )
        two_steps.append(step)
        if not step["holds"]:
            break
    two = [s for s in two_steps if s["holds"]]
    return {
        "one_server_heaviest_holding": one and f"{one['streams']}x{one['viewers']}",
        "two_servers_heaviest_holding": two[-1]["name"].split()[0] if two else None,
        "two_server_steps": two_steps,
    }
