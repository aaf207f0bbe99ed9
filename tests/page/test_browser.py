"""The chat page in a real browser: Playwright for Python driving Debian's Chromium
against live daphne processes. Every browser context signs in through the real login
form, and every page runs under a strict Content-Security-Policy (no inline script or
style, no eval) with any violation or script error failing the test.

Screenshots of the main states are written to `docs/screenshots/` when
`UPDATE_SCREENSHOTS=1` (to a temporary directory otherwise, so a normal run leaves the
tree alone)."""

import json
import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests import services
from tests.live import PASSWORDS, ROOT, UNHANDLED, Deployment, Server, Session

pytestmark = [pytest.mark.browser, pytest.mark.multiprocess, pytest.mark.timeout(60)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# The servers under test send this policy, stricter than the default (which allows
# inline style attributes for the admin): the page must not need any of it.
STRICT_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
TIMEOUT_MS = 20_000
SCREENSHOTS = ROOT / "docs" / "screenshots"

# Only where runtime matters: the stream test also runs on Redis + PostgreSQL.
embedded_only = pytest.mark.parametrize("deployment", ["embedded"], indirect=True)


COUNT_RENDERS = """() => {
  window.__renders = 0;
  window.__frames = 0;
  new MutationObserver(() => { window.__renders += 1; }).observe(
    document.getElementById("message-list"),
    { childList: true, subtree: true, characterData: true },
  );
  const tick = () => { window.__frames += 1; requestAnimationFrame(tick); };
  requestAnimationFrame(tick);
}"""


def count_to(n: int) -> str:
    return ", ".join(str(i) for i in range(1, n + 1))


def sim_reply(text: str) -> str:
    """A prompt the simulator answers with exactly `text`."""
    return f"Say this [[sim reply={quote(text, safe='')}]]"


@pytest.fixture
def chromium_path() -> str:
    """Debian's Chromium (never a browser build Playwright would download)."""
    if not Path(CHROMIUM).exists():
        reason = f"{CHROMIUM} is missing (apt-get install chromium; `make test` tries to)"
        if services.REQUIRE_SERVICES:
            pytest.fail(f"{reason}: with REQUIRE_SERVICES=1 browser tests may not skip")
        pytest.skip(f"SKIPPED, BROWSER MISSING: {reason}")
    return CHROMIUM


@pytest.fixture
async def browser(chromium_path: str) -> AsyncIterator:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=chromium_path, args=CHROMIUM_ARGS, headless=True
        )
        yield chromium
        await chromium.close()


class Browsing:
    """Signed-in browser contexts; collects CSP violations and script errors."""

    def __init__(self, browser, server: Server) -> None:
        self.browser = browser
        self.server = server
        self.problems: list[str] = []

    async def user(self, username: str, *, path: str = "/", **context_options):
        """A new browser context signed in as `username` through the login form, on `path`."""
        context = await self.browser.new_context(
            viewport=context_options.pop("viewport", {"width": 1280, "height": 800}),
            **context_options,
        )
        context.set_default_timeout(TIMEOUT_MS)
        page = await self.page(context, username)
        response = await page.goto(f"{self.server.url}/accounts/login/?next={quote(path)}")
        assert response.headers.get("content-security-policy") == STRICT_CSP
        await page.fill("#id_username", username)
        await page.fill("#id_password", PASSWORDS[username])
        await page.click("#login-button")
        await page.wait_for_url(f"{self.server.url}{path}")
        return page

    async def page(self, context, name: str):
        page = await context.new_page()
        page.on("console", lambda m: self._console(name, m))
        page.on("pageerror", lambda e: self.problems.append(f"{name}: page error {e}"))
        return page

    def _console(self, name: str, message) -> None:
        # Expected noise: sockets failing while offline, API refusals the page shows.
        expected = "WebSocket" in message.text or "/api/" in message.location.get("url", "")
        if message.type == "error" and not expected:
            self.problems.append(f"{name}: console error {message.text}")
        elif "Content Security Policy" in message.text:
            self.problems.append(f"{name}: {message.text}")

    def assert_clean(self) -> None:
        assert self.problems == [], "\n".join(self.problems)


@pytest.fixture(scope="session")
def _csp_servers() -> dict[str, Server]:
    return {}


