"""Writes. Keyword-only, typed, sync (async callers use `chat.domain.db.db`)."""

import uuid
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from chat.domain import quota, selectors, sql
from chat.domain.tokens import estimate_prompt_tokens
from chat.exceptions import Busy, Forbidden, NotFound, RateLimited
from chat.models import Conversation, Membership, Message, Role

Status = Message.Status


@dataclass(frozen=True)
class Submitted:
    """A prompt's stored pair; `created` is False for a retried `client_msg_id`.
    `history` is the chat-completions `messages` to send upstream (when created)."""

    user_message: Message
    assistant_message: Message | None
    created: bool
    history: list[dict[str, str]] = field(default_factory=list)


def conversation_create(*, owner: AbstractBaseUser, title: str) -> Conversation:
    with transaction.atomic():
        conversation = Conversation.objects.create(
            owner=owner, title=title.strip()[:200] or "New chat"
        )
        Membership.objects.create(conversation=conversation, user=owner, role=Role.OWNER)
    return conversation


def member_set(
    *, conversation: Conversation, actor: AbstractBaseUser, username: str, role: str
) -> Membership:
    """Add a member or change their role (owner only; the owner's own role is fixed)."""
    if conversation.owner_id != actor.pk:
        raise Forbidden("Only the owner can manage members.")
    if role not in (Role.MEMBER, Role.VIEWER):
        raise Forbidden("Role must be 'member' or 'viewer'.")
    user = get_user_model().objects.filter(username=username, is_active=True).first()
    if user is None:
        raise NotFound("No such user.")
    if user.pk == conversation.owner_id:
        raise Forbidden("The owner's role cannot change.")
    membership, _ = Membership.objects.update_or_create(
        conversation=conversation, user=user, defaults={"role": role}
    )
    return membership


def member_remove(*, conversation: Conversation, actor: AbstractBaseUser, username: str) -> int:
    """Remove a member (owner only); returns the removed user's id."""
    if conversation.owner_id != actor.pk:
        raise Forbidden("Only the owner can manage members.")
    membership = (
        Membership.objects.filter(conversation=conversation, user__username=username)
        .exclude(role=Role.OWNER)
        .first()
    )
    if membership is None:
        raise NotFound("No such member.")
    membership.delete()
    return membership.user_id


def conversation_rename(
    *, conversation: Conversation, actor: AbstractBaseUser, title: str
) -> Conversation:
    """Give the conversation a new title (owner only); counts as activity."""
    if conversation.owner_id != actor.pk:
        raise Forbidden("Only the owner can rename the conversation.")
    conversation.title = title.strip()[:200] or "New chat"
    conversation.save(update_fields=["title", "updated_at"])
    return conversation


def conversation_delete(*, conversation: Conversation, actor: AbstractBaseUser) -> None:
    """Delete the conversation with its messages (owner only), never mid-answer: the
    running generation would have nothing left to store its answer in."""
    if conversation.owner_id != actor.pk:
        raise Forbidden("Only the owner can delete the conversation.")
    if Message.objects.filter(conversation=conversation, status=Status.STREAMING).exists():
        raise Busy("A reply is still being generated; stop it before deleting.")
    conversation.delete()


def member_leave(*, membership: Membership) -> int:
    """A member or viewer leaves the conversation; returns their user id. The owner
    cannot leave (they delete the conversation instead)."""
    if membership.role == Role.OWNER:
        raise Forbidden("The owner cannot leave; delete the conversation instead.")
    membership.delete()
    return membership.user_id


def _lock_user_checking_rate(*, user: AbstractBaseUser) -> None:
    """The prompt rate, read in the statement that takes the user's quota lock
    (`quota.lock_user_reading_rate`, which `quota.reserve` relies on): one statement for
    both, first in the storing transaction so the rate is still answered before the
    constraints and the quota. Being under the lock makes it no stricter: a statement
    that waited for a lock reads the prompts as they were when it started, so racing
    processes can still store more than the limit, as the check allows for."""
    limit = settings.PROMPTS_PER_MINUTE
    if limit <= 0:
        raise RateLimited("Prompts are switched off on this server.", retry_after=60.0)
    # The limit-th most recent prompt of the window, if there is one: the next prompt
    # fits once it leaves the window.
    nth_newest = quota.lock_user_reading_rate(
        user=user, since=timezone.now() - timedelta(minutes=1), nth=limit
    )
    if nth_newest is not None:
        retry = (nth_newest + timedelta(minutes=1) - timezone.now()).total_seconds()
        raise RateLimited(
            f"At most {limit} prompts a minute.", retry_after=max(1.0, round(retry, 1))
        )


def _placeholder(*, conversation_id: uuid.UUID, prompt: Message, model: str) -> Message:
    """The streaming assistant message answering `prompt` (not saved yet)."""
    return Message(
        conversation_id=conversation_id,
        role=Message.Sender.ASSISTANT,
        reply_to=prompt,
        status=Status.STREAMING,
        model=model,
        heartbeat_at=timezone.now(),
    )


def _reserve(
    *, prompt: Message, assistant: Message, user: AbstractBaseUser
) -> list[dict[str, str]]:
    """The upstream history answering `prompt`, and the user's token reservation for it
    (inside the storing transaction, the user's lock already taken)."""
    history = selectors.prompt_history(prompt=prompt, limit=settings.STREAM_HISTORY_MESSAGES)
    need = estimate_prompt_tokens(history) + settings.OPENAI_MAX_TOKENS
    quota.reserve(user=user, message=assistant, need=need)
    return history


