"""Child processes: free ports, spawning with a log file, waiting for HTTP readiness,
stopping with a signal then a kill, and management commands run to completion."""

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Loopback readiness checks never go through a proxy the environment names.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on at the time of the call."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Process:
    """A child in a session of its own, its stdout and stderr in one log file."""

    proc: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        """Everything it has logged so far."""
        return self.log_path.read_text(errors="replace")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log()[-chars:]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        """Send `sig` (unless it has exited), wait up to `timeout` seconds, then kill it.
        Returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


# Variables of the caller's shell that name another deployment's services or settings:
# a deployment started for tests or the benchmark sets its own.
DEPLOYMENT_VARIABLES = (
    "DATABASE_URL",
    "REDIS_URL",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "CHANNEL_PREFIX",
    "DJANGO_SETTINGS_MODULE",
    "DJANGO_DEBUG",
)


def scrubbed_env(*also: str) -> dict[str, str]:
    """This process's environment without DEPLOYMENT_VARIABLES (nor `also`)."""
    drop = set(DEPLOYMENT_VARIABLES) | set(also)
    return {k: v for k, v in os.environ.items() if k not in drop}


def spawn(args: list[str], env: dict[str, str], log_path: Path, *, append: bool = False) -> Process:
    """Start `args` in the repository root, in a session of its own (a Ctrl-C meant for
    the caller does not reach it), writing its output to `log_path` (appended to with
    `append`, so a restarted process keeps its earlier log)."""
    with log_path.open("a" if append else "w") as log_file:
        proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Process(proc, log_path)


def http_ok(url: str, timeout: float = 1) -> bool:
    """Whether `url` answers 200 now."""
    try:
        with _opener.open(url, timeout=timeout) as response:
            return response.status == 200
    except (OSError, http.client.HTTPException):
        return False


def wait_http(url: str, process: Process | None = None, timeout: float = 30) -> None:
    """Return once `url` answers 200. Raises RuntimeError, with the end of the process's
    log, if `process` exits first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and not process.running():
            raise RuntimeError(f"process exited early:\n{process.log_tail()}")
        if http_ok(url):
            return
        time.sleep(0.1)
    tail = f":\n{process.log_tail()}" if process is not None else ""
    raise RuntimeError(f"{url} not ready in {timeout}s{tail}")


def ready(process: Process, url: str, timeout: float = 30) -> Process:
    """`process`, once `url` answers 200. If it does not (it exited, or `timeout` passed),
    it is stopped and RuntimeError raised, with the end of its log."""
    try:
        wait_http(url, process, timeout)
    except BaseException:
        process.stop()
        raise
    return process


def manage_args(*args: str) -> list[str]:
    """The command line of `manage.py` with `args`, on this interpreter."""
    return [sys.executable, "manage.py", *args]


def manage(env: dict[str, str], *args: str, timeout: float = 120, capture: bool = True) -> str:
    """Run `manage.py args` to completion; its standard output when `capture`, else it
    writes to the caller's terminal. Raises RuntimeError (with the output) on failure."""
    out = subprocess.run(
        manage_args(*args),
        cwd=ROOT,
        env=env,
        capture_output=capture,
        text=True,
        timeout=timeout,
    )
    if out.returncode:
        output = f"{out.stdout or ''}\n{out.stderr or ''}"
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{output}")
    return out.stdout or ""
