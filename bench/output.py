"""Writing a run's results: `latest.json` and a dated copy, the plots, and the report's
tables on stdout."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from bench import report
from bench.console import log
from deploy.harness import ROOT

RESULTS = ROOT / "bench" / "results"


def write_results(
    results: dict[str, Any], mode_name: str, out_dir: Path, *, plots: bool = True
) -> Path:
    """Write `results` to out_dir/latest.json and out_dir/<mode>-<time>.json, draw the
    plots (the full run's into bench/, where the report shows them, when it writes to
    bench/results/), print the report's tables. Returns the latest.json path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    text = json.dumps(results, indent=1)
    latest = out_dir / "latest.json"
    latest.write_text(text)
    (out_dir / f"{mode_name}-{stamp}.json").write_text(text)
    if plots:
        if mode_name == "full" and out_dir == RESULTS:
            report.write_plots(results, ROOT / "bench")
        else:
            report.write_plots(results, out_dir)
    print(report.render(results), flush=True)
    log(f"done in {results['seconds']} s: {latest}")
    return latest
