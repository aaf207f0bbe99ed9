"""The moderation case and what the model does to it (docs/moderation.md): opening a case
for a final answer or a member's report, the lease a worker takes for one call, and a
verdict or a failed call recorded on it.

A verdict moves a case from `pending` to `auto_approved` or `flagged` (a report always
goes to `flagged`: a person asked for a review); a failure leaves it `pending`, due again
after a doubling backoff. Staff decisions are `chat.moderation.review`'s. Sync services;
async callers run them on the database thread (`chat.domain.db.db`).
"""

import contextlib
import logging
import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from chat.domain import selectors, sql
from chat.exceptions import ChatError, NotFound
from chat.models import Message, ModerationCase
from chat.moderation.call import Verdict
from chat.moderation.visibility import VisibilityChange, _refresh_visibility

# One logger name for the package: its lines say `chat.moderation`, whichever module wrote them.
log = logging.getLogger("chat.moderation")

State = ModerationCase.State
Source = ModerationCase.Source

FINAL_STATUSES = (
    Message.Status.COMPLETE,
    Message.Status.CANCELLED,
    Message.Status.FAILED,
    Message.Status.INTERRUPTED,
)
BACKOFF_MAX_S = 3600.0
# A worker holds a case it took for the call's timeout plus this, then anyone may retry.
LEASE_EXTRA_S = 30.0
BATCH = 100
REASON_MAX_CHARS = 1000


class BadReport(ChatError):
    """A report that cannot be filed: no reason, too long, or a message still streaming."""

    code = "bad_request"
    default_detail = "That message is still being written; report it once it is done."


# ---- opening cases ------------------------------------------------------------------


def case_open(*, message_id: uuid.UUID | str) -> ModerationCase | None:
    """The `auto` case of a final assistant message with text, created if missing."""
    opened = _open_case(message_id)
    return None if opened is None else ModerationCase.objects.get(pk=opened[1])


def _open_case(message_id: uuid.UUID | str) -> tuple[str, int] | None:
    """The text of a final assistant message with text and its `auto` case's id, the
    case inserted if it had none (2 statements, 1 when it exists); None for any other
    message. What `case_open`, `_open_and_claim` and `open_for_worker` share."""
    found = _final_answer_and_case(message_id)
    if found is None:
        return None
    content, case_id = found
    if case_id is None:
        case_id = _create_auto_case(message_id=message_id)
    return content, case_id


def _final_answer_and_case(message_id: uuid.UUID | str) -> tuple[str, int | None] | None:
    """The text of a final assistant message with text, and its `auto` case's id (None
    without one); None for any other message. Written out (chat/domain/sql.py), as every
    finished answer reads it."""
    return sql.fetch_one(
        f"SELECT m.content, (SELECT c.id FROM {sql.table(ModerationCase)} c"
        " WHERE c.message_id = m.id AND c.source = %s LIMIT 1)"
        f" FROM {sql.table(Message)} m WHERE m.id = %s AND m.role = %s"
        f" AND m.status IN ({', '.join(['%s'] * len(FINAL_STATUSES))}) AND m.content <> ''",
        [Source.AUTO, sql.uuid_param(message_id), Message.Sender.ASSISTANT, *FINAL_STATUSES],
    )


def _open_and_claim(*, message_id: uuid.UUID | str) -> tuple[int, str] | None:
    """`case_open` then `_claim` in one trip to the database thread: what every finished
    answer costs. The text and the existing case's id are read with the message, and a
    new case is one INSERT: 3 statements (2 when the case exists). The read and the
    lease are SQL written out (chat/domain/sql.py), as the prompt's statements."""
    opened = _open_case(message_id)
    if opened is None:
        return None
    content, case_id = opened
    return (case_id, content) if _lease(case_id=case_id) else None


def open_for_worker(*, message_id: uuid.UUID | str) -> None:
    """With MODERATION_WORKER on, open a just-stored answer's `auto` case for the worker
    to call moderation on, in the same trip to the database thread as the answer's own
    write (2 statements). Never raises: the answer is stored, and the worker's backfill
    opens a case this missed."""
    if not (settings.MODERATION_ENABLED and settings.MODERATION_WORKER):
        return
    try:
        _open_case(message_id)
    except Exception:
        log.warning("could not open the moderation case of %s", message_id, exc_info=True)


def _create_auto_case(*, message_id: uuid.UUID | str) -> int:
    """Insert the message's `auto` case; when another worker's insert won the race (the
    unique constraint), its case. What `get_or_create` does after its look-up, without
    its transaction: outside one, a failed INSERT leaves nothing to roll back; inside
    one, it still gets a savepoint."""
    savepoint = transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext()
    try:
        with savepoint:
            return ModerationCase.objects.create(message_id=message_id, source=Source.AUTO).pk
    except IntegrityError:
        existing = (
            ModerationCase.objects.filter(message_id=message_id, source=Source.AUTO)
            .values_list("pk", flat=True)
            .first()
        )
        if existing is None:  # not the race: e.g. the message was deleted meanwhile
            raise
        return existing


