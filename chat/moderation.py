"""Moderation of stored messages: cases, the moderation call, retries, staff decisions and
redaction (docs/moderation.md).

Every assistant message that reaches a final state with text gets an `auto` case, and
every member report a `report` case. The model's verdict moves a case from `pending` to
`auto_approved` or `flagged` (a report always goes to `flagged`: a person asked for a
review); staff then approve or reject. A rejected message is redacted: viewers get a
`redacted` frame at once and see it without content in every later snapshot and API
response, while the stored text stays for staff. Undo puts a case back where the
verdict left it.

Async rules: `schedule()` starts the call as its own task *after* `done` is published
(never awaited by the generation); all database work goes through
`chat.db.db`; a failed or timed-out call leaves the case `pending` with a
backoff, and `retry_pending()` (periodic task, `manage.py moderate_pending`) tries again.
With MODERATION_WORKER on, servers only open the case (`open_for_worker`) and the
worker, `watch()` in a process of its own, calls moderation in batches (`run_cases`).
"""

import asyncio
import contextlib
import itertools
import logging
import uuid
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, Group, Permission
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from chat import protocol
from chat.domain import selectors, sql
from chat.domain.db import db
from chat.exceptions import ChatError, NotFound
from chat.fanout import publish as fanout
from chat.models import Message, ModerationCase, ModerationEvent
from chat.upstream.client import translate_error

log = logging.getLogger(__name__)

State = ModerationCase.State
Source = ModerationCase.Source
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

FINAL_STATUSES = (
    Message.Status.COMPLETE,
    Message.Status.CANCELLED,
    Message.Status.FAILED,
    Message.Status.INTERRUPTED,
)
DECIDABLE = frozenset({State.PENDING, State.FLAGGED, State.AUTO_APPROVED})
DECIDED = frozenset({State.APPROVED, State.REJECTED})
DECISION_TARGET = {Action.APPROVE: State.APPROVED, Action.REJECT: State.REJECTED}

BACKOFF_MAX_S = 3600.0
# A worker holds a case it took for the call's timeout plus this, then anyone may retry.
LEASE_EXTRA_S = 30.0
# Final answers this recent without a case get one (a process died before creating it,
# or the sweeper stored the answer): older history is left alone.
BACKFILL_WINDOW = timedelta(days=1)
BATCH = 100
# Consecutive failed calls that end a retry pass: the endpoint is most likely still down.
FAILURES_BEFORE_PAUSE = 3
REASON_MAX_CHARS = 1000

# Outcomes of one `run_case`.
SKIPPED = "skipped"
FAILED = "failed"


class InvalidTransition(Exception):
    """A staff action that the case's current state does not allow."""


class BadReport(ChatError):
    """A report that cannot be filed: no reason, too long, or a message still streaming."""

    code = "bad_request"
    default_detail = "That message is still being written; report it once it is done."


@dataclass(frozen=True)
class Verdict:
    """The moderation call's answer for one text."""

    flagged: bool
    categories: list[str]
    scores: dict[str, float]
    model: str
    raw: dict[str, Any]


@dataclass(frozen=True)
class VisibilityChange:
    """A message became hidden (or visible again); viewers must be told."""

    conversation_id: uuid.UUID
    message_id: uuid.UUID
    hidden: bool
    payload: dict[str, Any] | None = None  # the message as viewers now see it


@dataclass(frozen=True)
class Decision:
    case: ModerationCase
    change: VisibilityChange | None


@dataclass
class RetryReport:
    """What one retry pass did."""

    backfilled: int = 0
    moderated: int = 0
    flagged: int = 0
    failed: int = 0
    paused: bool = False
    still_pending: int = 0
    states: dict[str, int] = field(default_factory=dict)


# ---- sync services (keyword-only; async callers wrap them) -------------------------


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
        "SELECT m.content, (SELECT c.id FROM chat_moderationcase c"
        " WHERE c.message_id = m.id AND c.source = %s LIMIT 1)"
        " FROM chat_message m WHERE m.id = %s AND m.role = %s"
        f" AND m.status IN ({', '.join(['%s'] * len(FINAL_STATUSES))}) AND m.content <> ''",
        [Source.AUTO, sql.uuid_param(message_id), Message.Sender.ASSISTANT, *FINAL_STATUSES],
    )


