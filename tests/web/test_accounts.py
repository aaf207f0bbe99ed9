"""Accounts: sign-up (and turning it off), sign-in and sign-out pages, the demo command,
and the pages' fitness for a strict Content-Security-Policy."""

import re
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import call_command

from chat.management.commands import demo
from chat.management.commands.demo import DEMO_TITLE, DEMO_USERS
from chat.models import Conversation, Membership, Role

pytestmark = pytest.mark.django_db

GOOD_PASSWORD = "correct-horse-battery-7"
ROOT = Path(__file__).resolve().parents[2]


def signup(client, username="newcomer", password=GOOD_PASSWORD, repeat=None, **extra):
    data = {"username": username, "password1": password, "password2": repeat or password}
    return client.post("/accounts/signup/", {**data, **extra})


def test_signup_creates_the_account_signs_it_in_and_opens_the_chat(client):
    response = signup(client)
    assert response.status_code == 302
    assert response["Location"] == "/"
    user = get_user_model().objects.get(username="newcomer")
    assert client.session["_auth_user_id"] == str(user.pk)
    assert client.get("/").status_code == 200


@pytest.mark.parametrize(
    ("next_url", "expected"),
    [
        ("/c/0f0e0d0c-0b0a-4909-8807-060504030201/", "/c/0f0e0d0c-0b0a-4909-8807-060504030201/"),
        ("https://evil.example/", "/"),
        ("//evil.example/x", "/"),
    ],
)
def test_signup_follows_only_a_same_site_next(client, next_url, expected):
    response = signup(client, next=next_url)
    assert response["Location"] == expected


@pytest.mark.parametrize(
    ("username", "password", "repeat", "field"),
    [
        ("alice", GOOD_PASSWORD, None, "username"),  # taken
        ("newcomer", "short", None, "password2"),  # too short
        ("newcomer", "12345678901", None, "password2"),  # all numeric
        ("newcomer", "password123", None, "password2"),  # too common
        ("newcomer", GOOD_PASSWORD, GOOD_PASSWORD + "x", "password2"),  # mismatch
        ("bad name!", GOOD_PASSWORD, None, "username"),  # characters
    ],
)
def test_signup_refuses_bad_input_with_the_reason_beside_the_field(
    client, django_user_model, username, password, repeat, field
):
    django_user_model.objects.create_user("alice", password="x")
    response = signup(client, username, password, repeat)
    assert response.status_code == 200
    assert response.context["form"].errors[field]
    assert "_auth_user_id" not in client.session
    assert get_user_model().objects.count() == 1  # only alice


def test_signup_can_be_turned_off(client, settings):
    settings.SIGNUP_ENABLED = False
    assert client.get("/accounts/signup/").status_code == 404
    assert signup(client).status_code == 404
    assert not get_user_model().objects.filter(username="newcomer").exists()
    assert b"/accounts/signup/" not in client.get("/accounts/login/").content


def test_the_sign_in_page_links_to_signup_while_it_is_on(client, settings):
    settings.SIGNUP_ENABLED = True
    page = client.get("/accounts/login/?next=/c/x/").content.decode()
    assert 'href="/accounts/signup/?next=/c/x/"' in page


def test_a_signed_in_user_is_sent_on_from_signup(client, django_user_model):
    client.force_login(django_user_model.objects.create_user("alice", password="x"))
    response = client.get("/accounts/signup/")
    assert response.status_code == 302
    assert response["Location"] == "/"


def test_sign_in_page_then_sign_out_by_post(client, django_user_model):
    django_user_model.objects.create_user("alice", password=GOOD_PASSWORD)
    response = client.post(
        "/accounts/login/", {"username": "alice", "password": GOOD_PASSWORD, "next": "/"}
    )
    assert response.status_code == 302
    page = client.get("/").content.decode()
    assert 'id="current-user">alice<' in page
    assert 'action="/accounts/logout/"' in page
    assert client.post("/accounts/logout/").status_code == 302
    assert client.get("/").status_code == 302  # back to the sign-in page


