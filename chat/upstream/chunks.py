"""The chat-completions stream as dicts, decoded with a few Python calls per network read:
the project's one reach into the SDK's internals (OPENAI_CHUNK_STREAM).

The SDK's `AsyncStream` hands each chunk up through seven async generators and decodes the
SSE line by line in Python. `ChunkStream` is the same stream class (the SDK still sends the
request, retries before the first byte, maps HTTP errors and closes the response); only
its `__stream__` is replaced: it reads the response's bytes directly and splits whole
events out of each read at once. What it yields and raises is what the SDK's yields and
raises for a chat-completions stream: the `data` of each event as a dict (`cast_to`
object), an `APIError` for an `error` event, the SDK's timeout and connection errors for
a broken read, and nothing after `[DONE]`.

It uses three helpers of the SDK's private `_streaming` module and the stream class's
`__stream__` hook, so it is checked at import (`AVAILABLE`: they exist and the installed
openai is within `VERSION_BOUNDS`, which pyproject.toml repeats), can be turned off
(`OPENAI_CHUNK_STREAM=0`: the SDK's own `AsyncStream`), and the startup log says which
runs (`describe`). `stream_class` is what callers use.
"""

import codecs
import json
from collections.abc import AsyncIterator
from importlib.metadata import version
from typing import Any

import openai

# The releases this module was written and tested against (pyproject.toml says the same).
VERSION_BOUNDS = {"openai": ((3, 0), (4,))}


def _self_check() -> str | None:
    """Why the SDK's internals cannot be used here, or None when they can."""
    found = tuple(int(p) for p in version("openai").split(".")[:2] if p.isdigit())
    low, high = VERSION_BOUNDS["openai"]
    if not low <= found < high:
        return f"openai {version('openai')} is outside the tested range"
    try:
        from openai import _streaming
    except ImportError:
        return "openai has no _streaming module"
    missing = [
        name
        for name in ("drain_response_async", "request_exceptions", "timeout_exceptions")
        if not hasattr(_streaming, name)
    ]
    if missing or not hasattr(openai.AsyncStream, "__stream__"):
        return f"openai lacks {', '.join(missing) or 'AsyncStream.__stream__'}"
    return None


UNAVAILABLE_BECAUSE = _self_check()
AVAILABLE = UNAVAILABLE_BECAUSE is None
if AVAILABLE:
    from openai._streaming import drain_response_async, request_exceptions, timeout_exceptions


def stream_class() -> type[openai.AsyncStream]:
    """The stream class of the chat stream: ChunkStream, or the SDK's own when the
    internals are off or unavailable."""
    from django.conf import settings

    if AVAILABLE and settings.OPENAI_CHUNK_STREAM:
        return ChunkStream
    return openai.AsyncStream[object]


def describe() -> str:
    """The startup log's line about this module."""
    from django.conf import settings

    if AVAILABLE and settings.OPENAI_CHUNK_STREAM:
        return "upstream chunks: split by the app's own stream class (OPENAI_CHUNK_STREAM)"
    why = "OPENAI_CHUNK_STREAM=0" if AVAILABLE else UNAVAILABLE_BECAUSE
    return f"upstream chunks: the SDK's own stream class ({why})"


STREAM_ERROR = "An error occurred during streaming"  # the SDK's words for an error event


class ChunkStream(openai.AsyncStream[object]):
    async def __stream__(self) -> AsyncIterator[Any]:
        response = self.response
        # Raw bytes skip httpx2's content decoding, needed only for a compressed body.
        encoded = response.headers.get("content-encoding", "identity") != "identity"
        reads = response.aiter_bytes() if encoded else response.aiter_raw()
        events = EventSplitter()
        try:
            try:
                async for block in reads:
                    for data in events.feed(block):
                        if data.startswith("[DONE]"):
                            # HTTP/1.1 needs the rest of the body read to reuse the
                            # connection (as the SDK does).
                            if response.http_version == "HTTP/1.1":
                                await drain_response_async(response)
                            return
                        yield _chunk(data, response)
                for data in events.finish():
                    if not data.startswith("[DONE]"):
                        yield _chunk(data, response)
            except timeout_exceptions() as err:
                raise openai.APITimeoutError(request=response.request) from err
            except request_exceptions() as err:
                raise openai.APIConnectionError(request=response.request) from err
        finally:
            await response.aclose()


def _chunk(data: str, response: Any) -> Any:
    chunk = json.loads(data)
    if isinstance(chunk, dict) and chunk.get("error"):
        error = chunk["error"]
        message = error.get("message") if isinstance(error, dict) else None
        raise openai.APIError(
            message=message if message and isinstance(message, str) else STREAM_ERROR,
            request=response.request,
            body=error,
        )
    return chunk


class EventSplitter:
    """Server-sent events out of a byte stream: `feed` returns the `data` of each event
    completed by the bytes given (its `data:` lines joined by newlines), in order.
    Events without data, comments and the other fields are skipped, as the SDK skips
    them for chat completions. Lines may end in CRLF, LF or CR, split anywhere."""

    def __init__(self) -> None:
        self._buffer = ""
        self._pending_cr = False
        # A character's bytes may be split across reads too.
        self._decode = codecs.getincrementaldecoder("utf-8")().decode

    def feed(self, block: bytes) -> list[str]:
        text = self._decode(block)
        if self._pending_cr:
            text = "\r" + text
        # A CR at the end may be the first half of a CRLF split across reads.
        self._pending_cr = text.endswith("\r")
        if self._pending_cr:
            text = text[:-1]
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        *complete, self._buffer = (self._buffer + text).split("\n\n")
        return [data for event in complete if (data := _data_of(event)) is not None]

    def finish(self) -> list[str]:
        """At the end of the stream: the event a last, held-back CR completes, if any
        (an event the stream leaves unfinished is dropped, as by the SDK)."""
        if not self._pending_cr:
            return []
        self._pending_cr = False
        return self.feed(b"\n")


def _data_of(event: str) -> str | None:
    if event.startswith("data: ") and "\n" not in event:
        return event[6:]  # the usual event: one data line
    data = None
    for line in event.split("\n"):
        field, _, value = line.partition(":")
        if field != "data":
            continue
        value = value[1:] if value.startswith(" ") else value
        data = value if data is None else f"{data}\n{value}"
    return data