def _open_and_claim(*, message_id: uuid.UUID | str) -> tuple[int, str] | None:
    """`case_open` then `_claim` in one trip to the database thread: what every finished
    answer costs. The text and the existing case's id are read with the message, and a
    new case is one INSERT: 3 statements (2 when the case exists), 9 as two trips. The
    read and the lease are SQL written out (chat/domain/sql.py), as the prompt's statements."""
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
            "UPDATE chat_moderationcase SET attempts = attempts + 1, next_attempt_at = %s"
            f" WHERE id = %s AND state = %s{due}",
            [sql.datetime_param(lease), case_id, State.PENDING]
            + ([] if force else [sql.datetime_param(now)]),
        )
    )


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
            f"SELECT state, source, message_id FROM chat_moderationcase WHERE id = %s"
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


def _refresh_visibility(*, message_id: uuid.UUID | str) -> VisibilityChange | None:
    """Derive `Message.redacted` from the message's cases; the change, if any."""
    # Two statements, not one UPDATE deriving and comparing with an EXISTS: that one
    # was measured to cost more Python (two subqueries to build) than the round trip
    # it saves. Written out, as every finished answer's verdict runs them.
    hide, params = "c.state = %s", [State.REJECTED]
    if settings.MODERATION_HOLD_FLAGGED:
        # Held: flagged by the model and no human decision yet. A report alone never
        # hides a message, or any member could hide any answer.
        hide = "(c.state = %s OR (c.state = %s AND c.flagged = %s))"
        params = [State.REJECTED, State.FLAGGED, True]
    message_param = sql.uuid_param(message_id)
    (hidden,) = sql.fetch_one(
        f"SELECT EXISTS (SELECT 1 FROM chat_moderationcase c WHERE c.message_id = %s AND {hide})",
        [message_param, *params],
    )
    hidden = bool(hidden)  # SQLite answers 0 or 1
    changed = sql.update(
        Message, {"redacted": hidden}, "id = %s AND redacted = %s", [message_param, not hidden]
    )
    if not changed:
        return None
    message = selectors.message_with_author(message_id=message_id)
    return VisibilityChange(
        conversation_id=message.conversation_id,
        message_id=message.pk,
        hidden=hidden,
        payload=None if hidden else protocol.message_payload(message),
    )


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


def _due_case_ids(*, force: bool, limit: int) -> list[int]:
    cases = ModerationCase.objects.filter(state=State.PENDING)
    if not force:
        cases = cases.filter(
            Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=timezone.now())
        )
    return list(cases.order_by("created_at").values_list("pk", flat=True)[:limit])


def _pending_count() -> int:
    return ModerationCase.objects.filter(state=State.PENDING).count()


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


# ---- the moderation call -----------------------------------------------------------


def _verdict(response: dict[str, Any], index: int = 0) -> Verdict:
    raw = response["results"][index]
    flags = raw.get("categories") or {}
    scores = {
        name: float(score)
        for name, score in (raw.get("category_scores") or {}).items()
        if isinstance(score, int | float)
    }
    return Verdict(
        flagged=bool(raw.get("flagged")),
        categories=sorted(name for name, on in flags.items() if on),
        scores=scores,
        model=response.get("model") or settings.MODERATION_MODEL,
        raw=raw,
    )


async def moderate_text(text: str) -> Verdict:
    """One moderation call through the shared client; raises on failure or timeout.

    No SDK retries: a failure leaves the case pending and our own backoff retries it.
    """
    return _verdict(await _moderations(text))


async def moderate_texts(texts: list[str]) -> list[Verdict]:
    """One moderation call for several texts (the API takes a list of inputs and answers
    a result per input, in order); raises on failure or timeout, for all of them."""
    response = await _moderations(texts)
    if len(response["results"]) != len(texts):
        raise ValueError("moderation response without a result per input")
    return [_verdict(response, index) for index in range(len(texts))]


async def _moderations(texts: str | list[str]) -> dict[str, Any]:
    from chat.upstream.client import get_client

    timeout = settings.MODERATION_TIMEOUT_S
    # The JSON as a dict (`cast_to=object`, as the chat stream reads its chunks) and the
    # options per request: the SDK's response models and a client copy per call
    # (`with_options`) were half its CPU on the event loop, 2.1 -> 1.1 ms a call, paid
    # for every answer as a burst of them finishes (bench/REPORT.md).
    request = get_client().post(
        "/moderations",
        body={"model": settings.MODERATION_MODEL, "input": texts},
        cast_to=object,
        options={"max_retries": 0, "timeout": timeout},
    )
    # The in-process simulator honours no HTTP timeout: bound the whole call here too.
    response = await asyncio.wait_for(request, timeout)
    if not isinstance(response, dict) or not response.get("results"):
        raise ValueError("moderation response without results")
    return response


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout: the moderation call took too long"
    if isinstance(exc, ValueError | IndexError | KeyError | AttributeError):
        return "bad_response: the moderation answer could not be read"
    error = translate_error(exc)
    return f"{error.code}: {error.detail}"


