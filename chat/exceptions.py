"""Errors the chat services raise; each carries the protocol `error` code clients see."""


class ChatError(Exception):
    """A refused client action, reported to the client as an `error` frame."""

    code = "internal_error"

    def __init__(self, detail: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(detail or self.default_detail)
        self.detail = detail or self.default_detail
        self.retry_after = retry_after

    default_detail = "The request was refused."


class BadFrame(ChatError):
    """The frame is valid JSON but not a valid protocol frame."""

    code = "bad_frame"
    default_detail = "The frame does not match the protocol."


class TooLong(ChatError):
    """The prompt is over the configured length limit."""

    code = "too_long"
    default_detail = "The prompt is too long."


class Forbidden(ChatError):
    """The user's role does not allow this action."""

    code = "forbidden"
    default_detail = "Your role in this conversation does not allow that."


class NotFound(ChatError):
    """The message or conversation named does not exist here."""

    code = "not_found"
    default_detail = "No such message in this conversation."


class Busy(ChatError):
    """A generation is already running in this conversation."""

    code = "busy"
    default_detail = "A reply is still being generated in this conversation."


class RateLimited(ChatError):
    """The user sent too many prompts in the last minute."""

    code = "rate_limited"
    default_detail = "Too many prompts; wait a moment."


class QuotaExceeded(ChatError):
    """The user's tokens for today are spent (or reserved by running answers)."""

    code = "quota_exceeded"
    default_detail = "Your token quota for today is used up."

    def __init__(self, detail: str = "", *, retry_after: float, reset_at: str) -> None:
        super().__init__(detail, retry_after=retry_after)
        self.reset_at = reset_at


class TooManyGenerations(ChatError):
    """The user already has the maximum number of answers generating."""

    code = "too_many_generations"
    default_detail = "You already have too many answers generating; wait for one to finish."


class TooManyConnections(ChatError):
    """The user has the maximum number of open sockets."""

    code = "too_many_connections"
    default_detail = "Too many open connections for this account; close some tabs."


class Flood(ChatError):
    """The socket sends frames faster than allowed."""

    code = "flood"
    default_detail = "Too many frames; the connection is closed."


class StreamError(Exception):
    """An upstream failure, translated from the vendor's exception at the boundary."""

    def __init__(self, code: str, detail: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.retry_after = retry_after
