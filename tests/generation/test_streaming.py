"""The stream runner alone: the real openai client, a recording publisher instead of
Channels, no database. Every test runs on both HTTP stacks the server uses: httpx2 with
the in-process simulator (the embedded default), and aiohttp, the client
`chat.upstream.build_client` makes for a real upstream, over TCP to the simulator
process; the two raise different errors for the same fault."""

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx2
import openai
import pytest

from chat.generation.runner import StreamRequest, StreamRunner
from chat.simulator import SimSettings, simulator_client, tokenize
from chat.upstream.client import build_client
from tests.live import start_simulator

pytestmark = pytest.mark.timeout(30)

MakeClient = Callable[..., openai.AsyncOpenAI]


@pytest.fixture(scope="module")
def simulator_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    sim, url = start_simulator(Path(tmp_path_factory.mktemp("sim")), chunk_ms=1, ttft_ms=0)
    try:
        yield url
    finally:
        sim.stop()


@pytest.fixture(params=["httpx2-in-process", "aiohttp-over-tcp"])
async def make_client(request, settings) -> AsyncIterator[MakeClient]:
    """`make_client(max_retries=0)`: a client of the upstream under test."""
    made: list[openai.AsyncOpenAI] = []

    def make(max_retries: int = 0, chunk_ms: float = 1) -> openai.AsyncOpenAI:
        if request.param == "httpx2-in-process":
            client = simulator_client(
                SimSettings(chunk_ms=chunk_ms, ttft_ms=0), max_retries=max_retries
            )
        else:
            settings.USE_SIMULATOR = False
            settings.OPENAI_BASE_URL = request.getfixturevalue("simulator_url")
            settings.OPENAI_API_KEY = "sk-test"
            settings.OPENAI_MAX_RETRIES = max_retries
            settings.OPENAI_HTTP_TRANSPORT = "aiohttp"
            client = build_client()
            assert "Aiohttp" in type(client._client._transport).__name__
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


def count_to(n: int) -> str:
    return ", ".join(str(i) for i in range(1, n + 1))


class Recorder:
    """Collects what the runner publishes and checkpoints; `holds` says whether the
    generation still holds its message at each checkpoint."""

    def __init__(self, holds: bool = True) -> None:
        self.deltas: list[tuple[int, str]] = []
        self.checkpoints: list[tuple[str, int]] = []
        self.holds = holds

    async def publish(self, seq: int, text: str) -> None:
        self.deltas.append((seq, text))

    async def checkpoint(self, text: str, seq: int) -> bool:
        self.checkpoints.append((text, seq))
        return self.holds

    @property
    def text(self) -> str:
        return "".join(t for _, t in self.deltas)


def runner_for(
    make_client: MakeClient,
    prompt: str,
    recorder: Recorder,
    *,
    flush_s: float = 0.03,
    idle_timeout_s: float = 10,
):
    client = make_client()
    request = StreamRequest(model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}])
    return StreamRunner(
        client,
        request,
        publish=recorder.publish,
        checkpoint=recorder.checkpoint,
        flush_s=flush_s,
        checkpoint_s=0.05,
        idle_timeout_s=idle_timeout_s,
    )


async def test_complete_stream_is_relayed_whole_in_coalesced_numbered_deltas(make_client):
    recorder = Recorder()
    outcome = await runner_for(make_client, "Count to 300", recorder).run()
    expected = count_to(300)
    assert outcome.status == "complete"
    assert outcome.content == expected == recorder.text
    assert [seq for seq, _ in recorder.deltas] == list(range(1, len(recorder.deltas) + 1))
    assert outcome.seq == len(recorder.deltas)
    assert len(recorder.deltas) < len(tokenize(expected)) / 4  # coalesced
    assert outcome.finish_reason == "stop"
    assert outcome.usage is not None and not outcome.usage.estimated
    assert outcome.usage.completion_tokens == len(tokenize(expected))
    assert outcome.ttft_ms is not None


