"""Starting and stopping the processes of a deployment, for the tests, the benchmark and
`make serve-cluster` alike.

- processes.py: free ports, a child with its log file, readiness over HTTP, stopping
  with a signal then a kill, management commands run to completion;
- app.py: a daphne server (`manage.py serve`), the simulator, the moderation worker;
- nginx.py: nginx in front of the servers, with its generated configuration;
- redis_server.py: a redis-server of one's own.
"""

from deploy.harness.app import (
    SIMULATOR_COMMAND,
    start_moderation_worker,
    start_server,
    start_simulator,
)
from deploy.harness.nginx import nginx_binary, render_nginx_conf, start_nginx, stop_nginx
from deploy.harness.processes import (
    ROOT,
    Process,
    free_port,
    http_ok,
    manage,
    manage_args,
    ready,
    scrubbed_env,
    spawn,
    wait_http,
)
from deploy.harness.redis_server import OwnRedis

__all__ = [
    "ROOT",
    "SIMULATOR_COMMAND",
    "OwnRedis",
    "Process",
    "free_port",
    "http_ok",
    "manage",
    "manage_args",
    "nginx_binary",
    "ready",
    "render_nginx_conf",
    "scrubbed_env",
    "spawn",
    "start_moderation_worker",
    "start_nginx",
    "start_server",
    "start_simulator",
    "stop_nginx",
    "wait_http",
]
