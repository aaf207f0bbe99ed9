"""The orchestrator's progress lines."""

from __future__ import annotations

import time
from typing import Any


def log(*args: Any) -> None:
    """One line, stamped with the wall-clock time, flushed at once."""
    print(f"[bench {time.strftime('%H:%M:%S')}]", *args, flush=True)
