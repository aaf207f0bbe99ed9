"""The hand-written statements of a prompt's database trip (chat/domain/sql.py) on PostgreSQL.

The suite's in-process tests run on SQLite; the live tests reach these statements on
PostgreSQL only through a working prompt. So the tests that pin down what they must do
(frame access, the prompt's rows and their order, the rate, the quota) run again here,
in a pytest of their own pointed at the local PostgreSQL, where the row lock and native
UUIDs and datetimes are real.
"""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests import services

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(300)]

MODULES = [
    "tests/domain/test_db_statements.py",
    "tests/domain/test_limits.py::test_the_rate_limit_waits_for_the_limit_th_newest_prompt_to_leave_the_window",
    "tests/domain/test_limits.py::test_daily_quota_reserves_before_the_call_and_settles_to_real_usage",
    "tests/domain/test_limits.py::test_concurrent_generations_per_user_are_capped",
]


def test_the_prompt_trip_tests_pass_on_postgresql():
    services.require("postgres")
    admin = services.POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    # pytest-django creates (and drops) test_<name>; <name> itself is never opened.
    env = {**os.environ, "DATABASE_URL": f"{admin}/chat_sql_{uuid.uuid4().hex[:8]}"}
    env.pop("REDIS_URL", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *MODULES],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "passed" in summary
    assert "skipped" not in summary, summary
    # The run really was on PostgreSQL (a wrong URL would fail, never fall back).
    assert "postgresql" in _engine_seen(env)


def _engine_seen(env: dict[str, str]) -> str:
    probe = (
        "import django; django.setup(); from django.db import connection; print(connection.vendor)"
    )
    return subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "project.settings_test"},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
