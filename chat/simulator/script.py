"""Deterministic, offline stand-in for the OpenAI API: the pure logic ("sim").

Nothing here does I/O. `Simulator.handle()` turns one HTTP request into a `Plan`:
a status, headers and a lazy sequence of events (`Sleep`, `Emit`, `Drop`, `End`).
The in-process transport (`transport.py`) and the socket server (`server.py`) only
walk that plan, so both behave identically.

Endpoints
---------
``POST /v1/chat/completions``
    OpenAI-shaped request (`model`, `messages`, `stream`, `stream_options`,
    `max_tokens` / `max_completion_tokens`). With ``stream=true`` the body is
    ``text/event-stream``: a role chunk, one chunk per token (each with a top-level
    ``sim_ts`` float, the ``time.time()`` at emission), a finish chunk, an optional
    usage chunk (``stream_options.include_usage``) and ``data: [DONE]``. Without
    streaming: a ``chat.completion`` object, sent after ``ttft_ms + chunk_ms * tokens``.
    When the reply has more tokens than the max, it is cut and finish_reason is
    "length".
``POST /v1/moderations``
    ``input`` is a string or a list of strings; one result per input. An input
    containing the word ``flagme`` (any case) is flagged ``violence`` (score 0.97);
    an input containing ``[[flag:<category>]]`` is flagged with that standard
    category (0.97). Everything else is not flagged, all scores 0.001. The
    ``fault=http_429`` / ``fault=http_500`` directives (below) work here too.
``GET /v1/models``
    The model names from `SimSettings.models`.

Anything else is a 404 (a known path with the wrong method is a 405); invalid JSON
is a 400. Errors use OpenAI's body ``{"error": {"message", "type", "param", "code"}}``.

Reply text
----------
The reply answers the last ``user`` message (string content, or the joined ``text``
parts of a list). In order of precedence:

1. directive ``reply=<percent-encoded text>``: exactly that text (``+`` is a space);
2. directive ``words=N``: exactly N words from a built-in word list;
3. text matching ``count to (\\d+)`` (any case): ``"1, 2, ..., N"`` (N capped at 100000);
4. otherwise 2-5 sentences of built-in words.

Random choices are seeded with the sha256 of the prompt text (directives removed),
so the same prompt gives the same reply in every process.

Tokens: `tokenize()` splits like OpenAI's tokenizers do, roughly: a word with at most
one leading space, digit runs of at most 3, each punctuation character alone, other
whitespace runs alone. ``"1, 2, 3"`` -> ``["1", ",", " ", "2", ",", " ", "3"]``.
``completion_tokens`` is the number of content chunks; ``prompt_tokens`` is
``sum(len(tokenize(content)) + 3 for each message) + 3``.

Directives
----------
Written anywhere in the last user message as ``[[sim key=value key=value ...]]``; the
directive is removed from the prompt before the reply is computed. Several directives
merge (later keys win). Unknown keys and malformed values are ignored.

``ttft_ms=F``       delay before the first chunk (default: server/transport setting); in a
                    moderation input, delay before the moderation answer (default 0).
``chunk_ms=F``      delay between content chunks (default: server/transport setting).
``fault=http_429``  429 before any stream, error type "requests", code
                    "rate_limit_exceeded", headers ``retry-after-ms: <retry_after_ms>``
                    and ``retry-after: <ceil seconds>``; ``retry_after_ms=N`` (default 50).
``fault=http_500``  500 before any stream, error type "server_error".
``fault=error_after``  after ``n=N`` content chunks, send the SSE event
                    ``data: {"error": {...type "server_error"...}}`` and end the body
                    (no ``[DONE]``).
``fault=drop_after``   after ``n=N`` content chunks, cut the connection abruptly (the
                    chunked body never terminates).
``fault=cut_after``    after ``n=N`` content chunks, end the body cleanly without the
                    finish chunk, the usage chunk or ``[DONE]`` (silent truncation).
``fault=stall_after``  after ``n=N`` content chunks, send nothing for ``stall_s=F``
                    seconds (default 3600) with the connection open, then continue.
``n=N``             chunk count for the ``*_after`` faults (default 0). When the reply
                    has fewer tokens, the fault happens after the last one.
``times=K``         the fault hits only the first K requests carrying this exact
                    directive text (counted per simulator instance); later ones succeed.
                    Default: every request.
``usage=off``       never send the usage chunk, whatever ``stream_options`` says.
``stream_options=reject``  answer 400 "Unrecognized request argument supplied:
                    stream_options" when the request has ``stream_options``, like
                    servers that predate it.
``role_chunk=bare`` first chunk delta is ``{"role": "assistant"}`` (no content key);
``role_chunk=none`` no role chunk at all.
``keepalive=1``     send ``: keep-alive`` SSE comments before the first chunk and
                    between chunks.
``finish=stop|length|content_filter``  force that finish_reason.

The ``*_after`` faults only apply to streaming requests.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

MAX_COUNT = 100_000
DEFAULT_STALL_S = 3600.0
DEFAULT_RETRY_AFTER_MS = 50
SYSTEM_FINGERPRINT = "fp_sim"
KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"
MID_STREAM_ERROR_MESSAGE = "The server had an error while processing your request."

MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
FLAGGED_SCORE = 0.97
UNFLAGGED_SCORE = 0.001

_WORD_TEXT = """
the a an and but or so because while when after before about above across against along
among around behind below beside between beyond during except inside near through toward
under until upon within without time year people way day man woman child world life hand
part place case week company system program question work government number night point
home water room mother area money story fact month lot right study book eye job word
business issue side kind head house service friend father power hour game line end
member law car city community name president team minute idea kid body information back
parent face others level office door health person art war history party result change
morning reason research girl guy moment air teacher force education river garden window
letter market island bridge road is was has had will can could would should might must
make take give find tell ask seem feel try leave call keep let begin show hear play run
move live believe bring happen write provide sit stand lose pay meet include continue
set learn lead understand watch follow stop create speak read allow add spend grow open
walk win offer remember love consider appear buy wait serve die send expect build stay
fall cut reach remain suggest raise pass sell require report decide pull good new first
last long great little own other old big high different small large next early young
important few public bad same able quiet bright simple careful gentle warm cold green
blue quick slow happy calm clear strong soft sharp
"""
WORDS: tuple[str, ...] = tuple(_WORD_TEXT.split())

# A word (letters) with at most one leading space; digit runs of up to 3; whitespace that
# leaves its last space to a following word; any other whitespace run; any other char.
_TOKEN_RE = re.compile(
    r" ?[^\W\d_]+|\d{1,3}|\s+?(?= [^\W\d_])|\s+|.",
    re.DOTALL,
)
_DIRECTIVE_RE = re.compile(r"\[\[sim(?:\s+([^\]]*))?\]\]", re.IGNORECASE)
_COUNT_RE = re.compile(r"count to (\d+)", re.IGNORECASE)
_FLAG_RE = re.compile(r"\[\[flag:([a-z/\-]+)\]\]", re.IGNORECASE)
_FLAGME_RE = re.compile(r"flagme", re.IGNORECASE)


@dataclass(frozen=True)
class SimSettings:
    """Defaults for pacing, overridable per request with directives."""

    chunk_ms: float = 15.0
    ttft_ms: float = 300.0
    models: tuple[str, ...] = ("gpt-4o-mini", "sim-1")


# --- plan events -------------------------------------------------------------------------


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
    """What to answer: status, headers, then events; `streaming` means chunked SSE."""

    status: int
    headers: list[tuple[str, str]]
    events: Iterator[Event]
    streaming: bool = False
    content_length: int | None = None


# --- text ----------------------------------------------------------------------------------


def tokenize(text: str) -> list[str]:
    """Split text into OpenAI-like token pieces; `"".join(tokenize(t)) == t` always."""
    return _TOKEN_RE.findall(text)


def content_text(content: Any) -> str:
    """Text of a message content: a string, or the joined `text` parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "")
            for part in content
            if isinstance(part, Mapping)
            and part.get("type") == "text"
            and isinstance(part.get("text"), str)
        )
    return ""