@pytest.fixture
def csp_server(deployment: Deployment, _csp_servers: dict[str, Server]) -> Iterator[Server]:
    """A daphne process of the deployment sending the strict policy (shared by tests);
    its log must stay clean."""
    srv = _csp_servers.get(deployment.name)
    if srv is None or srv.process.proc.poll() is not None:
        srv = deployment.start_server(CONTENT_SECURITY_POLICY=STRICT_CSP)
        _csp_servers[deployment.name] = srv
    start = len(srv.process.log())
    yield srv
    tail = srv.process.log()[start:]
    match = UNHANDLED.search(tail)
    assert match is None, f"unhandled exception in the server log:\n{tail[match.start() :][:5000]}"


@pytest.fixture
async def alice_api(csp_server: Server) -> AsyncIterator[Session]:
    """alice over HTTP, to set conversations up without the page."""
    session = await Session(csp_server, "alice").login()
    yield session
    await session.close()


@pytest.fixture
async def browsing(browser, csp_server: Server) -> AsyncIterator[Browsing]:
    session = Browsing(browser, csp_server)
    yield session
    for context in browser.contexts:
        await context.close()
    session.assert_clean()


def last_answer(page):
    return page.locator(".message[data-role=assistant]").last


async def send(page, text: str) -> None:
    """Type into the composer (filled, not typed key by key: faster) and press Enter."""
    from playwright.async_api import expect

    await expect(page.locator("#composer")).to_be_enabled()
    await page.fill("#composer", text)
    await page.press("#composer", "Enter")


async def wait_status(page, status: str, *, timeout: int = TIMEOUT_MS):
    from playwright.async_api import expect

    answer = last_answer(page)
    await expect(answer).to_have_attribute("data-status", status, timeout=timeout)
    return answer


async def shot(page, name: str, directory: Path) -> None:
    await page.screenshot(path=str(directory / f"{name}.png"))


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        return SCREENSHOTS
    return tmp_path


async def test_two_users_watch_one_answer_and_the_second_stops_the_next(
    browsing: Browsing, alice_api: Session, shots: Path
):
    from playwright.async_api import expect

    conv = await alice_api.create_conversation("Stream together", {"bob": "member"})
    path = f"/c/{conv}/"
    alice = await browsing.user("alice", path=path)
    alice_tab2 = await browsing.page(alice.context, "alice-tab2")
    await alice_tab2.goto(f"{browsing.server.url}{path}")
    bob = await browsing.user("bob", path=path)
    # What bob's page receives on its socket, from a reload on (the page's own socket).
    received: list[str] = []
    bob.on("websocket", lambda ws: ws.on("framereceived", lambda f: received.append(f)))
    await bob.reload()
    for page in (alice, alice_tab2, bob):
        await expect(page.locator("#connection-state")).to_have_attribute("data-state", "open")
    await expect(alice.locator("#viewers")).to_contain_text("bob")

    # Count the page's render passes over the message list, and animation frames.
    await bob.evaluate(COUNT_RENDERS)
    # One answer streams to every tab of every member and ends identical everywhere.
    await send(alice, "Count to 150 [[sim chunk_ms=4]]")
    for page in (alice, bob):
        await expect(page.locator("#generating-state")).to_be_visible()
    # While it runs, the composer says why it is disabled, for the other member too.
    await expect(bob.locator("#composer")).to_be_disabled()
    await expect(bob.locator("#composer-reason")).to_contain_text("being generated")
    texts = []
    for page in (alice, alice_tab2, bob):
        answer = await wait_status(page, "complete")
        texts.append(await answer.locator(".content").inner_text())
    assert texts == [count_to(150)] * 3
    # The page asked for the compact delta form and got every delta in it.
    assert any(f.startswith('["d",') for f in received)
    assert not any(f.startswith('{"type":"delta"') for f in received)
    renders, frames = await bob.evaluate("[window.__renders, window.__frames]")
    # Text arrived in many steps, each render in its own animation frame (never one
    # render per delta outside a frame).
    assert 2 <= renders <= frames
    details = await last_answer(bob).locator(".details").inner_text()
    assert re.search(r"\d+ prompt \+ \d+ completion = \d+ tokens", details), details
    assert "first token" in details

    # A slow answer: bob (not the asker) presses Stop; everyone ends with the same text.
    await send(alice, "Count to 3000 [[sim chunk_ms=10]]")
    await wait_status(bob, "streaming")
    await expect(last_answer(bob).locator(".content")).to_contain_text("10, ")
    await shot(bob, "streaming", shots)
    await bob.click("#stop-button")
    texts = []
    for page in (alice, alice_tab2, bob):
        answer = await wait_status(page, "cancelled")
        await expect(answer.locator(".badge")).to_have_text("cancelled")
        texts.append(await answer.locator(".content").inner_text())
    assert texts[0] == texts[1] == texts[2]
    assert count_to(3000).startswith(texts[0]) and len(texts[0]) < len(count_to(3000))
    await expect(alice.locator("#composer")).to_be_enabled()
    await expect(alice.locator("#regenerate-button")).to_be_visible()
    await shot(alice, "cancelled", shots)


