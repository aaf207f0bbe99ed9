"""The stream runner: reads one chat-completions stream and relays it in coalesced deltas.

It knows nothing of Channels or the database: it takes a client, the request, and two
callbacks (`publish` for each flush, `checkpoint` for the periodic save), and returns a
`StreamOutcome` for the caller to store. The read loop never awaits a publish or a save:
it appends to a buffer that a flusher task drains at most every `flush_s`, so a slow
layer cannot slow the upstream read.
"""

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai

from chat.domain.tokens import estimate_prompt_tokens
from chat.exceptions import StreamError
from chat.text import clean_model_text
from chat.upstream import chunks
from chat.upstream.errors import translate_error

log = logging.getLogger(__name__)

Publish = Callable[[int, str], Awaitable[None]]  # (seq, text)
# (text of deltas 1..seq, seq) -> False when the generation no longer holds its message
# (another process stored it, judging this runner dead): the runner then stops.
Checkpoint = Callable[[str, int], Awaitable[bool]]

COMPLETE, CANCELLED, FAILED, INTERRUPTED = "complete", "cancelled", "failed", "interrupted"
# Not a stored status: the message was stored by someone else, so this runner stores and
# announces nothing.
LOST = "lost"


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    estimated: bool = False


@dataclass
class StreamOutcome:
    """What happened, for the caller to store and announce."""

    status: str
    content: str
    seq: int
    model: str
    finish_reason: str = ""
    usage: Usage | None = None
    error: StreamError | None = None
    ttft_ms: int | None = None
    duration_ms: int = 0


@dataclass
class StreamRequest:
    model: str
    messages: Sequence[dict[str, str]]
    max_tokens: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def without_read_timeout(timeout: float | httpx2.Timeout | None) -> httpx2.Timeout:
    """The client's timeouts but the one per read: a stalled stream is the runner's own
    idle limit's to end (`_until_stopped_or_idle`, which also sees keep-alive comments
    that a read timeout counts as progress), and a read timeout is a timer armed and
    cancelled for every read of every stream."""
    base = timeout if isinstance(timeout, httpx2.Timeout) else httpx2.Timeout(timeout)
    return httpx2.Timeout(connect=base.connect, read=None, write=base.write, pool=base.pool)


