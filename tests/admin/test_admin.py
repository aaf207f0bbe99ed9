"""The staff admin as a moderator, a plain staff member and a superuser would use it: the
review queue, transcripts, CSV export, the access log, the usage page; escaping of model
output; who may do what."""

import csv
import io
import re
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse
from django.utils import timezone

from chat import moderation
from chat.admin.reports import transcripts
from chat.admin.reports import usage as usage_report
from chat.domain import services
from chat.models import AdminAccessLog, Message, ModerationCase, Role

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
CASE_ROW = re.compile(r'<th class="field-case"><a href="/admin/chat/moderationcase/(\d+)/change/')
State = ModerationCase.State
XSS = (
    '<script>alert("x")</script><img src=x onerror="alert(1)">'
    '<a href="javascript:alert(2)">click</a></textarea><b onmouseover=alert(3)>bold</b>'
)


@pytest.fixture
def people(django_user_model):
    # No passwords (the tests sign in with force_login): hashing them is slow.
    make = django_user_model.objects.create_user
    people = {
        "alice": make("alice"),
        "bob": make("bob"),
        "moderator": make("moderator", is_staff=True),
        "staff": make("staff", is_staff=True),  # staff, but not a moderator
        "root": django_user_model.objects.create_superuser("root", password=None),
    }
    # Created by migration 0004: this also proves the migration made it.
    people["moderator"].groups.add(Group.objects.get(name=moderation.MODERATOR_GROUP))
    return people


def _answer(conversation, prompt_author, text, *, tokens=(10, 5), model="gpt-4o-mini", **extra):
    prompt = Message.objects.create(
        conversation=conversation, role="user", author=prompt_author, content=f"asked: {text[:20]}"
    )
    return Message.objects.create(
        conversation=conversation,
        role="assistant",
        reply_to=prompt,
        content=text,
        status=extra.pop("status", "complete"),
        model=model,
        prompt_tokens=tokens[0],
        completion_tokens=tokens[1],
        total_tokens=sum(tokens),
        ttft_ms=120,
        duration_ms=900,
        completed_at=timezone.now(),
        **extra,
    )


def _verdict(flagged: bool, category: str = "violence") -> moderation.Verdict:
    scores = {c: (0.97 if flagged and c == category else 0.001) for c in moderation.CATEGORIES}
    return moderation.Verdict(
        flagged=flagged,
        categories=[category] if flagged else [],
        scores=scores,
        model="omni-moderation-latest",
        raw={"flagged": flagged},
    )


def _case(message, flagged: bool, category: str = "violence") -> ModerationCase:
    case = moderation.case_open(message_id=message.pk)
    moderation._record_result(case_id=case.pk, verdict=_verdict(flagged, category))
    case.refresh_from_db()
    return case


@pytest.fixture
def data(people):
    trip = services.conversation_create(owner=people["alice"], title="Trip plans")
    services.member_set(conversation=trip, actor=people["alice"], username="bob", role=Role.MEMBER)
    hostile = services.conversation_create(owner=people["bob"], title="Hostile <b>title</b>")
    calm = _answer(trip, people["alice"], "Take the coastal road.", tokens=(20, 7))
    rude = _answer(trip, people["bob"], "flagme: a violent reply", tokens=(30, 9))
    xss = _answer(hostile, people["bob"], XSS, tokens=(40, 11), model="sim-1")
    return {
        "trip": trip,
        "hostile": hostile,
        "calm": calm,
        "rude": rude,
        "xss": xss,
        "calm_case": _case(calm, False),
        "rude_case": _case(rude, True),
        "xss_case": _case(xss, True, "hate"),
    }


def _client(client, user):
    client.force_login(user)
    return client


def _text(response) -> str:
    return response.content.decode()


# ---- permissions --------------------------------------------------------------------


def test_the_migration_gives_the_moderator_group_review_permissions_only(people):
    group = Group.objects.get(name=moderation.MODERATOR_GROUP)
    codenames = set(group.permissions.values_list("codename", flat=True))
    assert codenames == set(moderation.MODERATOR_PERMISSIONS)
    assert moderation.moderator_group_ensure() == group


