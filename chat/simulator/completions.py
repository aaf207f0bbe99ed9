"""Chat completions: the request, the reply being produced, and its OpenAI framing
(a ``chat.completion`` object, or the events of a streamed answer).

A `Completion` makes its tokens as they are read and counts them as it goes, so an
answer costs what it sends: a stream cut by ``max_tokens``, by a fault or by a client
that leaves makes only the tokens it got to, and its usage (sent last) counts them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from chat.simulator.faults import Fault
from chat.simulator.plan import (
    DONE,
    KEEPALIVE,
    BadRequest,
    Drop,
    Emit,
    End,
    Event,
    Sleep,
    error_body,
    sse,
)
from chat.simulator.replies import count_prompt_tokens, reply_tokens

SYSTEM_FINGERPRINT = "fp_sim"
MID_STREAM_ERROR_MESSAGE = "The server had an error while processing your request."
FINISH_REASONS = frozenset({"stop", "length", "content_filter"})
MID_STREAM_FAULTS = frozenset({"error_after", "drop_after", "cut_after", "stall_after"})


@dataclass
class ChatRequest:
    """The parts of a chat completion request the simulator uses."""

    model: str
    messages: list[dict[str, Any]]
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    has_stream_options: bool = False


def parse_chat_request(body: Any) -> ChatRequest:
    """Validate a decoded chat completion body."""
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide a model parameter", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise BadRequest("'messages' must be a list of message objects", "messages")
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise BadRequest("max_tokens must be a non-negative integer", "max_tokens")
    options = body.get("stream_options")
    return ChatRequest(
        model=model,
        messages=messages,
        stream=bool(body.get("stream")),
        include_usage=isinstance(options, dict) and bool(options.get("include_usage")),
        max_tokens=limit,
        has_stream_options="stream_options" in body,
    )


@dataclass
class Completion:
    """A reply being produced for one chat request.

    Reading `tokens` makes the reply's tokens one at a time, at most `max_tokens` of
    them; `sent` counts those read so far, and `cut` says the limit stopped the reply.
    `finish_reason` and `usage` are final once `tokens` is exhausted."""

    id: str
    created: int
    model: str
    reply: Iterator[str]
    prompt_tokens: int
    max_tokens: int | None = None
    forced_finish: str | None = None
    sent: int = 0
    cut: bool = False
    tokens: Iterator[str] = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = self._produce()

    def _produce(self) -> Iterator[str]:
        """The reply's tokens up to the limit, counted as they are made."""
        for token in self.reply:
            if self.max_tokens is not None and self.sent >= self.max_tokens:
                self.cut = True
                return
            self.sent += 1
            yield token

    @property
    def finish_reason(self) -> str:
        """The forced reason, else "length" when cut by `max_tokens`, else "stop"."""
        return self.forced_finish or ("length" if self.cut else "stop")

    @property
    def usage(self) -> dict[str, int]:
        """OpenAI's usage object for the tokens made so far."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.sent,
            "total_tokens": self.prompt_tokens + self.sent,
        }


def build_completion(
    request: ChatRequest, directives: Mapping[str, str], prompt: str, id_: str, created: int
) -> Completion:
    """The completion of a request; no reply token is made until `tokens` is read."""
    finish = directives.get("finish")
    return Completion(
        id=id_,
        created=created,
        model=request.model,
        reply=reply_tokens(prompt, directives),
        prompt_tokens=count_prompt_tokens(request.messages),
        max_tokens=request.max_tokens,
        forced_finish=finish if finish in FINISH_REASONS else None,
    )


def completion_object(c: Completion, content: str) -> dict[str, Any]:
    """The non-streaming `chat.completion` response, once `content` has been read."""
    return {
        "id": c.id,
        "object": "chat.completion",
        "created": c.created,
        "model": c.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": content,
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": c.finish_reason,
            }
        ],
        "usage": c.usage,
    }


def _chunk(c: Completion, choices: list[dict[str, Any]], usage: Any = None) -> dict[str, Any]:
    """One `chat.completion.chunk` object."""
    return {
        "id": c.id,
        "object": "chat.completion.chunk",
        "created": c.created,
        "model": c.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": choices,
        "usage": usage,
    }


def _choice(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    """The single streamed choice."""
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def _content_event(c: Completion, token: str, clock: Callable[[], float]) -> Emit:
    """A content chunk whose `sim_ts` is taken when it is sent."""
    # Serialise everything but the timestamp once; splice the time in at emission.
    head = sse(_chunk(c, [_choice({"content": token})]))[: -len(b"}\n\n")]
    return Emit(lambda: head + b',"sim_ts":' + repr(clock()).encode() + b"}\n\n")


@dataclass(frozen=True)
class StreamOptions:
    """Per-request stream shaping taken from directives and settings."""

    ttft_s: float
    chunk_s: float
    include_usage: bool
    role_chunk: str
    keepalive: bool
    fault: Fault | None


def _fault_events(fault: Fault) -> Iterator[Event]:
    """The events of a mid-stream fault; the stream goes on after them only for a stall."""
    if fault.kind == "error_after":
        yield Emit(sse(error_body(MID_STREAM_ERROR_MESSAGE, "server_error")))
        yield End()
    elif fault.kind == "drop_after":
        yield Drop()
    elif fault.kind == "cut_after":
        yield End()
    elif fault.kind == "stall_after":
        yield Sleep(fault.stall_s)


def stream_events(
    c: Completion, opts: StreamOptions, clock: Callable[[], float]
) -> Iterator[Event]:
    """The SSE events of a streamed completion, including any mid-stream fault."""
    if opts.keepalive:
        yield Emit(KEEPALIVE)
    if opts.ttft_s > 0:
        yield Sleep(opts.ttft_s)
    if opts.role_chunk != "none":
        delta: dict[str, str] = {"role": "assistant"}
        if opts.role_chunk != "bare":
            delta["content"] = ""
        yield Emit(sse(_chunk(c, [_choice(delta)])))
    fault = opts.fault if opts.fault is not None and opts.fault.kind in MID_STREAM_FAULTS else None
    sent = 0
    for token in c.tokens:
        if fault is not None and sent == fault.n:
            yield from _fault_events(fault)
            if fault.kind != "stall_after":
                return
        if sent > 0:
            if opts.chunk_s > 0:
                yield Sleep(opts.chunk_s)
            if opts.keepalive:
                yield Emit(KEEPALIVE)
        yield _content_event(c, token, clock)
        sent += 1
    if fault is not None and sent <= fault.n:
        # The reply had no more than n tokens: the fault comes after the last one.
        yield from _fault_events(fault)
        if fault.kind != "stall_after":
            return
    # Rendered only now, when the finish reason and the token count are final.
    yield Emit(sse(_chunk(c, [_choice({}, c.finish_reason)])))
    if opts.include_usage:
        yield Emit(sse(_chunk(c, [], c.usage)))
    yield Emit(DONE)
    yield End()
