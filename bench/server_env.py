"""Where the benchmark's services are, and the environment its processes run in."""

from __future__ import annotations

import os

from deploy import harness

POSTGRES_ADMIN_URL = os.environ.get(
    "BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres"
)
REDIS_BASE_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")

# Production defaults for everything that shapes the stream; the per-user limits are
# lifted because four signed-in users stand for every viewer of the benchmark.
SERVER_ENV = {
    "DJANGO_SETTINGS_MODULE": "project.settings",
    "DJANGO_SECRET_KEY": "bench-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz-0123",
    "DJANGO_DEBUG": "0",
    "DJANGO_SECURE_COOKIES": "0",
    "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
    "OPENAI_API_KEY": "sk-bench",
    "OPENAI_MAX_RETRIES": "0",
    "OPENAI_TIMEOUT_S": "60",
    "PROMPTS_PER_MINUTE": "1000000",
    "OPENAI_MAX_TOKENS": "50000",
    "DAILY_TOKEN_QUOTA": "0",
    "MAX_GENERATIONS_PER_USER": "100000",
    # As docker-compose runs it: moderation calls in a worker process of their own.
    "MODERATION_WORKER": "1",
    "WS_MAX_CONNECTIONS_PER_USER": "100000",
    "WS_FRAMES_PER_SECOND": "1000",
    "WS_FRAME_BURST": "1000",
    "LOGIN_ATTEMPTS_PER_15_MIN": "100000",
    "LOG_LEVEL": "WARNING",
    "PYTHONUNBUFFERED": "1",
}


def scrubbed_env(**extra: str) -> dict[str, str]:
    """This process's environment without the variables that name another deployment or
    change what is measured (the flush window is each step's own), plus `extra`."""
    env = harness.scrubbed_env("STREAM_FLUSH_MS")
    env.update(extra)
    return env