ADMIN_PAGES = [
    "/admin/",
    "/admin/chat/moderationcase/",
    "/admin/chat/moderationcase/?state__exact=flagged&category=violence",
    "/admin/chat/conversation/",
    "/admin/chat/conversation/?q=coastal&status=complete",
    "/admin/chat/message/",
    "/admin/chat/message/usage/",
    "/admin/chat/conversation/export/?q=coastal",
]


@pytest.mark.parametrize("url", ADMIN_PAGES)
def test_pages_render_for_a_moderator_and_are_forbidden_to_plain_staff(client, people, data, url):
    assert _client(client, people["moderator"]).get(url).status_code == 200
    client.logout()
    response = _client(client, people["staff"]).get(url)
    if url == "/admin/":
        assert response.status_code == 200
        assert "Moderation queue" not in _text(response)
        assert "permission to view or edit anything" in _text(response)
    else:
        assert response.status_code == 403
    client.logout()
    assert _client(client, people["alice"]).get(url).status_code == 302  # not staff: sign in


def test_object_pages_and_exports_per_role(client, people, data):
    case_url = reverse("admin:chat_moderationcase_change", args=[data["rude_case"].pk])
    transcript = reverse("admin:chat_conversation_change", args=[data["trip"].pk])
    export = reverse("admin:chat_conversation_export", args=[data["trip"].pk])
    for url in (case_url, transcript, export):
        assert _client(client, people["moderator"]).get(url).status_code == 200
        client.logout()
        assert _client(client, people["staff"]).get(url).status_code == 403
        client.logout()
    _client(client, people["moderator"])
    assert client.get("/admin/chat/conversation/not-a-uuid/export/").status_code == 404
    client.logout()
    _client(client, people["staff"])
    refused = client.post(case_url, {"decision": "reject"})
    assert refused.status_code == 403
    data["rude_case"].refresh_from_db()
    assert data["rude_case"].state == State.FLAGGED


def test_moderators_cannot_add_edit_or_delete_records(client, people, data):
    _client(client, people["moderator"])
    assert client.get("/admin/chat/moderationcase/add/").status_code == 403
    delete = f"/admin/chat/moderationcase/{data['rude_case'].pk}/delete/"
    assert client.get(delete).status_code == 403
    conv = data["trip"].pk
    assert client.get(f"/admin/chat/conversation/{conv}/delete/").status_code == 403
    assert client.get("/admin/chat/adminaccesslog/").status_code == 403
    assert client.get("/admin/auth/user/").status_code == 403


# ---- the queue ----------------------------------------------------------------------


def test_the_queue_lists_flagged_first_oldest_first(client, people, data):
    older = data["rude_case"]
    ModerationCase.objects.filter(pk=older.pk).update(created_at=timezone.now() - timedelta(days=1))
    pending = moderation.case_open(message_id=_answer(data["trip"], people["alice"], "later").pk)
    page = _text(_client(client, people["moderator"]).get("/admin/chat/moderationcase/"))
    order = [int(n) for n in re.findall(CASE_ROW, page)]
    assert order == [older.pk, data["xss_case"].pk, pending.pk, data["calm_case"].pk]
    assert "2 flagged to review" in page


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("state__exact=flagged", {"rude_case", "xss_case"}),
        ("state__exact=auto_approved", {"calm_case"}),
        ("category=hate", {"xss_case"}),
        ("category=violence", {"rude_case"}),
        ("moderation_model=omni-moderation-latest", {"rude_case", "xss_case", "calm_case"}),
        ("q=coastal", {"calm_case"}),
        ("source__exact=report", set()),
        ("created_at__gte={today}", {"rude_case", "xss_case", "calm_case"}),
        ("created_at__lt={today}", set()),
    ],
)
def test_queue_filters_and_search(client, people, data, query, expected):
    today = quote(
        timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0).isoformat()
    )
    response = _client(client, people["moderator"]).get(
        f"/admin/chat/moderationcase/?{query.format(today=today)}"
    )
    assert response.status_code == 200
    shown = set(re.findall(CASE_ROW, _text(response)))
    assert shown == {str(data[name].pk) for name in expected}


