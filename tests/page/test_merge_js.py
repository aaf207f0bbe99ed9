"""The page's merge rule (chat/static/chat/merge.js) held to the cases of
tests/domain/test_merge.py and to chat/domain/merge.py itself, in Chromium: the browser the
browser tests already drive, so nothing else is needed to run JavaScript. Random
arrival orders (a fixed seed) must leave the same text, `seq`, status and `sync`
requests in both rules. Broken copies of the module must fail these checks, so that
they cannot pass by checking nothing.

The page is served by Playwright's router from a made-up origin, under a
`script-src 'self'` policy like the chat page's; no server is started."""

import json
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from chat.domain.merge import ConversationView
from tests import services

pytestmark = [pytest.mark.browser, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]
MERGE_JS = ROOT / "chat" / "static" / "chat" / "merge.js"
CHROMIUM = "/usr/bin/chromium"  # as tests/page/test_browser.py
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ORIGIN = "http://merge.test"
CSP = "default-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'"
SEED = 20250107
CASES = 300
MID = "m1"
# Pieces of streamed text: multi-byte, astral (two UTF-16 units in JS), markup, newlines.
ALPHABET = "ab c,.\n<>&é字🙂"

# Applies each scenario (a list of [frame, resync]) to a fresh view; `resync` is the
# snapshot the server would answer a `sync` with. Returns, per step, [sync?, the view].
RUN = """async ([url, scenarios]) => {
  const merge = await import(url);
  return JSON.parse(scenarios).map((steps) => {
    const view = merge.emptyView();
    return steps.map(([frame, resync]) => {
      const sync = merge.applyFrame(view, frame);
      if (sync && resync) merge.applyFrame(view, resync);
      const shown = [...view.byId].map(([id, m]) => [id, [m.content, m.seq, m.status]]);
      return [sync, Object.fromEntries(shown)];
    });
  });
}"""

# Ways to break the rule; each must make some check below fail.
MUTANTS = {
    "a-repeat-asks-for-sync": ("delta.seq <= seq", "delta.seq < seq"),
    "gaps-applied": ("  if (delta.seq !== seq + 1) return SYNC;", ""),
    "gaps-ignored": (
        "if (delta.seq !== seq + 1) return SYNC;",
        "if (delta.seq !== seq + 1) return IGNORED;",
    ),
    "unknown-ignored": ("if (!m) return SYNC;", "if (!m) return IGNORED;"),
    "echo-rolls-back": ("  if (!final && stale) return IGNORED;", ""),
    "deltas-after-done": ('m.status !== "streaming" || ', ""),
    "snapshot-merges": ("  view.byId = new Map();\n  view.order = [];\n", ""),
}


def message(content: str, seq: int, status: str = "streaming", mid: str = MID) -> dict:
    return {"id": mid, "role": "assistant", "content": content, "seq": seq, "status": status}


def snapshot(*messages: dict) -> dict:
    return {"type": "snapshot", "messages": list(messages)}


def delta(seq: int, text: str, mid: str = MID) -> dict:
    return {"type": "delta", "message_id": mid, "seq": seq, "text": text}


def python_trace(steps: list) -> list:
    """The same steps through chat/domain/merge.py, in the shape RUN returns."""
    view = ConversationView()
    trace = []
    for frame, resync in steps:
        sync = view.apply(frame)
        if sync and resync:
            view.apply(resync)
        shown = {mid: [m.content, m.seq, m.status] for mid, m in view.messages.items()}
        trace.append([sync, shown])
    return trace


def piece(rng: random.Random, longest: int) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, longest)))


def random_deliveries(rng: random.Random) -> tuple[list[str], int, list[int]]:
    """As tests/domain/test_merge.py's strategy: a stream of deltas, the point the viewer's
    snapshot was taken, and what arrived after it: any subset of deltas, duplicated and
    shuffled (the layer may drop, repeat with reconnects, and a sync races live frames)."""
    texts = [piece(rng, 4) for _ in range(rng.randint(1, 25))]
    snapshot_at = rng.randint(0, len(texts))
    arrived = [rng.randint(1, len(texts)) for _ in range(rng.randint(0, 3 * len(texts)))]
    if rng.random() < 0.3:  # and sometimes everything, in a shuffled order
        arrived = list(range(1, len(texts) + 1)) * rng.randint(1, 2)
        rng.shuffle(arrived)
    return texts, snapshot_at, arrived


def arrival_steps(texts: list[str], snapshot_at: int, arrived: list[int]) -> list:
    steps = [[snapshot(message("".join(texts[:snapshot_at]), snapshot_at)), None]]
    published = 0  # how far the server has got when each frame arrives
    for seq in arrived:
        published = max(published, seq)
        # `sync`: the server answers with a snapshot of what it has published.
        resync = snapshot(message("".join(texts[:published]), published))
        steps.append([delta(seq, texts[seq - 1]), resync])
    steps.append(
        [{"type": "done", "message": message("".join(texts), len(texts), "complete")}, None]
    )
    return steps


@pytest.fixture
def chromium_path() -> str:
    if not Path(CHROMIUM).exists():
        reason = f"{CHROMIUM} is missing (apt-get install chromium; `make test` tries to)"
        if services.REQUIRE_SERVICES:
            pytest.fail(f"{reason}: with REQUIRE_SERVICES=1 browser tests may not skip")
        pytest.skip(f"SKIPPED, BROWSER MISSING: {reason}")
    return CHROMIUM


Run = Callable[[list], object]


