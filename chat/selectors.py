"""Reads. Sync functions; async callers wrap them with `chat.db.db`."""

import uuid
from typing import TypeVar

from django.contrib.auth.models import AbstractBaseUser
from django.contrib.sessions.backends.base import SessionBase
from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore
from django.db.models import Exists, Q, QuerySet

from chat.models import Conversation, Membership, Message

T = TypeVar("T")


def _memberships(
    *, conversation_id: uuid.UUID | str, user: AbstractBaseUser
) -> QuerySet[Membership]:
    return (
        Membership.objects.select_related("conversation")
        # A deactivated account keeps its rows but loses every right.
        .filter(conversation_id=conversation_id, user_id=user.pk, user__is_active=True)
    )


def the_one(rows: QuerySet[T]) -> T | None:
    """The row of a query a unique key limits to one, or None: `first()` without the
    ORDER BY it adds, which costs Python to build and orders nothing."""
    return next(iter(rows[:1]), None)


def membership_get(
    *, conversation_id: uuid.UUID | str, user: AbstractBaseUser
) -> Membership | None:
    """The user's membership of the conversation, or None."""
    return the_one(_memberships(conversation_id=conversation_id, user=user))


def frame_access(
    *, session: SessionBase | None, conversation_id: uuid.UUID | str, user: AbstractBaseUser
) -> tuple[bool, Membership | None]:
    """(session still valid, membership or None): what every client frame re-checks,
    in one call so a frame costs one thread hop, not two.

    A session kept in this database (the default engine) is checked inside the
    membership's query, so a member's frame costs one statement; only when there is no
    membership row does the session need its own look-up, to tell the two refusals
    apart."""
    alive = _session_exists(session)
    if alive is None:  # no session, or one kept elsewhere: checked first, on its own
        if session is not None and not session.exists(session.session_key):
            return False, None
        return True, membership_get(conversation_id=conversation_id, user=user)
    membership = the_one(
        _memberships(conversation_id=conversation_id, user=user).annotate(session_alive=alive)
    )
    if membership is None:
        return session.exists(session.session_key), None
    if not membership.session_alive:
        return False, None
    return True, membership


def _session_exists(session: SessionBase | None) -> Exists | None:
    """`session.exists(session.session_key)` as a subquery, when that is all it does
    (the database engine's own `exists`; e.g. `cached_db` asks its cache first)."""
    if session is None or session.__class__.exists is not DatabaseSessionStore.exists:
        return None
    return Exists(session.model.objects.filter(session_key=session.session_key))


def conversation_exists(*, conversation_id: uuid.UUID | str) -> bool:
    return Conversation.objects.filter(pk=conversation_id).exists()


def conversation_list_for(*, user: AbstractBaseUser) -> QuerySet[Membership]:
    """The user's memberships, conversations with the newest activity first."""
    return (
        Membership.objects.filter(user_id=user.pk)
        .select_related("conversation", "conversation__owner")
        .order_by("-conversation__updated_at")
    )


def message_list(*, conversation_id: uuid.UUID | str, limit: int = 200) -> list[Message]:
    """The last `limit` messages of a conversation, oldest first, authors loaded."""
    newest = (
        Message.objects.filter(conversation_id=conversation_id)
        .select_related("author")
        .order_by("-created_at")[:limit]
    )
    return list(reversed(list(newest)))


def message_get(*, conversation_id: uuid.UUID | str, message_id: str) -> Message | None:
    try:
        uuid.UUID(str(message_id))
    except ValueError:
        return None
    return (
        Message.objects.select_related("author")
        .filter(conversation_id=conversation_id, pk=message_id)
        .first()
    )


def prompt_history(*, prompt: Message, limit: int) -> list[dict[str, str]]:
    """The chat-completions `messages` for answering `prompt`: the turns up to it."""
    earlier = (
        Message.objects.filter(
            conversation_id=prompt.conversation_id, created_at__lte=prompt.created_at
        )
        .exclude(Q(status=Message.Status.STREAMING) | Q(content=""))
        # What moderation hid is not fed back to the model either.
        .filter(redacted=False)
        .order_by("-created_at")
        .values_list("role", "content")[:limit]
    )
    return [{"role": role, "content": content} for role, content in reversed(list(earlier))]