def test_the_user_filter_finds_cases_by_who_asked(client, people, data):
    _client(client, people["moderator"])
    page = _text(client.get(f"/admin/chat/moderationcase/?user={people['bob'].pk}"))
    shown = set(re.findall(CASE_ROW, page))
    assert shown == {str(data["rude_case"].pk), str(data["xss_case"].pk)}
    unfiltered = _text(client.get("/admin/chat/moderationcase/"))
    assert f"?user={people['alice'].pk}" in unfiltered  # offered as a choice


def test_the_case_page_shows_context_verdict_and_decides_then_moves_on(client, people, data):
    case = data["rude_case"]
    url = reverse("admin:chat_moderationcase_change", args=[case.pk])
    page = _text(_client(client, people["moderator"]).get(url))
    assert "flagme: a violent reply" in page and "Take the coastal road." in page  # context
    assert "violence" in page and "0.970" in page
    assert AdminAccessLog.objects.filter(
        username="moderator", action="context", conversation=data["trip"]
    ).exists()

    response = client.post(url, {"decision": "reject", "note": "threat", "next": "1"})
    nxt = reverse("admin:chat_moderationcase_change", args=[data["xss_case"].pk])
    assert response.status_code == 302 and response["Location"] == nxt
    case.refresh_from_db()
    assert (case.state, case.decided_by, case.note) == (
        State.REJECTED,
        people["moderator"],
        "threat",
    )
    data["rude"].refresh_from_db()
    assert data["rude"].redacted is True

    again = client.post(url, {"decision": "approve"})  # already decided: refused, nothing changes
    assert again.status_code == 302
    case.refresh_from_db()
    assert case.state == State.REJECTED
    client.post(url, {"decision": "undo", "note": "mistake"})
    case.refresh_from_db()
    data["rude"].refresh_from_db()
    assert (case.state, data["rude"].redacted) == (State.FLAGGED, False)


def test_bulk_reject_asks_for_confirmation_then_decides_and_skips_decided(client, people, data):
    moderation.case_decide(case_id=data["calm_case"].pk, actor=people["root"], action="approve")
    ids = [data["rude_case"].pk, data["xss_case"].pk, data["calm_case"].pk]
    _client(client, people["moderator"])
    form = {"action": "reject_selected", "_selected_action": ids, "index": 0}
    confirm = client.post("/admin/chat/moderationcase/", form)
    assert confirm.status_code == 200
    assert "Reject these 3 cases?" in _text(confirm)
    assert "1 of them is already decided" in _text(confirm)
    assert ModerationCase.objects.filter(state=State.REJECTED).count() == 0

    done = client.post(
        "/admin/chat/moderationcase/",
        {"action": "reject_selected", "_selected_action": ids, "confirm": "yes", "note": "bulk"},
        follow=True,
    )
    assert "2 case(s) rejected. 1 skipped" in _text(done)
    rejected = ModerationCase.objects.filter(state=State.REJECTED)
    assert set(rejected.values_list("pk", flat=True)) == {data["rude_case"].pk, data["xss_case"].pk}
    assert set(rejected.values_list("note", flat=True)) == {"bulk"}
    assert Message.objects.filter(redacted=True).count() == 2
    assert _text(client.get("/admin/chat/moderationcase/")).count("Nothing flagged") == 1


# ---- conversations, transcripts, export ---------------------------------------------


