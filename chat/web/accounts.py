"""Sign-up for new users (off with `SIGNUP_ENABLED=0`). Sign-in and sign-out are
Django's own views at `/accounts/login/` and `/accounts/logout/`."""

from typing import Any

from django.conf import settings
from django.contrib.auth import login
from django.contrib.auth.forms import UserCreationForm
from django.core.cache import cache
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.http import require_http_methods

SIGNUP_DISABLED = "Sign-up is turned off on this server."
TOO_MANY_SIGNUPS = "Too many new accounts from this address; try again later."
SIGNUP_WINDOW_S = 3600


def _signup_key(request: HttpRequest) -> str:
    return f"signup:addr:{request.META.get('REMOTE_ADDR', '')}"


def signup_context(request: HttpRequest) -> dict[str, Any]:
    """Templates link to sign-up only when it is on."""
    return {"signup_enabled": settings.SIGNUP_ENABLED}


def _next_url(request: HttpRequest) -> str:
    """Where to go after signing up: a same-site `next`, else the chat page."""
    target = request.POST.get("next") or request.GET.get("next") or ""
    safe = url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    )
    return target if safe else settings.LOGIN_REDIRECT_URL


@never_cache
@csrf_protect
@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    """Create an account (username + password twice, Django's password validators) and
    sign it in. 404 while `SIGNUP_ENABLED` is off."""
    if not settings.SIGNUP_ENABLED:
        raise Http404(SIGNUP_DISABLED)
    if request.user.is_authenticated:
        return redirect(_next_url(request))
    form = UserCreationForm(request.POST if request.method == "POST" else None)
    limit = settings.SIGNUPS_PER_HOUR_PER_ADDRESS
    if request.method == "POST" and limit and (cache.get(_signup_key(request)) or 0) >= limit:
        # One address creating account after account is a bot filling the database.
        form.add_error(None, TOO_MANY_SIGNUPS)
        response = render(request, "registration/signup.html", {"form": form, "next": ""})
        response.status_code = 429
        return response
    if request.method == "POST" and form.is_valid():
        user = form.save()
        cache.add(_signup_key(request), 0, SIGNUP_WINDOW_S)
        cache.incr(_signup_key(request))
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect(_next_url(request))
    return render(
        request,
        "registration/signup.html",
        {"form": form, "next": request.POST.get("next") or request.GET.get("next", "")},
    )
