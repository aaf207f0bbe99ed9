"""One viewer socket of the load generator: the protocol's rules applied as frames
arrive, and what breaks them counted (a `seq` that skips, repeats or goes back, a
snapshot sent mid-stream to heal a gap), with the bytes of every delta frame."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

from bench.wsclient import WSClient

if TYPE_CHECKING:
    from bench.loadgen import LoadGen

loads = json.loads


class MsgState:
    """What one viewer has of one message."""

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
