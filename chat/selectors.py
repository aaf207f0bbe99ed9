"""Reads. Sync functions; async callers wrap them with `chat.db.db`."""

import uuid

from django.contrib.auth.models import AbstractBaseUser
from django.contrib.sessions.backends.base import SessionBase
from django.db.models import QuerySet

from chat.models import Conversation, Membership, Message


def membership_get(
    *, conversation_id: uuid.UUID | str, user: AbstractBaseUser
) -> Membership | None:
    """The user's membership of the conversation, or None."""
    return (
        Membership.objects.select_related("conversation")
        # A deactivated account keeps its rows but loses every right.
        .filter(conversation_id=conversation_id, user_id=user.pk, user__is_active=True)
        .first()
    )


def frame_access(
    *, session: SessionBase | None, conversation_id: uuid.UUID | str, user: AbstractBaseUser
) -> tuple[bool, Membership | None]:
    """(session still valid, membership or None): what every client frame re-checks,
    in one call so a frame costs one thread hop, not two."""
    if session is not None and not session.exists(session.session_key):
        return False, None
    return True, membership_get(conversation_id=conversation_id, user=user)


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
        .exclude(status=Message.Status.STREAMING)
        .exclude(content="")
        # What moderation hid is not fed back to the model either.
        .exclude(redacted=True)
        .order_by("-created_at")
        .values_list("role", "content")[:limit]
    )
    return [{"role": role, "content": content} for role, content in reversed(list(earlier))]
