"""Shared fixtures: live deployments (embedded default, and Redis + PostgreSQL) with real
daphne processes, and signed-in sessions."""

import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest

from deploy import harness
from tests import services
from tests.live import Deployment, Server, Session, start_simulator

# Each HTTP request of the test clients would otherwise be logged.
logging.getLogger("httpx2").setLevel(logging.WARNING)


SERVER_ENV = {
    "DJANGO_SETTINGS_MODULE": "project.settings",
    "DJANGO_SECRET_KEY": "live-test-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz",
    "DJANGO_DEBUG": "0",
    "DJANGO_SECURE_COOKIES": "0",  # the test servers speak plain HTTP
    "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
    "STREAM_FLUSH_MS": "30",
    "STREAM_CHECKPOINT_S": "0.3",
    "STREAM_STALE_S": "4",
    "STREAM_SWEEP_INTERVAL_S": "1",
    "SIMULATOR_CHUNK_MS": "2",
    "SIMULATOR_TTFT_MS": "20",
    "OPENAI_MAX_RETRIES": "1",
    "OPENAI_TIMEOUT_S": "10",
    "PROMPTS_PER_MINUTE": "10000",
    # The suite streams long answers for many users at once; limits have their own tests.
    "OPENAI_MAX_TOKENS": "50000",
    "DAILY_TOKEN_QUOTA": "0",
    "MAX_GENERATIONS_PER_USER": "100",
    "WS_FRAMES_PER_SECOND": "1000",
    "WS_FRAME_BURST": "1000",
    "LOG_LEVEL": "INFO",
    "PYTHONUNBUFFERED": "1",
}


def _base_env() -> dict[str, str]:
    return {**harness.scrubbed_env(), **SERVER_ENV}


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("live")


def _embedded(tmp: Path) -> Iterator[Deployment]:
    tmp.mkdir(parents=True, exist_ok=True)
    env = {**_base_env(), "DATABASE_URL": f"sqlite:///{tmp / 'embedded.sqlite3'}"}
    deployment = Deployment("embedded", env, tmp)
    deployment.manage("migrate", "--noinput")
    deployment.seed_users()
    yield deployment
    deployment.stop_all()


def live_redis_postgres(tmp: Path, redis_url: str | None = None) -> Iterator[Deployment]:
    """A deployment on a PostgreSQL database of its own, Redis (`redis_url`, or a database
    number of the local one) under a channel prefix of its own, and its own simulator;
    all of it stopped and dropped afterwards."""
    services.require("postgres")
    if redis_url is None:
        services.require("redis")
        redis_url = f"{services.REDIS_BASE_URL}/{1 + uuid.uuid4().int % 15}"
    tmp.mkdir(parents=True, exist_ok=True)
    name = f"chat_live_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(services.POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    admin = services.POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    simulator, sim_url = start_simulator(tmp)
    env = {
        **_base_env(),
        "DATABASE_URL": f"{admin}/{name}",
        # Pub/sub channels ignore the database number: the prefix keeps runs apart.
        "REDIS_URL": redis_url,
        "CHANNEL_PREFIX": f"t{uuid.uuid4().hex[:8]}",
        "OPENAI_BASE_URL": sim_url,
        "OPENAI_API_KEY": "sk-live-test-key",
    }
    deployment = Deployment("redis-postgres", env, tmp)
    try:
        deployment.manage("migrate", "--noinput")
        deployment.seed_users()
        yield deployment
    finally:
        deployment.stop_all()
        simulator.stop()
        with psycopg.connect(services.POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(
    scope="session",
    params=[
        "embedded",
        pytest.param("redis-postgres", marks=[pytest.mark.redis, pytest.mark.postgres]),
    ],
)
def deployment(request: pytest.FixtureRequest, artifacts: Path) -> Iterator[Deployment]:
    """Each live test runs once on the embedded default and once on Redis + PostgreSQL."""
    factory = _embedded if request.param == "embedded" else live_redis_postgres
    yield from factory(artifacts / request.param)


@pytest.fixture(scope="session")
def redis_postgres(artifacts: Path) -> Iterator[Deployment]:
    yield from live_redis_postgres(artifacts / "scale-out")


@pytest.fixture(scope="session")
def _server_by_deployment() -> dict[str, Server]:
    return {}


@pytest.fixture
def server(deployment: Deployment, _server_by_deployment: dict[str, Server]) -> Iterator[Server]:
    """A daphne process of the deployment (shared by tests); its log must stay clean."""
    srv = _server_by_deployment.get(deployment.name)
    if srv is None or srv.process.proc.poll() is not None:
        srv = _server_by_deployment[deployment.name] = deployment.start_server()
    start = len(srv.process.log())
    yield srv
    tail = srv.process.log()[start:]
    from tests.live import UNHANDLED

    match = UNHANDLED.search(tail)
    assert match is None, (
        f"unhandled exception in the server log:\n{tail[max(0, match.start() - 1500) :][:5000]}"
    )


@pytest.fixture
async def sessions(server: Server) -> AsyncIterator[dict[str, Session]]:
    """alice, bob, carol and dave, signed in to the server."""
    opened = {
        name: await Session(server, name).login() for name in ("alice", "bob", "carol", "dave")
    }
    yield opened
    for session in opened.values():
        await session.close()


@pytest.fixture
def users(django_user_model):
    """alice, bob and eve, in the pytest process's database."""
    return {
        name: django_user_model.objects.create_user(name, password="x")
        for name in ("alice", "bob", "eve")
    }


@pytest.fixture
def conversation(users):
    """alice's conversation with bob as a member."""
    from chat.domain import services
    from chat.models import Role

    conv = services.conversation_create(owner=users["alice"], title="t")
    services.member_set(conversation=conv, actor=users["alice"], username="bob", role=Role.MEMBER)
    return conv


@pytest.fixture(autouse=True)
async def _settle_background_work():
    """Let the generations and moderation calls a test started finish on its own loop
    before the database is flushed: they write from threads, and SQLite refuses to
    flush tables another connection is writing."""
    yield
    import asyncio

    from chat import moderation
    from chat.generation.registry import registry

    await registry.wait_idle(10)
    await asyncio.wait_for(moderation.drain(), 10)
