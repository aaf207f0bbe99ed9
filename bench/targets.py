"""The run's headline figures and its targets, judged from the steps' figures."""

from __future__ import annotations

from typing import Any


def summarize(results: dict[str, Any]) -> None:
    """Add the run's flat figures (from its reference step, its monitored steps, its
    ceilings and idle cost) and each target as measured to `results`."""
    steps = results.get("steps", [])
    by = {(s["streams"], s["viewers"]): s for s in steps}
    ref = by.get((10, 10)) or (steps[-1] if steps else None)
    if ref:
        results["reference_step"] = ref["name"]
        results["ttft_overhead_ms"] = {k: ref["ttft_overhead_ms"][k] for k in ("p50", "p99")}
        results["duration_ratio_vs_direct"] = ref["duration_ratio_vs_direct"]
        results["db_writes_per_message"] = ref["db_writes_per_message"]
        results["bytes_per_delta_frame_overhead"] = ref["overhead_bytes_per_delta_frame"]
        results["compact_bytes_per_delta_frame_overhead"] = ref[
            "compact_overhead_bytes_per_delta_frame"
        ]
    monitored = [
        s for s in steps + results.get("monitored_steps", []) if s.get("redis_commands_per_flush")
    ]
    if monitored:
        results["redis_commands_per_flush"] = monitored[0]["redis_commands_per_flush"]
    ceilings = results.get("ceilings", {})
    results["redis_publish_ceiling_per_s"] = ceilings.get("redis_benchmark_publish_per_s")
    results["asgi_broadcast_ceiling_frames_per_s"] = (ceilings.get("asgi") or {}).get(
        "frames_per_s"
    )
    idle = results.get("idle")
    results["idle_kib_per_viewer"] = idle["idle_kib_per_viewer"] if idle else None
    holding = [s for s in steps if s["holds"]]
    results["heaviest_holding_step"] = holding[-1]["name"] if holding else None
    if holding and results["asgi_broadcast_ceiling_frames_per_s"]:
        best = max(holding, key=lambda s: s["deliveries_per_s"])
        results["fraction_of_asgi_ceiling"] = round(
            best["deliveries_per_s"] / results["asgi_broadcast_ceiling_frames_per_s"], 3
        )
    results["targets"] = targets(results)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target: what it asks, what was measured, and whether it passes (None when
    it cannot be judged)."""
    out = []

    def add(name: str, target: str, measured: Any, ok: bool | None) -> None:
        out.append({"target": name, "goal": target, "measured": measured, "pass": ok})

    unc = {(s["streams"], s["viewers"]): s for s in results.get("uncoalesced_steps", [])}
    s = unc.get((10, 10))
    if s:
        lat = s["added_latency_ms"]
        add(
            "added latency, coalescing off, 10x10",
            "p50 <= 5 ms, p99 <= 25 ms",
            f"p50 {lat['p50']} ms, p99 {lat['p99']} ms",
            lat["p50"] is not None and lat["p50"] <= 5 and lat["p99"] <= 25,
        )
    steps = {(s["streams"], s["viewers"]): s for s in results.get("steps", [])}
    w = results.get("default_flush_ms")
    # The 100x10 targets are for this machine: measured with one server process and,
    # in scale-out, with two (one per core, as docker-compose runs them); both shown.
    heavy = [
        (label, x)
        for label, pool in (
            ("1 server", results.get("steps", [])),
            ("2 servers", (results.get("scale_out") or {}).get("two_server_steps", [])),
        )
        for x in pool
        if (x["streams"], x["viewers"]) == (100, 10)
    ]
    if heavy:
        add(
            f"added latency, W={w:g} ms, 100x10",
            f"p99 <= W+25 = {w + 25:g} ms",
            "; ".join(f"{label}: p99 {x['added_latency_ms']['p99']} ms" for label, x in heavy),
            # ... and holding (nothing lost, duplicated or out of order).
            any(x["holds"] and x["added_latency_ms"]["p99"] <= w + 25 for _, x in heavy),
        )
    else:
        add(f"added latency, W={w:g} ms, 100x10", f"p99 <= {w + 25:g} ms", "not reached", False)
    ref = steps.get((10, 10))
    if ref:
        fd = ref["first_delta_latency_ms"]
        add(
            "first delta never held back (10x10)",
            f"first-delta latency well under the window (p50 < W/2 = {w / 2:g} ms)",
            f"first-delta p50 {fd['p50']} ms, p99 {fd['p99']} ms",
            fd["p50"] is not None and fd["p50"] < w / 2,
        )
    ref_name = results.get("reference_step", "10x10")
    tt = results.get("ttft_overhead_ms")
    if tt:
        add(
            f"TTFT overhead ({ref_name})",
            "p50 <= 20 ms",
            f"p50 {tt['p50']} ms, p99 {tt['p99']} ms",
            tt["p50"] is not None and tt["p50"] <= 20,
        )
    dr = results.get("duration_ratio_vs_direct")
    if dr:
        add(f"stream duration vs direct ({ref_name})", "within 2%", f"x{dr}", abs(dr - 1) <= 0.02)
    rc = results.get("redis_commands_per_flush")
    monitored = [
        x
        for x in results.get("steps", []) + results.get("monitored_steps", [])
        if x.get("redis_commands_per_flush")
    ]
    if len(monitored) > 1:
        vals = {f"{x['streams']}x{x['viewers']}": x["redis_commands_per_flush"] for x in monitored}
        flat = max(vals.values()) - min(vals.values()) < 0.5
        add(
            "Redis work per flush independent of viewers",
            "same commands per flush at any viewer count",
            vals,
            flat,
        )
    elif rc:
        add("Redis commands per flush", "independent of viewers", rc, None)
    add(
        ">= 100 streams x 10 viewers, p99 < 100 ms, nothing lost",
        "holds",
        "; ".join(
            f"{label}: {'holds' if x['holds'] else 'fails'} "
            f"(p99 {x['added_latency_ms']['p99']} ms, lost {x['lost']})"
            for label, x in heavy
        )
        or "not reached",
        any(x["holds"] for _, x in heavy),
    )
    idle = results.get("idle")
    if idle:
        add(
            "memory per idle viewer",
            "<= 50 KiB",
            f"{idle['idle_kib_per_viewer']} KiB",
            idle["idle_kib_per_viewer"] <= 50,
        )
    if ref and ref.get("compact_overhead_bytes_per_delta_frame") is not None:
        # The page's form (compact) is held to the target; the protocol's long form, for
        # clients that do not offer the subprotocol, is shown beside it.
        add(
            "bytes per delta frame",
            "<= 80 + text",
            f"{ref['compact_overhead_bytes_per_delta_frame']} + text (max "
            f"{ref['compact_max_overhead_bytes']}); long form "
            f"{ref['overhead_bytes_per_delta_frame']} (max {ref['max_overhead_bytes']})",
            ref["compact_max_overhead_bytes"] <= 80,
        )
    all_steps = (
        results.get("steps", [])
        + results.get("uncoalesced_steps", [])
        + results.get("monitored_steps", [])
    )
    bad = sum(
        x["lost"] + x["duplicated"] + x["out_of_order"]
        for x in all_steps
        if x["holds"] or x["lost"] == 0
    )
    add(
        "lost / duplicated / out-of-order deltas in holding steps",
        "0",
        bad,
        bad == 0,
    )
    return out
