"""The replay log of a streaming message: every published delta, in `seq` order.

A viewer that joins mid-stream subscribes to the group first and then reads this log to
build its snapshot, so it misses nothing and drops the live deltas it already has. With
Redis the log is a Redis Stream per message (shared by every process, and it outlives
the runner, so a sweeper can recover the exact text of a runner that died); without
Redis an in-process dict stands in behind the same functions.
"""

import asyncio
from dataclasses import dataclass

from chat.fanout.redis_client import get_redis, key, redis_enabled
from chat.fanout.redis_lane import get_lane

# How long a log outlives its stream: late `sync`s still find it, then Redis frees it.
FINISHED_TTL_S = 120
# A log whose runner vanished without finishing is freed after this long.
RUNNING_TTL_S = 6 * 3600


@dataclass(frozen=True)
class LogState:
    """The text of deltas 1..seq joined."""

    text: str
    seq: int


_memory_logs: dict[str, list[str]] = {}


def _stream_key(message_id: str) -> str:
    return key("log", message_id)


# A Redis PUBLISH to send right after a log write, in the same round trip: (channel, payload).
Publication = tuple[str, bytes]


async def append(
    message_id: str, seq: int, text: str, *, then_publish: Publication | None = None
) -> None:
    """Record delta `seq` (the caller appends deltas in order, one at a time), then
    PUBLISH `then_publish` if given: one round trip, and Redis runs the commands in
    order, so a viewer that sees the delta live could also have read it from the log."""
    if not redis_enabled():
        _memory_logs.setdefault(message_id, []).append(text)
        return
    await get_lane().round_trip(*append_commands(message_id, seq, text, then_publish))


def append_commands(
    message_id: str, seq: int, text: str, then_publish: Publication | None
) -> list[tuple[object, ...]]:
    """The Redis commands of `append` (for a caller that sends them itself)."""
    stream = _stream_key(message_id)
    commands: list[tuple[object, ...]] = [("XADD", stream, "*", "s", seq, "t", text)]
    if seq == 1:
        # Set once: a stream lasts minutes at most, far less than the TTL, and `finish`
        # shortens it. Every flush would otherwise pay for an EXPIRE.
        commands.append(("EXPIRE", stream, RUNNING_TTL_S))
    if then_publish is not None:
        commands.append(("PUBLISH", *then_publish))
    return commands


async def read(message_id: str) -> LogState | None:
    """The whole log, or None when there is none (never streamed, or expired)."""
    if not redis_enabled():
        parts = _memory_logs.get(message_id)
        return None if parts is None else LogState("".join(parts), len(parts))
    entries = await get_redis().xrange(_stream_key(message_id))
    if not entries:
        return None
    if int(entries[-1][1][b"s"]) != len(entries):
        # A hole (an append lost in an outage, not yet rebuilt): the checkpoint is safer.
        return None
    texts = [fields[b"t"].decode() for _, fields in entries]
    return LogState("".join(texts), len(entries))


async def rewrite(
    message_id: str, texts: list[str], *, then_publish: Publication | None = None
) -> None:
    """Replace the log with deltas 1..len(texts) (after appends were lost), then
    PUBLISH `then_publish` if given, all in one transaction."""
    if not redis_enabled():
        _memory_logs[message_id] = list(texts)
        return
    pipe = get_redis().pipeline(transaction=True)
    pipe.delete(_stream_key(message_id))
    for seq, text in enumerate(texts, start=1):
        pipe.xadd(_stream_key(message_id), {"s": seq, "t": text})
    pipe.expire(_stream_key(message_id), RUNNING_TTL_S)
    if then_publish is not None:
        pipe.publish(*then_publish)
    await pipe.execute()


async def finish(message_id: str) -> None:
    """The message is stored: keep the log briefly for stragglers, then drop it."""
    if not redis_enabled():
        loop = asyncio.get_running_loop()
        loop.call_later(FINISHED_TTL_S, _memory_logs.pop, message_id, None)
        return
    await get_redis().expire(_stream_key(message_id), FINISHED_TTL_S)


async def entries(message_id: str, after_seq: int) -> list[tuple[int, str]] | None:
    """Deltas with a seq above `after_seq`, as (seq, text) in order, for a resuming reader.

    None when there is no log (never streamed, expired) or it has a hole: the caller then
    falls back to a full snapshot, as a resume from a log with a gap could not be exact.
    """
    if not redis_enabled():
        parts = _memory_logs.get(message_id)
        if parts is None:
            return None
        return [(seq, text) for seq, text in enumerate(parts, start=1) if seq > after_seq]
    logged = await get_redis().xrange(_stream_key(message_id))
    if not logged or int(logged[-1][1][b"s"]) != len(logged):
        return None
    return [
        (int(fields[b"s"]), fields[b"t"].decode())
        for _, fields in logged
        if int(fields[b"s"]) > after_seq
    ]
