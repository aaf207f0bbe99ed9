"""The production topology here: nginx (Debian's) on loopback in front of two daphne
processes on one Redis and one PostgreSQL, as `make serve-cluster` runs it."""

import asyncio
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from deploy.cluster import Cluster
from tests import services
from tests.live import ROOT, Deployment, Server, Session, free_port, metric_value

pytestmark = [
    pytest.mark.multiprocess,
    pytest.mark.redis,
    pytest.mark.postgres,
    pytest.mark.timeout(180),
]


def count_to(n: int) -> str:
    return ", ".join(str(i) for i in range(1, n + 1))


@pytest.fixture
def cluster(redis_postgres: Deployment, tmp_path: Path) -> Iterator[Cluster]:
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        message = "nginx is not installed (make serve-cluster installs Debian's nginx)"
        if services.REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(f"SKIPPED, SERVICE MISSING: {message}")
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=redis_postgres.env,
        check=True,
        timeout=120,
    )
    # As docker-compose runs it: the apps leave moderation calls to the worker.
    env = {**redis_postgres.env, "DRAIN_S": "20", "MODERATION_WORKER": "1"}
    cluster = Cluster(
        env=env, run_dir=tmp_path, ports=[free_port(), free_port()], listen_port=free_port()
    )
    cluster.start()
    yield cluster
    cluster.stop()


def viewers_per_process(cluster: Cluster) -> dict[int, float]:
    counts = {}
    for port in cluster.apps:
        text = httpx2.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        counts[port] = metric_value(text, "livechat_connected_viewers")
    return counts


async def follow(session: Session, conv: str, message_id: str) -> str:
    """What the page does: reconnect whenever the server asks (1012) or drops."""
    while True:
        viewer = await session.viewer(conv, heal=True)
        try:
            return await viewer.final_text(message_id, timeout=90)
        except AssertionError:
            if viewer.close_code not in (1012, 1006, None):
                raise
            await asyncio.sleep(0.2)
        finally:
            await viewer.close()


async def test_the_stream_reaches_viewers_spread_over_both_processes_by_the_proxy(cluster):
    proxy = Server(cluster.url, process=None)
    alice, bob = await Session(proxy, "alice").login(), await Session(proxy, "bob").login()
    assert httpx2.get(f"{cluster.url}/static/chat/chat.js").status_code == 200
    assert httpx2.get(f"{cluster.url}/metrics").status_code == 404  # not public via the proxy
    conv = await alice.create_conversation(members={"bob": "member"})
    # The last two ask for compact deltas: the proxy passes the subprotocol both ways.
    viewers = [await s.viewer(conv, compact=i >= 2) for i, s in enumerate((alice, bob, alice, bob))]
    spread = viewers_per_process(cluster)
    assert all(count >= 1 for count in spread.values()), spread

    _, placeholder = await viewers[0].prompt("Count to 300, with a comma between each number")
    for viewer in viewers:
        final = await viewer.done(placeholder["id"])
        assert final["content"] == count_to(300) == viewer.texts[placeholder["id"]]
        assert viewer.breaches == []
        compact = [f.get("compact", False) for f in viewer.delta_frames(placeholder["id"])]
        assert set(compact) == {viewer.ws.subprotocol == "livechat.compact"}
        await viewer.close()
    assert [v.ws.subprotocol for v in viewers] == [None, None] + ["livechat.compact"] * 2
    await alice.close()
    await bob.close()


async def test_a_rolling_restart_under_load_loses_nothing(cluster):
    proxy = Server(cluster.url, process=None)
    alice, bob = await Session(proxy, "alice").login(), await Session(proxy, "bob").login()
    conversations = [await alice.create_conversation(members={"bob": "member"}) for _ in range(2)]
    followers, message_ids = [], []
    for conv in conversations:
        asker = await alice.viewer(conv)
        _, placeholder = await asker.prompt("Count to 1500 [[sim chunk_ms=4]]")
        await asker.close()
        message_ids.append((conv, placeholder["id"]))
        for session in (alice, bob):
            followers.append(asyncio.create_task(follow(session, conv, placeholder["id"])))
    await asyncio.sleep(1.5)

    # Restart the processes one at a time while the answers stream.
    for port in list(cluster.ports):
        code = await asyncio.to_thread(cluster.stop_app, port)
        assert code == 0
        await asyncio.to_thread(cluster.start_app, port)

    shown = await asyncio.gather(*followers)
    for conv, message_id in message_ids:
        stored = {m["id"]: m for m in await alice.messages(conv)}[message_id]
        # Within the drain window, answers complete; past it they would be interrupted.
        assert stored["status"] in ("complete", "interrupted")
        if stored["status"] == "complete":
            assert stored["content"] == count_to(1500)
        for (_conv, follower_id), text in zip(
            [m for m in message_ids for _ in range(2)], shown, strict=True
        ):
            if follower_id == message_id:
                assert text == stored["content"]
    await alice.close()
    await bob.close()


async def test_the_moderation_worker_judges_what_the_app_processes_stored(cluster):
    import psycopg

    proxy = Server(cluster.url, process=None)
    alice = await Session(proxy, "alice").login()
    conv = await alice.create_conversation()
    viewer = await alice.viewer(conv)
    _, placeholder = await viewer.prompt("[[sim reply=I+will+flagme+now]]")
    assert (await viewer.done(placeholder["id"]))["content"] == "I will flagme now"
    await viewer.close()
    await alice.close()

    # The app process opened the case as it stored the answer; the worker (a pass a
    # second) called moderation and stored the verdict.
    with psycopg.connect(cluster.env["DATABASE_URL"], autocommit=True) as db:
        for _ in range(150):
            row = db.execute(
                "SELECT state, attempts, categories FROM chat_moderationcase"
                " WHERE message_id = %s AND source = 'auto'",
                [placeholder["id"]],
            ).fetchone()
            if row and row[0] != "pending":
                break
            await asyncio.sleep(0.1)
    assert row == ("flagged", 1, ["violence"])
    worker_log = (cluster.run_dir / "moderation-worker.log").read_text()
    assert "1 moderated (1 flagged)" in worker_log
    app_logs = " ".join(p.read_text() for p in cluster.run_dir.glob("daphne-*.log"))
    assert "moderation pass" not in app_logs and "flagged:" not in app_logs
