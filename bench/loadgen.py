"""The load generator: many real websocket viewers in one process.

Driven by the orchestrator (bench/loadgen_process.py) with one JSON command per line on stdin; it
answers each with one JSON line on stdout. Commands:

``connect``  open viewers ``[{id, conv, host, port, path, cookie, origin}]`` (at most
             ``concurrency`` handshakes at a time) and, unless ``raw``, wait for each
             one's snapshot.
``round``    start a round: for each stream ``{conv, asker, prompt, text, ends, delay}``
             the asker sends the prompt after ``delay`` seconds. ``text`` is the reply
             the simulator will give and ``ends`` the end offset of each of its tokens.
``wait``     until every viewer of every stream of the round has the `done` frame.
``collect``  fetch the simulator's `sim_ts` records and return the round's figures:
             per-token added latency, TTFT and duration per stream, deliveries, losses.
``blast``    (bare ASGI ceiling) ask the app to broadcast, count frames until all came.
``close``    close every viewer.
``quit``     exit.

Every receive timestamp is `time.time()`, the clock the simulator stamps `sim_ts` with.
The viewer applies the protocol's rules as frames arrive and counts what breaks them:
a `seq` that skips (lost), repeats (duplicated) or goes back (out of order), a snapshot
the server sent mid-stream to heal a gap (resync), and a final text that differs from
the reply the simulator sent.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from typing import Any

import numpy as np
import psutil

from bench.loadgen_figures import (
    FORMS,
    RoundScore,
    by_second,
    fetch_records,
    histogram,
    new_accumulator,
    percentiles,
    wire_figures,
)
from bench.loadgen_viewer import Viewer
from bench.wsclient import open_ws

# The websocket subprotocol that asks for deltas as ["d", message_id, seq, text].
COMPACT_SUBPROTOCOL = "livechat.compact"


class LoadGen:
    """The open viewers and the round in progress; one `cmd_<name>` method per command."""

    def __init__(self) -> None:
        self.viewers: list[Viewer] = []
        self.by_conv: dict[int, list[Viewer]] = {}
        self.streams: dict[int, dict[str, Any]] = {}  # conv -> stream of this round
        self.msg_conv: dict[str, int] = {}
        self.lags: list[float] = []
        self.proc = psutil.Process()
        self.acc = new_accumulator()
        self.round_cpu: tuple[float, float] | None = None

    # -- callbacks from viewers ------------------------------------------------------

    def on_assistant(self, conv: int, mid: str, vid: int, now: float) -> None:
        stream = self.streams.get(conv)
        if stream is None:
            return
        if mid not in self.msg_conv:
            self.msg_conv[mid] = conv
            if stream.get("mid") is None:
                stream["mid"] = mid
        if vid == stream["asker"]:
            stream["placeholder_at"] = now

    def on_done(self, viewer: Viewer, mid: str) -> None:
        pass  # `wait` polls the viewers' states

    # -- commands --------------------------------------------------------------------

    async def cmd_connect(self, viewers: list[dict], concurrency: int = 50, raw: bool = False):
        sem = asyncio.Semaphore(concurrency)
        failures: list[str] = []
        t0 = time.monotonic()

        async def one(spec: dict) -> None:
            v = Viewer(self, spec["id"], spec["conv"], spec.get("compact", False))
            async with sem:
                try:
                    v.ws = await open_ws(
                        spec["host"],
                        spec["port"],
                        spec["path"],
                        origin=spec["origin"],
                        cookie=spec["cookie"],
                        on_text=v.on_text,
                        subprotocol=COMPACT_SUBPROTOCOL if v.compact else None,
                        timeout=30,
                    )
                    if not raw:
                        await asyncio.wait_for(v.snapshot, 30)
                except Exception as exc:
                    failures.append(repr(exc)[:200])
                    if v.ws is not None:
                        v.ws.abort()
                    return
            self.viewers.append(v)
            self.by_conv.setdefault(v.conv, []).append(v)

        await asyncio.gather(*(one(s) for s in viewers))
        return {
            "connected": len(viewers) - len(failures),
            "failed": len(failures),
            "errors": failures[:5],
            "seconds": round(time.monotonic() - t0, 3),
        }

    async def cmd_round(self, streams: list[dict]):
        self.streams = {}
        self.msg_conv = {}
        self.lags = []
        for v in self.viewers:
            v.msgs = {}
        by_id = {v.vid: v for v in self.viewers}
        for s in streams:
            self.streams[s["conv"]] = {**s, "mid": None, "t_sent": None}
        self.round_cpu = (time.time(), sum(self.proc.cpu_times()[:2]))
        for s in streams:
            asyncio.get_running_loop().call_later(s["delay"], self._send_prompt, by_id[s["asker"]])
        self._lag_task = asyncio.create_task(self._measure_lag())
        return {"scheduled": len(streams)}

    def _send_prompt(self, asker: Viewer) -> None:
        stream = self.streams[asker.conv]
        stream["t_sent"] = time.time()
        asker.ws.send_text(
            json.dumps(
                {"type": "prompt", "content": stream["prompt"], "client_msg_id": str(uuid.uuid4())}
            )
        )

    async def _measure_lag(self) -> None:
        # How late the loop wakes up: a loaded load generator stamps frames late.
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            self.lags.append(time.perf_counter() - t - 0.01)

    async def cmd_wait(self, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._round_done():
                break
            await asyncio.sleep(0.05)
        done = self._round_done()
        self._lag_task.cancel()
        t_end = time.time()
        cpu_end = sum(self.proc.cpu_times()[:2])
        t0, cpu0 = self.round_cpu
        return {
            "done": done,
            "loadgen_cpu_percent": round(100 * (cpu_end - cpu0) / max(t_end - t0, 1e-9), 1),
        }

    def _round_done(self) -> bool:
        for conv, s in self.streams.items():
            mid = s.get("mid")
            if mid is None:
                return False
            for v in self.by_conv.get(conv, []):
                st = v.msgs.get(mid)
                if st is None or st.done_at is None:
                    return False
        return True

    async def cmd_collect(self, sim_url: str, window_trim: float = 0.0):
        records = fetch_records(sim_url)
        score = RoundScore()
        for conv, stream in self.streams.items():
            stamps = records.get(stream["prompt_key"])
            score.add_stream(conv, stream, self.by_conv.get(conv, []), stamps)
        lat, lat_at, first_lat = score.lat, score.lat_at, score.first
        per_stream, deliveries = score.per_stream, score.deliveries
        lost, corrupt, incomplete = score.lost, score.corrupt, score.incomplete
        dup = ooo = resyncs = 0
        # Delta frame bytes by form: the long (protocol) form and the compact one.
        wire = {form: dict.fromkeys(("frames", "bytes", "text", "max"), 0) for form in FORMS}
        for v in self.viewers:
            dup += v.duplicated
            ooo += v.out_of_order
            resyncs += v.resyncs
            lost += v.resync_lost
            w = wire["compact" if v.compact else "long"]
            w["frames"] += v.delta_frames
            w["bytes"] += v.delta_bytes
            w["text"] += v.delta_text_bytes
            w["max"] = max(w["max"], v.max_overhead)
            v.duplicated = v.out_of_order = v.resyncs = v.resync_lost = 0
            v.delta_frames = v.delta_bytes = v.delta_text_bytes = v.max_overhead = 0
        ok = [p for p in per_stream if "ttft_ms" in p]
        # The steady window: every stream has started delivering and none has finished.
        if ok:
            w0 = max(p["first_recv"] for p in ok) + window_trim
            w1 = min(p["last_recv"] for p in ok) - window_trim
            if w1 - w0 < 0.5:
                w0 = min(p["first_recv"] for p in ok)
                w1 = max(p["last_recv"] for p in ok)
        else:
            w0 = w1 = 0.0
        d = np.asarray(deliveries)
        in_window = int(((d >= w0) & (d <= w1)).sum()) if len(d) else 0
        acc = self.acc
        acc["lat"].extend(lat)
        if lat:
            # Seconds since the round's first prompt: where in a round the tail is.
            t0 = min((s["t_sent"] for s in self.streams.values() if s["t_sent"]), default=0.0)
            acc["lat_since_start"].extend(a - t0 for a in lat_at)
        acc["first"].extend(first_lat)
        acc["lags"].extend(self.lags)
        for k, v in (
            ("lost", lost),
            ("duplicated", dup),
            ("out_of_order", ooo),
            ("corrupt_texts", corrupt),
            ("incomplete_viewers", incomplete),
            ("resyncs", resyncs),
        ):
            acc[k] = acc.get(k, 0) + int(v)
        for form, w in wire.items():
            into = acc["wire"][form]
            for k in ("frames", "bytes", "text"):
                into[k] += w[k]
            into["max"] = max(into["max"], w["max"])
        flushes = 0
        for c, s in self.streams.items():
            if s.get("mid") and self.by_conv.get(c):
                st = self.by_conv[c][0].msgs.get(s["mid"])
                flushes += (st.final_seq or 0) if st else 0
        return {
            "streams": per_stream,
            "window": [w0, w1],
            "deliveries_in_window": in_window,
            "deliveries_per_s": round(in_window / (w1 - w0), 1) if w1 > w0 else 0.0,
            "flushes": flushes,
            "lost": int(lost),
        }

    async def cmd_summary(self):
        """Figures over every round collected since the last summary; then forget them."""
        acc, self.acc = self.acc, new_accumulator()
        lat = np.concatenate(acc["lat"]) if acc["lat"] else np.zeros(0)
        long, compact = acc["wire"]["long"], acc["wire"]["compact"]
        return {
            "latency_ms": percentiles(lat),
            "latency_samples": int(lat.size),
            "latency_hist": histogram(lat),
            "latency_by_second": by_second(lat, acc["lat_since_start"]),
            "first_delta_latency_ms": percentiles(np.asarray(acc["first"])),
            "loadgen_loop_lag_ms": percentiles(np.asarray(acc["lags"]) * 1000),
            "lost": acc.get("lost", 0),
            "duplicated": acc.get("duplicated", 0),
            "out_of_order": acc.get("out_of_order", 0),
            "corrupt_texts": acc.get("corrupt_texts", 0),
            "incomplete_viewers": acc.get("incomplete_viewers", 0),
            "resyncs": acc.get("resyncs", 0),
            "delta_frames": long["frames"] + compact["frames"],
            "compact_delta_frames": compact["frames"],
            # The protocol's delta form, then the compact one (half the viewers offer it).
            **wire_figures(long, ""),
            **wire_figures(compact, "compact_"),
        }

    async def cmd_blast(self, rounds: int, size: int, timeout: float = 60):
        for v in self.viewers:
            v.frames, v.t_first, v.t_last = 0, 0.0, 0.0
        cpu0, t0 = sum(self.proc.cpu_times()[:2]), time.time()
        self.viewers[0].ws.send_text(json.dumps({"blast": rounds, "size": size}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(v.frames >= rounds for v in self.viewers):
                break
            await asyncio.sleep(0.02)
        total = sum(v.frames for v in self.viewers)
        first = min(v.t_first for v in self.viewers if v.t_first) if total else 0
        last = max(v.t_last for v in self.viewers)
        cpu = sum(self.proc.cpu_times()[:2]) - cpu0
        return {
            "frames": total,
            "expected": rounds * len(self.viewers),
            "seconds": last - first,
            "frames_per_s": round(total / (last - first), 1) if last > first else None,
            "loadgen_cpu_percent": round(100 * cpu / max(time.time() - t0, 1e-9), 1),
        }

    async def cmd_close(self):
        for v in self.viewers:
            if v.ws is not None:
                v.ws.close()
        await asyncio.sleep(0.5)
        for v in self.viewers:
            if v.ws is not None:
                v.ws.abort()
        n = len(self.viewers)
        self.viewers, self.by_conv = [], {}
        return {"closed": n}

    async def cmd_stats(self):
        presence = sum(v.presence_frames for v in self.viewers)
        for v in self.viewers:
            v.presence_frames = 0
        return {
            "presence_frames": presence,
            "frames": sum(v.frames for v in self.viewers),
            "viewers": len(self.viewers),
            "open": sum(1 for v in self.viewers if v.ws and not v.ws.closed.done()),
            "rss_mib": round(self.proc.memory_info().rss / 2**20, 1),
        }


async def main() -> None:
    gen = LoadGen()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout
    while True:
        line = await reader.readline()
        if not line:
            return
        msg = json.loads(line)
        cmd = msg.pop("cmd")
        if cmd == "quit":
            await gen.cmd_close()
            out.write(json.dumps({"ok": True}) + "\n")
            out.flush()
            return
        try:
            result = await getattr(gen, f"cmd_{cmd}")(**msg)
            reply = {"ok": True, **result}
        except Exception as exc:  # reported to the orchestrator, which stops the run
            import traceback

            reply = {"ok": False, "error": repr(exc), "trace": traceback.format_exc()[-2000:]}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    asyncio.run(main())
