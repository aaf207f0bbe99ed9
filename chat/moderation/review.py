"""Staff review of moderation cases (docs/moderation.md, "Cases" and "The admin"): approve,
reject and undo, each a `ModerationEvent`; the `moderator` group allowed to do them; and
the labels and categories the admin shows.

Staff decide a case in `pending`, `flagged` or `auto_approved`; a decided case must be
undone before it is decided again, and undo puts it back where the model's verdict left
it. Every decision re-derives the message's visibility; the caller announces the change.
"""

from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser, Group, Permission
from django.db import transaction
from django.utils import timezone

from chat.models import ModerationCase, ModerationEvent
from chat.moderation.cases import _verdict_state
from chat.moderation.visibility import VisibilityChange, _refresh_visibility

State = ModerationCase.State
Action = ModerationEvent.Action

MODERATOR_GROUP = "moderator"
# What the `moderator` group may do (migration 0004 holds a frozen copy).
MODERATOR_PERMISSIONS = (
    "view_conversation",
    "view_membership",
    "view_message",
    "view_moderationcase",
    "change_moderationcase",
    "view_moderationevent",
)
# OpenAI's moderation categories (omni-moderation), for filters and display.
CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)

DECIDABLE = frozenset({State.PENDING, State.FLAGGED, State.AUTO_APPROVED})
DECIDED = frozenset({State.APPROVED, State.REJECTED})
DECISION_TARGET = {Action.APPROVE: State.APPROVED, Action.REJECT: State.REJECTED}


class InvalidTransition(Exception):
    """A staff action that the case's current state does not allow."""


@dataclass(frozen=True)
class Decision:
    """A decided (or undone) case, and the visibility change the caller announces."""

    case: ModerationCase
    change: VisibilityChange | None


def case_decide(*, case_id: int, actor: AbstractBaseUser, action: str, note: str = "") -> Decision:
    """Approve or reject a case (staff); raises InvalidTransition if already decided."""
    target = DECISION_TARGET.get(action)
    if target is None:
        raise InvalidTransition(f"Unknown decision {action!r}.")
    with transaction.atomic():
        case = ModerationCase.objects.select_for_update().get(pk=case_id)
        if case.state not in DECIDABLE:
            raise InvalidTransition(f"Case {case.pk} is already {case.get_state_display()}.")
        ModerationEvent.objects.create(
            case=case, action=action, from_state=case.state, to_state=target, actor=actor, note=note
        )
        case.state = target
        case.decided_by = actor
        case.decided_at = timezone.now()
        case.note = note
        case.save()
        return Decision(case, _refresh_visibility(message_id=case.message_id))


def case_undo(*, case_id: int, actor: AbstractBaseUser, note: str = "") -> Decision:
    """Take back a staff decision: the case returns to where the model's verdict left it
    (a redacted message is shown again unless another case still hides it)."""
    with transaction.atomic():
        case = ModerationCase.objects.select_for_update().get(pk=case_id)
        if case.state not in DECIDED:
            raise InvalidTransition(f"Case {case.pk} has no decision to undo.")
        target = _verdict_state(case)
        ModerationEvent.objects.create(
            case=case,
            action=Action.UNDO,
            from_state=case.state,
            to_state=target,
            actor=actor,
            note=note,
        )
        case.state = target
        case.decided_by = None
        case.decided_at = None
        case.note = ""
        if target == State.PENDING:
            case.next_attempt_at = None  # due now
        case.save()
        return Decision(case, _refresh_visibility(message_id=case.message_id))


def cases_decide(
    *, case_ids: list[int], actor: AbstractBaseUser, action: str, note: str = ""
) -> tuple[list[Decision], int]:
    """Decide many cases (admin bulk action); returns the decisions and how many were
    skipped because they were already decided."""
    decisions, skipped = [], 0
    for case_id in case_ids:
        try:
            decisions.append(case_decide(case_id=case_id, actor=actor, action=action, note=note))
        except InvalidTransition:
            skipped += 1
    return decisions, skipped


def moderator_group_ensure() -> Group:
    """The `moderator` group with its review permissions (migration 0004 creates it;
    this repairs or recreates it, e.g. in a shell or after a database flush)."""
    group, _ = Group.objects.get_or_create(name=MODERATOR_GROUP)
    group.permissions.add(
        *Permission.objects.filter(
            content_type__app_label="chat", codename__in=MODERATOR_PERMISSIONS
        )
    )
    return group


def message_moderation_state(states: list[str]) -> str:
    """One label for a message from all its cases' states (the most severe wins)."""
    for state in (State.REJECTED, State.FLAGGED, State.PENDING, State.APPROVED):
        if state in states:
            return state
    return State.AUTO_APPROVED if State.AUTO_APPROVED in states else ""
