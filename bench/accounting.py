"""What a step cost Redis and PostgreSQL: the commands under this run's prefix (Redis
MONITOR) and the rows written to this run's database (PostgreSQL's row counters)."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time

from bench.console import log

# A MONITOR line: `+<time> [<db> <client>] "<COMMAND>" ...`
MONITOR_LINE = re.compile(rb'^\+\d+\.\d+ \[\d+ [^\]]+\] "([A-Za-z]+)"')


class RedisMonitor:
    """Counts the commands touching our key/channel prefix, by command, with MONITOR."""

    def __init__(self, host: str, port: int, prefix: str) -> None:
        self.host, self.port, self.prefix = host, port, prefix.encode()
        self.counts: dict[str, int] = {}
        self.bytes = 0
        self._stop = False
        self._thread: threading.Thread | None = None

    @classmethod
    def for_url(cls, url: str, prefix: str) -> RedisMonitor:
        host, port = url.removeprefix("redis://").split("/")[0].split(":")
        return cls(host, int(port), prefix)

    def start(self) -> None:
        self._sock = socket.create_connection((self.host, self.port))
        self._sock.sendall(b"MONITOR\r\n")
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buf = b""
        while not self._stop:
            try:
                data = self._sock.recv(1 << 20)
            except OSError:
                return
            if not data:
                return
            buf += data
            *lines, buf = buf.split(b"\r\n")
            for line in lines:
                if self.prefix not in line:
                    continue
                m = MONITOR_LINE.match(line)
                if m:
                    name = m.group(1).decode().upper()
                    self.counts[name] = self.counts.get(name, 0) + 1
                    self.bytes += len(line)

    def stop(self) -> dict[str, int]:
        """Stop counting; the counts by command."""
        self._stop = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        if self._thread:
            self._thread.join(5)
        return dict(self.counts)


def redis_pid(url: str) -> int | None:
    """The process id the Redis server at `url` reports (None when it does not answer):
    its CPU is sampled with the step's processes."""
    with contextlib.suppress(Exception):
        import redis

        return int(redis.Redis.from_url(url).info("server")["process_id"])
    return None


def pg_counts(db_url: str) -> dict[str, int]:
    """Rows inserted, updated and deleted so far per table (`<table>.ins` ...), and the
    database's committed transactions (`xact_commit`)."""
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT relname, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables"
        ).fetchall()
        xact = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()[0]
    out = {"xact_commit": int(xact)}
    for rel, ins, upd, dele in rows:
        if ins or upd or dele:
            out[f"{rel}.ins"] = int(ins)
            out[f"{rel}.upd"] = int(upd)
            out[f"{rel}.del"] = int(dele)
    return out


def pg_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """What changed between two `pg_counts`, changes only."""
    keys = set(before) | set(after)
    return {
        k: after.get(k, 0) - before.get(k, 0)
        for k in sorted(keys)
        if after.get(k, 0) - before.get(k, 0)
    }


def db_writes_per_message(pg: dict[str, int], n: int) -> float | None:
    """Rows written (inserted, updated, deleted) per answered prompt."""
    if not n:
        return None
    writes = sum(v for k, v in pg.items() if k.endswith((".ins", ".upd", ".del")))
    return round(writes / n, 2)


def wait_for_moderation(db_url: str, timeout: float = 15.0) -> None:
    """Until the worker has judged every answer (its writes belong to the step's)."""
    import psycopg

    deadline = time.monotonic() + timeout
    with psycopg.connect(db_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            query = "SELECT count(*) FROM chat_moderationcase WHERE state = 'pending'"
            if conn.execute(query).fetchone()[0] == 0:
                return
            time.sleep(0.1)
    log(f"moderation still had pending cases after {timeout:.0f} s")