@pytest.fixture
async def page(chromium_path: str) -> AsyncIterator:
    """A blank page of ORIGIN serving merge.js at /static/chat/merge.js and each mutant
    at /mutant/<name>/merge.js; console errors and page errors fail the test."""
    from playwright.async_api import async_playwright

    source = MERGE_JS.read_text()
    modules = {"/static/chat/merge.js": source}
    for name, (old, new) in MUTANTS.items():
        modules[f"/mutant/{name}/merge.js"] = source.replace(old, new)

    async def serve(route) -> None:
        path = urlsplit(route.request.url).path
        if path == "/":
            html = "<!DOCTYPE html><title>merge.js</title>"
            await route.fulfill(
                body=html, content_type="text/html", headers={"Content-Security-Policy": CSP}
            )
        elif path in modules:
            await route.fulfill(body=modules[path], content_type="text/javascript")
        else:
            await route.fulfill(status=404, body="")

    problems: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_path, args=CHROMIUM_ARGS, headless=True
        )
        page = await browser.new_page()
        page.on("pageerror", lambda e: problems.append(f"page error {e}"))
        page.on(
            "console",
            lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
        )
        await page.route(f"{ORIGIN}/**", serve)
        await page.goto(f"{ORIGIN}/")
        yield page
        await browser.close()
    assert problems == [], "\n".join(problems)


def runner(page, url: str = "/static/chat/merge.js") -> Run:
    async def run(scenarios: list) -> list:
        return await page.evaluate(RUN, [url, json.dumps(scenarios)])

    return run


# ---- The checks: each takes a runner and asserts ----


async def check_any_arrival_order_ends_with_the_exact_text(run: Run) -> None:
    rng = random.Random(SEED)
    cases = [random_deliveries(rng) for _ in range(CASES)]
    scenarios = [arrival_steps(*case) for case in cases]
    traces = await run(scenarios)
    for (texts, snapshot_at, arrived), steps, trace in zip(cases, scenarios, traces, strict=True):
        case = f"texts={texts!r} snapshot_at={snapshot_at} arrived={arrived}"
        full = "".join(texts)
        for _, view in trace:
            shown, seq, _ = view[MID]
            # Never a wrong character: what is shown is always a prefix of the answer.
            assert full.startswith(shown), case
            assert shown == "".join(texts[:seq]), case
        assert trace[-1][1][MID] == [full, len(texts), "complete"], case
        # And step by step what chat/domain/merge.py shows and asks.
        assert trace == python_trace(steps), case


async def check_in_order_deltas_never_ask_for_sync(run: Run) -> None:
    rng = random.Random(SEED + 1)
    cases = [[piece(rng, 3) for _ in range(rng.randint(2, 10))] for _ in range(50)]
    placeholder = [{"type": "message", "message": message("", 0)}, None]
    scenarios = [
        [placeholder, *[[delta(seq, t), None] for seq, t in enumerate(texts, 1)], placeholder]
        for texts in cases
    ]
    for texts, trace in zip(cases, await run(scenarios), strict=True):
        assert not any(sync for sync, _ in trace), texts
        # After the deltas, and after a stale echo of the placeholder (no roll-back).
        assert trace[-2][1][MID][:2] == ["".join(texts), len(texts)], texts
        assert trace[-1][1][MID][:2] == ["".join(texts), len(texts)], texts


async def check_a_delta_for_an_unknown_message_asks_for_sync(run: Run) -> None:
    [trace] = await run([[[delta(1, "a", mid="x"), None]]])
    assert trace == [[True, {}]]


async def check_deltas_after_done_are_ignored(run: Run) -> None:
    done = {"type": "done", "message": message("final", 3, "cancelled")}
    steps = [[done, None], [delta(4, "!"), None], [delta(6, "?"), None]]
    [trace] = await run([steps])
    assert trace == [[False, {MID: ["final", 3, "cancelled"]}]] * 3
    assert trace == python_trace(steps)


async def check_a_snapshot_replaces_everything(run: Run) -> None:
    other = message("gone", 2, "complete", mid="m2")
    steps = [
        [snapshot(message("ab", 2), other), None],
        [delta(3, "c"), None],
        [snapshot(message("a", 1)), None],  # an older truth still wins: it is the truth
        [delta(2, "b"), None],
    ]
    [trace] = await run([steps])
    assert trace[1][1] == {MID: ["abc", 3, "streaming"], "m2": ["gone", 2, "complete"]}
    assert trace[2][1] == {MID: ["a", 1, "streaming"]}
    assert trace[3][1] == {MID: ["ab", 2, "streaming"]}
    assert trace == python_trace(steps)


CHECKS = {
    name.removeprefix("check_"): check
    for name, check in list(globals().items())
    if name.startswith("check_")
}


@pytest.mark.parametrize("name", CHECKS)
async def test_merge_js(page, name: str) -> None:
    await CHECKS[name](runner(page))


@pytest.mark.parametrize("mutant", MUTANTS)
async def test_a_broken_rule_fails_the_checks(page, mutant: str) -> None:
    old, _ = MUTANTS[mutant]
    assert MERGE_JS.read_text().count(old) == 1, f"{old!r} is not once in merge.js: update {mutant}"
    run = runner(page, f"/mutant/{mutant}/merge.js")
    failed = []
    for name, check in CHECKS.items():
        try:
            await check(run)
        except AssertionError:
            failed.append(name)
    assert failed, f"merge.js with {mutant} passes every check"
