"""In-process simulator: an `httpx2` transport that answers OpenAI requests without sockets.

Example::

    import openai
    from chat.simulator import SimulatorTransport

    client = openai.AsyncOpenAI(
        api_key="sim",
        base_url="http://simulator.invalid/v1",
        http_client=openai.DefaultAsyncHttpxClient(transport=SimulatorTransport()),
    )

or simply ``client = simulator_client()``. A plain ``httpx2.AsyncClient(transport=...)``
works too; ``openai.DefaultAsyncHttpxClient`` only adds the SDK's timeout and pool defaults.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import openai

from chat.simulator.plan import Drop, Emit, End, Event, Plan, Sleep
from chat.simulator.script import SimSettings, Simulator

SIM_BASE_URL = "http://simulator.invalid/v1"
YIELD_EVERY = 64
DROP_MESSAGE = (
    "peer closed connection without sending complete message body (incomplete chunked read)"
)


class PlanStream(httpx2.AsyncByteStream):
    """A response body that walks a plan's events, sleeping with asyncio."""

    def __init__(self, events: Iterator[Event]) -> None:
        self._events = events

    async def __aiter__(self) -> AsyncIterator[bytes]:
        # An async generator: httpx2 closes it when the reader stops early, which ends
        # any pending sleep at once instead of leaving a task behind.
        for index, event in enumerate(self._events):
            if isinstance(event, Sleep):
                await asyncio.sleep(event.seconds)
            elif isinstance(event, Emit):
                if index % YIELD_EVERY == 0:
                    # Let other tasks run even when the plan has no delays.
                    await asyncio.sleep(0)
                yield event.data()
            elif isinstance(event, Drop):
                raise httpx2.RemoteProtocolError(DROP_MESSAGE)
            elif isinstance(event, End):
                return

    async def aclose(self) -> None:
        """Stop the plan; later events are never produced."""
        close = getattr(self._events, "close", None)
        if close is not None:
            close()


class SimulatorTransport(httpx2.AsyncBaseTransport):
    """Serves the simulator in-process; one instance keeps one set of `times=K` counters."""

    def __init__(self, settings: SimSettings | None = None) -> None:
        self.simulator = Simulator(settings or SimSettings())

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        """Build the plan for the request and return its streaming response."""
        body = await request.aread()
        plan: Plan = self.simulator.handle(request.method, request.url.path, body)
        headers = list(plan.headers)
        if plan.content_length is not None:
            headers.append(("content-length", str(plan.content_length)))
        return httpx2.Response(
            plan.status,
            headers=headers,
            stream=PlanStream(plan.events),
            extensions={"http_version": b"HTTP/1.1"},
        )


def simulator_client(
    settings: SimSettings | None = None, **client_kwargs: Any
) -> openai.AsyncOpenAI:
    """An `AsyncOpenAI` client wired to a fresh in-process simulator."""
    client_kwargs.setdefault("api_key", "sim")
    client_kwargs.setdefault("base_url", SIM_BASE_URL)
    http_client = openai.DefaultAsyncHttpxClient(transport=SimulatorTransport(settings))
    return openai.AsyncOpenAI(http_client=http_client, **client_kwargs)


def in_process(*, chunk_ms: float, ttft_ms: float) -> SimulatorTransport:
    """The transport the app's client uses when no upstream is configured (the setting
    SIMULATOR_TRANSPORT names this function)."""
    return SimulatorTransport(SimSettings(chunk_ms=chunk_ms, ttft_ms=ttft_ms))
