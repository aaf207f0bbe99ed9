"""The machine a run measured and what ran on it: CPU, memory, OS, Python, Redis and
PostgreSQL versions, the packages that shape the figures, the commit; and the server's
default flush window."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

from bench.server_env import POSTGRES_ADMIN_URL, REDIS_BASE_URL, scrubbed_env
from deploy.harness import ROOT

PACKAGES = (
    "django",
    "channels",
    "daphne",
    "twisted",
    "autobahn",
    "redis",
    "openai",
)


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return ""


def _version(pkg: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def _output(cmd: list[str]) -> str:
    with contextlib.suppress(Exception):
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=10, cwd=ROOT
        ).stdout.strip()
    return ""


def machine_info() -> dict[str, Any]:
    """The `machine` of the results."""
    redis_version = ""
    with contextlib.suppress(Exception):
        import redis

        redis_version = redis.Redis.from_url(REDIS_BASE_URL).info("server")["redis_version"]
    pg_version = ""
    with contextlib.suppress(Exception):
        import psycopg

        with psycopg.connect(POSTGRES_ADMIN_URL) as conn:
            pg_version = conn.execute("SHOW server_version").fetchone()[0]
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "redis": redis_version,
        "postgresql": pg_version,
        "packages": {p: _version(p) for p in PACKAGES},
        "git_commit": _output(["git", "rev-parse", "--short", "HEAD"]),
        "git_dirty_files": len(_output(["git", "status", "--porcelain"]).splitlines()),
    }


def server_default_flush_ms() -> float:
    """STREAM_FLUSH_MS as the settings give it when the environment does not set it."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from django.conf import settings; "
            "print(settings.STREAM_FLUSH_MS)",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=scrubbed_env(DJANGO_SETTINGS_MODULE="project.settings_test"),
        timeout=60,
    )
    if out.returncode:
        raise RuntimeError(f"the settings did not load:\n{out.stderr[-4000:]}")
    return float(out.stdout.strip().splitlines()[-1])
