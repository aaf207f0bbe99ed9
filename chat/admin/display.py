"""How the admin pages show text and moderation states: one-line excerpts and state
badges (plain text or `format_html`: escaped by Django)."""

from django.utils.html import format_html
from django.utils.text import Truncator

from chat.models import ModerationCase

State = ModerationCase.State

EXCERPT_CHARS = 140


def excerpt(text: str, chars: int = EXCERPT_CHARS) -> str:
    """A one-line preview (plain text: the caller's template escapes it)."""
    return Truncator(" ".join(text.split())).chars(chars)


def state_badge(state: str, label: str | None = None) -> str:
    """A coloured label for a moderation state (the class comes from a fixed set)."""
    if not state:
        return format_html('<span class="mod-badge mod-none">{}</span>', label or "none")
    known = state in State.values
    return format_html(
        '<span class="mod-badge mod-{}">{}</span>',
        state if known else "none",
        label or (State(state).label if known else state),
    )
