"""End to end over real sockets: daphne processes, the real openai client, the simulator
upstream; once on the embedded default (SQLite, in-memory layer, in-process simulator)
and once on PostgreSQL + Redis with the simulator as its own HTTP server."""

import asyncio
import json
from urllib.parse import quote

import pytest

from chat.simulator import tokenize
from tests.live import DAPHNE_INTERNALS, Viewer

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(90)]


def count_to(n: int) -> str:
    return ", ".join(str(i) for i in range(1, n + 1))


async def close_all(*viewers: Viewer) -> None:
    for viewer in viewers:
        await viewer.close()


async def frames_direct(session) -> float:
    """The server's count of frames written straight to sockets (chat/realtime/direct_send.py)."""
    return await session.metric("livechat_frames_direct_total")


async def test_three_viewers_see_the_same_stream_and_usage_is_stored(sessions, server):
    alice, bob = sessions["alice"], sessions["bob"]
    conv = await alice.create_conversation(members={"bob": "member"})
    tab1, tab2, bob_view, bob_compact = (
        await alice.viewer(conv),
        await alice.viewer(conv),
        await bob.viewer(conv),
        await bob.viewer(conv, compact=True),
    )
    direct_before = await frames_direct(alice)

    _, placeholder = await tab1.prompt("Count to 100, with a comma between each number")
    assert placeholder["status"] == "streaming"
    assert placeholder["seq"] == 0
    viewers = (tab1, tab2, bob_view, bob_compact)
    finals = [await v.done(placeholder["id"]) for v in viewers]

    expected = count_to(100)
    for viewer, final in zip(viewers, finals, strict=True):
        assert viewer.breaches == []
        assert final["status"] == "complete"
        assert final["content"] == expected
        assert viewer.texts[placeholder["id"]] == expected
    # Every viewer got the very same delta frames, in order.
    reference = [(f["seq"], f["text"]) for f in tab1.delta_frames(placeholder["id"])]
    assert [f["seq"] for f in tab1.delta_frames(placeholder["id"])] == list(
        range(1, len(reference) + 1)
    )
    for viewer in (tab2, bob_view, bob_compact):
        assert [(f["seq"], f["text"]) for f in viewer.delta_frames(placeholder["id"])] == reference
    # The viewer that offered the compact subprotocol got every delta in that form.
    assert bob_compact.ws.subprotocol == "livechat.compact" and tab1.ws.subprotocol is None
    assert all(f.get("compact") for f in bob_compact.delta_frames(placeholder["id"]))
    assert not any(f.get("compact") for f in tab1.delta_frames(placeholder["id"]))
    # Under daphne those frames were framed once per event and form and written to each
    # socket directly, not through ASGI (and parsed fine by a standard client above).
    written_direct = await frames_direct(alice) - direct_before
    # Under daphne with its internals on, fan-out frames are written straight to sockets.
    assert written_direct >= 4 * len(reference) if DAPHNE_INTERNALS else written_direct == 0

    stored = {m["id"]: m for m in await bob.messages(conv)}[placeholder["id"]]
    assert stored["status"] == "complete"
    assert stored["content"] == expected
    assert stored["finish_reason"] == "stop"
    assert stored["usage_estimated"] is False
    assert stored["usage"]["completion_tokens"] == len(tokenize(expected))
    assert stored["usage"]["total_tokens"] == stored["usage"]["prompt_tokens"] + len(
        tokenize(expected)
    )
    assert stored["ttft_ms"] is not None
    assert stored["duration_ms"] >= stored["ttft_ms"]
    await close_all(*viewers)


async def test_answer_completes_after_the_asking_browser_leaves(sessions, server):
    alice, bob = sessions["alice"], sessions["bob"]
    conv = await alice.create_conversation(members={"bob": "member"})
    asker, watcher = await alice.viewer(conv), await bob.viewer(conv)

    _, placeholder = await asker.prompt("Count to 150, with a comma [[sim chunk_ms=5]]")
    await watcher.wait_for(lambda f: f["type"] == "delta", what="first delta")
    await asker.close()  # the tab is gone mid-stream

    final = await watcher.done(placeholder["id"])
    assert final["status"] == "complete"
    assert final["content"] == count_to(150)
    assert watcher.texts[placeholder["id"]] == count_to(150)
    assert watcher.breaches == []
    stored = {m["id"]: m for m in await bob.messages(conv)}[placeholder["id"]]
    assert stored["status"] == "complete"
    assert stored["content"] == count_to(150)
    await watcher.close()


