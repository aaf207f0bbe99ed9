"""CPU per streamed chunk of the upstream read, with and without the SDK's chunk models.

    .venv/bin/python -m bench.upstream_cost [--streams 10] [--words 300]

Starts the simulator (60 tokens/s) and reads the same streams five ways in this process,
measuring this process's CPU time per content chunk:
- `create`: `client.chat.completions.create(stream=True)`, what chat/generation/runner.py does;
- `post`: the same client, `client.post(..., cast_to=object, stream=True)`: request,
  retries, SSE decoding and error events by the SDK, chunks left as dicts;
- `post-aiohttp`: `post` on a client whose HTTP transport is aiohttp
  (`openai.DefaultAioHttpClient`, the SDK's `openai[aiohttp]` extra);
- `chunk-stream`: `post-aiohttp` with `stream_cls=ChunkStream` (chat/upstream/chunks.py), the
  SSE split out of each read at once: what chat/generation/runner.py does with
  chat/upstream/client.py's client;
- `httpx2`: a bare httpx2 request, lines split and `json.loads`-ed by hand (a floor).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deploy.harness import start_simulator  # noqa: E402


async def measure(base_url: str, streams: int, words: int) -> dict[str, float]:
    import httpx2
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-bench", max_retries=0)
    aio_client = openai.AsyncOpenAI(
        base_url=base_url,
        api_key="sk-bench",
        max_retries=0,
        http_client=openai.DefaultAioHttpClient(),
    )
    raw = httpx2.AsyncClient(timeout=60)

    def body(kind: str) -> dict:
        prompt = f"cost {kind} {uuid.uuid4().hex} [[sim words={words}]]"
        return {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": prompt}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }

    async def via_create() -> int:
        b = body("create")
        stream = await client.chat.completions.create(**b)
        n = 0
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                n += 1
        return n

    async def via_post(
        client: openai.AsyncOpenAI = client, stream_cls: type = openai.AsyncStream[object]
    ) -> int:
        stream = await client.post(
            "/chat/completions",
            body=body("post"),
            cast_to=object,
            stream=True,
            stream_cls=stream_cls,
        )
        n = 0
        async for chunk in stream:
            choices = chunk.get("choices") or []
            if choices and (choices[0].get("delta") or {}).get("content"):
                n += 1
        return n

    async def via_httpx2() -> int:
        n = 0
        async with raw.stream("POST", f"{base_url}/chat/completions", json=body("raw")) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    data = json.loads(line[6:])
                    if data["choices"] and data["choices"][0]["delta"].get("content"):
                        n += 1
        return n

    proc = psutil.Process()
    out = {}

    async def via_post_aiohttp() -> int:
        return await via_post(aio_client)

    async def via_chunk_stream() -> int:
        from chat.upstream.chunks import ChunkStream

        return await via_post(aio_client, ChunkStream)

    variants = (
        ("create", via_create),
        ("post", via_post),
        ("post-aiohttp", via_post_aiohttp),
        ("chunk-stream", via_chunk_stream),
        ("httpx2", via_httpx2),
    )
    for name, fn in variants:
        await fn()  # warm up
        cpu0, t0 = sum(proc.cpu_times()[:2]), time.time()
        chunks = sum(await asyncio.gather(*(fn() for _ in range(streams))))
        cpu = sum(proc.cpu_times()[:2]) - cpu0
        out[name] = {
            "chunks": chunks,
            "cpu_us_per_chunk": round(cpu * 1e6 / chunks, 1),
            "cpu_percent": round(100 * cpu / (time.time() - t0), 1),
        }
    await client.close()
    await aio_client.close()
    await raw.aclose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=10)
    parser.add_argument("--words", type=int, default=300)
    args = parser.parse_args()
    sim, url = start_simulator(
        {**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings_test"},
        log_dir=Path(os.environ.get("BENCH_TMP", "/tmp")),
        chunk_ms=16.667,
        ttft_ms=100,
        command=("-m", "bench.simulator"),
    )
    try:
        result = asyncio.run(measure(url, args.streams, args.words))
    finally:
        sim.stop()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
