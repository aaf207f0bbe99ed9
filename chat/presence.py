"""Who is viewing a conversation now, across processes (Redis) or in this process."""

from collections import defaultdict

from chat.redis_conn import get_redis, key, redis_enabled

# A crashed process cannot remove its viewers: the set expires unless someone joins.
PRESENCE_TTL_S = 24 * 3600

_memory: dict[str, dict[str, str]] = defaultdict(dict)


def _key(conversation_id: str) -> str:
    return key("presence", conversation_id)


async def join(conversation_id: str, channel_name: str, username: str) -> None:
    if not redis_enabled():
        _memory[conversation_id][channel_name] = username
        return
    pipe = get_redis().pipeline(transaction=False)
    pipe.hset(_key(conversation_id), channel_name, username)
    pipe.expire(_key(conversation_id), PRESENCE_TTL_S)
    await pipe.execute()


async def leave(conversation_id: str, channel_name: str) -> None:
    if not redis_enabled():
        _memory[conversation_id].pop(channel_name, None)
        if not _memory[conversation_id]:
            del _memory[conversation_id]
        return
    await get_redis().hdel(_key(conversation_id), channel_name)


async def viewers(conversation_id: str) -> list[dict[str, str]]:
    """Distinct usernames viewing now, sorted (one entry per user, not per tab)."""
    if not redis_enabled():
        names = set(_memory.get(conversation_id, {}).values())
    else:
        names = {v.decode() for v in await get_redis().hvals(_key(conversation_id))}
    return [{"username": name} for name in sorted(names)]
