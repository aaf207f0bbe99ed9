"""The load generator: many real websocket viewers in one process.

Driven by the orchestrator (`bench/run.py`) with one JSON command per line on stdin; it
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
import urllib.request
import uuid
from typing import Any

import numpy as np
import psutil

from bench.wsclient import WSClient, open_ws

loads = json.loads

# The websocket subprotocol that asks for deltas as ["d", message_id, seq, text].
COMPACT_SUBPROTOCOL = "livechat.compact"
FORMS = ("long", "compact")


class MsgState:
    __slots__ = ("chars", "done_at", "final_seq", "gaps", "last", "pieces", "records", "status")

    def __init__(self) -> None:
        self.last = 0  # highest seq seen
        self.chars = 0  # characters of text received so far
        self.records: list[tuple[float, int, int]] = []  # (received at, char from, char to)
        self.pieces: list[str] = []
        self.gaps: set[int] = set()
        self.final_seq: int | None = None
        self.done_at: float | None = None
        self.status = ""


class Viewer:
    """One socket's protocol state and counters."""

    def __init__(self, gen: LoadGen, vid: int, conv: int, compact: bool = False) -> None:
        self.gen = gen
        self.vid = vid
        self.conv = conv
        self.compact = compact  # offered the compact delta subprotocol
        self.ws: WSClient | None = None
        self.snapshot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.frames = 0
        self.t_first = 0.0
        self.t_last = 0.0
        self.msgs: dict[str, MsgState] = {}
        self.duplicated = 0
        self.out_of_order = 0
        self.resyncs = 0
        self.resync_lost = 0
        self.delta_frames = 0
        self.delta_bytes = 0  # websocket frame bytes (header + payload)
        self.delta_text_bytes = 0
        self.max_overhead = 0
        self.presence_frames = 0

    def on_text(self, payload: bytes, now: float) -> None:
        self.frames += 1
        if not self.t_first:
            self.t_first = now
        self.t_last = now
        head = payload[:15]
        if head[:5] == b'["d",':
            _, mid, seq, text = loads(payload)
            self.on_delta(len(payload), mid, seq, text, now)
        elif head == b'{"type":"delta"':
            f = loads(payload)
            self.on_delta(len(payload), f["message_id"], f["seq"], f["text"], now)
        elif head == b'{"type":"done",':
            m = loads(payload)["message"]
            st = self.msgs.get(m["id"])
            if st is None:
                st = self.msgs[m["id"]] = MsgState()
            st.final_seq = m["seq"]
            st.done_at = now
            st.status = m["status"]
            self.gen.on_done(self, m["id"])
        elif head == b'{"type":"messag':
            m = loads(payload)["message"]
            if m["role"] == "assistant" and m["status"] == "streaming":
                self.gen.on_assistant(self.conv, m["id"], self.vid, now)
        elif head == b'{"type":"presen':
            self.presence_frames += 1
        elif head == b'{"type":"snapsh':
            if not self.snapshot.done():
                self.snapshot.set_result(None)
                return
            # A snapshot mid-stream: the server healed a gap in this socket's deltas.
            for m in loads(payload)["messages"]:
                st = self.msgs.get(m["id"])
                if st is None or m["seq"] <= st.last:
                    continue
                self.resyncs += 1
                self.resync_lost += m["seq"] - st.last
                c0 = st.chars
                st.pieces = [m["content"]]
                st.chars = len(m["content"])
                st.records.append((now, c0, st.chars))
                st.last = m["seq"]

    def on_delta(self, n: int, mid: str, seq: int, text: str, now: float) -> None:
        """A delta frame of `n` payload bytes, in either form."""
        st = self.msgs.get(mid)
        if st is None:
            st = self.msgs[mid] = MsgState()
        text_bytes = len(text.encode())
        frame_bytes = n + (2 if n < 126 else 4 if n < 65536 else 10)
        self.delta_frames += 1
        self.delta_bytes += frame_bytes
        self.delta_text_bytes += text_bytes
        if frame_bytes - text_bytes > self.max_overhead:
            self.max_overhead = frame_bytes - text_bytes
        last = st.last
        if seq == last + 1:
            st.last = seq
        elif seq <= last:
            if seq in st.gaps:
                st.gaps.discard(seq)
                self.out_of_order += 1
            else:
                self.duplicated += 1
            return  # its text was not appended in order: do not count it twice
        else:
            st.gaps.update(range(last + 1, seq))
            st.last = seq
        c0 = st.chars
        st.chars = c0 + len(text)
        st.records.append((now, c0, st.chars))
        st.pieces.append(text)


