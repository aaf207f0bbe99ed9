"""Where the local PostgreSQL and Redis are, and whether a test may skip without them.

With REQUIRE_SERVICES=1 (set by CI) a missing service fails the test instead of skipping.
"""

import os

import pytest

POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres"
)
REDIS_BASE_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES", "") not in ("", "0")


def _postgres_error() -> str | None:
    import psycopg

    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        return f"PostgreSQL at {POSTGRES_ADMIN_URL} unreachable: {exc}"
    return None


def _redis_error() -> str | None:
    import redis

    try:
        redis.Redis.from_url(REDIS_BASE_URL, socket_connect_timeout=3).ping()
    except Exception as exc:
        return f"Redis at {REDIS_BASE_URL} unreachable: {exc}"
    return None


def require(service: str) -> None:
    """Fail (CI) or skip loudly (local) when the service does not answer."""
    error = {"postgres": _postgres_error, "redis": _redis_error}[service]()
    if error is None:
        return
    if REQUIRE_SERVICES:
        pytest.fail(f"{error} (REQUIRE_SERVICES=1: service-backed tests may not skip)")
    pytest.skip(f"SKIPPED, SERVICE MISSING: {error}")
