"""Names of the groups conversation events go to, built from validated ids only.

Channels allows `[a-zA-Z0-9-_.]` in group names, under 100 characters: never user text.
The part after the first dot is a group's key: a Redis backend keeps everything of one
group (its channel, a conversation's replay logs and presence) under that key's hash tag,
so on a Redis Cluster they share one slot.
"""

import uuid


def _hex(value: uuid.UUID | str) -> str:
    return uuid.UUID(str(value)).hex


def conversation(conversation_id: uuid.UUID | str) -> str:
    """The group of everyone viewing a conversation (its sockets and event streams)."""
    return f"conv.{_hex(conversation_id)}"


def user(user_id: int) -> str:
    """The group of every socket and event stream of one user (sign-out, revocation)."""
    return f"user.{int(user_id)}"


def generation(message_id: uuid.UUID | str) -> str:
    """The group a running answer listens on for a stop, from any process."""
    return f"gen.{_hex(message_id)}"


def hash_tag(group: str) -> str:
    """The Redis hash tag of everything kept for `group`: `{<group>}`."""
    return "{" + group + "}"
