"""The production topology here: nginx (Debian's) on loopback in front of two daphne
processes on one Redis and one PostgreSQL, as `make serve-cluster` runs it, from a
checkout in a private folder (mode 0700, as a home directory)."""

import asyncio
import re
import shutil
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
import redis

from deploy.cluster import Cluster
from tests import live, services
from tests.live import (
    PASSWORDS,
    ROOT,
    Deployment,
    Server,
    Session,
    expected_close,
    free_port,
    metric_value,
)

pytestmark = [
    pytest.mark.multiprocess,
    pytest.mark.redis,
    pytest.mark.postgres,
    pytest.mark.timeout(180),
]


def count_to(n: int) -> str:
    return ", ".join(str(i) for i in range(1, n + 1))


# Small per-address limits, so that the test of client addresses reaches them.
LIMITS = {"LOGIN_ATTEMPTS_PER_15_MIN": "2", "SIGNUPS_PER_HOUR_PER_ADDRESS": "1"}


@pytest.fixture(scope="module")
def private_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder only its owner may enter (mode 0700, as a home directory)."""
    path = tmp_path_factory.mktemp("home")
    path.chmod(0o700)
    return path


@pytest.fixture(scope="module")
def static_root(redis_postgres: Deployment, private_dir: Path) -> Path:
    """collectstatic's files (STATIC_ROOT), inside the private folder."""
    root = private_dir / "staticfiles"
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
        cwd=ROOT,
        env={**redis_postgres.env, "STATIC_ROOT": str(root)},
        check=True,
        timeout=120,
    )
    return root