class LoadGen:
    def __init__(self) -> None:
        self.viewers: list[Viewer] = []
        self.by_conv: dict[int, list[Viewer]] = {}
        self.streams: dict[int, dict[str, Any]] = {}  # conv -> stream of this round
        self.msg_conv: dict[str, int] = {}
        self.lags: list[float] = []
        self.proc = psutil.Process()
        self.acc = _new_acc()
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
        records = _fetch_records(sim_url)
        lat: list[np.ndarray] = []
        lat_at: list[np.ndarray] = []  # when each latency sample was received
        first_lat: list[float] = []
        per_stream: list[dict[str, Any]] = []
        lost = dup = ooo = corrupt = incomplete = resyncs = 0
        deliveries: list[float] = []
        # Delta frame bytes by form: the long (protocol) form and the compact one.
        wire = {form: dict.fromkeys(("frames", "bytes", "text", "max"), 0) for form in FORMS}
        for conv, s in self.streams.items():
            mid = s.get("mid")
            stamps = records.get(s["prompt_key"])
            if not stamps:
                per_stream.append({"conv": conv, "error": "no simulator record"})
                continue
            ts = np.asarray(stamps[-1], dtype=float)  # the last completion for this prompt
            ends = np.asarray(s["ends"], dtype=np.int64)
            expected = s["text"]
            asker_first = asker_last = asker_done = None
            for v in self.by_conv.get(conv, []):
                st = v.msgs.get(mid) if mid else None
                if st is None or st.done_at is None:
                    incomplete += 1
                    continue
                if st.final_seq is not None:
                    lost += len(st.gaps) + max(0, st.final_seq - st.last)
                if "".join(st.pieces) != expected:
                    corrupt += 1
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
                lat.append((recv - ts[idx]) * 1000)
                lat_at.append(recv)
                if lo[0] == 0 and counts[0] > 0:
                    first_lat.append((rec[0, 0] - ts[0]) * 1000)
                deliveries.extend(rec[:, 0].tolist())
                if v.vid == s["asker"]:
                    asker_first, asker_last, asker_done = rec[0, 0], rec[-1, 0], st.done_at
            if asker_first is not None and s["t_sent"]:
                per_stream.append(
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
        acc, self.acc = self.acc, _new_acc()
        lat = np.concatenate(acc["lat"]) if acc["lat"] else np.zeros(0)
        long, compact = acc["wire"]["long"], acc["wire"]["compact"]
        return {
            "latency_ms": _pct(lat),
            "latency_samples": int(lat.size),
            "latency_hist": _hist(lat),
            "latency_by_second": _by_second(lat, acc["lat_since_start"]),
            "first_delta_latency_ms": _pct(np.asarray(acc["first"])),
            "loadgen_loop_lag_ms": _pct(np.asarray(acc["lags"]) * 1000),
            "lost": acc.get("lost", 0),
            "duplicated": acc.get("duplicated", 0),
            "out_of_order": acc.get("out_of_order", 0),
            "corrupt_texts": acc.get("corrupt_texts", 0),
            "incomplete_viewers": acc.get("incomplete_viewers", 0),
            "resyncs": acc.get("resyncs", 0),
            "delta_frames": long["frames"] + compact["frames"],
            "compact_delta_frames": compact["frames"],
            # The protocol's delta form, then the compact one (half the viewers offer it).
            **_wire_figures(long, ""),
            **_wire_figures(compact, "compact_"),
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


def _new_acc() -> dict[str, Any]:
    wire = {form: dict.fromkeys(("frames", "bytes", "text", "max"), 0) for form in FORMS}
    return {"lat": [], "lat_since_start": [], "first": [], "lags": [], "wire": wire}


def _wire_figures(w: dict[str, int], prefix: str) -> dict[str, Any]:
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


def _by_second(lat: np.ndarray, since_start: list[np.ndarray]) -> list[dict[str, Any]]:
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


def _fetch_records(sim_url: str) -> dict[str, list[list[float]]]:
    base = sim_url.rsplit("/v1", 1)[0]
    with urllib.request.urlopen(f"{base}/bench/records", timeout=30) as resp:
        return json.loads(resp.read())["records"]


def _pct(values: np.ndarray) -> dict[str, float | None]:
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


def _hist(values: np.ndarray) -> dict[str, list[float]]:
    """A log-spaced histogram, small enough to keep in the results for plots."""
    if values.size == 0:
        return {"edges": [], "counts": []}
    edges = np.concatenate([[-1e9], np.geomspace(0.1, 10_000, 61)])
    counts, _ = np.histogram(np.clip(values, -1e8, 1e8), bins=edges)
    return {"edges": [round(e, 3) for e in edges[1:].tolist()], "counts": counts.tolist()}


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
