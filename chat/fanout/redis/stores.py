"""What the Redis backend keeps for every process of a deployment: replay logs (a Redis
Stream per streaming answer), presence and connection counts (sorted sets scored by when
their process last confirmed each entry, so what a dead process left behind stops
counting by itself).

Keys carry the hash tag of their group (`chat.fanout.groups.hash_tag`): a conversation's
replay logs and presence share its slot.
"""

import time
from collections.abc import Callable

import redis.asyncio as aioredis

from chat.fanout import groups
from chat.fanout.layer import FINISHED_LOG_TTL_S, LIVENESS_REFRESH_S, LogEntry

# A log whose runner vanished without finishing is freed after this long.
RUNNING_LOG_TTL_S = 6 * 3600
# Presence and connection entries not confirmed for this long belong to a process that
# is gone; live ones are confirmed every LIVENESS_REFRESH_S.
LIVENESS_STALE_S = 3 * LIVENESS_REFRESH_S

Client = Callable[[], aioredis.Redis]


def log_key(prefix: str, conversation_id: str, message_id: str) -> str:
    tag = groups.hash_tag(groups.conversation(conversation_id))
    return f"{prefix}:log:{tag}:{message_id}"


def log_append_commands(prefix: str, entry: LogEntry) -> list[tuple[object, ...]]:
    """The commands appending one delta to its log (the layer sends them with the
    delta's PUBLISH, in one write)."""
    key = log_key(prefix, entry.conversation_id, entry.message_id)
    commands: list[tuple[object, ...]] = [("XADD", key, "*", "s", entry.seq, "t", entry.text)]
    if entry.seq == 1:
        # Set once: a stream lasts minutes at most, far less than the TTL, and `finish`
        # shortens it. Every flush would otherwise pay for an EXPIRE.
        commands.append(("EXPIRE", key, RUNNING_LOG_TTL_S))
    return commands


class RedisReplayLog:
    def __init__(self, prefix: str, client: Client) -> None:
        self.prefix, self.client = prefix, client

    async def _logged(self, conversation_id: str, message_id: str) -> list | None:
        entries = await self.client().xrange(log_key(self.prefix, conversation_id, message_id))
        if not entries or int(entries[-1][1][b"s"]) != len(entries):
            # None, or a hole (an append lost in an outage, not yet rebuilt): a caller
            # falls back to the checkpoint or a full snapshot.
            return None
        return entries

    async def read(self, conversation_id: str, message_id: str) -> tuple[str, int] | None:
        entries = await self._logged(conversation_id, message_id)
        if entries is None:
            return None
        return "".join(fields[b"t"].decode() for _, fields in entries), len(entries)

    async def entries(
        self, conversation_id: str, message_id: str, after_seq: int
    ) -> list[tuple[int, str]] | None:
        logged = await self._logged(conversation_id, message_id)
        if logged is None:
            return None
        return [
            (int(fields[b"s"]), fields[b"t"].decode())
            for _, fields in logged
            if int(fields[b"s"]) > after_seq
        ]

    async def rewrite(self, entry: LogEntry, texts: list[str]) -> None:
        """Replace the log with deltas 1..len(texts), in one transaction."""
        key = log_key(self.prefix, entry.conversation_id, entry.message_id)
        pipe = self.client().pipeline(transaction=True)
        pipe.delete(key)
        for seq, text in enumerate(texts, start=1):
            pipe.xadd(key, {"s": seq, "t": text})
        pipe.expire(key, RUNNING_LOG_TTL_S)
        await pipe.execute()

    async def finish(self, conversation_id: str, message_id: str) -> None:
        """The answer is stored: keep the log briefly for stragglers, then drop it."""
        await self.client().expire(
            log_key(self.prefix, conversation_id, message_id), FINISHED_LOG_TTL_S
        )


class RedisPresence:
    def __init__(self, prefix: str, client: Client) -> None:
        self.prefix, self.client = prefix, client

    def _key(self, conversation_id: str) -> str:
        return f"{self.prefix}:presence:{groups.hash_tag(groups.conversation(conversation_id))}"

    @staticmethod
    def _entry(viewer_id: str, username: str) -> str:
        return f"{viewer_id}\n{username}"  # viewer ids never hold a newline

    async def join(self, conversation_id: str, viewer_id: str, username: str) -> None:
        key, now = self._key(conversation_id), time.time()
        pipe = self.client().pipeline(transaction=False)
        pipe.zremrangebyscore(key, "-inf", now - LIVENESS_STALE_S)
        pipe.zadd(key, {self._entry(viewer_id, username): now})
        pipe.expire(key, int(LIVENESS_STALE_S) * 2)
        await pipe.execute()

    async def refresh(self, conversation_id: str, viewer_id: str, username: str) -> None:
        key = self._key(conversation_id)
        pipe = self.client().pipeline(transaction=False)
        pipe.zadd(key, {self._entry(viewer_id, username): time.time()})
        pipe.expire(key, int(LIVENESS_STALE_S) * 2)
        await pipe.execute()

    async def leave(self, conversation_id: str, viewer_id: str, username: str) -> None:
        await self.client().zrem(self._key(conversation_id), self._entry(viewer_id, username))

    async def usernames(self, conversation_id: str) -> set[str]:
        live = await self.client().zrangebyscore(
            self._key(conversation_id), time.time() - LIVENESS_STALE_S, "+inf"
        )
        return {entry.decode().partition("\n")[2] for entry in live}


class RedisConnections:
    def __init__(self, prefix: str, client: Client) -> None:
        self.prefix, self.client = prefix, client

    def _key(self, user_id: int) -> str:
        return f"{self.prefix}:conn:{groups.hash_tag(groups.user(user_id))}"

    async def open(self, user_id: int, viewer_id: str) -> int:
        key, now = self._key(user_id), time.time()
        pipe = self.client().pipeline(transaction=False)
        pipe.zremrangebyscore(key, "-inf", now - LIVENESS_STALE_S)
        pipe.zadd(key, {viewer_id: now})
        pipe.expire(key, int(LIVENESS_STALE_S) * 2)
        pipe.zcard(key)
        return int((await pipe.execute())[-1])

    async def refresh(self, user_id: int, viewer_id: str) -> None:
        key = self._key(user_id)
        pipe = self.client().pipeline(transaction=False)
        pipe.zadd(key, {viewer_id: time.time()})
        pipe.expire(key, int(LIVENESS_STALE_S) * 2)
        await pipe.execute()

    async def close(self, user_id: int, viewer_id: str) -> None:
        await self.client().zrem(self._key(user_id), viewer_id)

    async def count(self, user_id: int) -> int:
        return int(
            await self.client().zcount(self._key(user_id), time.time() - LIVENESS_STALE_S, "+inf")
        )
