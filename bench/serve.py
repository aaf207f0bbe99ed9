"""daphne with the proposed fixes applied in-process, to measure them before they land.

    BENCH_PATCHES=dispatch python -m bench.serve -b 127.0.0.1 -p 8001 project.asgi:application

Each patch is the runtime form of a diff proposed in bench/REPORT.md; the code under
chat/ is not touched. Unknown names are ignored; with none set this is plain daphne.

``undo-dispatch``  Channels' own `dispatch` again (what ChatConsumer did before it
              skipped `aclose_old_connections()` for frames): to measure that fix.
``dispatch``  ChatConsumer forwards `chat.delta` / `chat.frame` events without Channels'
              `aclose_old_connections()` before each handler: that is a thread hop
              through the one thread-sensitive executor per event per socket, although
              forwarding text touches no database.
``hub``       One layer channel per conversation per process instead of one per socket:
              a local hub receives each group event once and hands it to every local
              socket of the conversation directly (no per-socket queue, msgpack decode,
              task wake-up and `asyncio.wait` per event). Implies ``dispatch``.
``rawchunks`` The stream runner reads chunks as plain dicts (`client.post(..., cast_to=object,
              stream=True)`): the SDK still sends the request, retries, decodes the SSE
              and raises error events, but builds no pydantic-style model per chunk.
``dbpool``    Django's psycopg connection pool (Django >= 5.1) instead of a new
              PostgreSQL connection for every `database_sync_to_async` call
              (CONN_MAX_AGE=0). Needs the `psycopg-pool` package.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def apply(names: set[str]) -> list[str]:
    applied = []
    if "dbpool" in names:
        from django.conf import settings

        db = settings.DATABASES["default"]
        if db["ENGINE"].endswith("postgresql"):
            db.setdefault("OPTIONS", {})["pool"] = {"min_size": 1, "max_size": 10, "timeout": 10}
            db["CONN_MAX_AGE"] = 0
            applied.append("dbpool")
    if "rawchunks" in names:
        _install_rawchunks()
        applied.append("rawchunks")
    if "undo-dispatch" in names:
        from channels.generic.websocket import AsyncWebsocketConsumer

        from chat.consumers import ChatConsumer

        ChatConsumer.dispatch = AsyncWebsocketConsumer.dispatch
        applied.append("undo-dispatch")
    if "hub" in names:
        _install_hub()
        applied.append("hub")
        names = names | {"dispatch"}
    if "dispatch" in names:
        from chat.consumers import ChatConsumer

        parent_dispatch = ChatConsumer.__mro__[1].dispatch

        async def dispatch(self: Any, message: dict[str, Any]) -> None:
            kind = message.get("type")
            if kind == "chat.delta":
                await self.chat_delta(message)
            elif kind == "chat.frame":
                await self.chat_frame(message)
            else:
                await parent_dispatch(self, message)

        ChatConsumer.dispatch = dispatch
        applied.append("dispatch")
    return applied


def _install_rawchunks() -> None:
    import functools
    import time

    import openai

    from chat.streaming import StreamRunner, Usage
    from chat.text import clean_model_text

    async def _read(self: Any) -> None:
        request = self._request
        body: dict[str, Any] = {
            **request.extra,
            "model": request.model,
            "messages": list(request.messages),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.max_tokens:
            body["max_tokens"] = request.max_tokens
        post = functools.partial(
            self._client.post,
            "/chat/completions",
            cast_to=object,
            stream=True,
            stream_cls=openai.AsyncStream[object],
        )
        try:
            stream = await post(body=body)
        except openai.BadRequestError as exc:
            if "stream_options" not in str(exc):
                raise
            del body["stream_options"]
            stream = await post(body=body)
        self._stream_open = True
        try:
            async for chunk in stream:
                self._take_chunk(chunk)
        finally:
            await stream.close()

    def _take_chunk(self: Any, chunk: Any) -> None:
        self._last_chunk_at = time.monotonic()
        if not isinstance(chunk, dict):
            return
        if chunk.get("model"):
            self._model = chunk["model"]
        u = chunk.get("usage")
        if isinstance(u, dict):
            self._usage = Usage(
                u.get("prompt_tokens") or 0,
                u.get("completion_tokens") or 0,
                u.get("total_tokens") or 0,
            )
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else None
            if text:
                text = clean_model_text(text)
                if self._first_token_at is None:
                    self._first_token_at = time.monotonic()
                self._pieces += 1
                self._buffer.append(text)
                self._wake.set()
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]

    StreamRunner._read = _read
    StreamRunner._take_chunk = _take_chunk


class Hub:
    """This process's sockets by conversation group, fed by one layer channel per group."""

    def __init__(self) -> None:
        self.groups: dict[str, dict[str, Any]] = {}

    async def join(self, layer: Any, group: str, consumer: Any) -> None:
        import asyncio

        entry = self.groups.get(group)
        if entry is None:
            entry = {"members": set(), "ready": asyncio.get_running_loop().create_future()}
            self.groups[group] = entry
            try:
                channel = await layer.new_channel()
                await layer.group_add(group, channel)
            except BaseException as exc:
                self.groups.pop(group, None)
                entry["ready"].set_exception(exc)
                raise
            entry["channel"] = channel
            entry["task"] = asyncio.create_task(self._pump(layer, group, entry))
            entry["ready"].set_result(None)
        # Joined only once the subscription exists: the snapshot read after this misses
        # nothing (the rule the consumer's own group_add gave).
        await asyncio.shield(entry["ready"])
        entry["members"].add(consumer)

    async def leave(self, layer: Any, group: str, consumer: Any) -> None:
        entry = self.groups.get(group)
        if entry is None:
            return
        entry["members"].discard(consumer)
        if not entry["members"] and entry["ready"].done():
            self.groups.pop(group, None)
            entry["task"].cancel()
            await layer.group_discard(group, entry["channel"])

    async def _pump(self, layer: Any, group: str, entry: dict[str, Any]) -> None:
        import logging

        log = logging.getLogger("bench.hub")
        while True:
            event = await layer.receive(entry["channel"])
            for consumer in list(entry["members"]):
                try:
                    await consumer.dispatch(event)
                except Exception as exc:  # a socket closing while the event was on its way
                    log.warning("hub delivery failed: %r", exc)


