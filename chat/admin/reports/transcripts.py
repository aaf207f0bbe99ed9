"""CSV transcripts for staff export: every stored message of some conversations, with
cells a spreadsheet could run as formulas defused; and the moderation cases of messages.
Reads only."""

import csv
import unicodedata
import uuid
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import IO

from django.db.models import QuerySet

from chat.models import Conversation, Message, ModerationCase

CSV_COLUMNS = (
    "conversation_id",
    "conversation_title",
    "conversation_owner",
    "message_id",
    "created_at",
    "completed_at",
    "role",
    "author",
    "status",
    "model",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "usage_estimated",
    "ttft_ms",
    "duration_ms",
    "error_code",
    "redacted",
    "moderation",
    "content",
)
# A cell starting with one of these is a formula to spreadsheet programs (OWASP "CSV
# injection"): model output must not run as one on a reviewer's machine.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _could_start_a_formula(text: str) -> bool:
    """Whether a spreadsheet could read the cell as a formula: a formula character first,
    or after leading whitespace or invisible characters (spreadsheets skip spaces), in
    any compatibility form: the full-width (U+FF1D, U+FF0B, U+FF0D, U+FF20) and small
    forms of `=+-@` are read as those."""
    for char in text:
        if unicodedata.normalize("NFKC", char).startswith(_FORMULA_START):
            return True
        if not (char.isspace() or unicodedata.category(char) == "Cf"):
            return False
    return False


def csv_cell(value: object) -> str:
    """One CSV cell: text a spreadsheet could read as a formula gets a leading apostrophe;
    everything else is exactly as stored."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    text = str(value)
    return "'" + text if isinstance(value, str) and _could_start_a_formula(text) else text


def cases_by_message(message_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, list[ModerationCase]]:
    """The moderation cases of these messages, oldest first, keyed by message id."""
    found: dict[uuid.UUID, list[ModerationCase]] = defaultdict(list)
    ids = list(message_ids)
    for start in range(0, len(ids), 500):
        for case in ModerationCase.objects.filter(message_id__in=ids[start : start + 500]).order_by(
            "created_at", "pk"
        ):
            found[case.message_id].append(case)
    return found


def write_transcripts_csv(out: IO[str], conversations: QuerySet[Conversation]) -> int:
    """Every stored message of these conversations as CSV rows, oldest first per
    conversation (staff export: redacted messages keep their text, marked `redacted`).
    Returns the number of message rows."""
    from chat.moderation import message_moderation_state

    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    rows = 0
    for conversation in conversations.select_related("owner").order_by("created_at", "pk"):
        messages = list(
            Message.objects.filter(conversation=conversation)
            .select_related("author")
            .order_by("created_at", "pk")
        )
        cases = cases_by_message(m.pk for m in messages)
        for m in messages:
            state = message_moderation_state([c.state for c in cases.get(m.pk, [])])
            writer.writerow(
                [
                    csv_cell(v)
                    for v in (
                        str(conversation.pk),
                        conversation.title,
                        conversation.owner.get_username(),
                        str(m.pk),
                        m.created_at,
                        m.completed_at,
                        m.role,
                        m.author.get_username() if m.author else "",
                        m.status,
                        m.model,
                        m.finish_reason,
                        m.prompt_tokens,
                        m.completion_tokens,
                        m.total_tokens,
                        m.usage_estimated,
                        m.ttft_ms,
                        m.duration_ms,
                        m.error_code,
                        m.redacted,
                        state,
                        m.content,
                    )
                ]
            )
            rows += 1
    return rows