@embedded_only
async def test_a_reload_mid_stream_resumes_without_duplicate_text(
    browsing: Browsing, alice_api: Session
):
    from playwright.async_api import expect

    conv = await alice_api.create_conversation("Reload")
    page = await browsing.user("alice", path=f"/c/{conv}/")
    await send(page, "Count to 250 [[sim chunk_ms=3]]")
    await expect(last_answer(page).locator(".content")).to_contain_text("40, ")
    await page.reload()
    # The reloaded page picks the answer up mid-stream from its snapshot...
    await expect(page.locator("#connection-state")).to_have_attribute("data-state", "open")
    answer = await wait_status(page, "complete")
    # ...and ends with every number exactly once.
    assert await answer.locator(".content").inner_text() == count_to(250)
    assert await page.locator(".message[data-role=assistant]").count() == 1


@embedded_only
async def test_a_dropped_connection_reconnects_and_loses_nothing(
    browsing: Browsing, alice_api: Session
):
    from playwright.async_api import expect

    conv = await alice_api.create_conversation("Flaky network")
    page = await browsing.user("alice", path=f"/c/{conv}/")
    await send(page, "Count to 300 [[sim chunk_ms=3]]")
    await expect(last_answer(page).locator(".content")).to_contain_text("20, ")
    # The network goes away mid-answer: the page says so and disables the composer...
    await page.context.set_offline(True)
    await expect(page.locator("#connection-state")).to_have_attribute(
        "data-state", re.compile("reconnecting|connecting")
    )
    await expect(page.locator("#composer")).to_be_disabled()
    await expect(page.locator("#composer-reason")).to_contain_text("Disconnected")
    # ...and when it is back, reconnects at once and resumes from a snapshot.
    await page.context.set_offline(False)
    await expect(page.locator("#connection-state")).to_have_attribute("data-state", "open")
    answer = await wait_status(page, "complete")
    assert await answer.locator(".content").inner_text() == count_to(300)


@embedded_only
async def test_html_in_a_reply_is_shown_as_text_and_never_runs(
    browsing: Browsing, alice_api: Session, shots: Path
):
    conv = await alice_api.create_conversation("Markdown and HTML")
    page = await browsing.user("alice", path=f"/c/{conv}/")
    reply = (
        "Here is **bold** and a block:\n\n"
        "```python\nprint('hi')\n```\n\n"
        'Inline <img src=x onerror="window.__pwned=1"> image.\n\n'
        "<script>window.__pwned=2</script>\n\n"
        "[a link](javascript:window.__pwned=3)"
    )
    await send(page, sim_reply(reply))
    answer = await wait_status(page, "complete")
    content = answer.locator(".content")
    text = await content.inner_text()
    assert '<img src=x onerror="window.__pwned=1">' in text
    assert "<script>window.__pwned=2</script>" in text
    assert await content.locator("img, script, [onerror]").count() == 0
    assert await content.locator("strong").inner_text() == "bold"
    # Links never carry a javascript: URL.
    hrefs = await content.locator("a").evaluate_all("links => links.map(a => a.href)")
    assert not any(h.lower().startswith("javascript:") for h in hrefs), hrefs
    await content.locator("a", has_text="a link").click()
    assert await page.evaluate("window.__pwned") is None
    # The code block has a working copy button.
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    await content.locator(".copy-code").click()
    assert await page.evaluate("navigator.clipboard.readText()") == "print('hi')\n"
    await shot(page, "markdown", shots)


