"""Run the production topology on this machine: nginx on loopback in front of N daphne
processes sharing the local PostgreSQL and Redis, and the moderation worker.

    python deploy/cluster.py [--processes 2] [--port 8080] [--run-dir .cluster]
    (or: make serve-cluster)

Ctrl-C (or SIGTERM) stops nginx, then drains every daphne process (running answers
finish for up to DRAIN_S, viewers move to the others). Logs and the generated nginx
configuration are under the run directory (.cluster/ unless --run-dir says otherwise).

It works from any checkout location, a private home directory (mode 0700) included:
nginx's workers run as the invoking user (see `worker_user`), and the app processes
believe nginx's X-Forwarded-For, as it connects from 127.0.0.1 (`TRUSTED_PROXIES`).
"""

import argparse
import grp
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from string import Template

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: `project` beside this folder

from project.env import is_on  # noqa: E402

NGINX_SITE = ROOT / "deploy" / "nginx.conf"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/livechat"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# nginx reaches the app processes from loopback: they believe its X-Forwarded-For.
TRUSTED_PROXIES = "127.0.0.1"


def static_root(env: dict[str, str]) -> Path:
    """STATIC_ROOT by the settings' rule (project/settings.py): set and not empty, or
    staticfiles/ in the checkout."""
    return Path(env.get("STATIC_ROOT", "").strip() or ROOT / "staticfiles")


def worker_user() -> str:
    """nginx's `user` directive: its workers run as the invoking user.

    Started as root, nginx runs its workers as `nobody` unless told otherwise, and
    `nobody` cannot read static files in a checkout under a private folder (a home
    directory of mode 0700): every /static/ request answered 403. Started as anyone
    else, nginx cannot switch users, the workers are that user already, and the
    directive would only be ignored with a warning, so it is left out
    (https://nginx.org/en/docs/ngx_core_module.html#user).
    """
    if os.geteuid() != 0:
        return ""
    user = pwd.getpwuid(os.geteuid()).pw_name
    group = grp.getgrgid(os.getegid()).gr_name
    return f"user {user} {group};\n"


def render_nginx_conf(*, listen: str, ports: list[int], static_root: Path, run_dir: Path) -> str:
    """A complete nginx.conf for a foreground nginx owning only files under run_dir."""
    site = Template(NGINX_SITE.read_text()).safe_substitute(
        LISTEN=listen,
        UPSTREAM_SERVERS=" ".join(
            f"server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;" for p in ports
        ),
        STATIC_ROOT=str(static_root),
    )
    temp = run_dir / "tmp"
    return f"""{worker_user()}worker_processes 1;
pid {run_dir}/nginx.pid;
error_log {run_dir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    include /etc/nginx/mime.types;
    access_log {run_dir}/nginx-access.log;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
{site}
}}
"""


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


class Cluster:
    """daphne processes on consecutive ports, and nginx in front of them."""

    def __init__(self, *, env: dict[str, str], run_dir: Path, ports: list[int], listen_port: int):
        self.env = {**env, "TRUSTED_PROXIES": TRUSTED_PROXIES}
        self.run_dir = run_dir
        self.ports = ports
        self.listen_port = listen_port
        self.apps: dict[int, subprocess.Popen] = {}
        self.nginx: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None
        (run_dir / "tmp").mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

    def start_app(self, port: int) -> None:
        self.apps[port] = self._spawn(
            [
                sys.executable,
                "manage.py",
                "serve",
                "-v",  # no per-request access lines: nginx logs requests
                "0",
                "-b",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            f"daphne-{port}.log",
        )
        wait_http(f"http://127.0.0.1:{port}/readyz")

    def stop_app(self, port: int, timeout: float = 60) -> int:
        """SIGTERM: the process drains, then exits."""
        return _stop(self.apps.pop(port), signal.SIGTERM, timeout)

    def start_worker(self) -> None:
        """`moderate_pending --watch`: the moderation calls MODERATION_WORKER leaves to it."""
        self.worker = self._spawn(
            [sys.executable, "manage.py", "moderate_pending", "--watch"], "moderation-worker.log"
        )

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen:
        """A child in its own session (Ctrl-C reaches only this script), logging to run_dir."""
        return subprocess.Popen(
            args,
            cwd=ROOT,
            env=self.env,
            stdout=(self.run_dir / log_name).open("a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_nginx(self) -> None:
        conf = self.run_dir / "nginx.conf"
        conf.write_text(
            render_nginx_conf(
                listen=f"127.0.0.1:{self.listen_port}",
                ports=self.ports,
                static_root=static_root(self.env),
                run_dir=self.run_dir,
            )
        )
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.nginx = self._spawn(
            [nginx, "-c", str(conf), "-p", str(self.run_dir), "-g", "daemon off;"], "nginx.out"
        )
        wait_http(f"{self.url}/healthz")

    def start(self) -> None:
        for port in self.ports:
            self.start_app(port)
        if is_on(self.env.get("MODERATION_WORKER", "")):
            self.start_worker()
        self.start_nginx()

    def stop(self) -> None:
        if self.nginx is not None and self.nginx.poll() is None:
            _stop(self.nginx, signal.SIGQUIT, 10)  # graceful: finish open requests
        for port in list(self.apps):
            self.stop_app(port)
        if self.worker is not None and self.worker.poll() is None:
            _stop(self.worker, signal.SIGTERM, 10)


def _stop(proc: subprocess.Popen, sig: int, timeout: float) -> int:
    """Send `sig`, wait up to `timeout` seconds, then kill."""
    proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(5)


def _manage(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True)


def _create_database(url: str) -> None:
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
    key_file = run_dir / "secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
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
    env.setdefault("DJANGO_SECRET_KEY", key_file.read_text().strip())
    if env["DATABASE_URL"].startswith("postgres"):
        _create_database(env["DATABASE_URL"])
    _manage(env, "migrate", "--noinput")
    _manage(env, "collectstatic", "--noinput", "-v", "0")
    _manage(env, "demo")

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
