"""Per-user token quota and concurrent-generation limit, kept in `TokenUsage` rows.

A generation reserves its worst case (prompt estimate + `max_tokens`) before the upstream
call, inside the transaction that stores the prompt, and settles to the real usage once
stored. Sync functions: callers run them inside `transaction.atomic()`.
"""

from datetime import UTC, datetime, time, timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone

from chat.domain import sql
from chat.domain.tokens import estimate_text_tokens
from chat.exceptions import QuotaExceeded, TooManyGenerations
from chat.models import Message, TokenUsage


def _next_reset(now: datetime) -> datetime:
    return datetime.combine(now.astimezone(UTC).date() + timedelta(days=1), time(), tzinfo=UTC)


def _usage_now(*, user: AbstractBaseUser) -> tuple[int, int]:
    """(answers still generating, tokens spent today): used today plus what answers
    still generating hold. One statement, written out (chat/domain/sql.py), as every prompt
    reads it."""
    today = timezone.now().astimezone(UTC).date()
    running, spent = sql.fetch_one(
        f"""
        SELECT
            COALESCE(SUM(CASE WHEN settled = %s THEN 1 ELSE 0 END), 0),
            COALESCE(SUM(CASE WHEN day = %s
                THEN CASE WHEN settled = %s THEN COALESCE(used, 0) ELSE reserved END
                ELSE 0 END), 0)
        FROM {sql.table(TokenUsage)}
        WHERE user_id = %s AND (settled = %s OR day = %s)
        """,
        [False, sql.date_param(today), True, user.pk, False, sql.date_param(today)],
    )
    return int(running), int(spent)


def lock_user_reading_rate(*, user: AbstractBaseUser, since: datetime, nth: int) -> datetime | None:
    """Serialize one user's reservations until the transaction ends: two prompts racing
    cannot both fit the last tokens of the day (a row lock on PostgreSQL; SQLite
    serializes writers anyway). Reads in the same statement when the user's `nth` newest
    generation since `since` started (every prompt and every regenerate reserves one),
    for the caller's rate check (None when there is no such generation, or no such user).

    The usage itself is read by a later statement (`_usage_now`), never here: a
    statement that waited for the lock still sees what it saw when it started, not the
    reservation the lock's previous holder just committed."""
    users, pk = sql.user_table()
    row = sql.fetch_one(
        f"""
        SELECT (
            SELECT t.created_at FROM {sql.table(TokenUsage)} t
            WHERE t.user_id = u.{pk} AND t.created_at >= %s
            ORDER BY t.created_at DESC LIMIT 1 OFFSET %s
        )
        FROM {users} u WHERE u.{pk} = %s{sql.for_update()}
        """,
        [sql.datetime_param(since), nth - 1, user.pk],
    )
    return sql.datetime_value(row[0]) if row else None


def reserve(*, user: AbstractBaseUser, message: Message, need: int) -> None:
    """Hold `need` tokens for `message`, or raise the limit it would break. The caller
    holds `lock_user_reading_rate` in this transaction (it reads the prompt rate with it)."""
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
    sql.insert(
        [
            TokenUsage(
                user_id=user.pk,
                message=message,
                day=timezone.now().astimezone(UTC).date(),
                reserved=need,
            )
        ]
    )


def settle(*, message_id, used: int | None) -> None:
    """Replace the reservation by what was really spent (the reservation if unknown)."""
    sql.execute(
        f"UPDATE {sql.table(TokenUsage)} SET used = COALESCE(%s, reserved), settled = %s"
        " WHERE message_id = %s AND settled = %s",
        [used, True, sql.uuid_param(message_id), False],
    )


def estimate_for_orphan(*, message: Message) -> tuple[int, int, int] | None:
    """(prompt, completion, total) tokens of an answer whose runner died, estimated:
    the prompt from its reservation (what was reserved beyond OPENAI_MAX_TOKENS), the
    completion from the stored text (about four characters a token); never more than
    the reservation. None when the answer reserved nothing."""
    reserved = (
        TokenUsage.objects.filter(message_id=message.pk).values_list("reserved", flat=True).first()
    )
    if reserved is None:
        return None
    prompt = max(0, reserved - settings.OPENAI_MAX_TOKENS)
    completion = min(estimate_text_tokens(message.content), reserved - prompt)
    return prompt, completion, prompt + completion
