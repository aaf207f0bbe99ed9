"""The moderation call (docs/moderation.md, "The moderation call"): `moderations.create`
with MODERATION_MODEL through the chat's shared client (`chat.upstream.client
.get_client()`: OpenAI, an OpenAI-compatible server or the simulator), its answer read
into a `Verdict` per text, and a failure described for the case's `last_error`.

Bounded by MODERATION_TIMEOUT_S, with no SDK retries: a failed call leaves its cases
pending and the case's own backoff retries them. Knows no database.
"""

import asyncio
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from chat.upstream.errors import translate_error


@dataclass(frozen=True)
class Verdict:
    """The moderation call's answer for one text."""

    flagged: bool
    categories: list[str]
    scores: dict[str, float]
    model: str
    raw: dict[str, Any]


def _verdict(response: dict[str, Any], index: int = 0) -> Verdict:
    raw = response["results"][index]
    flags = raw.get("categories") or {}
    scores = {
        name: float(score)
        for name, score in (raw.get("category_scores") or {}).items()
        if isinstance(score, int | float)
    }
    return Verdict(
        flagged=bool(raw.get("flagged")),
        categories=sorted(name for name, on in flags.items() if on),
        scores=scores,
        model=response.get("model") or settings.MODERATION_MODEL,
        raw=raw,
    )


async def moderate_text(text: str) -> Verdict:
    """One moderation call through the shared client; raises on failure or timeout.

    No SDK retries: a failure leaves the case pending and our own backoff retries it.
    """
    return _verdict(await _moderations(text))


async def moderate_texts(texts: list[str]) -> list[Verdict]:
    """One moderation call for several texts (the API takes a list of inputs and answers
    a result per input, in order); raises on failure or timeout, for all of them."""
    response = await _moderations(texts)
    if len(response["results"]) != len(texts):
        raise ValueError("moderation response without a result per input")
    return [_verdict(response, index) for index in range(len(texts))]


async def _moderations(texts: str | list[str]) -> dict[str, Any]:
    from chat.upstream.client import get_client

    timeout = settings.MODERATION_TIMEOUT_S
    # The JSON as a dict (`cast_to=object`, as the chat stream reads its chunks) and the
    # options per request: the SDK's response models and a client copy per call
    # (`with_options`) would cost the event loop more than the call itself, for every
    # answer as a burst of them finishes (docs/decisions.md).
    request = get_client().post(
        "/moderations",
        body={"model": settings.MODERATION_MODEL, "input": texts},
        cast_to=object,
        options={"max_retries": 0, "timeout": timeout},
    )
    # The in-process simulator honours no HTTP timeout: bound the whole call here too.
    response = await asyncio.wait_for(request, timeout)
    if not isinstance(response, dict) or not response.get("results"):
        raise ValueError("moderation response without results")
    return response


def _describe(exc: BaseException) -> str:
    """`last_error` for a failed call: an error code and what it means, no vendor text."""
    if isinstance(exc, TimeoutError):
        return "timeout: the moderation call took too long"
    if isinstance(exc, ValueError | IndexError | KeyError | AttributeError):
        return "bad_response: the moderation answer could not be read"
    error = translate_error(exc)
    return f"{error.code}: {error.detail}"
