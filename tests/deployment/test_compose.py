"""docker-compose.yml and the Dockerfile agree with the settings the code reads.

Static checks of the files (no Docker needed): the scale-out services exist, both app
processes run one image against the shared PostgreSQL and Redis, and every variable
they set is one `project/settings.py` actually reads (a typo would be silently ignored).
"""

import ipaddress
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
APPS = ("app1", "app2")
# `${NAME}`, `${NAME:-default}`, `${NAME-default}`, `${NAME:?error}`, `${NAME?error}`.
_INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?-)([^}]*)|(:?\?)[^}]*)?\}")
_SETTINGS_READ = re.compile(r"""env_(?:str|bool|int|float)\(\s*["']([A-Z0-9_]+)["']""")


def _interpolate(value: str) -> str:
    """Compose's variable substitution for an empty shell: defaults, else a placeholder."""

    def replace(match: re.Match[str]) -> str:
        return match.group(3) if match.group(2) else f"<{match.group(1)}>"

    return _INTERPOLATION.sub(replace, value)


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment, from either the mapping or the `KEY=value` list form."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): _interpolate("" if v is None else str(v)) for k, v in env.items()}


def _depends_on(service: dict[str, Any]) -> dict[str, str]:
    """Each dependency with its condition (`service_started` for the short form)."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return compose["services"]


@pytest.fixture(scope="module")
def settings_names() -> set[str]:
    names = set(_SETTINGS_READ.findall((ROOT / "project" / "settings.py").read_text()))
    # The pattern must keep matching how settings.py reads its variables.
    assert {"DJANGO_SECRET_KEY", "DATABASE_URL", "REDIS_URL", "OPENAI_API_KEY"} <= names
    return names


def test_the_scale_out_services_exist(services: dict[str, dict[str, Any]]) -> None:
    assert {"postgres", "redis", "migrate", *APPS} <= services.keys()


def test_both_app_processes_run_one_image(services: dict[str, dict[str, Any]]) -> None:
    first, second = (services[name] for name in APPS)
    assert first.get("image") or first.get("build"), "app1 has neither image nor build"
    assert first.get("image") == second.get("image")
    assert first.get("build") == second.get("build")
    assert services["migrate"].get("image") == first.get("image")
    assert services["migrate"].get("build") == first.get("build")


@pytest.mark.parametrize("name", APPS)
def test_apps_use_the_shared_postgres_and_redis(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    env = _environment(services[name])
    database = urlsplit(env["DATABASE_URL"])
    assert database.scheme in {"postgres", "postgresql"}
    assert database.hostname == "postgres"
    redis = urlsplit(env["REDIS_URL"])
    assert redis.scheme in {"redis", "rediss"}
    assert redis.hostname == "redis"
    assert env["DJANGO_SECRET_KEY"], "production settings refuse to start without a key"


@pytest.mark.parametrize("name", [*APPS, "migrate"])
def test_every_variable_set_is_read_by_settings(
    services: dict[str, dict[str, Any]], settings_names: set[str], name: str
) -> None:
    unknown = set(_environment(services[name])) - settings_names
    assert not unknown, f"{name} sets variables settings.py never reads: {sorted(unknown)}"


def test_the_apps_start_after_migrations_and_a_healthy_redis(
    services: dict[str, dict[str, Any]],
) -> None:
    assert _depends_on(services["migrate"]).get("postgres") == "service_healthy"
    for name in APPS:
        deps = _depends_on(services[name])
        assert deps.get("migrate") == "service_completed_successfully"
        assert deps.get("redis") == "service_healthy"


def test_the_apps_publish_distinct_host_ports(services: dict[str, dict[str, Any]]) -> None:
    published = [str(port) for name in APPS for port in services[name].get("ports", [])]
    # On loopback only: clients on the network reach the apps through nginx.
    assert sorted(published) == ["127.0.0.1:8001:8000", "127.0.0.1:8002:8000"]


def test_the_apps_believe_forwarded_addresses_only_from_nginx(
    services: dict[str, dict[str, Any]], settings_names: set[str]
) -> None:
    """TRUSTED_PROXIES is nginx's own fixed address, on the network's declared subnet:
    not the whole network, whose gateway is where Docker's port proxy (a client of a
    published port) and the host itself connect from."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    subnets = [c["subnet"] for c in compose["networks"]["default"]["ipam"]["config"]]
    nginx_address = services["nginx"]["networks"]["default"]["ipv4_address"]
    assert ipaddress.ip_address(nginx_address) in ipaddress.ip_network(subnets[0])
    assert "TRUSTED_PROXIES" in settings_names
    for name in APPS:
        assert _environment(services[name])["TRUSTED_PROXIES"] == nginx_address
    # nginx appends the address it received each request from (deploy/nginx.conf).
    template = (ROOT / "deploy" / "nginx.conf").read_text()
    assert template.count("X-Forwarded-For $proxy_add_x_forwarded_for;") == 3
    assert template.count("Host $http_host;") == 3