async def test_a_held_delta_starts_out_as_its_window_ends_not_a_loop_turn_later(make_client):
    # The runner calls `publish` from the window's timer callback (no task runs there),
    # not from the flusher task it would wake: under load a loop turn is milliseconds.
    # The first delta is not held, so the flusher publishes it as the reader wakes it.
    started_in_task: list[bool] = []

    class Timed(Recorder):
        def publish(self, seq: int, text: str):
            started_in_task.append(asyncio.current_task() is not None)
            return super().publish(seq, text)

    recorder = Timed()
    outcome = await runner_for(make_client, "Count to 60 [[sim chunk_ms=10]]", recorder).run()
    assert outcome.content == count_to(60) == recorder.text
    assert started_in_task[0] is True
    # (A quiet spell of the upstream on a busy machine may put one in the flusher.)
    assert len(started_in_task) > 3 and started_in_task.count(False) >= len(started_in_task) // 2


async def test_without_a_flush_window_every_chunk_is_its_own_delta(make_client):
    recorder = Recorder()
    outcome = await runner_for(
        make_client, "Count to 20 [[sim chunk_ms=20]]", recorder, flush_s=0
    ).run()
    assert outcome.content == count_to(20)
    # The first delta is never held back, and a slow upstream is relayed piece by piece.
    assert recorder.deltas[0] == (1, "1")
    assert len(recorder.deltas) > len(tokenize(count_to(20))) / 2


async def test_the_end_of_the_stream_cuts_the_flush_window_short(make_client):
    """With a window far longer than the test's timeout, the run still ends: the text
    read during the last window goes out when reading ends, not when the window does."""
    recorder = Recorder()
    outcome = await runner_for(
        make_client, "Count to 30 [[sim chunk_ms=1]]", recorder, flush_s=3600
    ).run()
    assert outcome.status == "complete"
    assert outcome.content == count_to(30) == recorder.text
    # The first delta went out at once; everything after it waited for the end.
    assert [seq for seq, _ in recorder.deltas] == [1, 2]


async def test_a_runner_whose_message_was_stored_elsewhere_stops_publishing(make_client):
    recorder = Recorder(holds=False)  # the sweeper stored it: checkpoints touch nothing
    outcome = await runner_for(make_client, "Count to 2000 [[sim chunk_ms=1]]", recorder).run()
    assert outcome.status == "lost"
    assert len(recorder.checkpoints) == 1  # the first one told it
    published = len(recorder.deltas)
    assert count_to(2000).startswith(recorder.text)
    assert len(recorder.text) < len(count_to(2000))
    assert published == recorder.deltas[-1][0]  # and nothing after it


async def test_checkpoints_hold_exactly_the_deltas_up_to_their_seq(make_client):
    recorder = Recorder()
    await runner_for(make_client, "Count to 400 [[sim chunk_ms=1]]", recorder).run()
    assert recorder.checkpoints, "a 1 s stream with 50 ms checkpoints saved nothing"
    for text, seq in recorder.checkpoints:
        assert text == "".join(t for _, t in recorder.deltas[:seq])


@pytest.mark.parametrize(
    "directive",
    ["keepalive=1", "role_chunk=bare", "role_chunk=none", "usage=off", "stream_options=reject"],
)
async def test_what_openai_compatible_servers_may_send_is_accepted(make_client, directive):
    recorder = Recorder()
    outcome = await runner_for(make_client, f"Count to 30 [[sim {directive}]]", recorder).run()
    assert outcome.status == "complete"
    assert outcome.content == count_to(30) == recorder.text
    assert outcome.usage is not None
    # A server that ignores stream_options: usage is estimated and flagged, never null.
    assert outcome.usage.estimated is (directive in ("usage=off", "stream_options=reject"))
    assert outcome.usage.completion_tokens == len(tokenize(count_to(30)))


@pytest.mark.parametrize(
    ("directive", "code", "content"),
    [
        ("fault=http_429 retry_after_ms=20", "rate_limited", ""),
        ("fault=http_500", "upstream_error", ""),
        ("fault=error_after n=6", "upstream_error", "1, 2, "),
        ("fault=drop_after n=6", "upstream_error", "1, 2, "),
        ("fault=cut_after n=6", "upstream_error", "1, 2, "),
        ("finish=content_filter", "content_filtered", count_to(10)),
    ],
)
async def test_failures_keep_the_partial_text_and_say_why(make_client, directive, code, content):
    recorder = Recorder()
    outcome = await runner_for(make_client, f"Count to 10 [[sim {directive}]]", recorder).run()
    assert outcome.status == "failed"
    assert outcome.error is not None and outcome.error.code == code
    assert outcome.content == content == recorder.text
    if code == "rate_limited":
        assert outcome.error.retry_after == pytest.approx(0.02)
    if content and code != "content_filtered":
        assert outcome.usage is not None and outcome.usage.estimated