@pytest.fixture
def cluster(redis_postgres: Deployment, private_dir: Path, static_root: Path) -> Iterator[Cluster]:
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        message = "nginx is not installed (make serve-cluster installs Debian's nginx)"
        if services.REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(f"SKIPPED, SERVICE MISSING: {message}")
    run_dir = private_dir / f"cluster-{uuid.uuid4().hex[:8]}"
    run_dir.mkdir(mode=0o700)
    # As docker-compose runs it: the apps leave moderation calls to the worker.
    env = {
        **redis_postgres.env,
        "DRAIN_S": "20",
        "MODERATION_WORKER": "1",
        "STATIC_ROOT": str(static_root),
        **LIMITS,
    }
    cluster = Cluster(
        env=env, run_dir=run_dir, ports=[free_port(), free_port()], listen_port=free_port()
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
    """What the page does: reconnect at once when the server says it restarts (1012).
    Any other end of a socket (a drop, 1006) fails the test."""
    while True:
        try:
            viewer = await session.viewer(conv, heal=True)
        except AssertionError as refused:  # closed before its snapshot, by a draining process
            if f"closed ({expected_close(1012)})" not in str(refused):
                raise
            continue
        try:
            return await viewer.final_text(message_id, timeout=90)
        except AssertionError:
            if viewer.close_code != expected_close(1012):
                raise
        finally:
            await viewer.close()


async def test_the_stream_reaches_viewers_spread_over_both_processes_by_the_proxy(cluster):
    proxy = Server(cluster.url, process=None)
    alice, bob = await Session(proxy, "alice").login(), await Session(proxy, "bob").login()
    assert httpx2.get(f"{cluster.url}/static/chat/main.js").status_code == 200
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


def test_the_proxy_serves_static_files_from_a_private_folder(cluster, private_dir, static_root):
    """`make serve-cluster` from a checkout in a home directory: nginx, started as root
    or not, reads the static files (its workers are the invoking user)."""
    assert stat.S_IMODE(private_dir.stat().st_mode) == 0o700
    assert static_root.is_relative_to(private_dir)
    assert cluster.run_dir.is_relative_to(private_dir)
    response = httpx2.get(f"{cluster.url}/static/chat/main.js", timeout=10)
    assert response.status_code == 200
    # The page's scripts are ES modules: a browser runs them only with a JavaScript type.
    kind = response.headers["content-type"].split(";")[0]
    assert kind in ("text/javascript", "application/javascript"), kind
    assert response.content == (static_root / "chat" / "main.js").read_bytes()


def from_address(cluster: Cluster, address: str) -> httpx2.AsyncClient:
    """An HTTP client of the proxy whose connections come from `address` (any 127.x
    address reaches a loopback listener): another client as nginx sees it."""
    transport = httpx2.AsyncHTTPTransport(local_address=address)
    return httpx2.AsyncClient(base_url=cluster.url, transport=transport, timeout=10)


async def form_post(client: httpx2.AsyncClient, path: str, data: dict[str, str]) -> int:
    """Fill the form at `path` (with its CSRF token) and post it: the status."""
    return (await live.form_post(client, path, data)).status_code


async def sign_in(address: str, cluster: Cluster, username: str, password: str) -> int:
    async with from_address(cluster, address) as client:
        return await form_post(
            client, "/accounts/login/", {"username": username, "password": password}
        )


async def sign_up(address: str, cluster: Cluster) -> int:
    password = f"a-Long-pass-{uuid.uuid4().hex[:8]}"
    form = {"username": f"new-{uuid.uuid4().hex[:10]}", "password1": password}
    async with from_address(cluster, address) as client:
        return await form_post(client, "/accounts/signup/", {**form, "password2": password})


async def test_each_client_address_has_its_own_limits_behind_the_proxy(cluster):
    """nginx connects from 127.0.0.1 for everyone; the apps trust it (TRUSTED_PROXIES)
    and count failures and sign-ups per client address, the one nginx appends."""
    first, second = "127.0.0.2", "127.0.0.3"
    # Failed sign-ins from one address, each for another name, until it is refused.
    statuses: list[int] = []
    while 429 not in statuses and len(statuses) < 100:
        statuses.append(await sign_in(first, cluster, f"nobody-{uuid.uuid4().hex[:8]}", "no"))
    assert set(statuses[:-1]) == {200} and statuses[-1] == 429, statuses
    # That address is held up, even with the right password; another one is not.
    assert await sign_in(first, cluster, "alice", PASSWORDS["alice"]) == 429
    assert await sign_in(second, cluster, "alice", PASSWORDS["alice"]) == 302

    # New accounts: one per address per hour here (SIGNUPS_PER_HOUR_PER_ADDRESS=1).
    assert await sign_up(first, cluster) == 302
    assert await sign_up(first, cluster) == 429
    assert await sign_up(second, cluster) == 302

    # The apps counted the clients' own addresses, never the proxy's.
    prefix = cluster.env["CHANNEL_PREFIX"]
    with redis.Redis.from_url(cluster.env["REDIS_URL"]) as r:
        keys = [k.decode() for k in r.scan_iter(match=f"{prefix}:*127.0.0.*", count=1000)]
    named = {a for a in ("127.0.0.1", first, second) if any(names(k, a) for k in keys)}
    assert named == {first, second}, keys


def names(key: str, address: str) -> bool:
    """Whether a cache key names this address (not merely one it is the start of)."""
    return re.search(rf"(?<![\d.]){re.escape(address)}(?![\d])", key) is not None


def test_the_apps_believe_forwarded_addresses_only_from_the_proxy(cluster):
    """/metrics answers loopback only (METRICS_ALLOWED_IPS), by the client's address."""
    app = f"http://127.0.0.1:{cluster.ports[0]}/metrics"
    assert httpx2.get(app, timeout=10).status_code == 200
    # From the proxy's address, X-Forwarded-For names the client: a remote one.
    forwarded = {"X-Forwarded-For": "203.0.113.7"}
    assert httpx2.get(app, headers=forwarded, timeout=10).status_code == 404
    # From anywhere else it is not believed: 127.0.0.2 cannot claim to be 127.0.0.1.
    transport = httpx2.HTTPTransport(local_address="127.0.0.2")
    with httpx2.Client(transport=transport, timeout=10) as other:
        assert other.get(app, headers={"X-Forwarded-For": "127.0.0.1"}).status_code == 404


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture
def chromium() -> str:
    """Debian's Chromium (never a browser build Playwright would download)."""
    if not Path(CHROMIUM).exists():
        reason = f"{CHROMIUM} is missing (apt-get install chromium; `make test` tries to)"
        if services.REQUIRE_SERVICES:
            pytest.fail(reason)
        pytest.skip(f"SKIPPED, BROWSER MISSING: {reason}")
    return CHROMIUM


@pytest.mark.browser
async def test_a_browser_signs_in_writes_and_streams_through_the_proxy(cluster, chromium):
    """A real browser's headers on a port other than 80: its Origin
    (http://127.0.0.1:<port>) must match the Host the apps see, for Django's CSRF check
    (the sign-in form, API writes) and the websocket origin check."""
    from playwright.async_api import async_playwright, expect

    assert not cluster.url.endswith(":80")
    problems: list[str] = []
    origins: dict[str, str | None] = {}
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium, args=CHROMIUM_ARGS, headless=True
        )
        try:
            context = await browser.new_context()
            context.set_default_timeout(20_000)
            page = await context.new_page()
            page.on("pageerror", lambda e: problems.append(f"page error {e}"))

            async def note_origin(request) -> None:
                if request.method == "POST":
                    origins[request.url] = (await request.all_headers()).get("origin")

            page.on("request", note_origin)
            await page.goto(f"{cluster.url}/accounts/login/")
            await page.fill("#id_username", "alice")
            await page.fill("#id_password", PASSWORDS["alice"])
            async with page.expect_response(f"{cluster.url}/accounts/login/") as signed_in:
                await page.click("#login-button")
            assert (await signed_in.value).status == 302  # not 403 from the CSRF check
            await page.wait_for_url(f"{cluster.url}/")
            # An API write from the page: a new conversation.
            await page.click("#new-conversation-button")
            await expect(page.locator("#conversation-title")).to_have_text("New conversation")
            # Its socket, through the proxy.
            state = page.locator("#connection-state")
            await expect(state).to_have_attribute("data-state", "open")
            await expect(state).to_have_text("live")
            await page.fill("#composer", "Count to 12")
            await page.press("#composer", "Enter")
            answer = page.locator(".message[data-role=assistant]").last
            await expect(answer).to_have_attribute("data-status", "complete")
            await expect(answer.locator(".content")).to_have_text(count_to(12))
        finally:
            await browser.close()
    assert problems == []
    # The browser did send its origin, port included, with the form and the API write.
    assert origins.get(f"{cluster.url}/accounts/login/") == cluster.url
    assert origins.get(f"{cluster.url}/api/conversations/") == cluster.url
