"""A redis-server of one's own on a free port, which its owner may kill and restart."""

import signal
import time
from pathlib import Path

import redis

from deploy.harness.processes import Process, free_port, spawn

# redis-server needs nothing of the caller's environment but where programs are.
REDIS_ENV = {"PATH": "/usr/bin:/bin:/usr/sbin:/usr/local/bin"}


class OwnRedis:
    """A redis-server on 127.0.0.1 and a free port, its files and logs under `tmp`. With
    `persist`, its data survives a kill (an append-only file written at every command)."""

    def __init__(self, tmp: Path, *, persist: bool = False) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.process: Process | None = None
        self.persist = persist

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it (again, on the same port), returning once it answers PING."""
        self.process = spawn(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.persist else "no",
                "--appendfsync",
                "always",
                "--dir",
                str(self.tmp),
            ],
            REDIS_ENV,
            self.tmp / f"redis-{self.port}-{time.monotonic_ns()}.log",
        )
        with redis.Redis(port=self.port, socket_connect_timeout=0.2) as client:
            for _ in range(100):
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start:\n{self.process.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown save, connections dropped."""
        assert self.process is not None
        self.process.stop(signal.SIGKILL)
