"""The chat-completions stream as dicts, decoded with a few Python calls per network read.

The SDK's `AsyncStream` hands each chunk up through seven async generators (the
transport's, httpx2's raw and decoded bytes, the SSE decoder's, its events', the
stream's own) and decodes the SSE line by line in Python: about 200 microseconds of CPU
per chunk on the benchmark machine, which at 60 chunks a second per running answer made
the upstream read the largest cost of a loaded server (bench/upstream_cost.py,
bench/REPORT.md). `ChunkStream` is the same stream class (the SDK still sends the
request, retries before the first byte, maps HTTP errors and closes the response); only
its `__stream__` is replaced: it reads the response's bytes directly and splits whole
events out of each read at once. What it yields and raises is what the SDK's yields and
raises for a chat-completions stream: the `data` of each event as a dict (`cast_to`
object), an `APIError` for an `error` event, the SDK's timeout and connection errors for
a broken read, and nothing after `[DONE]`.
"""

import codecs
import json
from collections.abc import AsyncIterator
from typing import Any

import openai
from openai._streaming import drain_response_async, request_exceptions, timeout_exceptions

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
