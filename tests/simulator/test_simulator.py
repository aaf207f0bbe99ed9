"""The OpenAI simulator: pure logic, the in-process transport and the socket server."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx2
import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st

from chat.simulator import (
    Emit,
    End,
    SimSettings,
    Simulator,
    SimulatorTransport,
    Sleep,
    count_prompt_tokens,
    moderation_result,
    parse_directives,
    reply_for,
    serve,
    simulator_client,
    tokenize,
)
from chat.simulator.plan import Event
from tests import virtual_time

ROOT = Path(__file__).resolve().parents[2]
COUNT_PROMPT = "Count to 100, with a comma between each number"
COUNT_100 = ", ".join(str(i) for i in range(1, 101))
FAST = "[[sim ttft_ms=0 chunk_ms=0]]"
MODEL = "gpt-4o-mini"


def user(text: str) -> list[dict[str, Any]]:
    """A one-message conversation."""
    return [{"role": "user", "content": text}]


def content_of(chunks: list[Any]) -> list[str]:
    """The content pieces of streamed chunks, in order."""
    return [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]


async def content_stream(stream: Any) -> AsyncIterator[str]:
    """The content pieces of a stream, each as it arrives."""
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            yield chunk.choices[0].delta.content


async def stream_chat(client: openai.AsyncOpenAI, text: str, **kwargs: Any) -> AsyncIterator[Any]:
    """Start a streamed chat completion for one user message."""
    return await client.chat.completions.create(
        model=MODEL, messages=user(text), stream=True, **kwargs
    )


async def collect_until_error(stream: Any) -> tuple[list[Any], BaseException | None]:
    """Every chunk received, and the exception that ended iteration (if any)."""
    chunks: list[Any] = []
    try:
        async for chunk in stream:
            chunks.append(chunk)
    except Exception as exc:
        return chunks, exc
    return chunks, None


# --- pure logic ----------------------------------------------------------------------------


@given(st.text())
def test_tokenize_roundtrips(text: str) -> None:
    pieces = tokenize(text)
    assert "".join(pieces) == text
    assert all(pieces)


@given(st.text(alphabet="0123456789 ,.abc\n", max_size=60))
def test_tokenize_digit_runs_are_short(text: str) -> None:
    assert all(len(p) <= 3 for p in tokenize(text) if p.isdigit())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1, 2, 3", ["1", ",", " ", "2", ",", " ", "3"]),
        ("Hi there.", ["Hi", " there", "."]),
        ("12345", ["123", "45"]),
        ("a  b", ["a", " ", " b"]),
        ("x\n\ny", ["x", "\n\n", "y"]),
        ("<b>ok</b>", ["<", "b", ">", "ok", "<", "/", "b", ">"]),
        ("", []),
    ],
)
def test_tokenize_examples(text: str, expected: list[str]) -> None:
    assert tokenize(text) == expected


def test_count_to_100_is_exact() -> None:
    assert reply_for(user(COUNT_PROMPT)) == COUNT_100


def test_count_is_capped() -> None:
    assert reply_for(user("count to 999999")).endswith(", 99999, 100000")


def test_reply_answers_last_user_message_and_joins_text_parts() -> None:
    messages = [
        {"role": "user", "content": "count to 2"},
        {"role": "assistant", "content": "1, 2"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "count "}, {"type": "text", "text": "to 3"}],
        },
        {"role": "system", "content": "count to 9"},
    ]
    assert reply_for(messages) == "1, 2, 3"


def test_default_reply_is_deterministic() -> None:
    first = reply_for(user("Tell me about rivers"))
    assert first == reply_for(user("Tell me about rivers"))
    assert first != reply_for(user("Tell me about bridges"))
    sentences = [s for s in first.split(".") if s.strip()]
    assert 2 <= len(sentences) <= 5
    # Directives and surrounding whitespace do not change the seed.
    assert reply_for(user("Tell me about rivers [[sim chunk_ms=1]]")) == first


@pytest.mark.multiprocess
def test_default_reply_is_stable_across_processes() -> None:
    code = (
        "from chat.simulator.script import reply_for; "
        "print(reply_for([{'role': 'user', 'content': 'hi'}]))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert outputs == {reply_for(user("hi"))}


@pytest.mark.parametrize("n", [0, 1, 7, 40])
def test_words_directive_gives_exact_word_count(n: int) -> None:
    assert len(reply_for(user(f"anything [[sim words={n}]]")).split()) == n


def test_reply_directive_is_percent_decoded() -> None:
    html = "<b>bold</b> & **md**\n- item"
    assert reply_for(user(f"x [[sim reply={quote(html)}]]")) == html


@pytest.mark.parametrize(
    ("text", "clean", "directives"),
    [
        ("plain", "plain", {}),
        ("hi [[sim chunk_ms=5 ttft_ms=0]]", "hi", {"chunk_ms": "5", "ttft_ms": "0"}),
        ("[[sim fault=http_429 times=2]] go", "go", {"fault": "http_429", "times": "2"}),
        ("a [[sim n=1]] b [[sim n=2 usage=off]]", "a  b", {"n": "2", "usage": "off"}),
        ("x [[sim junk Keep=1]]", "x", {"keep": "1"}),
        ("[[sim]]", "", {}),
        ("not a [[simulation]] directive", "not a [[simulation]] directive", {}),
    ],
)
def test_parse_directives(text: str, clean: str, directives: dict[str, str]) -> None:
    assert parse_directives(text) == (clean, directives)


def test_count_prompt_tokens() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there."},
    ]
    assert count_prompt_tokens(messages) == (3 + 3) + (3 + 3) + 3


@pytest.mark.parametrize(
    ("text", "flagged"),
    [
        ("a calm sentence", set()),
        ("I will FlagMe now", {"violence"}),
        ("bad [[flag:hate]] words [[flag:self-harm/intent]]", {"hate", "self-harm/intent"}),
        ("[[flag:not-a-category]]", set()),
    ],
)
def test_moderation_result(text: str, flagged: set[str]) -> None:
    result = moderation_result(text)
    assert result["flagged"] == bool(flagged)
    assert {name for name, hit in result["categories"].items() if hit} == flagged
    assert len(result["categories"]) == 13
    for name, score in result["category_scores"].items():
        assert score == (0.97 if name in flagged else 0.001)


def test_sim_ts_is_taken_at_emission() -> None:
    now = [1000.0]
    sim = Simulator(SimSettings(ttft_ms=0, chunk_ms=0), clock=lambda: now[0])
    body = json.dumps({"model": MODEL, "messages": user("count to 2"), "stream": True}).encode()
    plan = sim.handle("POST", "/v1/chat/completions", body)
    stamps = []
    for event in plan.events:
        if isinstance(event, End):
            break
        if isinstance(event, Emit):
            now[0] += 1  # the clock moves between plan creation and each emission
            chunk = event.data()[len(b"data: ") :]
            if chunk.startswith(b"{"):
                stamps.append(json.loads(chunk).get("sim_ts"))
    # role chunk, "1", ",", " ", "2", finish chunk; only content chunks carry sim_ts.
    assert stamps == [None, 1002.0, 1003.0, 1004.0, 1005.0, None]


# --- in-process transport ------------------------------------------------------------------


@pytest.fixture
async def client() -> AsyncIterator[openai.AsyncOpenAI]:
    """A real SDK client on a fresh in-process simulator, without retries."""
    sim_client = simulator_client(SimSettings(ttft_ms=0, chunk_ms=0), max_retries=0)
    yield sim_client
    await sim_client.close()


def check_count_stream(chunks: list[Any], sent_between: tuple[float, float]) -> None:
    """The full OpenAI stream shape for the count-to-100 prompt with usage, streamed
    between the two `time.time()` readings of `sent_between`."""
    first = chunks[0]
    assert first.object == "chat.completion.chunk"
    assert first.choices[0].delta.role == "assistant"
    assert first.choices[0].delta.content == ""
    pieces = content_of(chunks)
    assert "".join(pieces) == COUNT_100
    assert pieces[:4] == ["1", ",", " ", "2"]
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finish] == ["stop"]
    assert finish[0].choices[0].delta.content is None
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.completion_tokens == len(pieces)
    assert last.usage.prompt_tokens == count_prompt_tokens(user(COUNT_PROMPT))
    assert last.usage.total_tokens == last.usage.prompt_tokens + len(pieces)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].id.startswith("chatcmpl-")
    assert all(c.system_fingerprint == "fp_sim" and c.model == MODEL for c in chunks)
    stamps = [c.sim_ts for c in chunks if c.choices and c.choices[0].delta.content]
    assert stamps == sorted(stamps)
    # `sim_ts` is the wall clock at emission: read within the request, whatever it took.
    assert sent_between[0] <= stamps[0] and stamps[-1] <= sent_between[1]


async def test_streams_count_to_100(client: openai.AsyncOpenAI) -> None:
    before = time.time()
    stream = await stream_chat(client, COUNT_PROMPT, stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    check_count_stream(chunks, (before, time.time()))


async def test_documented_client_construction() -> None:
    transport = SimulatorTransport(SimSettings(ttft_ms=0, chunk_ms=0))
    async with openai.AsyncOpenAI(
        api_key="sim",
        base_url="http://simulator.invalid/v1",
        http_client=httpx2.AsyncClient(transport=transport),
    ) as sim_client:
        reply = await sim_client.chat.completions.create(model=MODEL, messages=user("count to 3"))
    assert reply.choices[0].message.content == "1, 2, 3"


async def test_without_include_usage_there_is_no_usage_chunk(client: openai.AsyncOpenAI) -> None:
    chunks = [chunk async for chunk in await stream_chat(client, "count to 5")]
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_usage_off_ignores_stream_options(client: openai.AsyncOpenAI) -> None:
    stream = await stream_chat(
        client, "count to 5 [[sim usage=off]]", stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert all(c.usage is None for c in chunks)
    assert "".join(content_of(chunks)) == "1, 2, 3, 4, 5"


async def test_http_429_raises_rate_limit_error(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        await stream_chat(client, "count to 5 [[sim fault=http_429 retry_after_ms=20]]")
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.type == "requests"
    assert caught.value.response.headers["retry-after-ms"] == "20"
    assert caught.value.response.headers["retry-after"] == "1"


async def test_http_500_raises_internal_server_error(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(
            model=MODEL, messages=user("hi [[sim fault=http_500]]")
        )
    assert caught.value.type == "server_error"


async def test_error_after_raises_api_error_mid_stream(client: openai.AsyncOpenAI) -> None:
    stream = await stream_chat(client, "count to 20 [[sim fault=error_after n=5]]")
    chunks, error = await collect_until_error(stream)
    assert type(error) is openai.APIError
    assert error.type == "server_error"
    assert content_of(chunks) == ["1", ",", " ", "2", ","]


async def test_drop_after_raises_connection_error(client: openai.AsyncOpenAI) -> None:
    stream = await stream_chat(client, "count to 20 [[sim fault=drop_after n=3]]")
    chunks, error = await collect_until_error(stream)
    # The SDK wraps the transport's error in its own connection error.
    assert type(error) is openai.APIConnectionError
    assert type(error.__cause__) is httpx2.RemoteProtocolError
    assert "incomplete chunked read" in str(error.__cause__)
    assert content_of(chunks) == ["1", ",", " "]


async def test_cut_after_ends_silently(client: openai.AsyncOpenAI) -> None:
    stream = await stream_chat(
        client, "count to 20 [[sim fault=cut_after n=4]]", stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert content_of(chunks) == ["1", ",", " ", "2"]
    assert all(c.choices and c.choices[0].finish_reason is None for c in chunks)
    assert all(c.usage is None for c in chunks)


def test_stall_after_pauses_then_continues() -> None:
    text = "count to 3 [[sim fault=stall_after n=2 stall_s=0.3]]"
    # The plan: one pause, after the second content chunk, and nothing else skipped.
    sim = Simulator(SimSettings(ttft_ms=0, chunk_ms=0))
    plan = sim.handle("POST", "/v1/chat/completions", chat_body(text, stream=True))
    steps: list[str | Sleep] = []
    for event in plan.events:
        steps += [event] if isinstance(event, Sleep) else content_pieces([event])
    assert steps == ["1", ",", Sleep(0.3), " ", "2", ",", " ", "3"]

    # The transport: the SDK gets the first two at once and the rest 0.3 s later, on
    # a loop clock that jumps to each timer (the wait is the plan's, not the machine's).
    async def arrivals() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        async with simulator_client(SimSettings(ttft_ms=0, chunk_ms=0), max_retries=0) as sdk:
            start = loop.time()
            stream = await stream_chat(sdk, text)
            return [(piece, loop.time() - start) async for piece in content_stream(stream)]

    later = pytest.approx(0.3)
    assert virtual_time.run(arrivals()) == [
        ("1", 0.0),
        (",", 0.0),
        (" ", later),
        ("2", later),
        (",", later),
        (" ", later),
        ("3", later),
    ]


async def test_early_close_stops_a_stalled_stream_promptly(client: openai.AsyncOpenAI) -> None:
    before = asyncio.all_tasks()
    stream = await stream_chat(client, "count to 9 [[sim fault=stall_after n=1]]")
    async with asyncio.timeout(5):
        pieces = []
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
                break
        await stream.close()
    assert pieces == ["1"]
    assert asyncio.all_tasks() == before


async def test_times_lets_the_sdk_retry_once() -> None:
    transport = SimulatorTransport(SimSettings(ttft_ms=0, chunk_ms=0))
    text = "count to 3 [[sim fault=http_429 times=1 retry_after_ms=1]]"
    async with openai.AsyncOpenAI(
        api_key="sim",
        base_url="http://simulator.invalid/v1",
        http_client=openai.DefaultAsyncHttpxClient(transport=transport),
        max_retries=1,
    ) as sim_client:
        stream = await stream_chat(sim_client, text)
        chunks = [chunk async for chunk in stream]
        assert "".join(content_of(chunks)) == "1, 2, 3"
        assert transport.simulator.fault_counts == {
            "[[sim fault=http_429 times=1 retry_after_ms=1]]": 2
        }
        # The budget is spent: without retries the next request succeeds too.
        reply = await sim_client.with_options(max_retries=0).chat.completions.create(
            model=MODEL, messages=user(text)
        )
    assert reply.choices[0].message.content == "1, 2, 3"


@pytest.mark.parametrize(
    ("directive", "delta"),
    [("role_chunk=bare", {"role": "assistant"}), ("role_chunk=none", None)],
)
async def test_role_chunk_variants(
    client: openai.AsyncOpenAI, directive: str, delta: dict[str, str] | None
) -> None:
    stream = await stream_chat(client, f"count to 2 [[sim {directive}]]")
    chunks = [chunk async for chunk in stream]
    first = chunks[0].choices[0].delta.model_dump(exclude_unset=True)
    if delta is None:
        assert first == {"content": "1"}
    else:
        assert first == delta
    assert "".join(content_of(chunks)) == "1, 2"


async def test_keepalive_comments_are_ignored_by_the_sdk(client: openai.AsyncOpenAI) -> None:
    chunks = [chunk async for chunk in await stream_chat(client, "count to 4 [[sim keepalive=1]]")]
    assert "".join(content_of(chunks)) == "1, 2, 3, 4"


async def test_max_tokens_cuts_with_length(client: openai.AsyncOpenAI) -> None:
    stream = await stream_chat(
        client, "count to 50", max_tokens=5, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert content_of(chunks) == ["1", ",", " ", "2", ","]
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 5


async def test_finish_directive_forces_reason(client: openai.AsyncOpenAI) -> None:
    chunks = [c async for c in await stream_chat(client, "hi [[sim finish=content_filter]]")]
    assert chunks[-1].choices[0].finish_reason == "content_filter"


async def test_non_streaming_completion(client: openai.AsyncOpenAI) -> None:
    reply = await client.chat.completions.create(
        model="sim-1", messages=user(COUNT_PROMPT), max_completion_tokens=1000
    )
    assert reply.object == "chat.completion"
    assert reply.model == "sim-1"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == COUNT_100
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens == len(tokenize(COUNT_100))
    assert reply.usage.prompt_tokens == count_prompt_tokens(user(COUNT_PROMPT))


async def test_non_streaming_reply_directive(client: openai.AsyncOpenAI) -> None:
    text = "# Title\n\n<script>alert(1)</script>"
    reply = await client.chat.completions.create(
        model=MODEL, messages=user(f"{FAST} [[sim reply={quote(text)}]]")
    )
    assert reply.choices[0].message.content == text


async def test_moderations(client: openai.AsyncOpenAI) -> None:
    result = await client.moderations.create(
        model="omni-moderation-latest", input=["hello", "please flagme", "[[flag:sexual]]"]
    )
    assert result.id.startswith("modr-")
    assert [r.flagged for r in result.results] == [False, True, True]
    assert result.results[1].categories.violence is True
    assert result.results[1].category_scores.violence == 0.97
    assert result.results[2].categories.sexual is True
    assert result.results[0].category_scores.harassment == 0.001
    single = await client.moderations.create(input="fine text")
    assert len(single.results) == 1
    assert not single.results[0].flagged


async def test_moderation_honours_http_faults(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError):
        await client.moderations.create(input="x [[sim fault=http_429]]")
    with pytest.raises(openai.InternalServerError):
        await client.moderations.create(input=["ok", "x [[sim fault=http_500]]"])


async def test_models_list(client: openai.AsyncOpenAI) -> None:
    models = [m.id async for m in client.models.list()]
    assert models == ["gpt-4o-mini", "sim-1"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/v1/nothing", b"", 404),
        ("POST", "/v1/chat/completions", b"{not json", 400),
        ("POST", "/v1/chat/completions", b'{"model": "m"}', 400),
        ("GET", "/v1/chat/completions", b"", 405),
    ],
)
async def test_error_responses(method: str, path: str, body: bytes, status: int) -> None:
    async with httpx2.AsyncClient(transport=SimulatorTransport()) as raw:
        response = await raw.request(method, f"http://simulator.invalid{path}", content=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] is None
    assert isinstance(error["message"], str)


# --- over sockets --------------------------------------------------------------------------


def read_line(stream: Any, timeout: float) -> str:
    """One line from a pipe, or fail after `timeout` seconds."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    return lines.get(timeout=timeout)


