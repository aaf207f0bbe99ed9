"""Moderation of stored messages: cases, the moderation call, retries, staff decisions and
redaction (docs/moderation.md).

Every assistant message that reaches a final state with text gets an `auto` case, and
every member report a `report` case. The model's verdict moves a case from `pending` to
`auto_approved` or `flagged` (a report always goes to `flagged`: a person asked for a
review); staff then approve or reject. A rejected message is redacted: viewers get a
`redacted` frame at once and see it without content in every later snapshot and API
response, while the stored text stays for staff. Undo puts a case back where the
verdict left it.

- `cases`: opening a case (answers, reports, backfill), the lease for one call, and a
  verdict or a failure (with backoff) recorded on it;
- `review`: staff decisions and undo, the `moderator` group, the admin's labels;
- `visibility`: `Message.redacted` derived from the cases, and announcing its changes;
- `call`: the moderation API call through the shared client, read into `Verdict`s;
- `worker`: running cases one by one or in batches, retry passes, the in-server tasks
  (`schedule`, `drain`, `run_forever`) and the worker process's loop (`watch`).

Callers use the names below as `moderation.<name>`. The underscored ones are the
package's own, named here for the tests and the benchmark that measure them.
"""

from chat.moderation.call import Verdict, moderate_text, moderate_texts
from chat.moderation.cases import (
    BACKOFF_MAX_S,
    BATCH,
    FINAL_STATUSES,
    LEASE_EXTRA_S,
    REASON_MAX_CHARS,
    BadReport,
    Source,
    State,
    _create_auto_case,
    _open_and_claim,
    _record_result,
    backoff_s,
    case_open,
    open_for_worker,
    report_create,
)
from chat.moderation.review import (
    CATEGORIES,
    DECIDABLE,
    DECIDED,
    DECISION_TARGET,
    MODERATOR_GROUP,
    MODERATOR_PERMISSIONS,
    Action,
    Decision,
    InvalidTransition,
    case_decide,
    case_undo,
    cases_decide,
    message_moderation_state,
    moderator_group_ensure,
)
from chat.moderation.visibility import VisibilityChange, announce, announce_sync
from chat.moderation.worker import (
    BACKFILL_WINDOW,
    FAILED,
    FAILURES_BEFORE_PAUSE,
    SKIPPED,
    RetryReport,
    _tasks,
    drain,
    moderate_message,
    retry_pending,
    run_case,
    run_cases,
    run_forever,
    schedule,
    wake,
    watch,
)

__all__ = [
    "BACKFILL_WINDOW",
    "BACKOFF_MAX_S",
    "BATCH",
    "CATEGORIES",
    "DECIDABLE",
    "DECIDED",
    "DECISION_TARGET",
    "FAILED",
    "FAILURES_BEFORE_PAUSE",
    "FINAL_STATUSES",
    "LEASE_EXTRA_S",
    "MODERATOR_GROUP",
    "MODERATOR_PERMISSIONS",
    "REASON_MAX_CHARS",
    "SKIPPED",
    "Action",
    "BadReport",
    "Decision",
    "InvalidTransition",
    "RetryReport",
    "Source",
    "State",
    "Verdict",
    "VisibilityChange",
    "_create_auto_case",
    "_open_and_claim",
    "_record_result",
    "_tasks",
    "announce",
    "announce_sync",
    "backoff_s",
    "case_decide",
    "case_open",
    "case_undo",
    "cases_decide",
    "drain",
    "message_moderation_state",
    "moderate_message",
    "moderate_text",
    "moderate_texts",
    "moderator_group_ensure",
    "open_for_worker",
    "report_create",
    "retry_pending",
    "run_case",
    "run_cases",
    "run_forever",
    "schedule",
    "wake",
    "watch",
]
