"""Per-user token quota and concurrent-generation limit, kept in `TokenUsage` rows.

A generation reserves its worst case (prompt estimate + `max_tokens`) before the upstream
call, inside the transaction that stores the prompt, and settles to the real usage once
stored. Sync functions: callers run them inside `transaction.atomic()`.
"""

from datetime import UTC, datetime, time, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, F, Q, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from chat.exceptions import QuotaExceeded, TooManyGenerations
from chat.models import Message, TokenUsage


def _next_reset(now: datetime) -> datetime:
    return datetime.combine(now.astimezone(UTC).date() + timedelta(days=1), time(), tzinfo=UTC)


def _usage_now(*, user: AbstractBaseUser) -> tuple[int, int]:
    """(answers still generating, tokens spent today): used today plus what answers
    still generating hold. One query, as it is on the path of every prompt."""
    today = timezone.now().astimezone(UTC).date()
    totals = TokenUsage.objects.filter(Q(settled=False) | Q(day=today), user_id=user.pk).aggregate(
        running=Count("pk", filter=Q(settled=False)),
        used=Coalesce(Sum("used", filter=Q(settled=True, day=today)), 0),
        held=Coalesce(Sum("reserved", filter=Q(settled=False, day=today)), 0),
    )
    return totals["running"], totals["used"] + totals["held"]


def reserve(*, user: AbstractBaseUser, message: Message, need: int) -> TokenUsage:
    """Hold `need` tokens for `message`, or raise the limit it would break."""
    # Serialize one user's reservations: two prompts racing cannot both fit the last
    # tokens of the day (a row lock on PostgreSQL; SQLite serializes writers anyway).
    get_user_model().objects.select_for_update().filter(pk=user.pk).values_list("pk").first()
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