def count_prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """Prompt tokens: each message costs its tokens plus 3, plus 3 for the reply primer."""
    return sum(len(tokenize(content_text(m.get("content")))) + 3 for m in messages) + 3


def last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """Text of the last message with role "user" (empty if none)."""
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def parse_directives(text: str) -> tuple[str, dict[str, str]]:
    """Remove `[[sim k=v ...]]` directives from text; return (clean text, merged keys)."""
    found: dict[str, str] = {}
    for match in _DIRECTIVE_RE.finditer(text):
        for item in (match.group(1) or "").split():
            key, sep, value = item.partition("=")
            if sep and key:
                found[key.lower()] = value
    return _DIRECTIVE_RE.sub("", text).strip(), found


def directive_key(text: str) -> str:
    """The exact directive text of a message, used to count `times=K` faults."""
    return " ".join(m.group(0) for m in _DIRECTIVE_RE.finditer(text))


def _rng(prompt: str) -> random.Random:
    """A generator seeded from the prompt, stable across processes."""
    return random.Random(int.from_bytes(hashlib.sha256(prompt.encode()).digest(), "big"))


def _sentences(rng: random.Random, word_counts: Sequence[int]) -> str:
    """Capitalised sentences of random words, one per entry of word_counts."""
    out = []
    for count in word_counts:
        words = [rng.choice(WORDS) for _ in range(count)]
        words[0] = words[0].capitalize()
        out.append(" ".join(words) + ".")
    return " ".join(out)


