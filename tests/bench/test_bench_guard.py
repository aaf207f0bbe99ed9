"""Performance regression guard, cheap enough for CI.

1. Deterministic counts, asserted: around whole generations through the real consumer,
   the Redis commands under this test's key prefix (Redis MONITOR, so other clients of
   the shared Redis do not count) and the SQL writes (INSERT/UPDATE/DELETE statements,
   counted in every thread). The invariants: each flush costs exactly
   `PER_FLUSH_COMMANDS` Redis commands whatever the number of viewers, every other
   command of a generation is a fixed number, and the database is written a fixed
   number of times per answered prompt, however many deltas the answer has.
2. A small benchmark run (`bench.run --smoke`: real daphne, simulator, moderation
   worker and load generator processes) whose Redis commands per flush and database
   writes per message must stay within bounds: one more Redis command per flush, or one
   more database write per answered prompt, crosses them. Its timings are printed,
   never asserted.
"""

import asyncio
import contextlib
import json
import re
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from channels.testing import WebsocketCommunicator
from django.db.backends import utils as db_utils

from chat.models import Message
from tests import services
from tests.sockets import connect

ROOT = Path(__file__).resolve().parents[2]

# XADD (the replay log) and PUBLISH (the delta to the group), sent in one write.
PER_FLUSH_COMMANDS = {"XADD": 1, "PUBLISH": 1}
PER_FLUSH_ROUND_TRIPS = 1
# Per generation, besides its flushes: the cancel listener subscribes to the generation
# group's channel and unsubscribes; the user message, the placeholder and `done` are
# published; the replay log gets its TTL at its first append and a short one at the end.
PER_GENERATION_COMMANDS = {"SUBSCRIBE": 1, "UNSUBSCRIBE": 1, "PUBLISH": 3, "EXPIRE": 2}
# Per answered prompt, whatever its length: the prompt (user message and placeholder in
# one INSERT, token reservation, conversation's updated_at), the answer (final state,
# usage settled) and its moderation (case opened, attempt counted, verdict stored,
# visibility refreshed).
DB_WRITES_PER_MESSAGE = 9

# The smoke run's `redis_commands_per_flush`: MONITOR's count of every command under the
# run's prefix over the deltas. Each flush is XADD + PUBLISH; the PER_GENERATION_COMMANDS
# of each answer, spread over its flushes, add a few tenths; one more command per flush
# would add 1.
SMOKE_REDIS_COMMANDS_PER_FLUSH = (2.0, 2.6)
# The smoke run's `db_writes_per_message` (rows written per answered prompt, from
# PostgreSQL's row counters, read after every backend has published them): the
# DB_WRITES_PER_MESSAGE rows, with room for a checkpoint of an answer slowed by a busy
# machine; one more write per answered prompt would add 1.
SMOKE_DB_WRITES_PER_MESSAGE = (DB_WRITES_PER_MESSAGE - 1, DB_WRITES_PER_MESSAGE + 0.5)


