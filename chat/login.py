"""Sign-in with a limit on attempts, per username and per client address."""

import logging

from django.conf import settings
from django.contrib.auth.views import LoginView
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse

log = logging.getLogger(__name__)

WINDOW_S = 15 * 60
ADDRESS_FACTOR = 5
TOO_MANY = "Too many sign-in attempts. Wait a few minutes and try again."


def _keys(request: HttpRequest) -> list[str]:
    username = (request.POST.get("username") or "").strip().lower()[:150]
    address = request.META.get("REMOTE_ADDR", "")
    return [f"login-fail:user:{username}", f"login-fail:addr:{address}"]


class RateLimitedLoginView(LoginView):
    """Django's LoginView, answering 429 once the failures in the window reach the limit.

    Only failures count, so a user who types their password right is never held up
    by their own earlier successes; a success clears the username's counter.
    """

    def post(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        keys = _keys(request)
        limit = settings.LOGIN_ATTEMPTS_PER_15_MIN
        # One address may carry many users (an office behind NAT): allow it more.
        limits = (limit, limit * ADDRESS_FACTOR)
        if limit and any((cache.get(k) or 0) >= n for k, n in zip(keys, limits, strict=True)):
            log.warning("sign-in refused: too many failures (%s)", keys[0].split(":", 2)[-1])
            form = self.get_form()
            form.add_error(None, TOO_MANY)
            response = self.form_invalid(form)
            response.status_code = 429
            return response
        response = super().post(request, *args, **kwargs)
        if response.status_code == 302:
            cache.delete(keys[0])
        else:
            for k in keys:
                cache.add(k, 0, WINDOW_S)
                cache.incr(k)
        return response
