"""Headers, cookies, CSRF, sign-in limits and production settings."""

import os
import subprocess
import sys
from importlib.metadata import version

import pytest
from django.test import Client

from tests.live import ROOT

pytestmark = pytest.mark.django_db

PRODUCTION_ENV = {
    "DJANGO_SETTINGS_MODULE": "project.settings",
    "DJANGO_SECRET_KEY": "p4Xq9-kzR2wV7nT5mB8cL1sD6fG3hJ0yUeIoAaZxCvNbQlKjHgFdSaPoIuYtRe",
    "DJANGO_DEBUG": "0",
    "DJANGO_ALLOWED_HOSTS": "chat.example.com",
    "DJANGO_CSRF_TRUSTED_ORIGINS": "https://chat.example.com",
    "DJANGO_BEHIND_TLS_PROXY": "1",
    "DJANGO_SSL_REDIRECT": "1",
    "DJANGO_HSTS_SECONDS": "31536000",
    "DJANGO_HSTS_INCLUDE_SUBDOMAINS": "1",
    "DJANGO_HSTS_PRELOAD": "1",
}


def test_the_production_environment_of_the_readme_passes_the_deploy_check():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_"))}
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env={**env, **PRODUCTION_ENV},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    readme = (ROOT / "README.md").read_text()
    for name in PRODUCTION_ENV:
        if name != "DJANGO_SETTINGS_MODULE":
            assert name in readme, f"{name} of the production environment is not in the README"


def test_daphne_has_the_2026_frame_and_header_fixes():
    major, minor, patch = (int(p) for p in version("daphne").split(".")[:3])
    assert (major, minor, patch) >= (4, 2, 2)


def test_pages_carry_a_script_policy_without_inline_scripts(django_user_model):
    client = Client()
    client.force_login(django_user_model.objects.create_user("alice"))
    for path in ("/", "/accounts/login/", "/api/conversations/"):
        policy = client.get(path)["Content-Security-Policy"]
        script_src = next(d for d in policy.split(";") if d.strip().startswith("script-src"))
        assert "'unsafe-inline'" not in script_src
        assert "'unsafe-eval'" not in script_src
        assert "frame-ancestors 'none'" in policy


def test_session_cookie_is_http_only_and_same_site(django_user_model):
    django_user_model.objects.create_user("alice", password="pw-alice-1")
    response = Client().post("/accounts/login/", {"username": "alice", "password": "pw-alice-1"})
    cookie = response.cookies["sessionid"]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"


def test_api_writes_need_the_csrf_token(django_user_model):
    client = Client(enforce_csrf_checks=True)
    client.force_login(django_user_model.objects.create_user("alice"))
    refused = client.post("/api/conversations/", {"title": "x"}, content_type="application/json")
    assert refused.status_code == 403
    client.get("/")  # sets the csrftoken cookie
    token = client.cookies["csrftoken"].value
    accepted = client.post(
        "/api/conversations/",
        {"title": "x"},
        content_type="application/json",
        headers={"X-CSRFToken": token},
    )
    assert accepted.status_code == 201


def test_sign_in_attempts_are_limited_per_username(django_user_model, settings):
    from django.core.cache import cache

    cache.clear()
    settings.LOGIN_ATTEMPTS_PER_15_MIN = 3
    django_user_model.objects.create_user("alice", password="right-password-1")
    django_user_model.objects.create_user("bob", password="right-password-2")
    client = Client()
    for _ in range(3):
        assert (
            client.post("/accounts/login/", {"username": "alice", "password": "no"}).status_code
            == 200
        )
    # Even the right password is refused until the window passes.
    blocked = client.post("/accounts/login/", {"username": "alice", "password": "right-password-1"})
    assert blocked.status_code == 429
    assert b"Too many sign-in attempts" in blocked.content
    # Another account from the same address is not locked out by alice's failures.
    other = client.post("/accounts/login/", {"username": "bob", "password": "right-password-2"})
    assert other.status_code == 302
    cache.clear()


def test_sign_ups_are_limited_per_address(settings):
    from django.contrib.auth import get_user_model
    from django.core.cache import cache

    cache.clear()
    settings.SIGNUPS_PER_HOUR_PER_ADDRESS = 2
    for n in range(2):
        created = Client().post(
            "/accounts/signup/",
            {
                "username": f"new{n}",
                "password1": "a-Long-pass-9931",
                "password2": "a-Long-pass-9931",
            },
        )
        assert created.status_code == 302
    refused = Client().post(
        "/accounts/signup/",
        {"username": "new3", "password1": "a-Long-pass-9931", "password2": "a-Long-pass-9931"},
    )
    assert refused.status_code == 429
    assert b"Too many new accounts" in refused.content
    assert not get_user_model().objects.filter(username="new3").exists()
    cache.clear()