async def test_a_mid_stream_drop_is_reported_as_a_drop_not_as_unreachable(make_client):
    outcome = await runner_for(
        make_client, "Count to 10 [[sim fault=drop_after n=3]]", Recorder()
    ).run()
    assert outcome.error.detail == "The connection to the model dropped."


@pytest.mark.parametrize("keepalive", ["", "keepalive=1"])
async def test_a_stalled_upstream_times_out_with_the_text_so_far(make_client, keepalive):
    recorder = Recorder()
    runner = runner_for(
        make_client,
        f"Count to 10 [[sim fault=stall_after n=4 {keepalive}]]",
        recorder,
        idle_timeout_s=0.5,
    )
    outcome = await runner.run()
    assert outcome.status == "failed"
    assert outcome.error.code == "timeout"
    assert outcome.content == "1, 2"


async def test_length_finish_is_complete_and_says_so(make_client):
    outcome = await runner_for(make_client, "Count to 10 [[sim finish=length]]", Recorder()).run()
    assert outcome.status == "complete"
    assert outcome.finish_reason == "length"


async def test_retry_before_the_first_token_succeeds_once_upstream_recovers(make_client):
    recorder = Recorder()
    client = make_client(max_retries=1, chunk_ms=0)
    request = StreamRequest(
        model="m",
        messages=[{"role": "user", "content": "Count to 5 [[sim fault=http_500 times=1]]"}],
    )
    outcome = await StreamRunner(client, request, publish=recorder.publish).run()
    assert outcome.status == "complete"
    assert outcome.content == recorder.text == count_to(5)


@pytest.mark.parametrize("reason", ["cancelled", "interrupted"])
async def test_stop_ends_at_once_with_the_text_relayed_so_far(make_client, reason):
    recorder = Recorder()
    runner = runner_for(make_client, "Count to 5000 [[sim chunk_ms=2]]", recorder)
    task = asyncio.create_task(runner.run())
    while len(recorder.deltas) < 3:  # noqa: ASYNC110 - polls what the runner records
        await asyncio.sleep(0.01)
    runner.stop(reason)
    outcome = await asyncio.wait_for(task, 5)
    assert outcome.status == reason
    assert outcome.content == recorder.text
    assert 0 < len(outcome.content) < len(count_to(5000))
    assert outcome.usage is not None and outcome.usage.estimated
    assert outcome.error is None


async def test_a_failing_publisher_does_not_lose_the_text(make_client):
    async def broken(seq: int, text: str) -> None:
        raise ConnectionError("layer down")

    client = make_client(chunk_ms=0)
    request = StreamRequest(model="m", messages=[{"role": "user", "content": "Count to 50"}])
    outcome = await StreamRunner(client, request, publish=broken).run()
    assert outcome.status == "complete"
    assert outcome.content == count_to(50)


async def test_the_stream_is_read_without_a_timeout_per_read(make_client):
    # aiohttp re-arms a read timeout on every read; a stall is the idle limit's to end
    # (test_a_stalled_upstream_times_out_with_the_text_so_far).
    client = make_client()
    transport = client._client._transport
    sent = []
    handle = transport.handle_async_request

    async def recording(request):
        sent.append(request.extensions["timeout"])
        return await handle(request)

    transport.handle_async_request = recording
    request = StreamRequest(model="m", messages=[{"role": "user", "content": "Count to 5"}])
    outcome = await StreamRunner(client, request, publish=Recorder().publish).run()
    assert outcome.content == count_to(5)
    limits = httpx2.Timeout(client.timeout).as_dict()  # the client's own, every other one
    assert sent == [{**limits, "read": None}] and limits["read"] is not None
