"""The maxima of the simulator's directives (the table in `script`, section Limits), and
directive parsing that clamps to them.

A value beyond a maximum, however large (even too many digits for `int()`, or
``1e999``), acts as the maximum; it is not an error. Malformed values are ignored, as if
absent. One simulator instance remembers the ``times=K`` budgets of at most
`MAX_FAULT_COUNTERS` directive texts, each under a key of at most `MAX_FAULT_KEY_CHARS`
characters.
"""

from __future__ import annotations

import math
import re

MAX_WORDS = 100_000
MAX_COUNT = 100_000
MAX_REPLY_CHARS = 100_000
MAX_FAULT_N = 1_000_000
MAX_TIMES = 1_000_000
MAX_DELAY_MS = 60_000.0
MAX_STALL_S = 3_600.0
MAX_FAULT_COUNTERS = 10_000
MAX_FAULT_KEY_CHARS = 200

# What `int()` accepts, for strings too long for it to convert.
_LONG_INT_RE = re.compile(r"\s*[+-]?\d+(?:_\d+)*\s*")


def bounded_int(value: str | None, maximum: int) -> int | None:
    """An integer clamped to [-maximum, maximum]; None when missing or malformed."""
    if value is None:
        return None
    try:
        parsed = int(value)
    except ValueError:
        # int() refuses strings of more than a few thousand digits: out of range, not junk.
        if _LONG_INT_RE.fullmatch(value) is None:
            return None
        parsed = -maximum if value.strip().startswith("-") else maximum
    return max(-maximum, min(parsed, maximum))


def bounded_float(value: str | None, default: float, maximum: float) -> float:
    """A non-negative float at most `maximum` (infinity included); the default, also
    clamped, when missing, malformed, NaN or negative."""
    try:
        parsed = float(value) if value is not None else default
    except ValueError:
        parsed = default
    if math.isnan(parsed) or parsed < 0:
        parsed = default
    return min(max(parsed, 0.0), maximum)


def delay_s(value: str | None, default_ms: float) -> float:
    """A ``*_ms`` delay directive in seconds, at most `MAX_DELAY_MS`."""
    return bounded_float(value, default_ms, MAX_DELAY_MS) / 1000