FAULTS = [
    # (directive, error code, partial text expected)
    ("fault=http_429 retry_after_ms=10", "rate_limited", ""),
    ("fault=http_500", "upstream_error", ""),
    ("fault=error_after n=12", "upstream_error", "1, 2, 3, 4, "),
    ("fault=drop_after n=12", "upstream_error", "1, 2, 3, 4, "),
    ("fault=cut_after n=12", "upstream_error", "1, 2, 3, 4, "),
]


@pytest.mark.parametrize(
    ("directive", "code", "partial"), FAULTS, ids=[f[0].split()[0] for f in FAULTS]
)
async def test_upstream_failures_end_as_failed_messages_with_the_partial_text(
    sessions, server, directive, code, partial
):
    alice, bob = sessions["alice"], sessions["bob"]
    conv = await alice.create_conversation(members={"bob": "member"})
    asker, watcher = await alice.viewer(conv), await bob.viewer(conv)

    _, placeholder = await asker.prompt(f"Count to 50 [[sim {directive}]]")
    finals = [await v.done(placeholder["id"]) for v in (asker, watcher)]
    for viewer, final in zip((asker, watcher), finals, strict=True):
        assert final["status"] == "failed"
        assert final["error"]["code"] == code
        assert final["content"] == partial
        assert viewer.texts[placeholder["id"]] == partial
        assert viewer.breaches == []
    if code == "rate_limited":
        assert finals[0]["error"]["retry_after"] == pytest.approx(0.01)
    stored = {m["id"]: m for m in await bob.messages(conv)}[placeholder["id"]]
    assert stored["status"] == "failed"
    assert stored["content"] == partial
    # A failed answer frees the conversation: the next prompt streams normally.
    _, retry = await asker.prompt("Count to 5")
    assert (await watcher.done(retry["id"]))["content"] == count_to(5)
    await close_all(asker, watcher)


async def test_fast_upstream_reaches_every_viewer_whole_in_few_frames(sessions, server):
    alice, bob = sessions["alice"], sessions["bob"]
    conv = await alice.create_conversation(members={"bob": "member"})
    viewers = [await alice.viewer(conv), await bob.viewer(conv), await bob.viewer(conv)]

    # 500 content chunks about a millisecond apart.
    _, placeholder = await viewers[0].prompt("Count to 168 [[sim chunk_ms=1 ttft_ms=0]]")
    expected = count_to(168)
    assert len(tokenize(expected)) >= 500
    for viewer in viewers:
        final = await viewer.done(placeholder["id"])
        assert final["content"] == expected
        assert viewer.texts[placeholder["id"]] == expected
        assert viewer.breaches == []
        # Coalescing: far fewer frames than upstream chunks.
        assert len(viewer.delta_frames(placeholder["id"])) < len(tokenize(expected)) / 4
    await close_all(*viewers)


async def test_api_shows_the_streaming_message_with_its_checkpointed_text(sessions, server):
    alice = sessions["alice"]
    conv = await alice.create_conversation()
    viewer = await alice.viewer(conv)
    _, placeholder = await viewer.prompt("Count to 300 [[sim chunk_ms=10]]")

    # Checkpoints come every 0.3 s in these servers: poll until one has landed.
    for _ in range(100):
        stored = {m["id"]: m for m in await alice.messages(conv)}[placeholder["id"]]
        if stored["content"]:
            break
        await asyncio.sleep(0.1)
    assert stored["status"] == "streaming"
    assert stored["seq"] > 0
    assert count_to(300).startswith(stored["content"])
    # The checkpoint is exactly the first `seq` deltas this viewer received.
    await viewer.wait_for(
        lambda f: f["type"] == "delta" and f["seq"] >= stored["seq"], what="delta"
    )
    joined = "".join(f["text"] for f in viewer.delta_frames(placeholder["id"])[: stored["seq"]])
    assert joined == stored["content"]

    await viewer.send({"type": "cancel", "message_id": placeholder["id"]})
    await viewer.done(placeholder["id"])
    await viewer.close()


