"""Injected faults: which one a request's directives ask for, the HTTP error answers, and
the bounded counters behind ``times=K`` (see `script` for what each fault does)."""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from chat.simulator.limits import (
    MAX_DELAY_MS,
    MAX_FAULT_COUNTERS,
    MAX_FAULT_KEY_CHARS,
    MAX_FAULT_N,
    MAX_STALL_S,
    MAX_TIMES,
    bounded_float,
    bounded_int,
)
from chat.simulator.plan import Plan, error_plan
from chat.simulator.replies import directive_key

DEFAULT_STALL_S = 3600.0
DEFAULT_RETRY_AFTER_MS = 50
FAULT_KINDS = frozenset(
    {"http_429", "http_500", "error_after", "drop_after", "cut_after", "stall_after"}
)


@dataclass(frozen=True)
class Fault:
    """A fault chosen for one request."""

    kind: str
    n: int = 0
    stall_s: float = DEFAULT_STALL_S
    retry_after_ms: int = DEFAULT_RETRY_AFTER_MS


def fault_of(directives: Mapping[str, str]) -> Fault | None:
    """The fault the directives name (values clamped), ignoring any `times` budget."""
    kind = directives.get("fault")
    if kind not in FAULT_KINDS:
        return None
    retry_after_ms = bounded_int(directives.get("retry_after_ms"), int(MAX_DELAY_MS))
    return Fault(
        kind=kind,
        n=max(bounded_int(directives.get("n"), MAX_FAULT_N) or 0, 0),
        stall_s=bounded_float(directives.get("stall_s"), DEFAULT_STALL_S, MAX_STALL_S),
        retry_after_ms=(
            retry_after_ms
            if retry_after_ms is not None and retry_after_ms >= 0
            else DEFAULT_RETRY_AFTER_MS
        ),
    )


def times_of(directives: Mapping[str, str]) -> int | None:
    """The ``times=K`` budget (clamped), or None for "every request"."""
    return bounded_int(directives.get("times"), MAX_TIMES)


class FaultCounts(OrderedDict[str, int]):
    """Requests seen per directive text, for ``times=K``; keeps the `limit` most recently
    seen texts, each under a key of at most `MAX_FAULT_KEY_CHARS` characters."""

    limit: int = MAX_FAULT_COUNTERS

    @staticmethod
    def key(text: str) -> str:
        """The counter key of a message: its directive text, or a digest of a long one."""
        key = directive_key(text)
        if len(key) <= MAX_FAULT_KEY_CHARS:
            return key
        return "sha256:" + hashlib.sha256(key.encode()).hexdigest()

    def count(self, text: str) -> int:
        """Count one more request carrying this message's directives; return the total."""
        key = self.key(text)
        seen = self.get(key, 0) + 1
        self[key] = seen
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)
        return seen


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