def report_create(
    *, conversation_id: uuid.UUID, message_id: str, user: AbstractBaseUser, reason: str
) -> tuple[ModerationCase, bool]:
    """A member's report of a message; the same member reporting again gets their first
    case back (`created` False). Membership is the caller's check."""
    message = selectors.message_get(conversation_id=conversation_id, message_id=message_id)
    if message is None:
        raise NotFound()
    if message.status == Message.Status.STREAMING:
        raise BadReport()
    reason = reason.strip()
    if not reason:
        raise BadReport("Say why you report this message (reason).")
    if len(reason) > REASON_MAX_CHARS:
        raise BadReport(f"The reason is over {REASON_MAX_CHARS} characters.")
    existing = ModerationCase.objects.filter(
        message=message, source=Source.REPORT, reporter_id=user.pk
    ).first()
    if existing is not None:
        return existing, False
    try:
        with transaction.atomic():
            case = ModerationCase.objects.create(
                message=message,
                source=Source.REPORT,
                reporter=user,
                reason=reason,
                # Without moderation calls a report goes straight to the people.
                state=State.PENDING if settings.MODERATION_ENABLED else State.FLAGGED,
            )
    except IntegrityError:  # a double click racing itself
        case = ModerationCase.objects.get(
            message=message, source=Source.REPORT, reporter_id=user.pk
        )
        return case, False
    return case, True


def _backfill(*, since: datetime) -> int:
    """Open cases for recent final answers that have none; returns how many."""
    ids = list(
        Message.objects.filter(
            role=Message.Sender.ASSISTANT, status__in=FINAL_STATUSES, completed_at__gte=since
        )
        .exclude(content="")
        .exclude(moderation_cases__source=Source.AUTO)
        .values_list("pk", flat=True)[:BATCH]
    )
    return sum(1 for message_id in ids if case_open(message_id=message_id) is not None)


# ---- the lease for one call ---------------------------------------------------------


def _claim(*, case_id: int, force: bool = False) -> str | None:
    """Take a pending case for one call (a lease until the call's timeout has passed);
    returns the text to moderate, or None when the case is not ours to try now."""
    if not _lease(case_id=case_id, force=force):
        return None
    return (
        ModerationCase.objects.filter(pk=case_id).values_list("message__content", flat=True).first()
    )


def _lease(*, case_id: int, force: bool = False) -> bool:
    now = timezone.now()
    lease = now + timedelta(seconds=settings.MODERATION_TIMEOUT_S + LEASE_EXTRA_S)
    due = "" if force else " AND (next_attempt_at IS NULL OR next_attempt_at <= %s)"
    return bool(
        sql.execute(
            f"UPDATE {sql.table(ModerationCase)} SET attempts = attempts + 1, next_attempt_at = %s"
            f" WHERE id = %s AND state = %s{due}",
            [sql.datetime_param(lease), case_id, State.PENDING]
            + ([] if force else [sql.datetime_param(now)]),
        )
    )


def _due_case_ids(*, force: bool, limit: int) -> list[int]:
    cases = ModerationCase.objects.filter(state=State.PENDING)
    if not force:
        cases = cases.filter(
            Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=timezone.now())
        )
    return list(cases.order_by("created_at").values_list("pk", flat=True)[:limit])


def _pending_count() -> int:
    return ModerationCase.objects.filter(state=State.PENDING).count()


# ---- what the call's outcome does to a case -----------------------------------------


def backoff_s(attempts: int) -> float:
    """Wait before the next try after `attempts` failed calls: doubling, capped."""
    base = settings.MODERATION_RETRY_BACKOFF_S
    return min(BACKOFF_MAX_S, base * 2 ** max(attempts - 1, 0))


def _record_failure(*, case_id: int, error: str) -> int:
    """Leave the case pending, due again after the backoff; returns its attempts."""
    case = ModerationCase.objects.filter(pk=case_id).only("attempts").first()
    if case is None:
        return 0
    retry_at = timezone.now() + timedelta(seconds=backoff_s(case.attempts))
    ModerationCase.objects.filter(pk=case_id, state=State.PENDING).update(
        last_error=error[:200], next_attempt_at=retry_at
    )
    return case.attempts


def _verdict_state(case: ModerationCase) -> str:
    """Where the model's verdict puts a case (before, or after undoing, a decision)."""
    return _state_for(flagged=case.flagged, source=case.source)


def _state_for(*, flagged: bool | None, source: str) -> str:
    if flagged is None:
        return State.PENDING
    if flagged or source == Source.REPORT:
        return State.FLAGGED
    return State.AUTO_APPROVED


def _record_result(*, case_id: int, verdict: Verdict) -> tuple[str, VisibilityChange | None]:
    """Store the verdict; a still-pending case moves on. Returns (state, change).

    Under the case's row lock, reading only what decides the new state and writing only
    the verdict's fields (what `save()` would write besides them is what the locked row
    already holds)."""
    with transaction.atomic():
        row = sql.fetch_one(
            f"SELECT state, source, message_id FROM {sql.table(ModerationCase)} WHERE id = %s"
            f"{sql.for_update()}",
            [case_id],
        )
        if row is None:
            raise ModerationCase.DoesNotExist(f"No moderation case {case_id}.")
        state, source, message_id = row
        now = timezone.now()
        fields = {
            "flagged": verdict.flagged,
            "categories": verdict.categories,
            "category_scores": verdict.scores,
            "top_score": max(verdict.scores.values(), default=None),
            "moderation_model": verdict.model[:200],
            "result": verdict.raw,
            "moderated_at": now,
            "last_error": "",
            "next_attempt_at": None,
            "updated_at": now,  # `auto_now`, which only `save()` sets
        }
        # Staff may have decided while the call ran: their decision stands.
        if state == State.PENDING:
            state = fields["state"] = _state_for(flagged=verdict.flagged, source=source)
        sql.update(ModerationCase, fields, "id = %s", [case_id])
        return state, _refresh_visibility(message_id=message_id)