def test_the_conversation_list_shows_owner_members_counts_tokens_and_statuses(client, people, data):
    _answer(data["trip"], people["alice"], "cut", tokens=(3, 1), status="failed")
    _client(client, people["moderator"])
    for url in ("/admin/chat/conversation/", "/admin/chat/conversation/?q=coastal"):
        page = _text(client.get(url))
        row = re.search(r"<tr[^>]*>(?:(?!</tr>).)*Trip plans.*?</tr>", page, re.S).group(0)
        assert "alice, bob" in row
        # 3 answers + 3 prompts; tokens summed once each, even when searching message text.
        assert ">6<" in row
        assert '70<br><span class="mod-muted">53 + 17</span>' in row
        assert "5&nbsp;complete" in row and "1&nbsp;failed" in row
    assert "Trip plans" not in _text(client.get("/admin/chat/conversation/?q=nothing-like-it"))
    assert "Trip plans" in _text(client.get("/admin/chat/conversation/?q=bob"))  # a member


@pytest.mark.parametrize(
    ("query", "titles"),
    [
        ("model=sim-1", {"Hostile"}),
        ("model=gpt-4o-mini", {"Trip plans"}),
        ("status=failed", set()),
        ("moderation=flagged", {"Trip plans", "Hostile"}),
        ("moderation=rejected", set()),
        ("created_at__gte={today}", {"Trip plans", "Hostile"}),
    ],
)
def test_conversation_filters(client, people, data, query, titles):
    today = quote(
        timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0).isoformat()
    )
    page = _text(
        _client(client, people["moderator"]).get(
            f"/admin/chat/conversation/?{query.format(today=today)}"
        )
    )
    shown = {t for t in ("Trip plans", "Hostile") if f">{t}" in page}
    assert shown == titles


def test_opening_a_transcript_is_logged_and_only_superusers_read_the_log(client, people, data):
    url = reverse("admin:chat_conversation_change", args=[data["trip"].pk])
    page = _text(_client(client, people["moderator"]).get(url))
    for text in (
        "Take the coastal road.",
        "flagme: a violent reply",
        "120 ms",
        "27 tokens (20 + 7)",
    ):
        assert text in page
    assert "auto-approved" in page and "Flagged" in page
    entry = AdminAccessLog.objects.get()
    assert (entry.user, entry.username, entry.action) == (people["moderator"], "moderator", "view")
    assert (entry.conversation, entry.conversation_title) == (data["trip"], "Trip plans")
    client.logout()

    _client(client, people["root"])
    log_page = client.get("/admin/chat/adminaccesslog/")
    assert log_page.status_code == 200 and "moderator" in _text(log_page)
    assert client.get("/admin/chat/adminaccesslog/add/").status_code == 403
    change = f"/admin/chat/adminaccesslog/{entry.pk}/change/"
    assert client.get(change).status_code == 200  # view only
    assert client.post(change, {"username": "someone-else"}).status_code == 403
    assert client.get(f"/admin/chat/adminaccesslog/{entry.pk}/delete/").status_code == 403
    entry.refresh_from_db()
    assert entry.username == "moderator"


BOTH = {"Trip plans", "Hostile <b>title</b>"}


@pytest.mark.parametrize(
    ("url", "action", "titles", "detail"),
    [
        ("/admin/chat/message/", "list", BOTH, ""),
        ("/admin/chat/message/?q=coastal", "list", {"Trip plans"}, "coastal"),
        ("/admin/chat/message/?q=nowhere", "list", set(), "nowhere"),  # nothing shown
        ("/admin/chat/moderationcase/", "queue", BOTH, ""),
        ("/admin/chat/moderationcase/?q=violent", "queue", {"Trip plans"}, "violent"),
        ("message:xss", "message", {"Hostile <b>title</b>"}, ""),
        ("message:calm", "message", {"Trip plans"}, ""),
    ],
)
def test_every_page_showing_message_text_is_logged_per_conversation_shown(
    client, people, data, url, action, titles, detail
):
    if url.startswith("message:"):
        url = reverse("admin:chat_message_change", args=[data[url.split(":")[1]].pk])
    assert _client(client, people["moderator"]).get(url).status_code == 200
    entries = list(AdminAccessLog.objects.all())
    # One entry per conversation, however many of its messages the page shows.
    assert sorted(e.conversation_title for e in entries) == sorted(titles)
    assert {(e.user, e.action, e.detail) for e in entries} <= {
        (people["moderator"], action, detail)
    }


