"""The one place where the upstream's failures become our own `StreamError` codes: clients
get a code they can act on, never a vendor's text."""

import logging

import httpx2
import openai

from chat.exceptions import StreamError

log = logging.getLogger(__name__)


def _retry_after(exc: openai.APIStatusError) -> float | None:
    headers = exc.response.headers
    try:
        if "retry-after-ms" in headers:
            return float(headers["retry-after-ms"]) / 1000
        if "retry-after" in headers:
            return float(headers["retry-after"])
    except ValueError:
        return None
    return None


def translate_error(exc: BaseException, *, mid_stream: bool = False) -> StreamError:
    """Map any upstream failure to a code clients can act on; no vendor text leaks."""
    if isinstance(exc, StreamError):
        return exc
    if mid_stream and isinstance(exc, openai.APIConnectionError | httpx2.TransportError):
        if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException):
            return StreamError("timeout", "The model stopped sending mid-answer.")
        # A cut connection surfaces wrapped or raw depending on where the read failed.
        return StreamError("upstream_error", "The connection to the model dropped.")
    if isinstance(exc, openai.RateLimitError):
        return StreamError(
            "rate_limited",
            "The model is rate limited; try again shortly.",
            retry_after=_retry_after(exc),
        )
    if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException):
        return StreamError("timeout", "The model took too long to answer.")
    if isinstance(exc, openai.APIConnectionError):
        return StreamError("upstream_error", "Could not reach the model.")
    if isinstance(exc, openai.APIStatusError):
        return StreamError("upstream_error", f"The model answered with HTTP {exc.status_code}.")
    if isinstance(exc, openai.APIError):
        return StreamError("upstream_error", "The model reported an error mid-answer.")
    if isinstance(exc, httpx2.TransportError):
        return StreamError("upstream_error", "Could not reach the model.")
    log.error("unexpected upstream failure", exc_info=exc)
    return StreamError("upstream_error", "The answer failed unexpectedly.")