class RedisMonitor:
    """Counts commands whose text contains `prefix`, by command name, with MONITOR."""

    LINE = re.compile(rb'^\+\d+\.\d+ \[\d+ [^\]]+\] "([A-Za-z]+)"')

    def __init__(self, url: str, prefix: str) -> None:
        host, port = url.removeprefix("redis://").split("/")[0].split(":")
        self.address = (host, int(port))
        self.prefix = prefix.encode()
        self.lines: list[bytes] = []
        self.sentinel = f"{prefix}-sentinel-".encode()
        self._seen: set[bytes] = set()
        self._cond = threading.Condition()

    def __enter__(self) -> "RedisMonitor":
        self.sock = socket.create_connection(self.address)
        self.sock.sendall(b"MONITOR\r\n")
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()
        self.thread.join(5)

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except OSError:
                return
            if not data:
                return
            buf += data
            *lines, buf = buf.split(b"\r\n")
            with self._cond:
                for line in lines:
                    if self.sentinel in line:
                        self._seen.add(line.split(self.sentinel)[1][:8])
                    elif self.prefix in line:
                        self.lines.append(line)
                self._cond.notify_all()

    def mark(self, url: str) -> list[bytes]:
        """Everything logged so far (a sentinel command proves MONITOR caught up)."""
        import redis

        token = uuid.uuid4().hex[:8]
        redis.Redis.from_url(url).echo(self.sentinel.decode() + token)
        with self._cond:
            assert self._cond.wait_for(lambda: token.encode() in self._seen, 10)
            taken, self.lines = self.lines, []
        return taken

    @classmethod
    def count(cls, lines: list[bytes]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for line in lines:
            m = cls.LINE.match(line)
            if m:
                name = m.group(1).decode().upper()
                counts[name] = counts.get(name, 0) + 1
        return counts


@pytest.fixture
def sql_writes(monkeypatch):
    """Every INSERT/UPDATE/DELETE statement run by Django, in any thread."""
    writes: list[str] = []
    original = db_utils.CursorWrapper._execute_with_wrappers

    def counting(self, sql, params, many, executor):
        if re.match(r"\s*(INSERT|UPDATE|DELETE)\b", sql, re.IGNORECASE):
            writes.append(sql[:120])
        return original(self, sql, params, many, executor)

    monkeypatch.setattr(db_utils.CursorWrapper, "_execute_with_wrappers", counting)
    return writes


@pytest.fixture
def round_trips(monkeypatch):
    """Commands sent to Redis in one write (a pipeline is one), by what they carry: through
    redis-py, or on this project's own connections (chat/fanout/redis/resp.py: one write
    per call)."""
    from redis.asyncio import connection

    from chat.fanout.redis import resp

    sent: list[bytes] = []
    original = connection.Connection.send_packed_command

    async def counting(self, command, check_health=True):
        parts = [command] if isinstance(command, bytes | str) else list(command)
        sent.append(b"".join(p.encode() if isinstance(p, str) else bytes(p) for p in parts))
        return await original(self, command, check_health)

    monkeypatch.setattr(connection.Connection, "send_packed_command", counting)
    encode = resp.encode

    def encoding(commands):
        data = encode(commands)
        sent.append(data)
        return data

    monkeypatch.setattr(resp, "encode", encoding)
    return sent


@pytest.fixture
def redis_layer(settings):
    """This test's own Redis database number and key prefix, the Redis layer."""
    services.require("redis")
    prefix = f"guard{uuid.uuid4().hex[:8]}"
    url = f"{services.REDIS_BASE_URL}/{1 + uuid.uuid4().int % 15}"
    settings.REDIS_URL = url
    settings.CHANNEL_PREFIX = prefix
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "chat.fanout.redis.layer.RedisLayer",
            "CONFIG": {"url": url, "prefix": prefix},
        }
    }
    # Nothing time-driven may write during the count: no checkpoint within an answer,
    # no sweeper pass, no moderation retry loop.
    settings.STREAM_CHECKPOINT_S = 3600
    settings.STREAM_SWEEP_INTERVAL_S = 0
    settings.MODERATION_RETRY_INTERVAL_S = 0
    settings.STREAM_FLUSH_MS = 20
    settings.SIMULATOR_TTFT_MS = 0
    settings.SIMULATOR_CHUNK_MS = 2
    settings.PROMPTS_PER_MINUTE = 1000
    yield url, prefix
    import redis

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(f"{prefix}*"))
    if keys:
        client.delete(*keys)


async def _connect(user, conversation_id) -> WebsocketCommunicator:
    return await connect(user, conversation_id, wait_presence=False)


async def _drain(comm: WebsocketCommunicator) -> None:
    # receive_from's timeout would cancel the consumer: ask for "nothing" instead.
    while not await comm.receive_nothing(0.1):
        await comm.receive_from(1)


