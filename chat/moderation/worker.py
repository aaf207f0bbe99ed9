"""Running moderation cases (docs/moderation.md, "The moderation call"): a case's call and
its recorded outcome, one at a time or in batches, the retry pass, and the tasks that run
them in a server process or in the moderation worker.

`schedule()` starts a just-finished answer's call as its own task, after `done` is
published and never awaited by the generation; `run_forever()` is a server's periodic
retry pass. With MODERATION_WORKER on, servers only open the case
(`chat.moderation.cases.open_for_worker`) and `watch()`, in a process of its own, calls
moderation in batches (`run_cases`). All database work goes to the database thread
(`chat.domain.db.db`) through `chat.moderation.cases`.
"""

import asyncio
import contextlib
import itertools
import logging
import uuid
import weakref
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from chat.domain.db import db
from chat.models import ModerationCase
from chat.moderation.call import Verdict, _describe, moderate_text, moderate_texts
from chat.moderation.cases import (
    BATCH,
    _backfill,
    _claim,
    _due_case_ids,
    _open_and_claim,
    _pending_count,
    _record_failure,
    _record_result,
)
from chat.moderation.visibility import VisibilityChange, announce

# One logger name for the package: its lines say `chat.moderation`, whichever module wrote them.
log = logging.getLogger("chat.moderation")

State = ModerationCase.State

# Final answers this recent without a case get one (a process died before creating it,
# or the sweeper stored the answer): older history is left alone.
BACKFILL_WINDOW = timedelta(days=1)
# Consecutive failed calls that end a retry pass: the endpoint is most likely still down.
FAILURES_BEFORE_PAUSE = 3

# Outcomes of one `run_case`.
SKIPPED = "skipped"
FAILED = "failed"


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


# ---- running cases ------------------------------------------------------------------


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
    """`_record_result` for each case in one trip; each is its own transaction.
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


# ---- retry passes -------------------------------------------------------------------


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