async def run_case(case_id: int, *, force: bool = False) -> str:
    """Call moderation for one pending case and store the verdict; the resulting state,
    FAILED (left pending, backoff set) or SKIPPED (not pending or not due)."""
    text = await db(_claim)(case_id=case_id, force=force)
    if text is None:
        return SKIPPED
    return await _moderate_claimed(case_id, text)


async def run_cases(case_ids: list[int], *, force: bool = False) -> list[str]:
    """`run_case` for several cases with one moderation call (the worker's batches): the
    outcome of each, in order. The call succeeds or fails for all the claimed ones."""
    if len(case_ids) == 1:
        return [await run_case(case_ids[0], force=force)]
    texts = await db(_claim_each)(case_ids=case_ids, force=force)
    claimed = [case_id for case_id in case_ids if case_id in texts]
    outcomes = dict.fromkeys(case_ids, SKIPPED)
    if not claimed:
        return list(outcomes.values())
    try:
        verdicts = await moderate_texts([texts[case_id] for case_id in claimed])
    except Exception as exc:
        error = _describe(exc)
        await db(_record_failures)(case_ids=claimed, error=error)
        log.warning("moderation of cases %s failed: %s", claimed, error)
        outcomes.update(dict.fromkeys(claimed, FAILED))
        return list(outcomes.values())
    results = await db(_record_results)(verdicts=dict(zip(claimed, verdicts, strict=True)))
    for case_id, verdict, (state, change) in zip(claimed, verdicts, results, strict=True):
        await _verdict_stored(case_id, verdict, state, change)
        outcomes[case_id] = state
    return list(outcomes.values())


def _claim_each(*, case_ids: list[int], force: bool) -> dict[int, str]:
    """`_claim` for each case in one trip to the database thread: the claimed ones' texts."""
    texts = {case_id: _claim(case_id=case_id, force=force) for case_id in case_ids}
    return {case_id: text for case_id, text in texts.items() if text is not None}


def _record_failures(*, case_ids: list[int], error: str) -> None:
    for case_id in case_ids:
        _record_failure(case_id=case_id, error=error)


def _record_results(*, verdicts: dict[int, Verdict]) -> list[tuple[str, VisibilityChange | None]]:
    """`_record_result` for each case in one trip; each is its own transaction as before.
    A case deleted meanwhile (with its conversation) is skipped, not the batch failed."""
    results = []
    for case_id, verdict in verdicts.items():
        try:
            results.append(_record_result(case_id=case_id, verdict=verdict))
        except ModerationCase.DoesNotExist:
            results.append((SKIPPED, None))
    return results


async def _moderate_claimed(case_id: int, text: str) -> str:
    try:
        verdict = await moderate_text(text)
    except Exception as exc:
        error = _describe(exc)
        attempts = await db(_record_failure)(case_id=case_id, error=error)
        log.warning("moderation of case %s failed (attempt %d): %s", case_id, attempts, error)
        return FAILED
    state, change = await db(_record_result)(case_id=case_id, verdict=verdict)
    await _verdict_stored(case_id, verdict, state, change)
    return state


async def _verdict_stored(
    case_id: int, verdict: Verdict, state: str, change: VisibilityChange | None
) -> None:
    """After a verdict is stored: log a flag, tell viewers if the message's visibility
    changed (held or shown again)."""
    if state == State.FLAGGED:
        log.info("moderation case %s flagged: %s", case_id, ", ".join(verdict.categories))
    if change is not None:
        await announce(change)


async def moderate_message(message_id: uuid.UUID | str) -> str:
    """Open the message's case and run it (the task `schedule` starts)."""
    claimed = await db(_open_and_claim)(message_id=message_id)
    if claimed is None:
        return SKIPPED
    return await _moderate_claimed(*claimed)


async def announce(change: VisibilityChange) -> None:
    """Tell the conversation's viewers that a message was hidden or shown again."""
    if change.hidden:
        await fanout.publish_redacted(change.conversation_id, change.message_id)
    elif change.payload is not None:
        await fanout.publish_restored(change.conversation_id, change.payload)


def announce_sync(change: VisibilityChange | None) -> None:
    """`announce` from sync code (admin views, management commands)."""
    if change is not None:
        async_to_sync(announce)(change)


# ---- tasks --------------------------------------------------------------------------

# Strong references: asyncio keeps only weak ones, and a task could vanish mid-call.
_tasks: set[asyncio.Task[Any]] = set()
_wakers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Event]" = (
    weakref.WeakKeyDictionary()
)


