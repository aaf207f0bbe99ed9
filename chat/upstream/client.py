"""The OpenAI-compatible client, built once per event loop from settings: the configured
upstream, or the simulator named by `SIMULATOR_TRANSPORT` when none is."""

import logging
from urllib.parse import urlsplit

import openai
from django.conf import settings
from django.utils.module_loading import import_string

from chat.per_loop import PerLoop

log = logging.getLogger(__name__)

SIMULATOR_BASE_URL = "http://simulator.invalid/v1"

_clients: PerLoop[openai.AsyncOpenAI] = PerLoop()


def build_client() -> openai.AsyncOpenAI:
    """A client for the configured upstream, or the in-process simulator when none is."""
    # The SDK defaults (10 minute timeout) would hold a stalled stream far too long.
    common = {"timeout": settings.OPENAI_TIMEOUT_S, "max_retries": settings.OPENAI_MAX_RETRIES}
    if settings.USE_SIMULATOR:
        # Chosen by the settings, never imported here: the simulator stays out of every
        # import graph of the app (import contracts, .importlinter).
        transport = import_string(settings.SIMULATOR_TRANSPORT)(
            chunk_ms=settings.SIMULATOR_CHUNK_MS, ttft_ms=settings.SIMULATOR_TTFT_MS
        )
        return openai.AsyncOpenAI(
            api_key="simulator",
            base_url=SIMULATOR_BASE_URL,
            http_client=openai.DefaultAsyncHttpxClient(transport=transport),
            **common,
        )
    if settings.OPENAI_HTTP_TRANSPORT == "aiohttp":
        # The SDK's own aiohttp transport (`openai[aiohttp]`): its C parser reads a
        # streamed chunk for less CPU than httpx2's pure-Python stack (bench/upstream_cost.py
        # measures both), and a server reads tens of chunks a second per answer.
        common["http_client"] = openai.DefaultAioHttpClient()
    # vLLM, Ollama and llama.cpp accept any key; the SDK insists on a non-empty one.
    return openai.AsyncOpenAI(
        api_key=settings.OPENAI_API_KEY or "not-needed",
        base_url=settings.OPENAI_BASE_URL or None,
        **common,
    )


def get_client() -> openai.AsyncOpenAI:
    """The client of the running loop (its connection pool belongs to that loop)."""
    return _clients.get(build_client)


async def close_client() -> None:
    """Close the running loop's client (its HTTP sessions) on shutdown; aiohttp
    complains about a session left open when the process exits."""
    client = _clients.pop()
    if client is not None:
        try:
            await client.close()
        except Exception:
            log.debug("closing the upstream client failed", exc_info=True)


def describe_upstream() -> str:
    """A one-line, secret-free description of where replies come from."""
    if settings.USE_SIMULATOR:
        return "the built-in simulator (no OPENAI_API_KEY or OPENAI_BASE_URL set)"
    url = urlsplit(settings.OPENAI_BASE_URL or "https://api.openai.com/v1")
    # Only scheme, host and path: a URL may carry credentials or a key in its query.
    where = f"{url.scheme}://{url.hostname}{f':{url.port}' if url.port else ''}{url.path}"
    return f"{where} (model {settings.OPENAI_MODEL})"