def test_the_bulk_decision_page_is_logged_for_the_conversations_it_shows(client, people, data):
    page = _client(client, people["moderator"]).post(
        "/admin/chat/moderationcase/",
        {
            "action": "reject_selected",
            "_selected_action": [data["xss_case"].pk, data["rude_case"].pk],
            "index": 0,
        },
    )
    assert "flagme: a violent reply" in _text(page)
    logged = AdminAccessLog.objects.values_list("action", "conversation_title")
    assert sorted(logged) == [("bulk", "Hostile <b>title</b>"), ("bulk", "Trip plans")]


def test_superusers_read_the_search_term_in_the_access_log(client, people, data):
    _client(client, people["moderator"]).get("/admin/chat/message/?q=coastal")
    client.logout()
    log_page = _text(_client(client, people["root"]).get("/admin/chat/adminaccesslog/"))
    assert "listed messages" in log_page and "coastal" in log_page


def _rows(response) -> list[dict]:
    assert response["Content-Type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(response.content.decode())))


def test_a_transcript_export_contains_exactly_the_stored_messages(client, people, data):
    moderation.case_decide(case_id=data["rude_case"].pk, actor=people["root"], action="reject")
    url = reverse("admin:chat_conversation_export", args=[data["trip"].pk])
    rows = _rows(_client(client, people["moderator"]).get(url))
    stored = list(Message.objects.filter(conversation=data["trip"]).order_by("created_at", "pk"))
    assert [r["message_id"] for r in rows] == [str(m.pk) for m in stored]
    assert [r["content"] for r in rows] == [m.content for m in stored]
    assert [r["role"] for r in rows] == [m.role for m in stored]
    assert [r["total_tokens"] for r in rows] == [str(m.total_tokens or "") for m in stored]
    rude = next(r for r in rows if r["message_id"] == str(data["rude"].pk))
    assert (rude["redacted"], rude["moderation"]) == ("true", "rejected")  # original kept
    assert {r["conversation_title"] for r in rows} == {"Trip plans"}
    assert AdminAccessLog.objects.filter(action="export", conversation=data["trip"]).count() == 1


def test_the_filtered_list_export_follows_the_search(client, people, data):
    _client(client, people["moderator"])
    rows = _rows(client.get("/admin/chat/conversation/export/?q=coastal"))
    assert {r["conversation_id"] for r in rows} == {str(data["trip"].pk)}
    assert len(rows) == Message.objects.filter(conversation=data["trip"]).count()
    everything = _rows(client.get("/admin/chat/conversation/export/"))
    assert len(everything) == Message.objects.count()
    selected = client.post(
        "/admin/chat/conversation/",
        {"action": "export_selected", "_selected_action": [data["hostile"].pk], "index": 0},
    )
    assert [r["content"] for r in _rows(selected)][-1] == XSS


def test_csv_cells_that_would_run_as_formulas_are_defused():
    assert transcripts.csv_cell("=HYPERLINK(1)") == "'=HYPERLINK(1)"
    assert transcripts.csv_cell("@SUM") == "'@SUM"
    assert transcripts.csv_cell("plain = fine") == "plain = fine"
    assert transcripts.csv_cell(None) == "" and transcripts.csv_cell(True) == "true"


@pytest.mark.parametrize(
    "text",
    [
        "=1+1",
        "+1",
        "-1",
        "@SUM(A1)",
        "\tx",
        "\rx",
        "  =HYPERLINK(1)",  # spreadsheets skip leading spaces
        " \t x",
        "\n\n@cmd",
        "\u00a0-2",  # no-break space
        "\u3000+3",  # ideographic space
        "\u200b=4",  # an invisible format character first
        "\uff1dHYPERLINK(1)",  # full-width = + - @
        "\uff0b1",
        "\uff0d1",
        "\uff20SUM",
        "  \uff1d1",
        "\ufe661",  # small equals sign
    ],
)
def test_every_cell_a_spreadsheet_could_read_as_a_formula_is_defused(text):
    assert transcripts.csv_cell(text) == "'" + text


@pytest.mark.parametrize(
    "text", ["plain = fine", "  fine", "a-b", "", "   ", "1", "x=", "mail@example.com"]
)
def test_cells_that_are_no_formula_are_exactly_as_stored(text):
    assert transcripts.csv_cell(text) == text


# ---- escaping -----------------------------------------------------------------------


def test_model_output_full_of_html_is_shown_escaped_on_every_admin_page(client, people, data):
    moderation.report_create(
        conversation_id=data["hostile"].pk,
        message_id=str(data["xss"].pk),
        user=people["bob"],
        reason='<script>alert("reason")</script>',
    )
    hostile = data["hostile"].pk
    pages = [
        "/admin/chat/moderationcase/",
        reverse("admin:chat_moderationcase_change", args=[data["xss_case"].pk]),
        "/admin/chat/conversation/",
        reverse("admin:chat_conversation_change", args=[hostile]),
        "/admin/chat/message/",
        reverse("admin:chat_message_change", args=[data["xss"].pk]),
        "/admin/chat/message/?q=script",
    ]
    _client(client, people["root"])
    report_case = ModerationCase.objects.get(source="report")
    pages.append(reverse("admin:chat_moderationcase_change", args=[report_case.pk]))
    for url in pages:
        page = _text(client.get(url))
        for raw in (
            "<script>alert",
            "<img src=x",
            'href="javascript:',
            "<b onmouseover",
            "<b>title",
        ):
            assert raw not in page, (url, raw)
        assert "&lt;script&gt;" in page or "&lt;b&gt;title" in page, url
    bulk = client.post(
        "/admin/chat/moderationcase/",
        {"action": "reject_selected", "_selected_action": [data["xss_case"].pk], "index": 0},
    )
    assert "<script>alert" not in _text(bulk) and "&lt;script&gt;" in _text(bulk)


def test_no_admin_code_or_template_marks_text_safe():
    sources = sorted((ROOT / "chat" / "admin").rglob("*.py"))
    sources += sorted((ROOT / "templates" / "admin").rglob("*.html"))
    for source in sources:
        text = source.read_text()
        for forbidden in ("mark_safe", "|safe", "autoescape off", "SafeString"):
            assert forbidden not in text, (source, forbidden)


# ---- usage --------------------------------------------------------------------------


def test_the_usage_page_draws_tokens_per_day_per_user_and_model(client, people, data):
    old = _answer(data["trip"], people["alice"], "old", tokens=(1000, 1000))
    Message.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=45))
    page = _text(_client(client, people["moderator"]).get("/admin/chat/message/usage/"))
    assert page.count('<svg viewBox="0 0 880') == 2 and "<rect" in page
    assert "Tokens per day by user" in page and "Tokens per day by model" in page
    assert "<strong>117</strong>tokens" in page  # 27 + 39 + 51; the 45-day-old one is out
    assert re.search(r"<td>bob</td><td class=\"num\">2</td>.*?<td class=\"num\">90</td>", page)
    assert re.search(r"<td>sim-1</td><td class=\"num\">1</td>", page)
    # Drawn server-side: no chart library, nothing loaded from another site.
    assert 'src="http' not in page and 'href="http' not in page.split("</header>")[1]
    # (Only in what the page loads: its random CSRF token may spell "cdn" too.)
    assert not [url for url in re.findall(r'(?:src|href)="([^"]*)"', page) if "cdn" in url]


def test_usage_groups_users_beyond_the_palette_as_other(people, data, django_user_model):
    for i in range(usage_report.MAX_SERIES + 2):
        user = django_user_model.objects.create_user(f"u{i}")
        _answer(data["trip"], user, f"answer {i}", tokens=(i + 1, 1))
    usage = usage_report.usage(days=30)
    assert len(usage.by_user) == usage_report.MAX_SERIES + 4
    assert [item["name"] for item in usage.user_chart.legend][-1] == usage_report.OTHER
    assert usage.total.total == sum(t.total for _, t in usage.by_user)
