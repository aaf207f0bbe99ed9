"""What to answer one request with: a `Plan` of events, JSON and SSE framing, and the
refusal of a bad request. The transports walk plans; nothing here does I/O."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"
STREAM_HEADERS = [
    ("content-type", "text/event-stream; charset=utf-8"),
    ("cache-control", "no-cache"),
]


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait this long before the next event."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Emit:
    """Send bytes; a callable payload is rendered at emission time (fresh `sim_ts`)."""

    payload: bytes | Callable[[], bytes]

    def data(self) -> bytes:
        """The bytes to send now."""
        return self.payload() if callable(self.payload) else self.payload


@dataclass(frozen=True, slots=True)
class Drop:
    """Cut the connection abruptly, mid-body."""


@dataclass(frozen=True, slots=True)
class End:
    """Finish the body cleanly."""


Event = Sleep | Emit | Drop | End


@dataclass
class Plan:
    """What to answer: status, headers, then events; `streaming` means chunked SSE.

    `events` is lazy: each event is made when it is read, and closing the iterator (when
    it has a `close()`) stops the answer without making the rest."""

    status: int
    headers: list[tuple[str, str]]
    events: Iterator[Event]
    streaming: bool = False
    content_length: int | None = None


class BadRequest(Exception):
    """A request the simulator refuses with a 400."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def dumps(obj: Any) -> bytes:
    """Compact JSON, as OpenAI sends it."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def sse(obj: Any) -> bytes:
    """One server-sent event carrying JSON data."""
    return b"data: " + dumps(obj) + b"\n\n"


def error_body(
    message: str, type_: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """OpenAI's error body shape."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def json_plan(
    status: int,
    obj: Any,
    headers: Sequence[tuple[str, str]] = (),
    delay: float = 0.0,
) -> Plan:
    """A plan answering with a JSON body (after an optional delay)."""
    body = dumps(obj)
    events: list[Event] = [Sleep(delay)] if delay > 0 else []
    events += [Emit(body), End()]
    return Plan(
        status=status,
        headers=[("content-type", "application/json"), *headers],
        events=iter(events),
        content_length=len(body),
    )


def error_plan(status: int, message: str, type_: str, code: str | None = None, **kw: Any) -> Plan:
    """A plan answering with an OpenAI error body."""
    return json_plan(status, error_body(message, type_, code), **kw)