class StreamRunner:
    """Runs one generation; `stop(reason)` ends it early from any task."""

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        request: StreamRequest,
        *,
        publish: Publish,
        checkpoint: Checkpoint | None = None,
        flush_s: float = 0.03,
        checkpoint_s: float = 2.0,
        idle_timeout_s: float = 60.0,
    ) -> None:
        self._client = client
        self._request = request
        self._publish = publish
        self._checkpoint = checkpoint
        self._flush_s = flush_s
        self._checkpoint_s = checkpoint_s
        self._idle_timeout_s = idle_timeout_s
        self._idle_error: StreamError | None = None
        self._buffer: list[str] = []
        self._published: list[str] = []  # text of each published delta, by seq - 1
        self._wake = asyncio.Event()
        self._reading_done = asyncio.Event()
        self._window: asyncio.Future[None] | None = None  # the flush window being waited
        self._flushing: Awaitable[None] | None = None  # a flush its window's end started
        self._stop_reason: str | None = None
        self._stop_requested = asyncio.Event()
        self._pieces = 0
        self._model = request.model
        self._finish_reason = ""
        self._usage: Usage | None = None
        self._first_token_at: float | None = None
        self._started = time.monotonic()
        self._last_chunk_at = self._started
        self._stream_open = False

    @property
    def seq(self) -> int:
        return len(self._published)

    def stop(self, reason: str = CANCELLED) -> None:
        """End the generation: `cancelled` by a user, `interrupted` by shutdown, or
        LOST when its message was stored elsewhere (nothing more is published then)."""
        if reason == LOST:
            self._stop_reason = LOST  # overrides any other reason: nothing is stored
            self._stop_requested.set()
        elif self._stop_reason is None:
            self._stop_reason = reason
            self._stop_requested.set()

    async def run(self) -> StreamOutcome:
        self._started = self._last_chunk_at = time.monotonic()
        flusher = asyncio.create_task(self._flush_loop(), name="stream-flusher")
        checkpointer = asyncio.create_task(self._checkpoint_loop(), name="stream-checkpoint")
        reader = asyncio.create_task(self._read(), name="stream-reader")
        stopper = asyncio.create_task(self._until_stopped_or_idle(), name="stream-watch")
        error: StreamError | None = None
        try:
            await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not reader.done():
                # Stop relaying at once; the upstream connection is closed by the reader.
                reader.cancel()
            try:
                await reader
            except asyncio.CancelledError:
                if self._stop_reason is None and self._idle_error is None:
                    raise
            except Exception as exc:
                error = translate_error(exc, mid_stream=self._stream_open)
            error = error or self._idle_error
        finally:
            stopper.cancel()
            if not reader.done():
                reader.cancel()
            self._reading_done.set()
            self._end_window()
            self._wake.set()
            checkpointer.cancel()
            await asyncio.gather(flusher, checkpointer, return_exceptions=True)
        return self.outcome(error)

    async def _until_stopped_or_idle(self) -> None:
        # Our own idle limit: the HTTP read timeout never fires for an upstream that
        # keeps the connection busy with keep-alive comments but sends no chunk.
        check_every = min(1.0, self._idle_timeout_s / 4)
        while True:
            try:
                await asyncio.wait_for(self._stop_requested.wait(), check_every)
                return
            except TimeoutError:
                if time.monotonic() - self._last_chunk_at > self._idle_timeout_s:
                    self._idle_error = StreamError("timeout", "The model stopped sending.")
                    return

    def outcome(self, error: StreamError | None = None) -> StreamOutcome:
        """The result so far (final once `run` has returned)."""
        content = "".join(self._published)
        status = COMPLETE
        if self._stop_reason is not None:
            status = self._stop_reason
        elif error is not None:
            status = FAILED
        elif not self._finish_reason:
            # A cut connection may end the iteration without raising: no finish_reason
            # means the answer is not complete.
            status, error = FAILED, StreamError("upstream_error", "The model's answer was cut off.")
        elif self._finish_reason == "content_filter":
            status = FAILED
            error = StreamError(
                "content_filtered", "The model's content filter stopped the answer."
            )
        usage = self._usage
        if usage is None and (self._pieces or status == COMPLETE):
            prompt = estimate_prompt_tokens(self._request.messages)
            usage = Usage(prompt, self._pieces, prompt + self._pieces, estimated=True)
        ttft = None
        if self._first_token_at is not None:
            ttft = round((self._first_token_at - self._started) * 1000)
        return StreamOutcome(
            status=status,
            content=content,
            seq=self.seq,
            model=self._model,
            finish_reason=self._finish_reason,
            usage=usage,
            error=error,
            ttft_ms=ttft,
            duration_ms=round((time.monotonic() - self._started) * 1000),
        )

    async def _read(self) -> None:
        request = self._request
        body: dict[str, Any] = {
            **request.extra,
            "model": request.model,
            "messages": list(request.messages),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.max_tokens:
            body["max_tokens"] = request.max_tokens
        # The SDK retries connection errors, 429 and 5xx while sending the request only,
        # never once the stream has started: no answer is billed or shown twice.
        # `cast_to=object`: chunks arrive as dicts, no model object built per chunk, their
        # SSE decoded by the stream class of `chunks` (docs/decisions.md says why) with
        # the SDK's errors for error events and broken reads.
        post = functools.partial(
            self._client.post,
            "/chat/completions",
            cast_to=object,
            stream=True,
            stream_cls=chunks.stream_class(),
            options={"timeout": without_read_timeout(self._client.timeout)},
        )
        try:
            stream = await post(body=body)
        except openai.BadRequestError as exc:
            # Some OpenAI-compatible servers predate stream_options and refuse it: ask
            # again without it (usage is then estimated and flagged).
            if "stream_options" not in str(exc):
                raise
            del body["stream_options"]
            stream = await post(body=body)
        self._stream_open = True
        try:
            async for chunk in stream:
                self._take_chunk(chunk)
        finally:
            await stream.close()

    def _take_chunk(self, chunk: Any) -> None:
        self._last_chunk_at = time.monotonic()
        if not isinstance(chunk, dict):
            return
        if chunk.get("model"):
            self._model = chunk["model"]
        u = chunk.get("usage")
        if isinstance(u, dict):
            self._usage = Usage(
                u.get("prompt_tokens") or 0,
                u.get("completion_tokens") or 0,
                u.get("total_tokens") or 0,
            )
        # The usage chunk has no choices; servers may also send role-only or empty deltas.
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else None
            if text:
                text = clean_model_text(text)
                if self._first_token_at is None:
                    self._first_token_at = time.monotonic()
                self._pieces += 1
                self._buffer.append(text)
                self._wake.set()
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]

    async def _flush_loop(self) -> None:
        # The first delta after a quiet spell goes out at once; later ones wait for the
        # window so a fast upstream becomes a few larger frames instead of many tiny ones.
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._flush()
            if self._reading_done.is_set():
                if not self._buffer:
                    return
                continue
            # Wait out the window, or less if reading ends: the last delta goes at once.
            # A bare future and timer: `asyncio.wait_for` cost a task, its cancellation
            # and two more loop turns per flush.
            self._window = loop.create_future()
            timer = loop.call_later(self._flush_s, self._end_window)
            try:
                await self._window
            finally:
                timer.cancel()
                self._window = None

    def _end_window(self) -> None:
        if self._window is not None and not self._window.done():
            # The flush starts here, in the timer's callback, rather than when the
            # flusher task wakes on the loop's next turn: under load a turn is
            # milliseconds, added to every delta the window held.
            if self._buffer and self._flushing is None:
                self._flushing = self._start_flush()
            self._window.set_result(None)

    def _start_flush(self) -> Awaitable[None] | None:
        """Take the buffer as the next delta and call `publish` (which may start its
        write at once); what it returns is awaited by `_flush`."""
        if self._stop_reason == LOST:
            self._buffer.clear()  # nothing more goes out: the message is not ours
            return None
        text = "".join(self._buffer)
        self._buffer.clear()
        self._published.append(text)
        try:
            return self._publish(self.seq, text)
        except Exception:
            log.warning("publishing delta %s failed", self.seq, exc_info=True)
            return None

    async def _flush(self) -> None:
        publishing, self._flushing = self._flushing, None
        if publishing is None and self._buffer:
            publishing = self._start_flush()
        if publishing is None:
            return
        try:
            await publishing
        except Exception:
            # Viewers recover from a lost delta by snapshot; the text itself is kept here.
            log.warning("publishing delta %s failed", self.seq, exc_info=True)

    async def _checkpoint_loop(self) -> None:
        if self._checkpoint is None:
            return
        saved_seq = -1
        while True:
            await asyncio.sleep(self._checkpoint_s)
            seq = self.seq
            text = "".join(self._published)
            try:
                held = await self._checkpoint(text, seq)
            except Exception:
                log.warning(
                    "checkpoint at seq %s failed (last saved %s)", seq, saved_seq, exc_info=True
                )
                continue
            if held is False:
                log.warning("the message was stored elsewhere: this runner stops")
                self.stop(LOST)
                return
            saved_seq = seq
