"""Headers, cookies, CSRF, sign-in limits and production settings."""

import os
import shutil
import stat
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import Client

from chat.web import login
from project.secret_key import KEY_FILE_EMPTY, debug_secret_key
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


def _settings_process(checkout: Path, debug: str) -> subprocess.Popen:
    """A process that imports the checkout's settings and prints its base dir and key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_"))}
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from project import settings as s; print(s.BASE_DIR, s.SECRET_KEY)",
        ],
        cwd=checkout,  # first on sys.path: the copy's `project`, not the repository's
        env={**env, "DJANGO_DEBUG": debug},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _key_of(process: subprocess.Popen, checkout: Path) -> str:
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    base_dir, key = out.split()
    assert base_dir == str(checkout)
    return key


def test_a_debug_server_without_a_key_keeps_one_key_per_checkout(tmp_path):
    # A copy of the settings package stands for a checkout: the repository gets no file.
    checkout = tmp_path / "checkout"
    shutil.copytree(
        ROOT / "project", checkout / "project", ignore=shutil.ignore_patterns("__pycache__")
    )
    repo_key_existed = (ROOT / ".secret_key").exists()
    # Two processes starting at once (two `make run`s) agree on one key...
    starting = [_settings_process(checkout, "1") for _ in range(2)]
    first, second = (_key_of(p, checkout) for p in starting)
    assert first == second and len(first) >= 50
    stored = checkout / ".secret_key"
    assert stored.read_text().strip() == first
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert sorted(p.name for p in checkout.iterdir()) == [".secret_key", "project"]
    # ...which survives a restart...
    assert _key_of(_settings_process(checkout, "1"), checkout) == first
    # ...and production never reads it: no DJANGO_SECRET_KEY, no start.
    production = _settings_process(checkout, "0")
    _, err = production.communicate(timeout=60)
    assert production.returncode != 0 and "DJANGO_SECRET_KEY is not set" in err
    assert (ROOT / ".secret_key").exists() == repo_key_existed
    assert "/.secret_key" in (ROOT / ".gitignore").read_text().split()


def test_an_emptied_key_file_is_refused_with_what_to_do(tmp_path):
    (tmp_path / ".secret_key").write_text("\n")
    with pytest.raises(ImproperlyConfigured) as refused:
        debug_secret_key(tmp_path / ".secret_key")
    assert str(refused.value) == KEY_FILE_EMPTY.format(path=tmp_path / ".secret_key")


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


@pytest.fixture
def fresh_cache():
    """The sign-in counters live in the cache: each test starts and ends with none."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


def _sign_in(client: Client, username: str, password: str, *, address: str, page: str):
    return client.post(page, {"username": username, "password": password}, REMOTE_ADDR=address)


def test_sign_in_attempts_are_limited_per_username_and_address(
    django_user_model, settings, fresh_cache
):
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
    assert login.TOO_MANY in blocked.content.decode()
    # Another account from the same address is not locked out by alice's failures.
    other = client.post("/accounts/login/", {"username": "bob", "password": "right-password-2"})
    assert other.status_code == 302


LOGIN_PAGES = ["/accounts/login/", "/admin/login/"]


@pytest.mark.parametrize(("fail_at", "then_at"), [(a, b) for a in LOGIN_PAGES for b in LOGIN_PAGES])
def test_the_admin_sign_in_has_the_same_limit_and_shares_the_counters(
    django_user_model, settings, fresh_cache, fail_at, then_at
):
    settings.LOGIN_ATTEMPTS_PER_15_MIN = 3
    django_user_model.objects.create_superuser("root", password="right-password-3")
    client = Client()
    for _ in range(3):
        assert _sign_in(client, "root", "no", address="10.0.0.1", page=fail_at).status_code == 200
    blocked = _sign_in(client, "root", "right-password-3", address="10.0.0.1", page=then_at)
    assert blocked.status_code == 429
    assert login.TOO_MANY in blocked.content.decode()
    assert "_auth_user_id" not in client.session
    # The owner's own address is not locked out.
    signed_in = _sign_in(client, "root", "right-password-3", address="10.0.0.2", page=then_at)
    assert signed_in.status_code == 302
    assert client.session["_auth_user_id"] == str(django_user_model.objects.get().pk)


def test_an_attackers_failures_never_lock_the_owner_out_at_their_own_address(
    django_user_model, settings, fresh_cache
):
    settings.LOGIN_ATTEMPTS_PER_15_MIN = 3
    django_user_model.objects.create_user("alice", password="right-password-1")
    attacker, owner = Client(), Client()
    # Case variants are one username: the attacker's third try is already refused.
    for username in ("alice", "ALICE", "Alice"):
        wrong = _sign_in(attacker, username, "guess", address="203.0.113.9", page="/admin/login/")
        assert wrong.status_code == 200
    for page in LOGIN_PAGES:
        refused = _sign_in(attacker, "aLiCe", "guess", address="203.0.113.9", page=page)
        assert refused.status_code == 429
    at_home = _sign_in(
        owner, "alice", "right-password-1", address="198.51.100.7", page="/accounts/login/"
    )
    assert at_home.status_code == 302 and owner.session.get("_auth_user_id")


def test_one_address_guessing_many_usernames_is_stopped_by_the_address_limit(
    django_user_model, settings, fresh_cache
):
    settings.LOGIN_ATTEMPTS_PER_15_MIN = 2
    django_user_model.objects.create_user("bob", password="right-password-2")
    client = Client()
    per_address = 2 * login.ADDRESS_FACTOR
    for n in range(per_address):  # one failure each: no (username, address) limit is hit
        page = LOGIN_PAGES[n % 2]
        assert (
            _sign_in(client, f"user{n}", "guess", address="10.9.9.9", page=page).status_code == 200
        )
    for page in LOGIN_PAGES:
        refused = _sign_in(client, "bob", "right-password-2", address="10.9.9.9", page=page)
        assert refused.status_code == 429
    elsewhere = _sign_in(
        client, "bob", "right-password-2", address="10.9.9.10", page="/accounts/login/"
    )
    assert elsewhere.status_code == 302


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
