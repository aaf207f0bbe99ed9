"""The moderation endpoint's verdicts, following the marker rules documented in `script`."""

from __future__ import annotations

import re
from typing import Any

from chat.simulator.plan import BadRequest

MODERATION_CATEGORIES = (
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
FLAGGED_SCORE = 0.97
UNFLAGGED_SCORE = 0.001

_FLAG_RE = re.compile(r"\[\[flag:([a-z/\-]+)\]\]", re.IGNORECASE)
_FLAGME_RE = re.compile(r"flagme", re.IGNORECASE)


def moderation_result(text: str) -> dict[str, Any]:
    """The moderation verdict for one input, following the documented marker rules."""
    flagged_categories = {m.group(1).lower() for m in _FLAG_RE.finditer(text)}
    if _FLAGME_RE.search(text):
        flagged_categories.add("violence")
    flagged_categories &= set(MODERATION_CATEGORIES)
    return {
        "flagged": bool(flagged_categories),
        "categories": {name: name in flagged_categories for name in MODERATION_CATEGORIES},
        "category_scores": {
            name: FLAGGED_SCORE if name in flagged_categories else UNFLAGGED_SCORE
            for name in MODERATION_CATEGORIES
        },
        "category_applied_input_types": {name: ["text"] for name in MODERATION_CATEGORIES},
    }


def moderation_inputs(body: Any) -> list[str]:
    """The input strings of a moderation request."""
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    value = body.get("input")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise BadRequest("'input' must be a string or a list of strings", "input")