def prompt_submit(
    *,
    conversation_id: uuid.UUID,
    user: AbstractBaseUser,
    content: str,
    client_msg_id: str | None,
    model: str,
) -> Submitted:
    """Store a prompt and its streaming placeholder, or return the earlier pair for a
    retried `client_msg_id`. The database's unique constraints, not these checks, are
    what make two racing processes safe; the checks only give the common case a clear
    answer. A retried send is found by its failed insert, not looked up beforehand:
    retries are rare and every prompt would pay for the lookup.

    Checked in this order, each answered by its own error: the prompt rate, then the
    constraints (a retry, or an answer already streaming), then the quota. Six
    statements between BEGIN and COMMIT, written out (chat/domain/sql.py): the rate is
    read with the quota's user lock, and the prompt and its placeholder go in one
    INSERT."""
    try:
        with transaction.atomic():
            _lock_user_checking_rate(user=user)
            prompt = Message(
                conversation_id=conversation_id,
                role=Message.Sender.USER,
                author=user,
                content=content,
                client_msg_id=client_msg_id or None,
                status=Status.COMPLETE,
                completed_at=timezone.now(),
            )
            assistant = _placeholder(conversation_id=conversation_id, prompt=prompt, model=model)
            # Stamped here, not by `auto_now_add`, which could give both the same
            # microsecond: the answer must sort after its prompt.
            prompt.created_at = timezone.now()
            assistant.created_at = prompt.created_at + timedelta(microseconds=1)
            sql.insert([prompt, assistant])
            history = _reserve(prompt=prompt, assistant=assistant, user=user)
            sql.update(
                Conversation,
                {"updated_at": timezone.now()},
                "id = %s",
                [sql.uuid_param(conversation_id)],
            )
    except RateLimited:
        # A retry of a prompt already stored is not a new prompt: give it back.
        earlier = client_msg_id and _earlier_submission(conversation_id, client_msg_id)
        if earlier:
            return earlier
        raise
    except IntegrityError:
        if client_msg_id:
            earlier = _earlier_submission(conversation_id, client_msg_id)
            if earlier is not None:
                return earlier
        raise Busy() from None
    prompt.author = user
    return Submitted(prompt, assistant, created=True, history=history)


def _earlier_submission(conversation_id: uuid.UUID, client_msg_id: str) -> Submitted | None:
    prompt = (
        Message.objects.select_related("author")
        .filter(conversation_id=conversation_id, client_msg_id=client_msg_id)
        .first()
    )
    if prompt is None:
        return None
    return Submitted(prompt, prompt.replies.order_by("created_at").first(), created=False)


def regenerate_submit(
    *, conversation_id: uuid.UUID, user: AbstractBaseUser, message_id: str, model: str
) -> Submitted:
    """A new streaming placeholder answering again the prompt of `message_id`."""
    try:
        uuid.UUID(str(message_id))
    except ValueError:
        raise NotFound() from None
    old = (
        Message.objects.select_related("reply_to")
        .filter(conversation_id=conversation_id, pk=message_id, role=Message.Sender.ASSISTANT)
        .first()
    )
    if old is None or old.reply_to_id is None:
        raise NotFound("No assistant message with that id in this conversation.")
    try:
        with transaction.atomic():
            _lock_user_checking_rate(user=user)
            assistant = _placeholder(
                conversation_id=conversation_id, prompt=old.reply_to, model=model
            )
            sql.insert([assistant])
            history = _reserve(prompt=old.reply_to, assistant=assistant, user=user)
    except IntegrityError:
        raise Busy() from None
    return Submitted(old.reply_to, assistant, created=True, history=history)


def message_checkpoint(*, message_id: uuid.UUID, content: str, seq: int) -> bool:
    """Save the text so far (deltas 1..seq) and prove the runner is alive: every
    running answer, every STREAM_CHECKPOINT_S (written out, chat/domain/sql.py). False when the
    message is no longer streaming: another process stored it (its runner looked dead),
    so this runner has lost it and must stop."""
    return bool(
        sql.update(
            Message,
            {"content": content, "seq": seq, "heartbeat_at": timezone.now()},
            "id = %s AND status = %s",
            [sql.uuid_param(message_id), Status.STREAMING.value],
        )
    )


def message_finish(
    *,
    message_id: uuid.UUID,
    status: str,
    content: str,
    seq: int,
    model: str,
    finish_reason: str = "",
    usage: tuple[int, int, int] | None = None,
    usage_estimated: bool = False,
    error_code: str = "",
    error_detail: str = "",
    error_retry_after: float | None = None,
    ttft_ms: int | None = None,
    duration_ms: int | None = None,
) -> Message | None:
    """Store the final state of an assistant message: the one final write of a
    generation, made only while the message is still streaming. None when it is not:
    the sweeper stored it (this runner looked dead) or its conversation was deleted."""
    fields = {
        "status": status,
        "content": content,
        "seq": seq,
        "model": model,
        "finish_reason": finish_reason,
        "usage_estimated": usage_estimated,
        "error_code": error_code,
        "error_detail": error_detail[:500],
        "error_retry_after": error_retry_after,
        "ttft_ms": ttft_ms,
        "duration_ms": duration_ms,
        "completed_at": timezone.now(),
        "heartbeat_at": timezone.now(),
    }
    if usage is not None:
        fields["prompt_tokens"], fields["completion_tokens"], fields["total_tokens"] = usage
    # Fenced by the status: a runner the sweeper judged dead (a frozen process, a long
    # database outage) has lost its message and writes nothing over the sweeper's
    # `interrupted`. Written out (chat/domain/sql.py), as every answer ends with it.
    key = sql.uuid_param(message_id)
    with transaction.atomic():
        written = sql.update(
            Message, fields, "id = %s AND status = %s", [key, Status.STREAMING.value]
        )
        if not written:
            return None
        quota.settle(message_id=message_id, used=usage[2] if usage else 0)
    return selectors.message_with_author(message_id=message_id)