def _split_words(rng: random.Random, total: int) -> list[int]:
    """Split `total` words into sentence lengths of 4-12 words (the last may be shorter)."""
    counts = []
    while total > 0:
        take = min(total, rng.randint(4, 12))
        counts.append(take)
        total -= take
    return counts


def reply_text(prompt: str, directives: Mapping[str, str]) -> str:
    """The deterministic reply for a clean prompt and its directives."""
    if "reply" in directives:
        return unquote_plus(directives["reply"])
    rng = _rng(prompt)
    words = _int(directives.get("words"))
    if words is not None and words >= 0:
        return _sentences(rng, _split_words(rng, words))
    match = _COUNT_RE.search(prompt)
    if match:
        n = min(int(match.group(1)), MAX_COUNT)
        return ", ".join(str(i) for i in range(1, n + 1))
    return _sentences(rng, [rng.randint(5, 14) for _ in range(rng.randint(2, 5))])


def reply_for(messages: Sequence[Mapping[str, Any]]) -> str:
    """The reply the simulator gives to these messages."""
    prompt, directives = parse_directives(last_user_text(messages))
    return reply_text(prompt, directives)


# --- helpers -------------------------------------------------------------------------------


def _int(value: str | None) -> int | None:
    """Parse an int directive value, None when missing or malformed."""
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _float(value: str | None, default: float) -> float:
    """Parse a finite, non-negative float directive value, else the default."""
    try:
        parsed = float(value) if value is not None else default
    except ValueError:
        return default
    return parsed if math.isfinite(parsed) and parsed >= 0 else default


def _retry_after_ms(value: str | None) -> int:
    """The `retry_after_ms` directive, defaulting when missing or negative."""
    parsed = _int(value)
    return parsed if parsed is not None and parsed >= 0 else DEFAULT_RETRY_AFTER_MS


def _dumps(obj: Any) -> bytes:
    """Compact JSON, as OpenAI sends it."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def sse(obj: Any) -> bytes:
    """One server-sent event carrying JSON data."""
    return b"data: " + _dumps(obj) + b"\n\n"


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None):
    """OpenAI's error body shape."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def json_plan(
    status: int,
    obj: Any,
    headers: Sequence[tuple[str, str]] = (),
    delay: float = 0.0,
) -> Plan:
    """A plan answering with a JSON body (after an optional delay)."""
    body = _dumps(obj)
    events: list[Event] = [Sleep(delay)] if delay > 0 else []
    events += [Emit(body), End()]
    return Plan(
        status=status,
        headers=[("content-type", "application/json"), *headers],
        events=iter(events),
        content_length=len(body),
    )


def error_plan(status: int, message: str, type_: str, code: str | None = None, **kw) -> Plan:
    """A plan answering with an OpenAI error body."""
    return json_plan(status, error_body(message, type_, code), **kw)


@dataclass(frozen=True)
class Fault:
    """A fault chosen for one request."""

    kind: str
    n: int = 0
    stall_s: float = DEFAULT_STALL_S
    retry_after_ms: int = DEFAULT_RETRY_AFTER_MS


FAULT_KINDS = frozenset(
    {"http_429", "http_500", "error_after", "drop_after", "cut_after", "stall_after"}
)


