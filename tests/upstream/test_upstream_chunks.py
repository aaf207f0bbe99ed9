"""The runner's SSE decoding (chat/upstream/chunks.py) against the SDK's own decoder, for any
events cut into network reads anywhere; the stream and fault cases of the whole runner
are in tests/generation/test_streaming.py."""

from hypothesis import given
from hypothesis import strategies as st
from openai._streaming import SSEDecoder

from chat.upstream.chunks import EventSplitter

# Field values never hold a line break; anything else goes, multi-byte characters too.
values = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]))
data_line = values.map(lambda v: f"data: {v}") | values.map(lambda v: f"data:{v}")
other_line = st.sampled_from(["event: chunk", ": keep-alive", "id: 7", "retry: 100", ":"])
event = st.tuples(st.lists(other_line, max_size=2), st.lists(data_line, min_size=1, max_size=3))


def encode(events: list[tuple[list[str], list[str]]], newline: str) -> bytes:
    blocks = []
    for others, data in events:
        # Other fields before, between and after the data lines, as servers may send them.
        lines = others[:1] + data[:1] + others[1:] + data[1:]
        blocks.append(newline.join(lines) + newline + newline)
    return "".join(blocks).encode("utf-8")


def split(raw: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(raw) + 1) for c in cuts})
    return [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]


@given(
    events=st.lists(event, max_size=6),
    newline=st.sampled_from(["\n", "\r\n", "\r"]),
    cuts=st.lists(st.integers(min_value=0), max_size=8),
)
def test_every_event_gives_the_data_the_sdk_decodes_however_the_reads_are_cut(
    events, newline, cuts
):
    raw = encode(events, newline)
    expected = [sse.data for sse in SSEDecoder().iter_bytes(iter([raw]))]
    splitter = EventSplitter()
    got = [data for block in split(raw, cuts) for data in splitter.feed(block)]
    got += splitter.finish()
    assert got == expected
    assert len(got) == len(events)


def test_a_chunk_event_split_inside_a_character_and_a_crlf():
    raw = 'data: {"x": "é"}\r\n\r\n'.encode()
    splitter = EventSplitter()
    cut = raw.index(b"\xa9")  # between the two bytes of "é"
    got = splitter.feed(raw[:cut]) + splitter.feed(raw[cut:-3])
    assert got == []
    assert splitter.feed(raw[-3:]) == ['{"x": "é"}']


def test_events_without_data_and_an_unfinished_event_give_nothing():
    splitter = EventSplitter()
    assert splitter.feed(b": keep-alive\n\nevent: ping\n\ndata: {}") == []
    assert splitter.feed(b"\n\n") == ["{}"]


def test_the_sdks_own_stream_class_serves_when_the_internals_are_off(settings):
    import openai

    from chat.upstream import chunks

    settings.OPENAI_CHUNK_STREAM = True
    assert chunks.stream_class() is chunks.ChunkStream
    settings.OPENAI_CHUNK_STREAM = False
    assert chunks.stream_class() is openai.AsyncStream[object]
    assert "the SDK's own stream class (OPENAI_CHUNK_STREAM=0)" in chunks.describe()


async def test_a_whole_answer_streams_through_the_sdks_own_stream_class(settings):
    from chat.generation.runner import StreamRequest, StreamRunner
    from chat.simulator import SimSettings, simulator_client

    settings.OPENAI_CHUNK_STREAM = False
    deltas: list[str] = []

    async def publish(seq: int, text: str) -> None:
        deltas.append(text)

    request = StreamRequest(model="m", messages=[{"role": "user", "content": "Count to 30"}])
    client = simulator_client(SimSettings(ttft_ms=0, chunk_ms=0))
    outcome = await StreamRunner(client, request, publish=publish).run()
    assert outcome.status == "complete"
    assert outcome.content == "".join(deltas) == ", ".join(str(n) for n in range(1, 31))
    assert outcome.usage is not None and not outcome.usage.estimated


def test_the_self_check_refuses_an_sdk_outside_the_tested_range(monkeypatch):
    from chat.upstream import chunks

    assert chunks._self_check() is None  # the pinned release is within range
    monkeypatch.setitem(chunks.VERSION_BOUNDS, "openai", ((99,), (100,)))
    assert "outside the tested range" in chunks._self_check()


def test_pyproject_bounds_the_sdk_the_stream_class_was_tested_with():
    from chat.upstream import chunks
    from tests.live import ROOT

    (low, high) = chunks.VERSION_BOUNDS["openai"]
    bound = f'"openai[aiohttp]>={".".join(map(str, low))},<{".".join(map(str, high))}"'
    assert bound in (ROOT / "pyproject.toml").read_text()