def test_the_chat_page_needs_a_session(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_demo_command_makes_two_users_and_one_shared_conversation_idempotently():
    out = StringIO()
    call_command("demo", stdout=out)
    call_command("demo", stdout=out)  # a second `make run` changes nothing
    for username, password in DEMO_USERS:
        assert authenticate(username=username, password=password) is not None
        assert f"{username} / {password}" in out.getvalue()
    conversation = Conversation.objects.get(title=DEMO_TITLE)
    roles = dict(conversation.memberships.values_list("user__username", "role"))
    assert roles == {"alice": Role.OWNER, "bob": Role.MEMBER}
    assert f"/c/{conversation.id}/" in out.getvalue()
    assert Membership.objects.count() == 2


def _demo(*args: str) -> str:
    out = StringIO()
    call_command("demo", *args, stdout=out)
    return out.getvalue()


def test_demo_with_debug_off_creates_missing_accounts_and_keeps_existing_passwords(
    settings, django_user_model
):
    settings.DEBUG = False  # a local cluster runs `demo` like this
    django_user_model.objects.create_user("alice", password="alices-own-secret-9")
    out = _demo()
    assert authenticate(username="alice", password="alices-own-secret-9") is not None
    assert authenticate(username="alice", password="alice-demo-pass") is None
    assert authenticate(username="bob", password="bob-demo-pass") is not None
    assert demo.KEPT.format(username="alice") in out
    assert demo.CREATED.format(username="bob", password="bob-demo-pass") in out
    assert "alice-demo-pass" not in out  # never printed as if it worked


@pytest.mark.parametrize(("debug", "args"), [(True, ()), (False, ("--reset-passwords",))])
def test_demo_resets_existing_passwords_in_debug_or_when_asked(
    settings, django_user_model, debug, args
):
    settings.DEBUG = debug
    django_user_model.objects.create_user("alice", password="alices-own-secret-9")
    out = _demo(*args)
    assert authenticate(username="alice", password="alice-demo-pass") is not None
    assert demo.RESET.format(username="alice", password="alice-demo-pass") in out


def test_demo_if_debug_changes_nothing_with_debug_off(settings, django_user_model):
    settings.DEBUG = False
    django_user_model.objects.create_user("alice", password="alices-own-secret-9")
    assert _demo("--if-debug").strip() == demo.SKIPPED_NOT_DEBUG
    assert authenticate(username="alice", password="alices-own-secret-9") is not None
    assert not django_user_model.objects.filter(username="bob").exists()
    assert not Conversation.objects.exists()
    settings.DEBUG = True
    _demo("--if-debug")
    assert authenticate(username="bob", password="bob-demo-pass") is not None


def test_make_run_asks_for_the_demo_users_only_in_debug():
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\nrun:", 1)[1].split("\n\n", 1)[0]
    demo_lines = [line.strip() for line in recipe.splitlines() if "manage.py demo" in line]
    assert demo_lines == ["$(BIN)/python manage.py demo --if-debug"]


# The pages must run under `script-src 'self'` and `style-src 'self'`: no inline script
# (JSON data blocks are not scripts), no inline handler, no style attribute.
INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)(?![^>]*application/json)[^>]*>", re.I)
INLINE_HANDLER = re.compile(r"<[^>]+\son[a-z]+\s*=", re.I)
STYLE_ATTRIBUTE = re.compile(r"<[^>]+\sstyle\s*=", re.I)


@pytest.mark.parametrize("path", ["/accounts/login/", "/accounts/signup/", "/", "/c/{id}/"])
def test_pages_have_no_inline_script_handler_or_style(client, django_user_model, path):
    user = django_user_model.objects.create_user("alice", password="x")
    conversation = Conversation.objects.create(owner=user, title="t")
    if path.startswith(("/c/", "/")) and not path.startswith("/accounts/"):
        client.force_login(user)
    page = client.get(path.format(id=conversation.id)).content.decode()
    assert not INLINE_SCRIPT.search(page)
    assert not INLINE_HANDLER.search(page)
    assert not STYLE_ATTRIBUTE.search(page)
    for src in re.findall(r'<script[^>]*\bsrc="([^"]+)"', page):
        assert src.startswith("/static/"), src  # nothing from a CDN
