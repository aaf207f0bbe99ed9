"""Deterministic, offline stand-in for the OpenAI API: the pure logic ("sim").

Nothing here does I/O. `Simulator.handle()` turns one HTTP request into a `Plan`:
a status, headers and a lazy sequence of events (`Sleep`, `Emit`, `Drop`, `End`).
The in-process transport (`transport.py`) and the socket server (`server.py`) only
walk that plan, so both behave identically.

A request costs what it sends, never what it asks for: every size and delay a directive
gives is clamped (see Limits), and a streamed reply is made token by token as the plan
is read, so a stream cut by ``max_tokens``, a fault or a client that leaves makes only
the tokens sent. A non-streamed reply makes at most ``max_tokens`` tokens.

The parts: `limits` (maxima), `replies` (prompts, tokens, reply text), `plan` (events
and framing), `completions` (chat completions), `faults`, `moderations`; this module
routes requests and re-exports their public names.

Endpoints
---------
``POST /v1/chat/completions``
    OpenAI-shaped request (`model`, `messages`, `stream`, `stream_options`,
    `max_tokens` / `max_completion_tokens`). With ``stream=true`` the body is
    ``text/event-stream``: a role chunk, one chunk per token (each with a top-level
    ``sim_ts`` float, the ``time.time()`` at emission), a finish chunk, an optional
    usage chunk (``stream_options.include_usage``; it counts the content chunks sent)
    and ``data: [DONE]``. Without streaming: a ``chat.completion`` object, sent after
    ``ttft_ms + chunk_ms * tokens``.
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

1. directive ``reply=<percent-encoded text>``: exactly that text (``+`` is a space),
   up to its first 100,000 characters;
2. directive ``words=N``: exactly N words from a built-in word list (N at most 100,000);
3. text matching ``count to (\\d+)`` (any case): ``"1, 2, ..., N"`` (N at most 100,000);
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
merge (later keys win). Unknown keys and malformed values are ignored; values beyond
a maximum (see Limits) act as the maximum.

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
                    directive text (counted per simulator instance, for the 10,000
                    directive texts it saw most recently); later ones succeed.
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

Limits
------
Larger values act as these maxima (they are not errors); `limits` holds them.

==========================  ============================
``words=N``                 100,000 words
``count to N`` (prompt)     100,000
``reply=T``                 100,000 characters
``n=N``                     1,000,000 chunks
``times=K``                 1,000,000 requests
``ttft_ms``, ``chunk_ms``   60,000 ms (a minute)
``retry_after_ms``          60,000 ms (a minute)
``stall_s``                 3,600 s (an hour)
==========================  ============================

A simulator instance keeps ``times=K`` counters for at most 10,000 directive texts
(the most recently seen; a text longer than 200 characters is counted by its digest).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from chat.simulator import completions
from chat.simulator.completions import StreamOptions, completion_object, parse_chat_request
from chat.simulator.faults import Fault, FaultCounts, fault_of, fault_plan, times_of
from chat.simulator.limits import MAX_COUNT, delay_s
from chat.simulator.moderations import moderation_inputs, moderation_result
from chat.simulator.plan import (
    STREAM_HEADERS,
    BadRequest,
    Drop,
    Emit,
    End,
    Event,
    Plan,
    Sleep,
    error_body,
    error_plan,
    json_plan,
    sse,
)
from chat.simulator.replies import (
    WORDS,
    count_prompt_tokens,
    last_user_text,
    parse_directives,
    reply_for,
    reply_text,
    reply_tokens,
    tokenize,
)

__all__ = [
    "MAX_COUNT",
    "WORDS",
    "BadRequest",
    "Drop",
    "Emit",
    "End",
    "Event",
    "Fault",
    "Plan",
    "SimSettings",
    "Simulator",
    "Sleep",
    "count_prompt_tokens",
    "error_body",
    "error_plan",
    "json_plan",
    "moderation_result",
    "parse_directives",
    "reply_for",
    "reply_text",
    "reply_tokens",
    "sse",
    "tokenize",
]


@dataclass(frozen=True)
class SimSettings:
    """Defaults for pacing, overridable per request with directives (both clamped to the
    delay maximum)."""

    chunk_ms: float = 15.0
    ttft_ms: float = 300.0
    models: tuple[str, ...] = ("gpt-4o-mini", "sim-1")


@dataclass
class Simulator:
    """Routes requests to plans; owns the per-instance `times=K` fault counters."""

    settings: SimSettings = field(default_factory=SimSettings)
    clock: Callable[[], float] = time.time
    fault_counts: FaultCounts = field(default_factory=FaultCounts)
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
        fault = fault_of(directives)
        if fault is None:
            return None
        times = times_of(directives)
        if times is not None and self.fault_counts.count(text) > times:
            return None
        return fault

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
        completion = completions.build_completion(
            request, directives, prompt, self._new_id("chatcmpl", raw), int(self.clock())
        )
        ttft_s = delay_s(directives.get("ttft_ms"), self.settings.ttft_ms)
        chunk_s = delay_s(directives.get("chunk_ms"), self.settings.chunk_ms)
        if not request.stream:
            # The body's length goes in the headers: make it now, at most max_tokens tokens.
            content = "".join(completion.tokens)
            delay = ttft_s + chunk_s * completion.sent
            return json_plan(200, completion_object(completion, content), delay=delay)
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
            events=completions.stream_events(completion, opts, self.clock),
            streaming=True,
        )

    def _moderations(self, raw: bytes) -> Plan:
        """Plan a moderation response (or an HTTP fault named in an input)."""
        body = self._decode(raw)
        inputs = moderation_inputs(body)
        wait_s = 0.0
        for text in inputs:
            _, directives = parse_directives(text)
            fault = self.take_fault(text, directives)
            early = fault_plan(fault) if fault else None
            if early is not None:
                return early
            wait_s = max(wait_s, delay_s(directives.get("ttft_ms"), 0.0))
        model = body.get("model") or "omni-moderation-latest"
        return json_plan(
            200,
            {
                "id": self._new_id("modr", raw),
                "model": model,
                "results": [moderation_result(text) for text in inputs],
            },
            delay=wait_s,
        )

    def _models(self, _raw: bytes) -> Plan:
        """List the configured model names."""
        data = [
            {"id": name, "object": "model", "created": 1700000000, "owned_by": "sim"}
            for name in self.settings.models
        ]
        return json_plan(200, {"object": "list", "data": data})