def fault_plan(fault: Fault) -> Plan | None:
    """The immediate error response for an HTTP-level fault, else None."""
    if fault.kind == "http_429":
        retry_after = [
            ("retry-after-ms", str(fault.retry_after_ms)),
            ("retry-after", str(math.ceil(fault.retry_after_ms / 1000))),
        ]
        return error_plan(
            429,
            "Rate limit reached (simulated).",
            "requests",
            "rate_limit_exceeded",
            headers=retry_after,
        )
    if fault.kind == "http_500":
        return error_plan(
            500, "The server had an error while processing your request.", "server_error"
        )
    return None


# --- chat completions ----------------------------------------------------------------------


@dataclass
class ChatRequest:
    """The parts of a chat completion request the simulator uses."""

    model: str
    messages: list[dict[str, Any]]
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    has_stream_options: bool = False


class BadRequest(Exception):
    """A request the simulator refuses with a 400."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


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
    """A reply worked out for one chat request, ready to be framed."""

    id: str
    created: int
    model: str
    tokens: list[str]
    finish_reason: str
    usage: dict[str, int]


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's usage object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def build_completion(
    request: ChatRequest, directives: Mapping[str, str], prompt: str, id_: str, created: int
) -> Completion:
    """Work out the reply tokens, finish reason and usage for a request."""
    tokens = tokenize(reply_text(prompt, directives))
    finish = "stop"
    if request.max_tokens is not None and len(tokens) > request.max_tokens:
        tokens, finish = tokens[: request.max_tokens], "length"
    if directives.get("finish") in ("stop", "length", "content_filter"):
        finish = directives["finish"]
    usage = _usage(count_prompt_tokens(request.messages), len(tokens))
    return Completion(id_, created, request.model, tokens, finish, usage)


def completion_object(c: Completion) -> dict[str, Any]:
    """The non-streaming `chat.completion` response."""
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
                    "content": "".join(c.tokens),
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
    fault = opts.fault
    fault_at = min(fault.n, len(c.tokens)) if fault else -1
    for i, token in enumerate([*c.tokens, None]):
        if i == fault_at and fault is not None:
            if fault.kind == "error_after":
                yield Emit(sse(error_body(MID_STREAM_ERROR_MESSAGE, "server_error")))
                yield End()
                return
            if fault.kind == "drop_after":
                yield Drop()
                return
            if fault.kind == "cut_after":
                yield End()
                return
            if fault.kind == "stall_after":
                yield Sleep(fault.stall_s)
        if token is None:
            break
        if i > 0:
            if opts.chunk_s > 0:
                yield Sleep(opts.chunk_s)
            if opts.keepalive:
                yield Emit(KEEPALIVE)
        yield _content_event(c, token, clock)
    yield Emit(sse(_chunk(c, [_choice({}, c.finish_reason)])))
    if opts.include_usage:
        yield Emit(sse(_chunk(c, [], c.usage)))
    yield Emit(DONE)
    yield End()


STREAM_HEADERS = [
    ("content-type", "text/event-stream; charset=utf-8"),
    ("cache-control", "no-cache"),
]


# --- moderations ---------------------------------------------------------------------------


def moderation_result(text: str) -> dict[str, Any]:
    """The moderation verdict for one input, following the documented marker rules."""
    flagged_categories = {m.group(1).lower() for m in _FLAG_RE.finditer(text)}
    if _FLAGME_RE.search(text):
        flagged_categories.add("violence")
    flagged_categories &= set(MODERATION_CATEGORIES)
    return {
        "flagged": bool(flagged_categories),
        "categories": {name: name in flagged_categories for name in MODERATION_CATEGORIES},
        "category_scores": {
            name: FLAGGED_SCORE if name in flagged_categories else UNFLAGGED_SCORE
            for name in MODERATION_CATEGORIES
        },
        "category_applied_input_types": {name: ["text"] for name in MODERATION_CATEGORIES},
    }


def moderation_inputs(body: Any) -> list[str]:
    """The input strings of a moderation request."""
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    value = body.get("input")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise BadRequest("'input' must be a string or a list of strings", "input")


# --- the simulator -------------------------------------------------------------------------


@dataclass
class Simulator:
    """Routes requests to plans; owns the per-instance `times=K` fault counters."""

    settings: SimSettings = field(default_factory=SimSettings)
    clock: Callable[[], float] = time.time
    fault_counts: dict[str, int] = field(default_factory=dict)
    requests_seen: int = 0

    def handle(self, method: str, path: str, body: bytes) -> Plan:
        """Answer one request with a plan."""
        self.requests_seen += 1
        path = path.split("?", 1)[0].rstrip("/") or "/"
        routes: dict[str, tuple[str, Callable[[bytes], Plan]]] = {
            "/v1/chat/completions": ("POST", self._chat),
            "/v1/moderations": ("POST", self._moderations),
            "/v1/models": ("GET", self._models),
        }
        if path not in routes:
            return error_plan(404, f"Unknown path: {method} {path}", "invalid_request_error")
        allowed, handler = routes[path]
        if method.upper() != allowed:
            return error_plan(
                405, f"Method {method} not allowed on {path}", "invalid_request_error"
            )
        try:
            return handler(body)
        except BadRequest as exc:
            return json_plan(400, error_body(str(exc), "invalid_request_error", None, exc.param))

    def _decode(self, body: bytes) -> Any:
        """Decode a JSON request body or refuse it."""
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"We could not parse the JSON body of your request: {exc}") from exc

    def take_fault(self, text: str, directives: Mapping[str, str]) -> Fault | None:
        """The fault requested by directives, honouring and updating the `times` budget."""
        kind = directives.get("fault")
        if kind not in FAULT_KINDS:
            return None
        times = _int(directives.get("times"))
        if times is not None:
            key = directive_key(text)
            seen = self.fault_counts.get(key, 0) + 1
            self.fault_counts[key] = seen
            if seen > times:
                return None
        return Fault(
            kind=kind,
            n=max(_int(directives.get("n")) or 0, 0),
            stall_s=_float(directives.get("stall_s"), DEFAULT_STALL_S),
            retry_after_ms=_retry_after_ms(directives.get("retry_after_ms")),
        )

    def _new_id(self, prefix: str, body: bytes) -> str:
        """An id unique per request of this instance and reproducible across runs."""
        digest = hashlib.sha256(f"{self.requests_seen}:".encode() + body).hexdigest()
        return f"{prefix}-{digest[:29]}"

    def _chat(self, raw: bytes) -> Plan:
        """Plan a chat completion, streamed or not."""
        request = parse_chat_request(self._decode(raw))
        text = last_user_text(request.messages)
        prompt, directives = parse_directives(text)
        fault = self.take_fault(text, directives)
        early = fault_plan(fault) if fault else None
        if early is not None:
            return early
        if directives.get("stream_options") == "reject" and request.has_stream_options:
            return error_plan(
                400,
                "Unrecognized request argument supplied: stream_options",
                "invalid_request_error",
            )
        completion = build_completion(
            request, directives, prompt, self._new_id("chatcmpl", raw), int(self.clock())
        )
        ttft_s = _float(directives.get("ttft_ms"), self.settings.ttft_ms) / 1000
        chunk_s = _float(directives.get("chunk_ms"), self.settings.chunk_ms) / 1000
        if not request.stream:
            delay = ttft_s + chunk_s * len(completion.tokens)
            return json_plan(200, completion_object(completion), delay=delay)
        opts = StreamOptions(
            ttft_s=ttft_s,
            chunk_s=chunk_s,
            include_usage=request.include_usage and directives.get("usage") != "off",
            role_chunk=directives.get("role_chunk", "full"),
            keepalive=directives.get("keepalive", "0") not in ("0", "", "off", "false"),
            fault=fault,
        )
        return Plan(
            status=200,
            headers=list(STREAM_HEADERS),
            events=stream_events(completion, opts, self.clock),
            streaming=True,
        )

    def _moderations(self, raw: bytes) -> Plan:
        """Plan a moderation response (or an HTTP fault named in an input)."""
        body = self._decode(raw)
        inputs = moderation_inputs(body)
        delay_s = 0.0
        for text in inputs:
            _, directives = parse_directives(text)
            fault = self.take_fault(text, directives)
            early = fault_plan(fault) if fault else None
            if early is not None:
                return early
            delay_s = max(delay_s, _float(directives.get("ttft_ms"), 0.0) / 1000)
        model = body.get("model") or "omni-moderation-latest"
        return json_plan(
            200,
            {
                "id": self._new_id("modr", raw),
                "model": model,
                "results": [moderation_result(text) for text in inputs],
            },
            delay=delay_s,
        )

    def _models(self, _raw: bytes) -> Plan:
        """List the configured model names."""
        data = [
            {"id": name, "object": "model", "created": 1700000000, "owned_by": "sim"}
            for name in self.settings.models
        ]
        return json_plan(200, {"object": "list", "data": data})
