"""Figures of the load generator's rounds: latency percentiles, histograms and seconds,
bytes per delta frame, and the simulator's records of when it sent each token."""

from __future__ import annotations

import json
import urllib.request
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from bench.loadgen_viewer import Viewer

# The delta forms a viewer may get: the protocol's long form and the compact one.
FORMS = ("long", "compact")


def new_accumulator() -> dict[str, Any]:
    wire = {form: dict.fromkeys(("frames", "bytes", "text", "max"), 0) for form in FORMS}
    return {"lat": [], "lat_since_start": [], "first": [], "lags": [], "wire": wire}


def wire_figures(w: dict[str, int], prefix: str) -> dict[str, Any]:
    """Bytes on the wire per delta frame (websocket header + payload) and, of them, what
    is not the text, averaged and at most."""
    frames = w["frames"]
    return {
        f"{prefix}bytes_per_delta_frame": round(w["bytes"] / frames, 1) if frames else None,
        f"{prefix}overhead_bytes_per_delta_frame": (
            round((w["bytes"] - w["text"]) / frames, 1) if frames else None
        ),
        f"{prefix}max_overhead_bytes": w["max"] if frames else None,
    }


def by_second(lat: np.ndarray, since_start: list[np.ndarray]) -> list[dict[str, Any]]:
    """Latency percentiles per second of the rounds (seconds since each round's first
    prompt), to tell a start-up burst from a steady backlog."""
    if not since_start or not lat.size:
        return []
    at = np.concatenate(since_start)
    rows = []
    for second in range(int(at.max()) + 1):
        sel = lat[(at >= second) & (at < second + 1)]
        if sel.size:
            p50, p99 = np.percentile(sel, [50, 99])
            rows.append(
                {
                    "s": second,
                    "n": int(sel.size),
                    "p50": round(float(p50), 1),
                    "p99": round(float(p99), 1),
                }
            )
    return rows


def fetch_records(sim_url: str) -> dict[str, list[list[float]]]:
    base = sim_url.rsplit("/v1", 1)[0]
    with urllib.request.urlopen(f"{base}/bench/records", timeout=30) as resp:
        return json.loads(resp.read())["records"]


def percentiles(values: np.ndarray) -> dict[str, float | None]:
    if values.size == 0:
        return {"p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {
        "p50": round(float(p50), 2),
        "p90": round(float(p90), 2),
        "p99": round(float(p99), 2),
        "max": round(float(values.max()), 2),
        "mean": round(float(values.mean()), 2),
    }


def histogram(values: np.ndarray) -> dict[str, list[float]]:
    """A log-spaced histogram, small enough to keep in the results for plots."""
    if values.size == 0:
        return {"edges": [], "counts": []}
    edges = np.concatenate([[-1e9], np.geomspace(0.1, 10_000, 61)])
    counts, _ = np.histogram(np.clip(values, -1e8, 1e8), bins=edges)
    return {"edges": [round(e, 3) for e in edges[1:].tolist()], "counts": counts.tolist()}


class RoundScore:
    """A round's figures, stream by stream: each token's added latency at every viewer
    (`received - sim_ts`, ms) and when it was received, the first token's, the receive
    time of every delta, texts lost, corrupt or incomplete, and each stream's times at
    its asker."""

    def __init__(self) -> None:
        self.lat: list[np.ndarray] = []
        self.lat_at: list[np.ndarray] = []  # when each latency sample was received
        self.first: list[float] = []
        self.per_stream: list[dict[str, Any]] = []
        self.deliveries: list[float] = []
        self.lost = self.corrupt = self.incomplete = 0

    def add_stream(
        self,
        conv: int,
        s: dict[str, Any],
        viewers: list[Viewer],
        stamps: list[list[float]] | None,
    ) -> None:
        """Score stream `s` of conversation `conv` at its `viewers`, from the simulator's
        `sim_ts` records of its prompt."""
        if not stamps:
            self.per_stream.append({"conv": conv, "error": "no simulator record"})
            return
        mid = s.get("mid")
        ts = np.asarray(stamps[-1], dtype=float)  # the last completion for this prompt
        ends = np.asarray(s["ends"], dtype=np.int64)
        expected = s["text"]
        asker_first = asker_last = asker_done = None
        for v in viewers:
            st = v.msgs.get(mid) if mid else None
            if st is None or st.done_at is None:
                self.incomplete += 1
                continue
            if st.final_seq is not None:
                self.lost += len(st.gaps) + max(0, st.final_seq - st.last)
            if "".join(st.pieces) != expected:
                self.corrupt += 1
            if not st.records:
                continue
            rec = np.asarray(st.records, dtype=float)
            lo = np.searchsorted(ends, rec[:, 1], side="right")
            hi = np.searchsorted(ends, rec[:, 2], side="right")
            counts = hi - lo
            if counts.sum() == 0:
                continue
            recv = np.repeat(rec[:, 0], counts)
            idx = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi, strict=True)])
            idx = idx[idx < len(ts)]
            recv = recv[: len(idx)]
            self.lat.append((recv - ts[idx]) * 1000)
            self.lat_at.append(recv)
            if lo[0] == 0 and counts[0] > 0:
                self.first.append((rec[0, 0] - ts[0]) * 1000)
            self.deliveries.extend(rec[:, 0].tolist())
            if v.vid == s["asker"]:
                asker_first, asker_last, asker_done = rec[0, 0], rec[-1, 0], st.done_at
        if asker_first is not None and s["t_sent"]:
            self.per_stream.append(
                {
                    "conv": conv,
                    "t_sent": s["t_sent"],
                    "ttft_ms": (asker_first - s["t_sent"]) * 1000,
                    "duration_ms": (asker_last - s["t_sent"]) * 1000,
                    "done_ms": (asker_done - s["t_sent"]) * 1000,
                    "upstream_first_emit_ms": (ts[0] - s["t_sent"]) * 1000,
                    "placeholder_ms": (s.get("placeholder_at", 0) - s["t_sent"]) * 1000,
                    "upstream_last_emit_ms": (ts[-1] - s["t_sent"]) * 1000,
                    "first_recv": asker_first,
                    "last_recv": asker_last,
                }
            )
