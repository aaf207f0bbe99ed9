"""ORM calls from async code: on a few threads with a pooled PostgreSQL, else on one.

`channels.db.database_sync_to_async` runs every call of a process on one thread (the
thread-sensitive default), so the calls of all sockets and answers wait in one line,
mostly for PostgreSQL's replies: when 30 answers start within a second, their prompt
transactions queue behind each other and behind checkpoints and moderation
(bench/REPORT.md). With PostgreSQL's connection pool (`DB_POOL_MAX`), calls run on the
loop's worker threads instead, each with a connection from the pool; calls are
independent units of work, already safe against other processes doing the same
(constraints and row locks, not in-process ordering). SQLite keeps the one thread:
its writers serialize anyway, and more threads would only wait on its lock.
"""

from collections.abc import Callable
from typing import Any

from channels.db import database_sync_to_async
from django.db import connections


def _pooled_postgres() -> bool:
    connection = connections["default"]
    return connection.vendor == "postgresql" and bool(
        connection.settings_dict.get("OPTIONS", {}).get("pool")
    )


def db(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` as a coroutine function, closing stale connections around each call."""
    return database_sync_to_async(fn, thread_sensitive=not _pooled_postgres())
