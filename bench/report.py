"""Plots and markdown tables from a results file (bench/results/latest.json by default).

    .venv/bin/python -m bench.report [results.json] [--plots-dir bench]

Writes `latency_vs_load.png`, `cpu_vs_load.png` and `latency_cdf.png`, and prints the
tables used in bench/REPORT.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _label(step: dict[str, Any]) -> str:
    return f"{step['streams']}x{step['viewers']}"


def write_plots(results: dict[str, Any], out_dir: Path, prefix: str = "") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    steps = results.get("steps", [])
    unc = results.get("uncoalesced_steps", [])
    two = (results.get("scale_out") or {}).get("two_server_steps", [])
    w = results.get("default_flush_ms", 30)
    title = f"{results['machine']['cores']} cores, {results['machine']['cpu']}"

    # Latency against offered load (streams x viewers: token streams being watched).
    fig, ax = plt.subplots(figsize=(8, 4.5))

    def load(s: dict[str, Any]) -> int:
        return s["streams"] * s["viewers"]

    if steps:
        x = [load(s) for s in steps]
        for key, style in (("p50", "o-"), ("p90", "s--"), ("p99", "^-"), ("max", "x:")):
            ax.plot(
                x, [s["added_latency_ms"][key] for s in steps], style, label=f"{key}, W={w:g} ms"
            )
        for s in steps:
            ax.annotate(
                f"{_label(s)}\n{s['deliveries_per_s']:.0f}/s",
                (load(s), s["added_latency_ms"]["p99"]),
                textcoords="offset points",
                xytext=(4, 6),
                fontsize=7,
            )
    if unc:
        for key, style in (("p50", "v:"), ("p99", "v-")):
            ax.plot(
                [load(s) for s in unc],
                [s["added_latency_ms"][key] for s in unc],
                style,
                color="tab:purple",
                label=f"{key}, coalescing off",
            )
    if two:
        ax.plot(
            [load(s) for s in two],
            [s["added_latency_ms"]["p99"] for s in two],
            "D-",
            color="tab:brown",
            label="p99, 2 servers",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.axhline(100, color="red", lw=0.8, ls="--")
    ax.axhline(w + 25, color="grey", lw=0.8, ls="--")
    ax.text(1200, 104, "p99 limit 100 ms", color="red", fontsize=8)
    ax.text(1200, (w + 25) * 1.04, f"W+25 = {w + 25:g} ms", color="grey", fontsize=8)
    ax.set_xlim(0.8, 5000)
    ax.set_xlabel("load: streams x viewers per stream (labels: step, deliveries/s)")
    ax.set_ylabel("added latency per token, ms (simulator emit -> viewer)")
    ax.set_title(f"Added latency against load ({title})", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path = out_dir / f"{prefix}latency_vs_load.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    # CPU and memory against load.
    fig, ax = plt.subplots(figsize=(8, 4.5))
    all_steps = steps + unc + two
    if all_steps:
        labels = [
            _label(s) + (" W=0" if s in unc else " 2srv" if s in two else "") for s in all_steps
        ]
        xs = range(len(all_steps))
        width = 0.2
        parts = (
            ("server_cpu_percent", "server (daphne)"),
            ("simulator_cpu_percent", "simulator"),
            ("loadgen_cpu_percent", "load generator"),
            ("redis_cpu_percent", "redis"),
        )
        for i, (key, name) in enumerate(parts):
            ax.bar(
                [x + (i - 1.5) * width for x in xs],
                [s.get(key) or 0 for s in all_steps],
                width,
                label=name,
            )
        ax.plot(
            list(xs),
            [s.get("machine_cpu_percent") or 0 for s in all_steps],
            "k.--",
            label="whole machine (incl. others)",
        )
        ax.axhline(200, color="red", lw=0.8)
        ax.set_xticks(list(xs))
        ax.set_xticklabels(labels, rotation=30, fontsize=8)
        ax2 = ax.twinx()
        ax2.plot(list(xs), [s["server_rss_mib"] for s in all_steps], "g^-", label="server RSS")
        ax2.set_ylabel("server RSS, MiB", color="g")
        ax2.set_ylim(0, max(s["server_rss_mib"] for s in all_steps) * 1.3)
    ax.set_ylabel("CPU, % of one core (200% = both cores)")
    ax.set_title(f"CPU and memory per load step (streams x viewers; {title})", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    path = out_dir / f"{prefix}cpu_vs_load.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    # Latency distributions.
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for s in steps + unc:
        hist = s.get("latency_hist") or {}
        counts = hist.get("counts") or []
        if not counts or not sum(counts):
            continue
        total = sum(counts)
        acc, ys = 0, []
        for c in counts:
            acc += c
            ys.append(acc / total)
        name = _label(s) + (" W=0" if s in unc else f" W={w:g}")
        ax.plot(hist["edges"], ys, label=name)
    ax.set_xscale("log")
    ax.set_xlim(0.3, 3000)
    ax.set_xlabel("added latency per token, ms")
    ax.set_ylabel("fraction of tokens delivered within")
    ax.set_title("Latency distributions (CDF) per step", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / f"{prefix}latency_cdf.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def step_table(steps: list[dict[str, Any]]) -> str:
    head = (
        "| step | flush | srv | p50 | p90 | p99 | max | first-delta p99 | deliveries/s "
        "| server CPU % | server RSS MiB | machine CPU % | lost/dup/ooo | holds |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for s in steps:
        lat = s["added_latency_ms"]
        rows.append(
            f"| {_label(s)} | {_fmt(s['flush_ms'])} | {s['servers']} "
            f"| {_fmt(lat['p50'])} | {_fmt(lat['p90'])} | {_fmt(lat['p99'])} | {_fmt(lat['max'])} "
            f"| {_fmt(s['first_delta_latency_ms']['p99'])} | {_fmt(s['deliveries_per_s'])} "
            f"| {_fmt(s['server_cpu_percent'])} | {_fmt(s['server_rss_mib'])} "
            f"| {_fmt(s['machine_cpu_percent'])} "
            f"| {s['lost']}/{s['duplicated']}/{s['out_of_order']} "
            f"| {'yes' if s['holds'] else 'NO'} |"
        )
    return head + "\n".join(rows) + "\n"


def render(results: dict[str, Any]) -> str:
    out = []
    m = results["machine"]
    out.append(
        f"Run: `{results['command']}` ({results['mode']}), {results['started_at']}, "
        f"{results['seconds']} s. Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, "
        f"{m['os']}, Python {m['python']}, Redis {m['redis']}, PostgreSQL {m['postgresql']}; "
        f"load average at start {m['load_average_at_start']}; commit {m['git_commit']} "
        f"({m['git_dirty_files']} files changed in the tree).\n"
    )
    out.append("### Headline figures\n")
    out.append("| figure | value |\n|---|---|")
    for key in (
        "reference_step",
        "ttft_overhead_ms",
        "duration_ratio_vs_direct",
        "redis_publish_ceiling_per_s",
        "asgi_broadcast_ceiling_frames_per_s",
        "fraction_of_asgi_ceiling",
        "idle_kib_per_viewer",
        "redis_commands_per_flush",
        "db_writes_per_message",
        "bytes_per_delta_frame_overhead",
        "compact_bytes_per_delta_frame_overhead",
        "heaviest_holding_step",
    ):
        out.append(f"| `{key}` | {_fmt(results.get(key))} |")
    so = results.get("scale_out")
    if so:
        out.append(
            f"| heaviest holding step, 1 server / 2 servers | "
            f"{_fmt(so['one_server_heaviest_holding'])} / "
            f"{_fmt(so['two_servers_heaviest_holding'])} |"
        )
    out.append("")
    out.append("### Targets\n")
    out.append("| target | goal | measured | pass |\n|---|---|---|---|")
    for t in results.get("targets", []):
        ok = {True: "yes", False: "**no**", None: "-"}[t["pass"]]
        out.append(f"| {t['target']} | {t['goal']} | {_fmt(t['measured'])} | {ok} |")
    out.append("")
    for title, key in (
        ("Load steps (default window, one server)", "steps"),
        ("Coalescing off (STREAM_FLUSH_MS=0)", "uncoalesced_steps"),
        ("Redis MONITOR on", "monitored_steps"),
    ):
        if results.get(key):
            out.append(f"### {title}\n")
            out.append(step_table(results[key]))
    if so and so.get("two_server_steps"):
        out.append("### Two servers (viewers split)\n")
        out.append(step_table(so["two_server_steps"]))
    monitored = [
        s
        for s in results.get("steps", []) + results.get("monitored_steps", [])
        if s.get("redis_commands_per_flush")
    ]
    if monitored:
        out.append("### Redis commands per flush (MONITOR, our prefix only)\n")
        out.append("| step | commands/flush | breakdown |\n|---|---|---|")
        for s in monitored:
            out.append(
                f"| {_label(s)} | {_fmt(s.get('redis_commands_per_flush'))} "
                f"| {s.get('redis_commands')} |"
            )
        out.append("")
    ref = next(
        (s for s in results.get("steps", []) if s["name"] == results.get("reference_step")), None
    )
    if ref:
        out.append(f"### Time to first token and duration ({ref['name']})\n")
        out.append("| | p50 | p99 |\n|---|---|---|")
        for key in (
            "ttft_ms",
            "direct_ttft_ms",
            "ttft_overhead_ms",
            "placeholder_ms",
            "server_side_ttft_overhead_ms",
            "duration_ms",
            "direct_duration_ms",
            "direct_chunk_latency_ms",
        ):
            if key in ref:
                out.append(f"| {key} | {_fmt(ref[key]['p50'])} | {_fmt(ref[key]['p99'])} |")
        out.append(
            f"\nRows written to PostgreSQL during the step ({ref['rounds']} round(s) of "
            f"{ref['streams']} answers; `db_writes_per_message` = "
            f"{ref['db_writes_per_message']}): {ref['pg_writes']}\n"
        )
    c = results.get("ceilings")
    if c:
        out.append("### Ceilings\n")
        out.append(
            f"- `redis-benchmark` PUBLISH: {_fmt(c.get('redis_benchmark_publish_per_s'))}/s "
            f"(`{c.get('redis_benchmark_command')}`)\n"
            f"- redis-py, one connection, one PUBLISH at a time (what one process of the pub/sub "
            f"layer does): {_fmt(c.get('redis_py_sequential_publish_per_s'))}/s"
        )
        a = c.get("asgi")
        if a:
            out.append(
                f"- bare ASGI broadcast under daphne: {_fmt(a['frames_per_s'])} frames/s to "
                f"{a['viewers']} viewers ({a['frames']} of {a['expected']} frames, server CPU "
                f"{a['server_cpu_percent']}%, load generator CPU {a['loadgen_cpu_percent']}%)"
            )
        out.append("")
    idle = results.get("idle")
    if idle:
        out.append("### Idle viewers\n")
        out.append("| | value |\n|---|---|")
        for k, v in idle.items():
            out.append(f"| {k} | {_fmt(v)} |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("results", nargs="?", default=str(ROOT / "bench/results/latest.json"))
    parser.add_argument("--plots-dir")
    parser.add_argument("--prefix", default="", help="file name prefix of the plots")
    args = parser.parse_args()
    results = json.loads(Path(args.results).read_text())
    if args.plots_dir:
        for p in write_plots(results, Path(args.plots_dir), prefix=args.prefix):
            print("wrote", p)
    print(render(results))


if __name__ == "__main__":
    main()
