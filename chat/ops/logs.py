"""Structured logs: one JSON object a line, carrying the request, connection or stream
id of whatever the line is about (set in context variables, which asyncio tasks and
`sync_to_async` threads inherit)."""

import contextvars
import json
import logging
from datetime import UTC, datetime

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
connection_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "connection_id", default=None
)
stream_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("stream_id", default=None)

_CONTEXT = (("request_id", request_id), ("connection_id", connection_id), ("stream_id", stream_id))


class ContextFilter(logging.Filter):
    """Copies the context ids onto every record (plain format shows them too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        ids = []
        for name, var in _CONTEXT:
            value = var.get()
            setattr(record, name, value)
            if value:
                ids.append(f"{name.split('_')[0]}={value}")
        record.ids = " ".join(ids)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, _ in _CONTEXT:
            value = getattr(record, name, None)
            if value:
                entry[name] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)
