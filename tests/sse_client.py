"""A test client for the SSE read endpoint: a parser, and an open stream read in the
background that tests wait on."""

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx2

from tests.live import Session


def events_url(conversation_id: Any) -> str:
    return f"/api/conversations/{conversation_id}/events"


@dataclass
class Sse:
    """One dispatched event, or a comment line (`comment` set, no event)."""

    event: str = "message"
    id: str | None = None
    data: str = ""
    comment: str | None = None

    def json(self) -> Any:
        return json.loads(self.data)


class SseParser:
    """Incremental parser: feed bytes in any split, get complete events in order."""

    def __init__(self) -> None:
        self._buffer = b""
        self._fields: dict[str, str] = {}
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[Sse]:
        self._buffer += chunk
        out: list[Sse] = []
        # Only CR/LF end lines in SSE: str.splitlines() would also split on U+2028 etc.
        while b"\n" in self._buffer:
            raw, self._buffer = self._buffer.split(b"\n", 1)
            line = raw.decode().removesuffix("\r")
            if not line:
                if self._data or self._fields:
                    out.append(Sse(data="\n".join(self._data), **self._fields))
                self._fields, self._data = {}, []
            elif line.startswith(":"):
                out.append(Sse(event="", comment=line[1:].strip()))
            else:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "data":
                    self._data.append(value)
                elif name in ("event", "id"):
                    self._fields[name] = value
        return out


class SseStream:
    """An open event stream read by a background task; tests wait for events."""

    def __init__(self, response: httpx2.Response) -> None:
        self.response = response
        self.events: list[Sse] = []
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        parser = SseParser()
        try:
            async for chunk in self.response.aiter_raw():
                found = [e for e in parser.feed(chunk) if e.comment is None]
                async with self._changed:
                    self.events.extend(found)
                    self._changed.notify_all()
        finally:
            async with self._changed:
                self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[Sse], bool], timeout: float = 20) -> Sse:
        async def find() -> Sse:
            async with self._changed:
                while True:
                    for event in self.events:
                        if predicate(event):
                            return event
                    if self._task.done():
                        raise AssertionError(f"stream ended; got {[e.event for e in self.events]}")
                    await self._changed.wait()

        return await asyncio.wait_for(find(), timeout)

    def deltas(self) -> list[Sse]:
        return [e for e in self.events if e.event == "delta"]

    async def close(self) -> None:
        """Disconnect, as a closed browser tab would."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self.response.aclose()


async def open_stream(session: Session, conversation_id: str, last_event_id: str = "") -> SseStream:
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    # Read timeout above the server's 15 s keep-alive: silence is not an error.
    request = session.http.build_request(
        "GET", events_url(conversation_id), headers=headers, timeout=httpx2.Timeout(10, read=30)
    )
    response = await session.http.send(request, stream=True)
    assert response.status_code == 200, (await response.aread())[:500]
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    return SseStream(response)