def start_simulator(tmp_dir: Path) -> tuple[subprocess.Popen[str], int, Path]:
    """Run `manage.py simulate_openai --port 0`; return the process, its port and stderr file."""
    stderr_path = tmp_dir / "simulator.stderr"
    # The child keeps its own copy of the stderr handle.
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "simulate_openai",
                "--host=127.0.0.1",
                "--port=0",
                "--ttft-ms=0",
                "--chunk-ms=0",
            ],
            cwd=ROOT,
            env={**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings_test"},
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    prefix = "simulator listening on http://127.0.0.1:"
    try:
        line = read_line(process.stdout, timeout=30)
        assert line.startswith(prefix), line
        assert line.rstrip().endswith("/v1"), line
    except BaseException:
        stop_simulator(process, signal.SIGKILL)
        raise
    return process, int(line[len(prefix) :].split("/")[0]), stderr_path


def stop_simulator(process: subprocess.Popen[str], sig: int = signal.SIGTERM) -> int:
    """Signal the simulator and wait for it to exit."""
    process.send_signal(sig)
    try:
        return process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


@pytest.fixture(scope="module")
def sim_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A simulator subprocess for this module; yields its port and checks a clean exit."""
    process, port, stderr_path = start_simulator(tmp_path_factory.mktemp("sim"))
    yield port
    assert stop_simulator(process) == 0
    assert "Traceback" not in stderr_path.read_text()


@pytest.fixture
async def socket_client(sim_server: int) -> AsyncIterator[openai.AsyncOpenAI]:
    """A real SDK client talking to the simulator subprocess."""
    sim_client = openai.AsyncOpenAI(
        api_key="sim",
        base_url=f"http://127.0.0.1:{sim_server}/v1",
        max_retries=0,
        http_client=openai.DefaultAsyncHttpxClient(trust_env=False),
    )
    yield sim_client
    await sim_client.close()


@pytest.mark.multiprocess
async def test_socket_streams_count_to_100(socket_client: openai.AsyncOpenAI) -> None:
    for _ in range(2):  # the second request reuses the pooled keep-alive connection
        before = time.time()
        stream = await stream_chat(
            socket_client, COUNT_PROMPT, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
        check_count_stream(chunks, (before, time.time()))


@pytest.mark.multiprocess
async def test_socket_drop_after(socket_client: openai.AsyncOpenAI) -> None:
    stream = await stream_chat(socket_client, "count to 20 [[sim fault=drop_after n=3]]")
    chunks, error = await collect_until_error(stream)
    assert type(error) is openai.APIConnectionError
    assert type(error.__cause__) is httpx2.RemoteProtocolError
    assert content_of(chunks) == ["1", ",", " "]
    # The server stays healthy afterwards.
    reply = await socket_client.chat.completions.create(model=MODEL, messages=user("count to 2"))
    assert reply.choices[0].message.content == "1, 2"


@pytest.mark.multiprocess
async def test_socket_keepalive_and_faults(socket_client: openai.AsyncOpenAI) -> None:
    chunks = [c async for c in await stream_chat(socket_client, "count to 4 [[sim keepalive=1]]")]
    assert "".join(content_of(chunks)) == "1, 2, 3, 4"
    with pytest.raises(openai.RateLimitError):
        await stream_chat(socket_client, "x [[sim fault=http_429]]")
    stream = await stream_chat(socket_client, "count to 9 [[sim fault=error_after n=2]]")
    chunks, error = await collect_until_error(stream)
    assert type(error) is openai.APIError
    assert content_of(chunks) == ["1", ","]


@pytest.mark.multiprocess
async def test_socket_client_leaving_a_stalled_stream(socket_client: openai.AsyncOpenAI) -> None:
    stream = await stream_chat(socket_client, "count to 9 [[sim fault=stall_after n=1]]")
    async with asyncio.timeout(5):
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break
        await stream.close()
    moderation = await socket_client.moderations.create(input="flagme")
    assert moderation.results[0].flagged


@pytest.mark.multiprocess
async def test_socket_raw_http_errors(sim_server: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", sim_server)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n"
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")
    writer.close()
    await writer.wait_closed()
    async with httpx2.AsyncClient(trust_env=False) as raw:
        missing = await raw.get(f"http://127.0.0.1:{sim_server}/v1/missing")
        bad = await raw.post(f"http://127.0.0.1:{sim_server}/v1/moderations", content=b"[")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "invalid_request_error"
    assert bad.status_code == 400


@pytest.mark.multiprocess
def test_sigint_exits_cleanly(tmp_path: Path) -> None:
    process, _port, stderr_path = start_simulator(tmp_path)
    assert stop_simulator(process, signal.SIGINT) == 0
    assert "Traceback" not in stderr_path.read_text()


async def test_in_process_server_close_ends_stalled_connections() -> None:
    server = await serve("127.0.0.1", 0, SimSettings(ttft_ms=0, chunk_ms=0))
    sim_client = openai.AsyncOpenAI(
        api_key="sim",
        base_url=server.base_url,
        max_retries=0,
        http_client=openai.DefaultAsyncHttpxClient(trust_env=False),
    )
    try:
        stream = await stream_chat(sim_client, "count to 9 [[sim fault=stall_after n=1]]")
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break
        async with asyncio.timeout(5):
            await server.close()
        _, error = await collect_until_error(stream)
        assert isinstance(error, openai.APIConnectionError)
    finally:
        await sim_client.close()


# --- bounds: a request costs what it sends, never what it asks for ------------------------

MB = 2**20
# The documented maxima (the Limits table of chat/simulator/script.py).
MAX_WORDS = 100_000
MAX_DELAY_S = 60.0
MAX_STALL_S = 3600.0
MAX_FAULT_COUNTERS = 10_000
# sha256 prefixes of replies as the simulator has always given them.
PINNED_REPLIES = {
    "x [[sim words=100000]]": "dd1b1d70e9db0552",
    "Count to 100000": "2efe8e50219d1e15",
    "Tell me about rivers": "7839ba7af16cba37",
    "hi": "0d3204ea7c19a65a",
    "anything [[sim words=37]]": "67a5103f4dcd8c42",
    "Count to 1234 please": "c6aeb32e1deb06c3",
}


def chat_body(text: str, **fields: Any) -> bytes:
    """A chat completion request body for one user message."""
    return json.dumps({"model": MODEL, "messages": user(text), **fields}).encode()


def traced_peak(work: Callable[[], Any]) -> tuple[Any, int]:
    """What `work` returns, and the peak of memory allocated while it ran."""
    tracemalloc.start()
    try:
        result = work()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def content_pieces(events: Iterable[Event]) -> list[str]:
    """The content of the content chunks among plan events."""
    pieces = []
    for event in events:
        if isinstance(event, Emit) and event.data().startswith(b"data: {"):
            chunk = json.loads(event.data()[len(b"data: ") :])
            for choice in chunk.get("choices") or []:
                if choice["delta"].get("content"):
                    pieces.append(choice["delta"]["content"])
    return pieces


def sleeps(events: Iterable[Event]) -> list[float]:
    """The delays among plan events."""
    return [event.seconds for event in events if isinstance(event, Sleep)]


@pytest.mark.parametrize("text", list(PINNED_REPLIES))
def test_replies_are_unchanged(text: str) -> None:
    reply = reply_for(user(text))
    assert hashlib.sha256(reply.encode()).hexdigest()[:16] == PINNED_REPLIES[text]


@pytest.mark.parametrize(
    "text",
    [
        "anything [[sim words=37]]",
        "x [[sim words=0]]",
        "Count to 1234 please",
        "count to 0",
        "Tell me about rivers",
        f"x [[sim reply={quote('a  b' + chr(10) * 2 + ' 12345, <b>ok</b>  ')}]]",
    ],
)
def test_streamed_pieces_are_the_tokens_of_the_reply(text: str) -> None:
    sim = Simulator(SimSettings(ttft_ms=0, chunk_ms=0))
    plan = sim.handle("POST", "/v1/chat/completions", chat_body(text, stream=True))
    reply = reply_for(user(text))
    assert content_pieces(plan.events) == tokenize(reply)


@pytest.mark.parametrize(
    ("text", "at_maximum"),
    [
        ("go [[sim words=1000000000]]", "go [[sim words=100000]]"),
        ("count to 1000000000000", "count to 100000"),
    ],
)
def test_a_huge_reply_streams_in_small_memory(text: str, at_maximum: str) -> None:
    sim = Simulator(SimSettings(ttft_ms=0, chunk_ms=0))

    def start() -> list[str]:
        plan = sim.handle("POST", "/v1/chat/completions", chat_body(text, stream=True))
        return content_pieces(itertools.islice(plan.events, 200))

    pieces, peak = traced_peak(start)
    assert peak < 4 * MB
    assert len(pieces) > 150
    assert pieces == tokenize(reply_for(user(at_maximum)))[: len(pieces)]


def test_a_non_streamed_answer_builds_at_most_max_tokens() -> None:
    sim = Simulator(SimSettings(ttft_ms=0, chunk_ms=0))

    def answer() -> bytes:
        body = chat_body("go [[sim words=1000000000]]", max_tokens=300)
        plan = sim.handle("POST", "/v1/chat/completions", body)
        return b"".join(e.data() for e in plan.events if isinstance(e, Emit))

    raw, peak = traced_peak(answer)
    assert peak < 4 * MB
    reply = json.loads(raw)
    content = reply["choices"][0]["message"]["content"]
    assert tokenize(content) == tokenize(reply_for(user("go [[sim words=100000]]")))[:300]
    assert reply["usage"]["completion_tokens"] == 300
    assert reply["choices"][0]["finish_reason"] == "length"


async def test_a_stream_cut_by_max_tokens_reports_the_chunks_sent(
    client: openai.AsyncOpenAI,
) -> None:
    stream = await stream_chat(
        client,
        "go [[sim words=1000000000]]",
        max_tokens=1000,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    pieces = content_of(chunks)
    assert len(pieces) == 1000
    assert chunks[-1].usage.completion_tokens == 1000
    assert chunks[-2].choices[0].finish_reason == "length"
    assert pieces == tokenize(reply_for(user("go [[sim words=100000]]")))[:1000]


def test_sizes_beyond_the_maximum_act_as_the_maximum() -> None:
    assert len(reply_for(user("x [[sim words=1000000000]]")).split()) == MAX_WORDS
    assert reply_for(user("x [[sim words=1000000000]]")) == reply_for(
        user("x [[sim words=100000]]")
    )
    # Too many digits for int() is still just "too many".
    assert reply_for(user(f"count to {'9' * 5000}")).endswith(", 99999, 100000")
    assert reply_for(user(f"x [[sim words={'9' * 5000}]]")).count(" ") + 1 == MAX_WORDS
    long_reply = "ab " * 50_000
    assert reply_for(user(f"x [[sim reply={quote(long_reply)}]]")) == long_reply[:100_000]


def test_delays_beyond_the_maximum_act_as_the_maximum() -> None:
    sim = Simulator(SimSettings(ttft_ms=0, chunk_ms=0))

    def plan_sleeps(text: str, **fields: Any) -> list[float]:
        plan = sim.handle("POST", "/v1/chat/completions", chat_body(text, **fields))
        return sleeps(plan.events)

    # "1, 2" is 4 tokens: the time to first token, then 3 gaps.
    slow = "count to 2 [[sim chunk_ms=1000000000 ttft_ms=1e999]]"
    assert plan_sleeps(slow, stream=True) == [MAX_DELAY_S] * 4
    assert plan_sleeps(slow) == [MAX_DELAY_S * 5]
    stalled = "count to 2 [[sim fault=stall_after n=1 stall_s=1e12]]"
    assert plan_sleeps(stalled, stream=True) == [MAX_STALL_S]
    # A fault after more chunks than the reply has comes after the last one.
    late = f"count to 2 [[sim fault=error_after n={'9' * 5000}]]"
    plan = sim.handle("POST", "/v1/chat/completions", chat_body(late, stream=True))
    events = list(plan.events)
    assert content_pieces(events) == ["1", ",", " ", "2"]
    assert b'"error"' in events[-2].data()
    limited = chat_body(f"x [[sim fault=http_429 retry_after_ms={10**15}]]")
    refused = sim.handle("POST", "/v1/chat/completions", limited)
    assert refused.status == 429
    assert dict(refused.headers)["retry-after-ms"] == "60000"
    assert dict(refused.headers)["retry-after"] == "60"
    slow_moderation = sim.handle(
        "POST", "/v1/moderations", json.dumps({"input": "x [[sim ttft_ms=1e9]]"}).encode()
    )
    assert sleeps(slow_moderation.events) == [MAX_DELAY_S]


def test_fault_counters_are_bounded() -> None:
    sim = Simulator()

    def moderate(text: str) -> int:
        body = json.dumps({"input": text}).encode()
        return sim.handle("POST", "/v1/moderations", body).status

    for i in range(MAX_FAULT_COUNTERS + 50):
        assert moderate(f"x [[sim fault=http_500 times=1 tag={i}]]") == 500
    assert len(sim.fault_counts) == MAX_FAULT_COUNTERS
    # The most recent directives keep their spent budget; the oldest were forgotten.
    assert moderate(f"x [[sim fault=http_500 times=1 tag={MAX_FAULT_COUNTERS + 49}]]") == 200
    assert moderate("x [[sim fault=http_500 times=1 tag=0]]") == 500
    # A long directive is counted under a short key.
    padded = f"x [[sim fault=http_500 times=1 pad={'p' * 100_000}]]"
    assert [moderate(padded), moderate(padded)] == [500, 200]
    assert max(len(key) for key in sim.fault_counts) <= 200
    assert len(sim.fault_counts) == MAX_FAULT_COUNTERS