@embedded_only
async def test_keyboard_only_enter_sends_and_shift_enter_adds_a_line(
    browsing: Browsing, alice_api: Session, shots: Path
):
    from playwright.async_api import expect

    conv = await alice_api.create_conversation("Keyboard")
    context = await browsing.browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    page = await browsing.page(context, "alice-keyboard")
    # Sign in with the keyboard alone: type, Tab, type, Enter.
    await page.goto(f"{browsing.server.url}/accounts/login/?next=/c/{conv}/")
    await shot(page, "sign-in", shots)
    await page.keyboard.type("alice")
    await page.keyboard.press("Tab")
    await page.keyboard.type(PASSWORDS["alice"])
    await page.keyboard.press("Enter")
    await page.wait_for_url(f"{browsing.server.url}/c/{conv}/")
    # The composer takes the focus once the conversation is live.
    composer = page.locator("#composer")
    await expect(composer).to_be_focused()
    await page.keyboard.type("first line")
    await page.keyboard.press("Shift+Enter")
    await page.keyboard.type("second line")
    assert await composer.input_value() == "first line\nsecond line"
    await page.keyboard.press("Enter")
    mine = page.locator(".message[data-role=user]").last
    await expect(mine.locator(".content")).to_have_text("first line\nsecond line")
    await expect(composer).to_have_value("")
    await wait_status(page, "complete")
    # When the answer is in, the focus is back in the composer: type on, send again.
    await expect(composer).to_be_focused()
    await page.keyboard.type("Count to 3")
    await page.keyboard.press("Enter")
    await expect(last_answer(page).locator(".content")).to_have_text("1, 2, 3")
    assert await page.locator(".message[data-role=user]").count() == 2


@embedded_only
async def test_members_roles_rename_and_delete_from_the_page(browsing: Browsing, shots: Path):
    from playwright.async_api import expect

    alice = await browsing.user("alice")
    await expect(alice.locator("#conversation-list")).not_to_contain_text("Loading")
    await shot(alice, "welcome", shots)
    # Create a conversation from the sidebar; it opens and is named by the first prompt.
    await alice.click("#new-conversation-button")
    await expect(alice.locator("#conversation-title")).to_have_text("New conversation")
    await send(alice, "Write a haiku about the sea")
    await wait_status(alice, "complete")
    await expect(alice.locator("#conversation-title")).to_have_text("Write a haiku about the sea")
    path = alice.url.removeprefix(browsing.server.url)

    # Invite bob as a member and carol as a read-only viewer.
    await alice.click("#members-button")
    for username, role in (("bob", "member"), ("carol", "viewer")):
        await alice.fill("#invite-username", username)
        await alice.select_option("#invite-role", role)
        await alice.click("#invite-button")
        await expect(alice.locator(f".member[data-username={username}]")).to_be_visible()
    await alice.fill("#invite-username", "nobody-by-that-name")
    await alice.click("#invite-button")
    await expect(alice.locator("#members-notice")).to_contain_text("no user")
    await shot(alice, "members", shots)
    await alice.keyboard.press("Escape")

    carol = await browsing.user("carol", path=path)
    await expect(carol.locator("#composer")).to_be_disabled()
    await expect(carol.locator("#composer-reason")).to_contain_text("viewer")
    bob = await browsing.user("bob")
    await expect(bob.locator(".conversation-link").first).to_contain_text("haiku")
    await bob.locator(".conversation-link").first.click()
    await expect(bob.locator("#connection-state")).to_have_attribute("data-state", "open")
    await expect(alice.locator("#viewers")).to_contain_text("bob")

    # A rename shows up live for the others.
    await alice.click("#rename-button")
    await alice.fill("#rename-title", "Sea poems")
    await alice.press("#rename-title", "Enter")
    await expect(bob.locator("#conversation-title")).to_have_text("Sea poems")

    # Removing carol closes her view at once.
    await alice.click("#members-button")
    await alice.locator(".member[data-username=carol] button", has_text="Remove").click()
    await expect(alice.locator(".member[data-username=carol]")).to_have_count(0)
    await alice.keyboard.press("Escape")
    await expect(carol.locator("#connection-detail")).to_contain_text("no longer a member")

    # Deleting it (owner only) ends it for bob too.
    await expect(bob.locator("#delete-button")).to_be_hidden()
    await alice.click("#delete-button")
    await alice.click("#confirm-button")
    await expect(alice.locator("#conversation-title")).to_have_text("Welcome, alice")
    await expect(bob.locator("#connection-detail")).to_contain_text("was deleted")
    await expect(bob.locator(".conversation-link", has_text="Sea poems")).to_have_count(0)