def _instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined."""
    joined = re.sub(r"\\\n", " ", dockerfile)
    pairs = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def test_the_image_serves_the_asgi_app_with_daphne() -> None:
    instructions = _instructions((ROOT / "Dockerfile").read_text())
    cmd = [args for keyword, args in instructions if keyword == "CMD"][-1]
    argv = json.loads(cmd) if cmd.startswith("[") else cmd.split()
    # `manage.py serve` runs daphne on project.asgi:application with the settings' limits.
    assert argv[:3] == ["python", "manage.py", "serve"]
    assert any(
        "--require-hashes" in args and "requirements.lock" in args
        for keyword, args in instructions
        if keyword == "RUN"
    )


def test_the_image_bakes_in_no_secret_key() -> None:
    instructions = _instructions((ROOT / "Dockerfile").read_text())
    baked = [args for keyword, args in instructions if keyword in {"ENV", "ARG"}]
    assert not any("DJANGO_SECRET_KEY" in args for args in baked)
    assert any(keyword == "USER" and args not in {"root", "0"} for keyword, args in instructions)


def test_nginx_fronts_both_app_processes_with_the_deploy_config(
    services: dict[str, dict[str, Any]],
) -> None:
    nginx = services["nginx"]
    mounts = " ".join(nginx["volumes"])
    assert "./deploy/nginx.conf:/etc/nginx/templates/" in mounts
    env = _environment(nginx)
    for app in APPS:
        assert f"server {app}:8000" in env["UPSTREAM_SERVERS"]
    assert set(APPS) <= set(_depends_on(nginx))
    template = (ROOT / "deploy" / "nginx.conf").read_text()
    for placeholder in re.findall(r"\$\{(\w+)\}", template):
        assert placeholder in env, f"nginx.conf needs {placeholder}"
    # The static files nginx serves come from the volume collectstatic fills.
    static_volume = next(v.split(":")[0] for v in nginx["volumes"] if "/srv/static" in v)
    assert any(v.startswith(f"{static_volume}:") for v in services["migrate"]["volumes"])


def test_apps_get_longer_to_stop_than_their_drain(services: dict[str, dict[str, Any]]) -> None:
    settings_text = (ROOT / "project" / "settings.py").read_text()
    drain_s = float(re.search(r'env_float\("DRAIN_S", ([\d.]+)\)', settings_text).group(1))
    for app in APPS:
        grace = services[app]["stop_grace_period"]
        assert grace.endswith("s") and float(grace[:-1]) > drain_s


def test_the_moderation_worker_calls_moderation_for_the_apps(
    services: dict[str, dict[str, Any]], settings_names: set[str]
) -> None:
    worker = services["moderation"]
    assert worker.get("image") == services["app1"].get("image")
    assert worker["command"] == ["python", "manage.py", "moderate_pending", "--watch"]
    # The apps leave the calls to it, and it works on the same database.
    for name in (*APPS, "moderation"):
        assert _environment(services[name])["MODERATION_WORKER"] == "1"
    assert _environment(worker)["DATABASE_URL"] == _environment(services["app1"])["DATABASE_URL"]
    assert "MODERATION_WORKER" in settings_names
    assert _depends_on(worker).get("migrate") == "service_completed_successfully"
    # No HTTP server in it: the image's /healthz check would mark it unhealthy.
    assert worker["healthcheck"] == {"disable": True}
