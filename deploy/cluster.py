"""Run the production topology on this machine: nginx on loopback in front of N daphne
processes sharing the local PostgreSQL and Redis, and the moderation worker.

    python deploy/cluster.py [--processes 2] [--port 8080] [--run-dir .cluster]
    (or: make serve-cluster)

Ctrl-C (or SIGTERM) stops nginx, then drains every daphne process (running answers
finish for up to DRAIN_S, viewers move to the others). Logs and the generated nginx
configuration are under the run directory (.cluster/ unless --run-dir says otherwise).

It works from any checkout location, a private home directory (mode 0700) included:
nginx's workers run as the invoking user (`worker_user` in deploy/harness/nginx.py), and
the app processes believe nginx's X-Forwarded-For, as it connects from 127.0.0.1
(`TRUSTED_PROXIES`).
"""

import argparse
import os
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: `project` and `deploy` beside this folder

from deploy.harness import (  # noqa: E402
    Process,
    manage,
    start_moderation_worker,
    start_nginx,
    start_server,
    stop_nginx,
)
from project.env import is_on  # noqa: E402
from project.secret_key import debug_secret_key  # noqa: E402

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/livechat"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# nginx reaches the app processes from loopback: they believe its X-Forwarded-For.
TRUSTED_PROXIES = "127.0.0.1"


def static_root(env: dict[str, str]) -> Path:
    """STATIC_ROOT by the settings' rule (project/settings.py): set and not empty, or
    staticfiles/ in the checkout."""
    return Path(env.get("STATIC_ROOT", "").strip() or ROOT / "staticfiles")


class Cluster:
    """daphne processes on the given ports, the moderation worker when MODERATION_WORKER
    is on, and nginx in front of them; their logs go to run_dir."""

    def __init__(self, *, env: dict[str, str], run_dir: Path, ports: list[int], listen_port: int):
        self.env = {**env, "TRUSTED_PROXIES": TRUSTED_PROXIES}
        self.run_dir = run_dir
        self.ports = ports
        self.listen_port = listen_port
        self.apps: dict[int, Process] = {}
        self.nginx: Process | None = None
        self.worker: Process | None = None
        run_dir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

    def start_app(self, port: int) -> None:
        """A daphne process on `port`, back once it is ready (/readyz); a restart on the
        same port appends to the same log."""
        self.apps[port] = start_server(
            self.env,
            port=port,
            log_path=self.run_dir / f"daphne-{port}.log",
            ready_path="/readyz",
            verbosity=0,  # no per-request access lines: nginx logs requests
            append=True,
        )

    def stop_app(self, port: int, timeout: float = 60) -> int:
        """SIGTERM: the process drains, then exits."""
        return self.apps.pop(port).stop(signal.SIGTERM, timeout)

    def start_worker(self) -> None:
        """`moderate_pending --watch`: the moderation calls MODERATION_WORKER leaves to it."""
        self.worker = start_moderation_worker(
            self.env, log_path=self.run_dir / "moderation-worker.log", append=True
        )

    def start_nginx(self) -> None:
        self.nginx = start_nginx(
            self.env,
            run_dir=self.run_dir,
            listen_port=self.listen_port,
            ports=self.ports,
            static_root=static_root(self.env),
        )

    def start(self) -> None:
        for port in self.ports:
            self.start_app(port)
        if is_on(self.env.get("MODERATION_WORKER", "")):
            self.start_worker()
        self.start_nginx()

    def stop(self) -> None:
        if self.nginx is not None:
            stop_nginx(self.nginx)  # graceful: open requests finish
        for port in list(self.apps):
            self.stop_app(port)
        if self.worker is not None:
            self.worker.stop(signal.SIGTERM, 10)


def create_database(url: str) -> None:
    """The PostgreSQL database of `url`, unless it exists."""
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--first-app-port", type=int, default=8001)
    parser.add_argument(
        "--run-dir", type=Path, default=ROOT / ".cluster", help="logs, nginx.conf, the key"
    )
    args = parser.parse_args()

    run_dir = args.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    # Drawn once and kept private (mode 0600), as `make run`'s debug key.
    secret_key = debug_secret_key(run_dir / "secret_key")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "DJANGO_DEBUG": "0",
        "DJANGO_SECURE_COOKIES": os.environ.get("DJANGO_SECURE_COOKIES", "0"),
        "DJANGO_ALLOWED_HOSTS": os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost"),
        "DATABASE_URL": os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL),
        "REDIS_URL": os.environ.get("REDIS_URL", DEFAULT_REDIS_URL),
        "MODERATION_WORKER": os.environ.get("MODERATION_WORKER", "1"),
    }
    env.setdefault("DJANGO_SECRET_KEY", secret_key)
    if env["DATABASE_URL"].startswith("postgres"):
        create_database(env["DATABASE_URL"])
    # In the foreground: what they say (the demo users and their link) is for the reader.
    manage(env, "migrate", "--noinput", capture=False)
    manage(env, "collectstatic", "--noinput", "-v", "0", capture=False)
    manage(env, "demo", capture=False)

    ports = [args.first_app_port + i for i in range(args.processes)]
    cluster = Cluster(env=env, run_dir=run_dir, ports=ports, listen_port=args.port)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        cluster.start()
        print(f"Livechat on {cluster.url}/ (nginx -> daphne on ports {ports}); Ctrl-C stops.")
        print(f"Logs: {run_dir}/")
        while not stopping:
            time.sleep(0.5)
    finally:
        print("Stopping: draining the app processes...")
        cluster.stop()


if __name__ == "__main__":
    main()