@embedded_only
async def test_a_phone_in_dark_mode_gets_the_list_as_a_drawer(
    browsing: Browsing, alice_api: Session, shots: Path
):
    from playwright.async_api import expect

    conv = await alice_api.create_conversation("On the phone")
    phone = {"viewport": {"width": 390, "height": 844}, "color_scheme": "dark"}
    page = await browsing.user("alice", has_touch=True, is_mobile=True, **phone)
    # With no conversation open the list is shown; picking one closes the drawer.
    await expect(page.locator("#sidebar-toggle")).to_be_visible()
    await expect(page.locator("#sidebar-toggle")).to_have_attribute("aria-expanded", "true")
    await page.locator(f".conversation-link[data-conversation-id='{conv}']").click()
    await expect(page.locator("#sidebar-toggle")).to_have_attribute("aria-expanded", "false")
    await expect(page.locator("#sidebar")).not_to_be_in_viewport()
    await send(page, sim_reply("Sure:\n\n```sh\nmake run\n```\n\nThen open **localhost:8000**."))
    await wait_status(page, "complete")
    await shot(page, "phone-dark", shots)
    await page.click("#sidebar-toggle")
    await expect(page.locator("#sidebar")).to_be_in_viewport()


async def test_simulator_directives_are_a_chip_only_where_the_simulator_answers(
    browsing: Browsing, alice_api: Session, deployment: Deployment
):
    """embedded answers with the in-process simulator: a directive is shown as a chip.
    redis-postgres talks to an upstream through OPENAI_BASE_URL: for the app that is a
    real model, so the directive is ordinary text that co-members must see as typed
    (and the first prompt names the conversation with it)."""
    from playwright.async_api import expect

    conv = await alice_api.create_conversation("New conversation")
    page = await browsing.user("alice", path=f"/c/{conv}/")
    prompt = "Count to 3 [[sim chunk_ms=1]]"
    await send(page, prompt)
    await wait_status(page, "complete")
    mine = page.locator(".message[data-role=user]").last.locator(".content")
    if deployment.name == "embedded":
        await expect(mine.locator(".sim-directive")).to_have_attribute(
            "title", "[[sim chunk_ms=1]]"
        )
        await expect(page.locator("#conversation-title")).to_have_text("Count to 3")
    else:
        await expect(mine).to_have_text(prompt)
        await expect(mine.locator(".sim-directive")).to_have_count(0)
        await expect(page.locator("#conversation-title")).to_have_text(prompt)


@embedded_only
async def test_viewers_are_not_offered_report_and_members_are(
    browsing: Browsing, alice_api: Session
):
    from playwright.async_api import expect

    conv = await alice_api.create_conversation("Reports", {"bob": "member", "carol": "viewer"})
    bob = await browsing.user("bob", path=f"/c/{conv}/")
    await send(bob, "Count to 3")
    await wait_status(bob, "complete")
    await expect(bob.locator(".message .report-button")).to_have_count(2)
    for button in await bob.locator(".message .report-button").all():
        await expect(button).to_be_visible()
    carol = await browsing.user("carol", path=f"/c/{conv}/")
    await wait_status(carol, "complete")
    await expect(carol.locator(".message")).to_have_count(2)
    await expect(carol.locator(".message .report-button:visible")).to_have_count(0)


class RoutedSockets:
    """The page's websockets through Playwright's router: each still talks to the real
    server, and the test can close one from the server's side with any code (codes a
    test server cannot be made to send on demand: restart, Redis down, frame too big)."""

    def __init__(self) -> None:
        self.routes: list = []
        self._live: list = []  # per socket: an asyncio.Event set by its first snapshot

    async def install(self, page) -> None:
        await page.route_web_socket(re.compile(r"/ws/chat/"), self._route)
        await page.reload()  # the router takes the sockets opened from now on

    def _route(self, ws) -> None:
        live = self._event(len(self.routes))
        self.routes.append(ws)
        server = ws.connect_to_server()
        # The page's side closes with the test's code; the real socket just ends (a
        # browser may not itself send 1009, 1012 or 1013).
        ws.on_close(lambda code, reason: server.close())

        def to_page(message) -> None:
            ws.send(message)
            is_object = isinstance(message, str) and message.startswith("{")
            if is_object and json.loads(message).get("type") == "snapshot":
                live.set()

        server.on_message(to_page)

    def _event(self, index: int):
        import asyncio

        while len(self._live) <= index:
            self._live.append(asyncio.Event())
        return self._live[index]

    async def close_current(self, code: int) -> None:
        await self.routes[-1].close(code=code, reason="test")

    async def wait_live(self, n: int) -> None:
        """Until the page's `n`-th socket has had its snapshot (the page is up to date
        and its backoff reset)."""
        import asyncio

        async with asyncio.timeout(TIMEOUT_MS / 1000):
            await self._event(n - 1).wait()


async def pause_clock(page) -> None:
    """Stop the page's clock (timers, Date) a second from now: from here on only the
    test moves it, so "no timer fired" is certain rather than a matter of timing."""
    now_ms = await page.evaluate("Date.now()")
    await page.clock.pause_at((now_ms + 1000) / 1000)  # a number is Unix time in seconds


