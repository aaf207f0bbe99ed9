"""The project's own processes: a daphne server (`manage.py serve`), the OpenAI-compatible
simulator (`manage.py simulate_openai`) and the moderation worker
(`manage.py moderate_pending --watch`)."""

import sys
from collections.abc import Sequence
from pathlib import Path

from deploy.harness.processes import Process, free_port, manage_args, ready, spawn

# How the simulator is started unless told otherwise: the management command itself.
SIMULATOR_COMMAND = ("manage.py", "simulate_openai")


def start_server(
    env: dict[str, str],
    *,
    port: int,
    log_path: Path,
    host: str = "127.0.0.1",
    ready_path: str = "/healthz",
    verbosity: int | None = None,
    append: bool = False,
    timeout: float = 30,
) -> Process:
    """daphne serving the project on `host:port`, started as every server process is
    (`manage.py serve`), returned once `ready_path` answers 200 (stopped, and
    RuntimeError raised, if it does not within `timeout` seconds). `verbosity` 0 leaves
    out the per-request access lines (a proxy in front logs requests)."""
    args = ["serve", "-b", host, "-p", str(port)]
    if verbosity is not None:
        args[1:1] = ["-v", str(verbosity)]
    process = spawn(manage_args(*args), env, log_path, append=append)
    return ready(process, f"http://{host}:{port}{ready_path}", timeout)


def start_simulator(
    env: dict[str, str],
    *,
    log_dir: Path,
    chunk_ms: float,
    ttft_ms: float,
    command: Sequence[str] = SIMULATOR_COMMAND,
    host: str = "127.0.0.1",
) -> tuple[Process, str]:
    """The simulator on a free port, `chunk_ms` between tokens and `ttft_ms` before the
    first, returned once it answers; the process and its base URL (`.../v1`). `command`
    is what follows the interpreter on its command line (a launcher that wraps the
    management command takes the same options)."""
    port = free_port()
    args = [sys.executable, *command, "--host", host, "--port", str(port)]
    args += ["--chunk-ms", f"{chunk_ms:g}", "--ttft-ms", f"{ttft_ms:g}"]
    process = spawn(args, env, log_dir / f"simulator-{port}.log")
    ready(process, f"http://{host}:{port}/v1/models")
    return process, f"http://{host}:{port}/v1"


def start_moderation_worker(
    env: dict[str, str], *, log_path: Path, append: bool = False
) -> Process:
    """`manage.py moderate_pending --watch`: the moderation calls that servers started
    with MODERATION_WORKER on leave to it. It serves no HTTP: returned at once."""
    return spawn(manage_args("moderate_pending", "--watch"), env, log_path, append=append)
