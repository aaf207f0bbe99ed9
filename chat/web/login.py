"""Sign-in with a limit on failed attempts, shared by `/accounts/login/` and `/admin/login/`.

Failures are counted for `WINDOW_S` per (username, client address), up to
`LOGIN_ATTEMPTS_PER_15_MIN`, and per client address, up to `ADDRESS_FACTOR` times that.
Counting per pair, not per username, means nobody can lock an account's owner out from
elsewhere: failures from one address never refuse a sign-in from another. The address
is `REMOTE_ADDR` as the request reaches Django; no forwarded header is read here.
"""

import hashlib
import logging
import unicodedata

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.decorators import login_not_required
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.views import LoginView
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse

log = logging.getLogger(__name__)

WINDOW_S = 15 * 60
# One address may carry many users (an office behind NAT): it may fail more often.
ADDRESS_FACTOR = 5
TOO_MANY = "Too many sign-in attempts. Wait a few minutes and try again."
TOO_MANY_CODE = "too_many_attempts"
# Set on the request by a refused form; the views answer 429 when it is there.
_REFUSED_ATTR = "sign_in_refused"


def normalize_username(raw: str) -> str:
    """The username as the limit counts it: stripped and NFKC-normalized as Django's
    sign-in form does, then case-folded, so `Alice` and `ALICE` count as `alice`."""
    return unicodedata.normalize("NFKC", raw.strip()).casefold()[:150]


def _keys(*, username: str, address: str) -> tuple[str, str]:
    # Hashed: a typed username may hold anything (spaces, a mistyped password), and a
    # cache key need not show it.
    pair = hashlib.sha256(f"{normalize_username(username)}\0{address}".encode()).hexdigest()
    return f"login-fail:pair:{pair}", f"login-fail:addr:{address}"


def attempts_exhausted(*, username: str, address: str) -> bool:
    """Whether a sign-in as `username` from `address` is refused without checking it."""
    limit = settings.LOGIN_ATTEMPTS_PER_15_MIN
    if not limit:
        return False
    pair_key, address_key = _keys(username=username, address=address)
    counts = cache.get_many([pair_key, address_key])
    return counts.get(pair_key, 0) >= limit or counts.get(address_key, 0) >= limit * ADDRESS_FACTOR


def attempt_failed(*, username: str, address: str) -> None:
    """Count one failed sign-in against the pair and the address, for `WINDOW_S`."""
    for key in _keys(username=username, address=address):
        cache.add(key, 0, WINDOW_S)
        try:
            cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.set(key, 1, WINDOW_S)


def attempt_succeeded(*, username: str, address: str) -> None:
    """Clear the pair's failures. The address keeps its own: signing in to an account of
    one's own must not reset a count of guesses at others."""
    pair_key, _ = _keys(username=username, address=address)
    cache.delete(pair_key)


class AttemptLimitMixin:
    """For an `AuthenticationForm`: refuses with `TOO_MANY`, without checking the
    password, once the limit is reached; counts every refused password (wrong, or an
    account that may not sign in here); clears the pair's count on success."""

    request: HttpRequest | None

    def clean(self) -> dict:
        username = self.data.get("username") or ""
        address = self.request.META.get("REMOTE_ADDR", "") if self.request else ""
        if attempts_exhausted(username=username, address=address):
            if self.request is not None:
                setattr(self.request, _REFUSED_ATTR, True)
            log.warning("sign-in refused: too many failures from %s", address)
            raise ValidationError(TOO_MANY, code=TOO_MANY_CODE)
        try:
            cleaned = super().clean()
        except ValidationError:
            attempt_failed(username=username, address=address)
            raise
        if self.get_user() is not None:
            attempt_succeeded(username=username, address=address)
        return cleaned


class LimitedAuthenticationForm(AttemptLimitMixin, AuthenticationForm):
    """Django's sign-in form under the attempt limit."""


class LimitedAdminAuthenticationForm(AttemptLimitMixin, AdminAuthenticationForm):
    """The admin's sign-in form (staff only) under the same limit and counters."""


def _answer_429_if_refused(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    if getattr(request, _REFUSED_ATTR, False):
        response.status_code = 429
    return response


class RateLimitedLoginView(LoginView):
    """Django's LoginView under the attempt limit: the form shows `TOO_MANY` with 429."""

    authentication_form = LimitedAuthenticationForm

    def post(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        return _answer_429_if_refused(request, super().post(request, *args, **kwargs))


@login_not_required
def admin_login(request: HttpRequest) -> HttpResponse:
    """`/admin/login/`: the admin site's own page, whose form (`admin.site.login_form`,
    set in chat/admin/__init__.py) shares the limit and counters; a refusal answers 429."""
    return _answer_429_if_refused(request, admin.site.login(request))
