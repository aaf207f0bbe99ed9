"""The in-process backend: events reach only this process's sockets and listeners.

The embedded default (`make run`, no REDIS_URL): one server process, so an event is
delivered where it is published, and the stores are dicts of this process.
"""

import asyncio
from collections import defaultdict
from typing import Any

from chat.fanout.layer import FINISHED_LOG_TTL_S, ConversationLayer, LogEntry, LoopState

# How long a finished answer's log stays readable for late `sync`s.


class _InProcessState(LoopState):
    async def _publish_group(self, group: str, message: dict[str, Any]) -> None:
        self.deliver(group, message)

    async def _publish_channel(self, channel: str, message: dict[str, Any]) -> None:
        pass  # no such channel in this process, and there is no other process

    def publish_logged(self, group: str, message: dict[str, Any], entry: LogEntry):
        self.layer.replay.append(entry)
        self.deliver(group, message)
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class InProcessReplayLog:
    """Replay logs as lists of delta texts, by message id."""

    def __init__(self) -> None:
        self.logs: dict[str, list[str]] = {}

    def append(self, entry: LogEntry) -> None:
        self.logs.setdefault(entry.message_id, []).append(entry.text)

    async def read(self, conversation_id: str, message_id: str) -> tuple[str, int] | None:
        parts = self.logs.get(message_id)
        return None if parts is None else ("".join(parts), len(parts))

    async def entries(
        self, conversation_id: str, message_id: str, after_seq: int
    ) -> list[tuple[int, str]] | None:
        parts = self.logs.get(message_id)
        if parts is None:
            return None
        return [(seq, text) for seq, text in enumerate(parts, start=1) if seq > after_seq]

    async def rewrite(self, entry: LogEntry, texts: list[str]) -> None:
        self.logs[entry.message_id] = list(texts)

    async def finish(self, conversation_id: str, message_id: str) -> None:
        asyncio.get_running_loop().call_later(FINISHED_LOG_TTL_S, self.logs.pop, message_id, None)


class InProcessPresence:
    def __init__(self) -> None:
        self.viewers: dict[str, dict[str, str]] = defaultdict(dict)

    async def join(self, conversation_id: str, viewer_id: str, username: str) -> None:
        self.viewers[conversation_id][viewer_id] = username

    async def refresh(self, conversation_id: str, viewer_id: str, username: str) -> None:
        pass  # nothing here outlives its process

    async def leave(self, conversation_id: str, viewer_id: str, username: str) -> None:
        viewers = self.viewers.get(conversation_id)
        if viewers is not None:
            viewers.pop(viewer_id, None)
            if not viewers:
                del self.viewers[conversation_id]

    async def usernames(self, conversation_id: str) -> set[str]:
        return set(self.viewers.get(conversation_id, {}).values())


class InProcessConnections:
    def __init__(self) -> None:
        self.open_by_user: dict[int, set[str]] = defaultdict(set)

    async def open(self, user_id: int, viewer_id: str) -> int:
        self.open_by_user[user_id].add(viewer_id)
        return len(self.open_by_user[user_id])

    async def refresh(self, user_id: int, viewer_id: str) -> None:
        pass

    async def close(self, user_id: int, viewer_id: str) -> None:
        viewers = self.open_by_user.get(user_id)
        if viewers is not None:
            viewers.discard(viewer_id)
            if not viewers:
                del self.open_by_user[user_id]

    async def count(self, user_id: int) -> int:
        return len(self.open_by_user.get(user_id, ()))


class InProcessLayer(ConversationLayer):
    """Conversation events within this one process."""

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self.replay = InProcessReplayLog()
        self.presence = InProcessPresence()
        self.connections = InProcessConnections()

    def _new_state(self) -> LoopState:
        return _InProcessState(self)