async def _answer(asker, viewers, prompt: str) -> int:
    """Send a prompt, wait until every socket has `done`; returns the answer's seq."""
    await asker.send_json_to({"type": "prompt", "content": prompt})
    seq = None
    for comm in [asker, *viewers]:
        while True:
            frame = json.loads(await comm.receive_from(20))
            if frame["type"] == "done":
                seq = frame["message"]["seq"]
                assert frame["message"]["status"] == "complete"
                break
    from chat import moderation

    await moderation.drain()
    await asyncio.sleep(0.2)  # the runner's last commands (replay-log expiry) are sent
    return seq


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
async def test_redis_commands_per_flush_and_db_writes_per_message(
    users, conversation, redis_layer, sql_writes, round_trips
):
    from chat.domain import services as chat_services
    from chat.models import Role

    url, prefix = redis_layer
    for name in ("eve",):
        await asyncio.to_thread(
            chat_services.member_set,
            conversation=conversation,
            actor=users["alice"],
            username=name,
            role=Role.VIEWER,
        )
    asker = await _connect(users["alice"], conversation.id)
    few = [await _connect(users["bob"], conversation.id)]
    more = [await _connect(users[n], conversation.id) for n in ("bob", "eve", "eve", "bob")]
    for comm in [asker, *few, *more]:
        await _drain(comm)

    runs = []
    with RedisMonitor(url, prefix) as monitor:
        monitor.mark(url)
        for label, viewers, prompt in (
            ("short answer, 2 sockets", few, "Count to 3"),
            ("long answer, 2 sockets", few, "Count to 200"),
            ("long answer, 6 sockets", few + more, "Count to 200 please"),
        ):
            for comm in [asker, *few, *more]:
                await _drain(comm)
            del sql_writes[:]
            monitor.mark(url)
            del round_trips[:]
            seq = await _answer(asker, viewers, prompt)
            commands = RedisMonitor.count(monitor.mark(url))
            xadds = [w for w in round_trips if b"XADD" in w and prefix.encode() in w]
            runs.append((label, seq, commands, list(sql_writes), xadds))

    report = []
    for label, seq, commands, writes, xadds in runs:
        # Each flush is one write to Redis carrying its XADD and its PUBLISH together.
        assert len(xadds) == seq * PER_FLUSH_ROUND_TRIPS, (label, seq, len(xadds))
        assert all(w.count(b"XADD") == 1 and b"PUBLISH" in w for w in xadds), (label, xadds[:2])
        per_generation = {
            k: v - seq * PER_FLUSH_COMMANDS.get(k, 0)
            for k, v in commands.items()
            if v - seq * PER_FLUSH_COMMANDS.get(k, 0)
        }
        report.append((label, seq, commands, per_generation, len(writes)))
        print(
            f"{label}: {seq} flushes, Redis {commands} "
            f"(= {seq} x {PER_FLUSH_COMMANDS} + {per_generation}), "
            f"{len(writes)} SQL writes: {writes}"
        )
    seqs = [r[1] for r in report]
    assert seqs[0] < seqs[1] and seqs[0] < seqs[2], seqs  # long answers have more flushes
    for label, seq, commands, per_generation, _ in report:
        assert per_generation == PER_GENERATION_COMMANDS, (
            f"{label}: Redis commands not explained by {seq} flushes x {PER_FLUSH_COMMANDS} "
            f"+ {PER_GENERATION_COMMANDS}: {commands}"
        )
    writes = [r[4] for r in report]
    assert len(set(writes)) == 1, (
        f"SQL writes per answered prompt vary with its length or its viewers: {runs}"
    )
    assert writes[0] == DB_WRITES_PER_MESSAGE, (
        f"{writes[0]} SQL writes per answered prompt, expected {DB_WRITES_PER_MESSAGE}: "
        f"{runs[0][3]}"
    )
    assert await Message.objects.filter(conversation=conversation).acount() == 6
    for comm in [asker, *few, *more]:
        await comm.disconnect()
    from channels.layers import get_channel_layer

    await get_channel_layer().flush()


@pytest.mark.multiprocess
@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.timeout(240)
def test_the_smoke_benchmark_stays_within_its_redis_and_database_bounds(tmp_path, capsys):
    """`bench.run --smoke`: its report is printed; its Redis commands per flush (every
    monitored step) and database writes per message (the reference step) are asserted."""
    services.require("redis")
    services.require("postgres")
    out = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--no-plots", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=230,
    )
    with capsys.disabled():
        print("\n" + out.stdout[-6000:])
    assert out.returncode == 0, out.stderr[-4000:]
    results = json.loads((tmp_path / "latest.json").read_text())
    assert results["steps"], "the smoke run measured nothing"

    low, high = SMOKE_REDIS_COMMANDS_PER_FLUSH
    per_flush = {s["name"]: s.get("redis_commands_per_flush") for s in results["steps"]}
    assert results["redis_commands_per_flush"] is not None, per_flush
    for name, value in per_flush.items():
        commands = next(s["redis_commands"] for s in results["steps"] if s["name"] == name)
        assert value is not None and low <= value <= high, (
            f"{name}: {value} Redis commands per flush, expected {low}-{high}: {commands}"
        )

    low, high = SMOKE_DB_WRITES_PER_MESSAGE
    writes = results["db_writes_per_message"]
    reference = next(s for s in results["steps"] if s["name"] == results["reference_step"])
    assert writes is not None and low <= writes <= high, (
        f"{reference['name']}: {writes} database writes per message, expected {low}-{high}: "
        f"{reference['pg_writes']}"
    )