def schedule(message_id: uuid.UUID | str) -> asyncio.Task[Any] | None:
    """Moderate a just-finished message in the background; never raises, never waits."""
    if not settings.MODERATION_ENABLED:
        return None
    try:
        task = asyncio.get_running_loop().create_task(
            _guarded(moderate_message(message_id)), name=f"moderation-{message_id}"
        )
    except Exception:
        log.warning("could not schedule moderation of %s", message_id, exc_info=True)
        return None
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task


async def _guarded_cases(case_ids: list[int], force: bool) -> list[str]:
    outcomes = await _guarded(run_cases(case_ids, force=force))
    return outcomes if isinstance(outcomes, list) else [FAILED] * len(case_ids)


async def _guarded(coro: Any) -> Any:
    # A failure here must never surface as "Task exception was never retrieved".
    try:
        return await coro
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.warning("moderation task failed: %r (retried later)", exc)
        return FAILED


async def drain() -> None:
    """Wait for every moderation task of this loop (tests, shutdown)."""
    loop = asyncio.get_running_loop()
    while mine := [t for t in _tasks if t.get_loop() is loop and not t.done()]:
        await asyncio.gather(*mine, return_exceptions=True)


async def retry_pending(
    *,
    force: bool = False,
    limit: int = BATCH,
    backfill: bool = True,
    concurrency: int = 1,
    batch: int = 1,
) -> RetryReport:
    """One pass: open cases for recent answers that lack one (unless not `backfill`),
    then call moderation for due pending cases, oldest first: `batch` cases per call,
    `concurrency` calls at a time. `force` ignores the backoff."""
    report = RetryReport()
    if not settings.MODERATION_ENABLED:
        return report
    if backfill:
        report.backfilled = await db(_backfill)(since=timezone.now() - BACKFILL_WINDOW)
    case_ids = await db(_due_case_ids)(force=force, limit=limit)
    batch, concurrency = max(1, batch), max(1, concurrency)
    failures_in_a_row = 0
    for start in range(0, len(case_ids), batch * concurrency):
        window = case_ids[start : start + batch * concurrency]
        calls = [window[i : i + batch] for i in range(0, len(window), batch)]
        outcomes = await asyncio.gather(*(_guarded_cases(c, force) for c in calls))
        for outcome in itertools.chain.from_iterable(outcomes):
            if outcome == SKIPPED:
                continue
            report.states[outcome] = report.states.get(outcome, 0) + 1
            if outcome == FAILED:
                report.failed += 1
                failures_in_a_row += 1
                continue
            failures_in_a_row = 0
            report.moderated += 1
            report.flagged += outcome == State.FLAGGED
        if failures_in_a_row >= FAILURES_BEFORE_PAUSE:
            report.paused = True  # no new calls: the endpoint looks down
            break
    report.still_pending = await db(_pending_count)()
    return report


def wake() -> None:
    """Ask this process's retry loop for a pass now (a report was filed); thread-safe."""
    for loop, event in list(_wakers.items()):
        if not loop.is_closed():
            loop.call_soon_threadsafe(event.set)


async def run_forever(first_delay_s: float = 1.0) -> None:
    """The periodic retry task of a server process (started by chat.lifecycle)."""
    event = _wakers[asyncio.get_running_loop()] = asyncio.Event()
    await asyncio.sleep(first_delay_s)
    while True:
        await _logged_pass()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), settings.MODERATION_RETRY_INTERVAL_S)
        event.clear()


async def watch(*, interval_s: float = 1.0, concurrency: int = 4, batch: int = 16) -> None:
    """The moderation worker (`moderate_pending --watch`, with MODERATION_WORKER on):
    every `interval_s`, call moderation for the due cases the servers opened, `batch`
    texts per call and up to `concurrency` calls at a time; every
    MODERATION_RETRY_INTERVAL_S (30 s if 0), open the cases a server missed. After too
    many failures in a row it waits that long too: the endpoint looks down."""
    backfill_every_s = settings.MODERATION_RETRY_INTERVAL_S or 30.0
    loop = asyncio.get_running_loop()
    next_backfill = loop.time()
    while True:
        backfill = loop.time() >= next_backfill
        if backfill:
            next_backfill = loop.time() + backfill_every_s
        report = await _logged_pass(backfill=backfill, concurrency=concurrency, batch=batch)
        await asyncio.sleep(backfill_every_s if report.paused else interval_s)


async def _logged_pass(**options: Any) -> RetryReport:
    try:
        report = await retry_pending(**options)
    except Exception as exc:
        log.warning("moderation pass failed: %r", exc)
        return RetryReport()
    if report.moderated or report.failed:
        log.info(
            "moderation pass: %d moderated (%d flagged), %d failed, %d pending",
            report.moderated,
            report.flagged,
            report.failed,
            report.still_pending,
        )
    return report
