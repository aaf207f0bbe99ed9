"""What a run does: its modes (full, quick, smoke), each a list of steps and sizes, and
the constants every mode shares."""

from __future__ import annotations

from dataclasses import dataclass

TOKENS_PER_S = 60.0
CHUNK_MS = 1000 / TOKENS_PER_S
DEFAULT_FLUSH_MS = None  # None: the server's own default (settings.STREAM_FLUSH_MS)
P99_LIMIT_MS = 100.0


@dataclass
class Mode:
    name: str
    words: int  # words per answer (about 1.13 tokens per word)
    ttft_ms: float
    sweep: list[tuple[int, int]]
    rounds: dict[tuple[int, int], int]
    uncoalesced: list[tuple[int, int]]
    # (streams, viewers) steps run with Redis MONITOR counting the layer's commands: with
    # the sweep's 10x10 they show the Redis work per flush does not grow with viewers.
    monitor_steps: list[tuple[int, int]]
    scale_out: bool
    idle_viewers: int
    asgi_viewers: int
    asgi_rounds: int
    redis_n: int
    restart_each_step: bool
    stagger_s: float
    direct_probes: int = 3
    quiet_wait_s: float = 0.0  # wait for a quiet machine before each step, at most this
    scale_out_max_steps: int = 99
    # The steps scale-out tries when the sweep is not run (`--only scaleout --steps ...`).
    scale_out_sweep: list[tuple[int, int]] | None = None
    # Seconds to wait after a step before reading PostgreSQL's row counters: a pooled
    # backend publishes them up to 10 s after it goes idle, so a wait past that makes
    # `db_writes_per_message` exact. 0: read them at once (the figure is approximate).
    pg_stats_wait_s: float = 0.0


MODES = {
    "full": Mode(
        name="full",
        words=300,
        ttft_ms=200,
        sweep=[(1, 1), (10, 10), (50, 10), (100, 10), (20, 100)],
        rounds={(1, 1): 5, (10, 10): 3},
        uncoalesced=[(1, 1), (10, 10), (30, 10)],
        monitor_steps=[(10, 50)],
        scale_out=True,
        idle_viewers=1000,
        asgi_viewers=1000,
        asgi_rounds=100,
        redis_n=100_000,
        restart_each_step=True,
        stagger_s=1.0,
        quiet_wait_s=20,
    ),
    "quick": Mode(
        name="quick",
        words=60,
        ttft_ms=200,
        sweep=[(1, 1), (10, 10), (30, 10)],
        rounds={},
        uncoalesced=[(10, 10)],
        monitor_steps=[(10, 20)],
        scale_out=True,
        scale_out_max_steps=1,
        idle_viewers=100,
        asgi_viewers=100,
        asgi_rounds=100,
        redis_n=20_000,
        restart_each_step=False,
        stagger_s=0.5,
        quiet_wait_s=1,
    ),
    # The CI guard's run: it asserts the Redis commands per flush and the database
    # writes per message, so the latter is read exactly.
    "smoke": Mode(
        name="smoke",
        words=40,
        ttft_ms=100,
        sweep=[(1, 1), (5, 5)],
        rounds={},
        uncoalesced=[],
        monitor_steps=[],
        scale_out=False,
        idle_viewers=0,
        asgi_viewers=0,
        asgi_rounds=0,
        redis_n=0,
        restart_each_step=False,
        stagger_s=0.3,
        direct_probes=2,
        pg_stats_wait_s=11,
    ),
}


def parse_steps(text: str) -> list[tuple[int, int]]:
    """`10x10,50x10` as [(10, 10), (50, 10)]: (streams, viewers per stream)."""
    return [(int(s.split("x")[0]), int(s.split("x")[1])) for s in text.split(",")]


def restrict(mode: Mode, parts: set[str]) -> None:
    """Leave out of `mode` every part not named: ceilings, sweep, uncoalesced, monitor,
    scaleout, idle. Without the sweep, scale-out tries the sweep's steps."""
    if "ceilings" not in parts:
        mode.redis_n = mode.asgi_viewers = 0
    if "sweep" not in parts:
        mode.scale_out_sweep, mode.sweep = mode.sweep, []
    if "uncoalesced" not in parts:
        mode.uncoalesced = []
    if "monitor" not in parts:
        mode.monitor_steps = []
    if "scaleout" not in parts:
        mode.scale_out = False
    if "idle" not in parts:
        mode.idle_viewers = 0