class _LayerProxy:
    """The consumer's view of the layer: conversation groups go through the hub."""

    def __init__(self, layer: Any, consumer: Any, hub: Hub) -> None:
        self._layer, self._consumer, self._hub = layer, consumer, hub

    def __getattr__(self, name: str) -> Any:
        return getattr(self._layer, name)

    async def group_add(self, group: str, channel: str) -> None:
        if group.startswith("conv.") and channel == self._consumer.channel_name:
            await self._hub.join(self._layer, group, self._consumer)
        else:
            await self._layer.group_add(group, channel)

    async def group_discard(self, group: str, channel: str) -> None:
        if group.startswith("conv.") and channel == self._consumer.channel_name:
            await self._hub.leave(self._layer, group, self._consumer)
        else:
            await self._layer.group_discard(group, channel)


def _install_hub() -> None:
    from chat.consumers import ChatConsumer

    hub = Hub()

    def get_layer(self: Any) -> Any:
        return self.__dict__.get("_bench_layer_proxy")

    def set_layer(self: Any, layer: Any) -> None:
        self.__dict__["_bench_layer_proxy"] = (
            None if layer is None else _LayerProxy(layer, self, hub)
        )

    ChatConsumer.channel_layer = property(get_layer, set_layer)


def main() -> None:
    names = {n for n in os.environ.get("BENCH_PATCHES", "").split(",") if n}
    if names:
        import django

        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
        django.setup()
        applied = apply(names)
        print(f"bench.serve: patches applied: {applied}", file=sys.stderr, flush=True)
    from daphne.cli import CommandLineInterface

    sys.argv[0] = "daphne"
    CommandLineInterface.entrypoint()


if __name__ == "__main__":
    main()
