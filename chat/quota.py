"""Per-user token quota and concurrent-generation limit, kept in `TokenUsage` rows.

A generation reserves its worst case (prompt estimate + `max_tokens`) before the upstream
call, inside the transaction that stores the prompt, and settles to the real usage once
stored. Sync functions: callers run them inside `transaction.atomic()`.
"""

from datetime import UTC, datetime, time, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, F, Q, Sum
from django.utils import timezone

from chat.exceptions import QuotaExceeded, TooManyGenerations
from chat.models import Message, TokenUsage
from chat.selectors import the_one


def _next_reset(now: datetime) -> datetime:
    return datetime.combine(now.astimezone(UTC).date() + timedelta(days=1), time(), tzinfo=UTC)


def _usage_now(*, user: AbstractBaseUser) -> tuple[int, int]:
    """(answers still generating, tokens spent today): used today plus what answers
    still generating hold. One query, as it is on the path of every prompt."""
    today = timezone.now().astimezone(UTC).date()
    # Grouped by (settled, day), a handful of rows summed here: the same totals as one
    # aggregate with a FILTER per total, for about half the ORM's Python.
    groups = (
        TokenUsage.objects.filter(Q(settled=False) | Q(day=today), user_id=user.pk)
        .order_by()
        .values_list("settled", "day")
        .annotate(Count("pk"), Sum("used"), Sum("reserved"))
    )
    running = spent = 0
    for settled, day, count, used, reserved in groups:
        if not settled:
            running += count
        if day == today:
            spent += (used if settled else reserved) or 0
    return running, spent


def lock_user(*, user: AbstractBaseUser, **reads: Any) -> dict[str, Any] | None:
    """Serialize one user's reservations until the transaction ends: two prompts racing
    cannot both fit the last tokens of the day (a row lock on PostgreSQL; SQLite
    serializes writers anyway). `reads` (expressions) are read in the same statement, so
    a caller's own check costs no statement of its own; None if the user has no row.

    The usage itself is read by a later statement (`_usage_now`), never here: a
    statement that waited for the lock still sees what it saw when it started, not the
    reservation the lock's previous holder just committed."""
    users = get_user_model().objects.select_for_update().filter(pk=user.pk)
    return the_one(users.values("pk", **reads))


def reserve(*, user: AbstractBaseUser, message: Message, need: int) -> TokenUsage:
    """Hold `need` tokens for `message`, or raise the limit it would break. The caller
    holds `lock_user` in this transaction (it reads the prompt rate with it)."""
    running, spent = _usage_now(user=user)
    if running >= settings.MAX_GENERATIONS_PER_USER:
        raise TooManyGenerations(
            f"At most {settings.MAX_GENERATIONS_PER_USER} answers may generate at once."
        )
    quota = settings.DAILY_TOKEN_QUOTA
    if quota and spent + need > quota:
        now = timezone.now()
        reset = _next_reset(now)
        raise QuotaExceeded(
            f"Daily quota of {quota} tokens reached; it resets at {reset:%H:%M} UTC.",
            retry_after=round((reset - now).total_seconds()),
            reset_at=reset.isoformat(),
        )
    return TokenUsage.objects.create(
        user_id=user.pk, message=message, day=timezone.now().astimezone(UTC).date(), reserved=need
    )


def settle(*, message_id, used: int | None) -> None:
    """Replace the reservation by what was really spent (the reservation if unknown)."""
    TokenUsage.objects.filter(message_id=message_id, settled=False).update(
        used=F("reserved") if used is None else used, settled=True
    )