async def test_another_member_cancels_and_the_text_so_far_is_kept(sessions, server):
    alice, bob = sessions["alice"], sessions["bob"]
    conv = await alice.create_conversation(members={"bob": "member"})
    asker, canceller = await alice.viewer(conv), await bob.viewer(conv)
    _, placeholder = await asker.prompt("Count to 1000 [[sim chunk_ms=5]]")
    await canceller.wait_for(lambda f: f["type"] == "delta" and f["seq"] >= 3, what="a few deltas")

    await canceller.send({"type": "cancel", "message_id": placeholder["id"]})
    finals = [await v.done(placeholder["id"]) for v in (asker, canceller)]
    for viewer, final in zip((asker, canceller), finals, strict=True):
        assert final["status"] == "cancelled"
        assert 0 < len(final["content"]) < len(count_to(1000))
        assert count_to(1000).startswith(final["content"])
        assert viewer.texts[placeholder["id"]] == final["content"]
        assert viewer.breaches == []
    stored = {m["id"]: m for m in await alice.messages(conv)}[placeholder["id"]]
    assert stored["status"] == "cancelled"
    assert stored["content"] == finals[0]["content"]
    # Usage: reported if the stream sent it, else estimated and flagged.
    assert stored["usage"] is not None
    assert stored["usage_estimated"] is True
    await close_all(asker, canceller)


async def test_bad_frames_get_error_frames_and_the_socket_keeps_working(sessions, server):
    alice, carol = sessions["alice"], sessions["carol"]
    conv = await alice.create_conversation(members={"carol": "viewer"})
    viewer = await alice.viewer(conv)

    async def error_for(raw: str) -> dict:
        start = len(viewer.frames)
        await viewer.ws.send(raw)
        return await viewer.wait_for(lambda f: f["type"] == "error", what="error", start=start)

    assert (await error_for("{not json"))["code"] == "bad_json"
    assert (await error_for(""))["code"] == "bad_json"
    assert (await error_for('{"type": "dance"}'))["code"] == "bad_frame"
    assert (await error_for('{"type": "prompt"}'))["code"] == "bad_frame"
    too_long = await error_for(
        '{"type":"prompt","content":"' + "x" * 32_001 + '","client_msg_id":"c1"}'
    )
    assert too_long["code"] == "too_long"
    assert too_long["client_msg_id"] == "c1"
    assert (await error_for('{"type":"cancel","message_id":"nope"}'))["code"] == "not_found"

    # Text no database can store is refused before anything is stored or sent upstream.
    for hostile in ("a\x00b", "lone \ud800", " \u202e "):
        refused = await error_for(json.dumps({"type": "prompt", "content": hostile}))
        assert refused["code"] == "bad_frame"
    assert await alice.messages(conv) == []

    read_only = await carol.viewer(conv)
    start = len(read_only.frames)
    await read_only.send({"type": "prompt", "content": "hi"})
    forbidden = await read_only.wait_for(lambda f: f["type"] == "error", what="error", start=start)
    assert forbidden["code"] == "forbidden"

    _, placeholder = await viewer.prompt("Count to 3")
    assert (await viewer.done(placeholder["id"]))["content"] == "1, 2, 3"
    await close_all(viewer, read_only)


async def test_a_second_prompt_while_one_streams_is_busy_and_a_retry_is_idempotent(
    sessions, server
):
    alice = sessions["alice"]
    conv = await alice.create_conversation()
    viewer = await alice.viewer(conv)
    _, placeholder = await viewer.prompt("Count to 200 [[sim chunk_ms=5]]", client_msg_id="same-id")

    start = len(viewer.frames)
    await viewer.send({"type": "prompt", "content": "Another", "client_msg_id": "other"})
    busy = await viewer.wait_for(lambda f: f["type"] == "error", what="busy", start=start)
    assert busy["code"] == "busy"
    assert busy["client_msg_id"] == "other"

    await viewer.send(
        {"type": "prompt", "content": "Count to 200 [[sim chunk_ms=5]]", "client_msg_id": "same-id"}
    )
    await viewer.done(placeholder["id"])
    stored = await alice.messages(conv)
    assert [m["role"] for m in stored] == ["user", "assistant"]
    await viewer.close()


async def test_model_output_with_nul_and_html_is_stored_and_relayed_as_text(sessions, server):
    alice = sessions["alice"]
    conv = await alice.create_conversation()
    viewer = await alice.viewer(conv)
    reply = quote("<img src=x onerror=alert(1)>\x00<script>x()</script>", safe="")
    _, placeholder = await viewer.prompt(f"Echo [[sim reply={reply}]]")
    final = await viewer.done(placeholder["id"])
    expected = "<img src=x onerror=alert(1)>\ufffd<script>x()</script>"
    assert final["status"] == "complete"
    assert final["content"] == expected
    stored = {m["id"]: m for m in await alice.messages(conv)}[placeholder["id"]]
    assert stored["content"] == expected
    await viewer.close()
