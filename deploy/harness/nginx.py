"""nginx in the foreground in front of the app processes, with a configuration generated
from deploy/nginx.conf that owns only files under its run directory."""

import grp
import os
import pwd
import shutil
import signal
from pathlib import Path
from string import Template

from deploy.harness.processes import ROOT, Process, ready, spawn

NGINX_SITE = ROOT / "deploy" / "nginx.conf"


def nginx_binary() -> str | None:
    """The nginx executable on PATH, or Debian's, or None when neither is installed."""
    found = shutil.which("nginx")
    if found is None and Path("/usr/sbin/nginx").exists():
        found = "/usr/sbin/nginx"
    return found


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


def start_nginx(
    env: dict[str, str],
    *,
    run_dir: Path,
    listen_port: int,
    ports: list[int],
    static_root: Path,
    host: str = "127.0.0.1",
) -> Process:
    """nginx on `host:listen_port` in front of the app processes on `ports`, returned once
    its /healthz (answered by an app process) is 200. Its configuration is written to
    run_dir/nginx.conf, its logs and temporary files stay under run_dir."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx is not installed")
    (run_dir / "tmp").mkdir(parents=True, exist_ok=True)
    conf = run_dir / "nginx.conf"
    conf.write_text(
        render_nginx_conf(
            listen=f"{host}:{listen_port}", ports=ports, static_root=static_root, run_dir=run_dir
        )
    )
    args = [binary, "-c", str(conf), "-p", str(run_dir), "-g", "daemon off;"]
    process = spawn(args, env, run_dir / "nginx.out", append=True)
    return ready(process, f"http://{host}:{listen_port}/healthz")


def stop_nginx(process: Process, timeout: float = 10) -> int:
    """SIGQUIT, nginx's graceful stop: open requests finish, then it exits (killed after
    `timeout` seconds)."""
    return process.stop(signal.SIGQUIT, timeout)
