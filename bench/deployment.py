"""The benchmark's deployment: its own PostgreSQL database and Redis prefix, the
simulator, the moderation worker, the load generator and the daphne servers of each
step, signed-in users and a pool of conversations; set up and torn down whole."""

from __future__ import annotations

import contextlib
import json
import random
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.console import log
from bench.loadgen_process import LoadGenProc
from bench.modes import CHUNK_MS, Mode
from bench.server_env import POSTGRES_ADMIN_URL, REDIS_BASE_URL, SERVER_ENV, scrubbed_env
from deploy.harness import Process, start_moderation_worker, start_simulator
from tests.live import PASSWORDS, Deployment, Server, Session

# The simulator with a recorder of each content chunk's `sim_ts` (bench/simulator.py).
SIMULATOR_COMMAND = ("-m", "bench.simulator")


@dataclass
class Bench:
    """A run's deployment and what its steps share: the running servers (kept while a
    step wants the same ones), signed-in users' cookies, unused conversations, and the
    random source of prompt delays."""

    mode: Mode
    tmp: Path
    seed: int = 1
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    db_name: str = ""
    db_url: str = ""
    redis_url: str = ""
    prefix: str = ""
    sim: Process | None = None
    moderation_worker: Process | None = None
    sim_url: str = ""
    deployment: Deployment | None = None
    cookies: dict[str, str] = field(default_factory=dict)
    pool: list[str] = field(default_factory=list)
    servers: list[Server] = field(default_factory=list)
    server_key: tuple | None = None
    loadgen: LoadGenProc | None = None
    rng: random.Random = field(default_factory=lambda: random.Random(1))
    step_counter: int = 0
    profile: bool = False
    quiet_wait_s: float = 0.0
    quiet_percent: float = 50.0

    # -- setup / teardown --------------------------------------------------------------

    async def setup(self) -> None:
        """The database (migrated, users seeded), the simulator, the moderation worker
        and the load generator."""
        import psycopg

        self.db_name = f"bench_{self.tag}"
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.db_name}"')
        self.db_url = f"{POSTGRES_ADMIN_URL.rsplit('/', 1)[0]}/{self.db_name}"
        self.redis_url = f"{REDIS_BASE_URL}/{9 + int(self.tag, 16) % 6}"
        self.prefix = f"bench{self.tag}"
        self.sim, self.sim_url = start_simulator(
            scrubbed_env(DJANGO_SETTINGS_MODULE="project.settings_test"),
            log_dir=self.tmp,
            chunk_ms=round(CHUNK_MS, 4),
            ttft_ms=self.mode.ttft_ms,
            command=SIMULATOR_COMMAND,
        )
        env = scrubbed_env(**SERVER_ENV)
        env.update(
            {
                "DATABASE_URL": self.db_url,
                "REDIS_URL": self.redis_url,
                "CHANNEL_PREFIX": self.prefix,
                "OPENAI_BASE_URL": self.sim_url,
            }
        )
        self.deployment = Deployment("bench", env, self.tmp)
        log("migrating", self.db_name)
        self.deployment.manage("migrate", "--noinput")
        self.deployment.seed_users()
        self.moderation_worker = start_moderation_worker(
            self.deployment.env, log_path=self.tmp / "moderation-worker.log"
        )
        self.loadgen = await LoadGenProc.start(self.tmp / "loadgen.log")

    async def teardown(self) -> None:
        """Every process stopped, the database dropped, this run's Redis keys deleted."""
        import psycopg

        if self.loadgen:
            await self.loadgen.stop()
        self.stop_servers()
        if self.moderation_worker:
            self.moderation_worker.stop()
        if self.sim:
            self.sim.stop()
        if self.db_name:
            with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        with contextlib.suppress(Exception):
            import redis

            r = redis.Redis.from_url(self.redis_url)
            keys = list(r.scan_iter(f"{self.prefix}*", count=1000))
            for i in range(0, len(keys), 500):
                r.delete(*keys[i : i + 500])

    # -- servers, users, conversations ---------------------------------------------------

    async def servers_for(self, n: int, flush_ms: float | None) -> list[Server]:
        """`n` servers with this flush window, signed-in users and warm:
        the running ones when they match (and the mode does not restart each step)."""
        key = (n, flush_ms)
        if self.servers and self.server_key == key and not self.mode.restart_each_step:
            return self.servers
        self.stop_servers()
        extra = {}
        if flush_ms is not None:
            extra["STREAM_FLUSH_MS"] = str(flush_ms)
        assert self.deployment
        self.servers = [self.deployment.start_server(**extra) for _ in range(n)]
        self.server_key = key
        if not self.cookies:
            for name in PASSWORDS:
                session = await Session(self.servers[0], name).login()
                self.cookies[name] = session.cookie_header()
                await session.close()
        await self._warmup()
        return self.servers

    def stop_servers(self) -> None:
        for s in self.servers:
            s.process.stop()
        self.servers = []
        self.server_key = None

    def conversations(self, n: int) -> list[str]:
        """`n` fresh conversations of alice's with bob, carol and dave as viewers."""
        if len(self.pool) < n:
            self._create_conversations(max(n - len(self.pool), 200))
        taken, self.pool = self.pool[:n], self.pool[n:]
        return taken

    def _create_conversations(self, n: int) -> None:
        code = (
            "import json\n"
            "from django.contrib.auth import get_user_model\n"
            "from chat.models import Conversation, Membership\n"
            "U = {u.username: u for u in get_user_model().objects.all()}\n"
            "convs = Conversation.objects.bulk_create(\n"
            f"    [Conversation(owner=U['alice'], title=f'bench {{i}}') for i in range({n})]\n"
            ")\n"
            "ms = []\n"
            "for c in convs:\n"
            "    ms.append(Membership(conversation=c, user=U['alice'], role='owner'))\n"
            "    for name in ('bob', 'carol', 'dave'):\n"
            "        ms.append(Membership(conversation=c, user=U[name], role='viewer'))\n"
            "Membership.objects.bulk_create(ms)\n"
            "print(json.dumps([str(c.id) for c in convs]))\n"
        )
        assert self.deployment
        out = self.deployment.manage("shell", "-c", code)
        self.pool.extend(json.loads(out.strip().splitlines()[-1]))

    def viewer_specs(self, convs: list[str], per_conv: int, servers: list[Server]) -> list[dict]:
        """Viewer 0 of each conversation is alice (the owner, who asks); the rest are
        bob, carol and dave in turn. With several servers, viewers alternate between them."""
        specs = []
        others = ("bob", "carol", "dave")
        vid = 0
        for ci, conv in enumerate(convs):
            for j in range(per_conv):
                server = servers[(ci + j) % len(servers)]
                host, port = server.url.removeprefix("http://").split(":")
                user = "alice" if j == 0 else others[(j - 1) % 3]
                specs.append(
                    {
                        "id": vid,
                        "conv": ci,
                        "host": host,
                        "port": int(port),
                        "path": f"/ws/chat/{conv}/",
                        "cookie": self.cookies[user],
                        "origin": server.url,
                        "asker": j == 0,
                        # Every other viewer asks for the compact delta form, as the
                        # app's page does; the rest get the protocol's long form.
                        "compact": j % 2 == 1,
                    }
                )
                vid += 1
        return specs

    async def _warmup(self) -> None:
        """One short answer per fresh server: imports, the upstream client, DB and Redis
        connections are made before anything is measured."""
        assert self.loadgen
        convs = self.conversations(len(self.servers))
        specs = []
        for i, (conv, server) in enumerate(zip(convs, self.servers, strict=True)):
            host, port = server.url.removeprefix("http://").split(":")
            specs.append(
                {
                    "id": i,
                    "conv": i,
                    "host": host,
                    "port": int(port),
                    "path": f"/ws/chat/{conv}/",
                    "cookie": self.cookies["alice"],
                    "origin": server.url,
                }
            )
        await self.loadgen.call("connect", viewers=specs)
        streams = [
            stream_spec(i, i, f"warmup {self.tag} {uuid.uuid4().hex[:6]}", 20, 0.0, ttft_ms=0)
            for i in range(len(specs))
        ]
        await self.loadgen.call("round", streams=streams)
        await self.loadgen.call("wait", timeout=30)
        await self.loadgen.call("collect", sim_url=self.sim_url)
        await self.loadgen.call("summary")
        await self.loadgen.call("close")


def stream_spec(
    conv: int,
    asker: int,
    label: str,
    words: int,
    delay: float,
    ttft_ms: float | None = None,
) -> dict[str, Any]:
    """One stream of a round for the load generator: the prompt the asker sends after
    `delay` seconds, and the reply the simulator will give with its tokens' end offsets."""
    from chat.simulator.script import parse_directives, reply_text, tokenize

    directive = f"words={words}"
    if ttft_ms is not None:
        directive += f" ttft_ms={ttft_ms}"
    prompt = f"Bench {label} [[sim {directive}]]"
    key, directives = parse_directives(prompt)
    text = reply_text(key, directives)
    ends, pos = [], 0
    for token in tokenize(text):
        pos += len(token)
        ends.append(pos)
    return {
        "conv": conv,
        "asker": asker,
        "prompt": prompt,
        "prompt_key": key,
        "text": text,
        "ends": ends,
        "delay": delay,
    }