async def expect_live(page) -> None:
    from playwright.async_api import expect

    await expect(page.locator("#connection-state")).to_have_attribute("data-state", "open")


@pytest.fixture
async def routed(browsing: Browsing, alice_api: Session):
    """alice's page on a conversation, its sockets routed and its clock under the
    test's control (it runs as usual until paused)."""
    conv = await alice_api.create_conversation("Close codes")
    page = await browsing.user("alice", path=f"/c/{conv}/")
    await page.clock.install()
    sockets = RoutedSockets()
    await sockets.install(page)
    await sockets.wait_live(1)
    return page, sockets


@embedded_only
@pytest.mark.parametrize("code", [1012, 4012])
async def test_a_restarting_server_1012_is_left_for_another_at_once(routed, code: int):
    page, sockets = routed
    await pause_clock(page)  # no timer fires from here on
    await sockets.close_current(code)
    await sockets.wait_live(2)
    await expect_live(page)
    await page.clock.resume()


@embedded_only
@pytest.mark.parametrize("code", [1013, 4013])
async def test_an_unavailable_server_1013_is_retried_after_a_wait(routed, code: int):
    from playwright.async_api import expect

    page, sockets = routed
    await pause_clock(page)
    await sockets.close_current(code)
    await expect(page.locator("#connection-detail")).to_contain_text("temporarily unavailable")
    await page.clock.run_for(100)
    assert len(sockets.routes) == 1
    await expect(page.locator("#connection-state")).to_have_attribute("data-state", "reconnecting")
    await page.clock.resume()
    await sockets.wait_live(2)
    await expect_live(page)


@embedded_only
async def test_a_frame_too_big_1009_is_said_and_the_page_reconnects(routed):
    from playwright.async_api import expect

    page, sockets = routed
    for n, code in enumerate((1009, 4009), start=2):
        await sockets.close_current(code)
        await expect(page.locator("#notice")).to_contain_text("too big")
        await sockets.wait_live(n)
        await expect_live(page)
    # A real oversized prompt (the server closes that socket itself) also goes back into
    # the composer, as a refused prompt does.
    huge = "x" * 300_000  # over WS_MAX_FRAME_BYTES (256 KiB)
    await send(page, huge)
    await sockets.wait_live(4)
    await expect(page.locator("#composer")).to_have_value(huge)
    await expect(page.locator("#notice")).to_contain_text("too big")


@embedded_only
async def test_a_4401_while_still_signed_in_reconnects(routed):
    """A password change closes every socket of the user with 4401, and keeps the
    session that made it signed in (with a new key): the page checks, and stays."""
    from playwright.async_api import expect

    page, sockets = routed
    await sockets.close_current(4401)
    await sockets.wait_live(2)
    await expect_live(page)
    await expect(page.locator(".login-link")).to_have_count(0)
    await send(page, "Count to 3")
    await expect(last_answer(page).locator(".content")).to_have_text("1, 2, 3")


@embedded_only
async def test_signing_out_in_another_tab_ends_in_the_signed_out_state(
    browsing: Browsing, alice_api: Session
):
    from playwright.async_api import expect

    conv = await alice_api.create_conversation("Signed out elsewhere")
    page = await browsing.user("alice", path=f"/c/{conv}/")
    await expect_live(page)
    other_tab = await browsing.page(page.context, "alice-tab2")
    await other_tab.goto(f"{browsing.server.url}/")
    await other_tab.click("#logout-button")
    link = page.locator("#connection-detail .login-link")
    await expect(link).to_contain_text("signed out")
    next_path = quote(f"/c/{conv}/", safe="")
    await expect(link).to_have_attribute("href", f"/accounts/login/?next={next_path}")
    await expect(page.locator("#connection-state")).to_have_attribute("data-state", "closed")
    await expect(page.locator("#composer")).to_be_disabled()


@embedded_only
async def test_a_conversation_one_cannot_open_says_it_may_not_exist_or_not_be_yours(
    browsing: Browsing, alice_api: Session
):
    from playwright.async_api import expect

    conv = await alice_api.create_conversation("Not for dave")
    for path in (f"/c/{conv}/", "/c/00000000-0000-4000-8000-000000000000/"):
        page = await browsing.user("dave", path=path)
        await expect(page.locator("#connection-detail")).to_contain_text(
            "does not exist, or you are not a member of it"
        )
        await page.context.close()
