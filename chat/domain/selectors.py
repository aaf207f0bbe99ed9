"""Reads. Sync functions; async callers wrap them with `chat.domain.db.db`."""

import uuid
from typing import TypeVar

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.contrib.sessions.backends.base import SessionBase
from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore
from django.db.models import QuerySet
from django.utils.crypto import constant_time_compare

from chat.domain import sql
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
    *,
    session: SessionBase | None,
    session_hash: str | None,
    conversation_id: uuid.UUID | str,
    user: AbstractBaseUser,
) -> tuple[bool, Membership | None]:
    """(session still valid, membership or None): what every client frame re-checks,
    in one call so a frame costs one thread hop, not two. The session is valid while it
    exists and `session_hash` (the auth hash it was signed in with) still matches the
    user's password: a password change ends every other session at its next frame.

    A session kept in this database (the default engine) is checked inside the
    membership's statement, written out (chat/domain/sql.py), so a member's frame costs one
    statement; only when there is no membership row does the session need its own
    look-up, to tell the two refusals apart."""
    if not _session_in_this_database(session):
        # No session, or one kept elsewhere: checked first, on its own.
        if session is not None and not session.exists(session.session_key):
            return False, None
        password = (
            get_user_model().objects.filter(pk=user.pk).values_list("password", flat=True).first()
        )
        if session is not None and not _hash_matches(session_hash, user.pk, password):
            return False, None
        return True, membership_get(conversation_id=conversation_id, user=user)
    users, pk = sql.user_table()
    row = sql.fetch_one(
        f"SELECT {sql.columns(Membership, 'm')}, {sql.columns(Conversation, 'c')}, u.password,"
        f" EXISTS (SELECT 1 FROM {session.model._meta.db_table} s WHERE s.session_key = %s)"
        f" FROM {sql.table(Membership)} m"
        f" JOIN {sql.table(Conversation)} c ON c.id = m.conversation_id"
        f" JOIN {users} u ON u.{pk} = m.user_id"
        " WHERE m.conversation_id = %s AND m.user_id = %s AND u.is_active = %s",
        [session.session_key, sql.uuid_param(conversation_id), user.pk, True],
    )
    if row is None:
        return session.exists(session.session_key), None
    if not row[-1] or not _hash_matches(session_hash, user.pk, row[-2]):
        return False, None
    # The `_memberships` query's objects: the membership with its conversation.
    membership = sql.load(Membership, row)
    membership.conversation = sql.load(Conversation, row[len(Membership._meta.concrete_fields) :])
    return True, membership


def _hash_matches(session_hash: str | None, user_id: int, password: str | None) -> bool:
    """Whether a session's auth hash is the one of the user's current password (or of
    it under a SECRET_KEY_FALLBACKS key), as Django's own sign-in check decides."""
    if not session_hash or password is None:
        return False
    user = get_user_model()(pk=user_id, password=password)
    if constant_time_compare(session_hash, user.get_session_auth_hash()):
        return True
    return any(
        constant_time_compare(session_hash, fallback)
        for fallback in user.get_session_auth_fallback_hash()
    )


def _session_in_this_database(session: SessionBase | None) -> bool:
    """Whether `session.exists(session.session_key)` is a look-up in this database, and
    nothing more (the database engine's own `exists`; `cached_db` asks its cache first)."""
    return session is not None and session.__class__.exists is DatabaseSessionStore.exists


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


def message_with_author(*, message_id: uuid.UUID | str) -> Message | None:
    """A message with its author's username loaded, or None: what an answer's `done`
    frame shows, read once per answer (chat/domain/sql.py: written out)."""
    users, pk = sql.user_table()
    row = sql.fetch_one(
        f"SELECT {sql.columns(Message, 'm')}, u.username FROM {sql.table(Message)} m"
        f" LEFT JOIN {users} u ON u.{pk} = m.author_id WHERE m.id = %s",
        [sql.uuid_param(message_id)],
    )
    if row is None:
        return None
    message = sql.load(Message, row)
    if message.author_id is not None:
        message.author = get_user_model()(pk=message.author_id, username=row[-1])
    return message


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
    """The chat-completions `messages` for answering `prompt`: the turns up to it, not
    those still streaming or empty, nor what moderation hid (chat/domain/sql.py: written out,
    as every prompt reads it)."""
    rows = sql.fetch_all(
        f"""
        SELECT role, content FROM {sql.table(Message)}
        WHERE conversation_id = %s AND created_at <= %s
            AND status <> %s AND content <> '' AND redacted = %s
        ORDER BY created_at DESC LIMIT %s
        """,
        [
            sql.uuid_param(prompt.conversation_id),
            sql.datetime_param(prompt.created_at),
            Message.Status.STREAMING.value,
            False,
            limit,
        ],
    )
    return [{"role": role, "content": content} for role, content in reversed(rows)]
