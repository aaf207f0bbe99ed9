"""Staff admin (DESIGN section 8, docs/moderation.md): the moderation review queue,
read-only conversation review with CSV export, the privacy access log and a usage page.

Model output and user text reach the page only through Django's autoescaping (templates
and `format_html`); nothing here marks text safe.
"""

import io
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import unquote
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import (
    Case,
    Count,
    Exists,
    IntegerField,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
    Subquery,
    Sum,
    Value,
    When,
)
from django.db.models.functions import Coalesce
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.text import Truncator

from chat import moderation, reports
from chat.models import (
    AdminAccessLog,
    Conversation,
    Membership,
    Message,
    ModerationCase,
    ModerationEvent,
)
from chat.web import login

State = ModerationCase.State
Action = ModerationEvent.Action

# The admin's sign-in form counts and refuses like the page's (chat/web/login.py).
admin.site.login_form = login.LimitedAdminAuthenticationForm

CONTEXT_BEFORE = 4  # messages shown before the reviewed one
CONTEXT_AFTER = 2
TRANSCRIPT_PAGE = 200
EXCERPT_CHARS = 140
USAGE_DAYS = 30


def excerpt(text: str, chars: int = EXCERPT_CHARS) -> str:
    """A one-line preview (plain text: the caller's template escapes it)."""
    return Truncator(" ".join(text.split())).chars(chars)


def record_access(
    *,
    request: HttpRequest,
    conversations: Iterable[Conversation],
    action: str,
    detail: str = "",
) -> None:
    """Write who saw which conversations' text, on which page, and when: one
    AdminAccessLog entry per conversation (`detail`: the page's search term, if any)."""
    user = request.user
    AdminAccessLog.objects.bulk_create(
        AdminAccessLog(
            user=user,
            username=user.get_username(),
            conversation=conversation,
            conversation_ref=str(conversation.pk),
            conversation_title=conversation.title[:200],
            action=action,
            detail=detail[:200],
        )
        for conversation in conversations
    )


def record_listed(
    *,
    request: HttpRequest,
    response: HttpResponse,
    action: str,
    conversation_of: Callable[[Any], Conversation],
) -> None:
    """Log a list page that shows message text: one entry per conversation among the rows
    it shows, with its search term. Nothing for a response that is not the list (a
    redirect, an action's own page): that page logs itself if it shows text."""
    changelist = (getattr(response, "context_data", None) or {}).get("cl")
    if changelist is None:
        return
    # The rows the template will show (evaluated once: the template reuses them).
    shown = {}
    for row in changelist.result_list:
        conversation = conversation_of(row)
        shown.setdefault(conversation.pk, conversation)
    record_access(
        request=request,
        conversations=shown.values(),
        action=action,
        detail=changelist.query or "",
    )


def state_badge(state: str, label: str | None = None) -> str:
    """A coloured label for a moderation state (the class comes from a fixed set)."""
    if not state:
        return format_html('<span class="mod-badge mod-none">{}</span>', label or "none")
    known = state in State.values
    return format_html(
        '<span class="mod-badge mod-{}">{}</span>',
        state if known else "none",
        label or (State(state).label if known else state),
    )


def csv_response(conversations: QuerySet[Conversation], filename: str) -> HttpResponse:
    buffer = io.StringIO()
    reports.write_transcripts_csv(buffer, conversations)
    response = HttpResponse(buffer.getvalue(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


# ---- filters ------------------------------------------------------------------------


class CategoryFilter(admin.SimpleListFilter):
    title = "category"
    parameter_name = "category"

    def lookups(self, request, model_admin):
        return [(name, name) for name in moderation.CATEGORIES]

    def queryset(self, request, queryset):
        if self.value() in moderation.CATEGORIES:
            # `categories` is a JSON list of names: match the quoted name exactly.
            return queryset.filter(categories__icontains=f'"{self.value()}"')
        return queryset


class CaseUserFilter(admin.SimpleListFilter):
    """The user behind the message: who asked (answers) or who wrote it (prompts)."""

    title = "user"
    parameter_name = "user"

    def lookups(self, request, model_admin):
        asked = ModerationCase.objects.values_list("message__reply_to__author", flat=True)
        wrote = ModerationCase.objects.values_list("message__author", flat=True)
        ids = {i for i in [*asked.distinct(), *wrote.distinct()] if i is not None}
        users = get_user_model().objects.filter(pk__in=ids).order_by("username")[:200]
        return [(str(u.pk), u.get_username()) for u in users]

    def queryset(self, request, queryset):
        if self.value() and self.value().isdigit():
            user_id = int(self.value())
            return queryset.filter(
                Q(message__author_id=user_id) | Q(message__reply_to__author_id=user_id)
            )
        return queryset


class CaseConversationFilter(admin.SimpleListFilter):
    """Cases of one conversation (linked from the conversation list); shown only when set."""

    title = "conversation"
    parameter_name = "conversation"

    def lookups(self, request, model_admin):
        conversation = (
            Conversation.objects.filter(pk=self.value()).first() if self._valid() else None
        )
        return [(str(conversation.pk), conversation.title)] if conversation else []

    def _valid(self) -> bool:
        try:
            uuid.UUID(str(self.value()))
        except ValueError:
            return False
        return True

    def queryset(self, request, queryset):
        if self.value() and self._valid():
            return queryset.filter(message__conversation_id=self.value())
        return queryset


class ConversationModelFilter(admin.SimpleListFilter):
    title = "model"
    parameter_name = "model"

    def lookups(self, request, model_admin):
        models = Message.objects.exclude(model="").order_by("model").values_list("model", flat=True)
        return [(m, m) for m in models.distinct()[:100]]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(
                Exists(Message.objects.filter(conversation=OuterRef("pk"), model=self.value()))
            )
        return queryset


class ConversationStatusFilter(admin.SimpleListFilter):
    title = "message status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [
            (value, f"has a {label.lower()} message") for value, label in Message.Status.choices
        ]

    def queryset(self, request, queryset):
        if self.value() in Message.Status.values:
            return queryset.filter(
                Exists(Message.objects.filter(conversation=OuterRef("pk"), status=self.value()))
            )
        return queryset


class ConversationModerationFilter(admin.SimpleListFilter):
    title = "moderation"
    parameter_name = "moderation"

    def lookups(self, request, model_admin):
        return [
            (State.FLAGGED, "has flagged messages"),
            (State.PENDING, "has pending cases"),
            (State.REJECTED, "has redacted messages"),
        ]

    def queryset(self, request, queryset):
        if self.value() in (State.FLAGGED, State.PENDING, State.REJECTED):
            cases = ModerationCase.objects.filter(
                message__conversation=OuterRef("pk"), state=self.value()
            )
            return queryset.filter(Exists(cases))
        return queryset


# ---- the review queue ---------------------------------------------------------------


@admin.register(ModerationCase)
class ModerationCaseAdmin(admin.ModelAdmin):
    """The review queue: flagged first, oldest first. Moderators (the `moderator` group)
    decide here; ordinary staff without its permissions get 403."""

    list_display = [
        "case",
        "state_label",
        "category_list",
        "message_excerpt",
        "asked_by",
        "conversation_link",
        "opened",
        "decision",
    ]
    list_display_links = ["case"]
    list_filter = [
        "state",
        CategoryFilter,
        "source",
        ("moderation_model", admin.AllValuesFieldListFilter),
        ("created_at", admin.DateFieldListFilter),
        CaseUserFilter,
        CaseConversationFilter,
    ]
    search_fields = [
        "message__content",
        "reason",
        "note",
        "message__conversation__title",
        "message__author__username",
        "message__reply_to__author__username",
        "reporter__username",
    ]
    search_help_text = "Message text, report reason, note, conversation title or user name"
    list_select_related = [
        "message",
        "message__author",
        "message__reply_to__author",
        "message__conversation",
        "decided_by",
        "reporter",
    ]
    actions = ["approve_selected", "reject_selected"]
    list_per_page = 50

    def get_queryset(self, request):
        # Annotate before ordering: the default ordering sorts by this annotation.
        cases = self.model._default_manager.annotate(
            _priority=Case(
                When(state=State.FLAGGED, then=Value(0)),
                When(state=State.PENDING, then=Value(1)),
                default=Value(2),
                output_field=IntegerField(),
            )
        )
        return cases.order_by(*self.get_ordering(request))

    def get_ordering(self, request):
        return ["_priority", "created_at"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # cases are the audit trail

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    # -- columns --

    @admin.display(description="case", ordering="pk")
    def case(self, obj: ModerationCase) -> str:
        return f"#{obj.pk}"

    @admin.display(description="state", ordering="_priority")
    def state_label(self, obj: ModerationCase) -> str:
        return state_badge(obj.state)

    @admin.display(description="categories")
    def category_list(self, obj: ModerationCase) -> str:
        if obj.flagged is None:
            return format_html('<span class="mod-muted">{}</span>', obj.last_error or "not yet")
        if not obj.categories:
            return "—"
        top = max((obj.category_scores.get(c, 0) for c in obj.categories), default=0)
        return f"{', '.join(obj.categories)} ({top:.2f})"

    @admin.display(description="message")
    def message_excerpt(self, obj: ModerationCase) -> str:
        text = excerpt(obj.message.content) or "(empty)"
        if obj.source == ModerationCase.Source.REPORT:
            return format_html(
                '{}<br><span class="mod-muted">reported by {}: {}</span>',
                text,
                obj.reporter.get_username() if obj.reporter else "?",
                excerpt(obj.reason, 80),
            )
        return text

    @admin.display(description="user")
    def asked_by(self, obj: ModerationCase) -> str:
        message = obj.message
        author = message.author or (message.reply_to.author if message.reply_to else None)
        return author.get_username() if author else "—"

    @admin.display(description="conversation")
    def conversation_link(self, obj: ModerationCase) -> str:
        conversation = obj.message.conversation
        url = reverse("admin:chat_conversation_change", args=[conversation.pk])
        return format_html('<a href="{}">{}</a>', url, Truncator(conversation.title).chars(40))

    @admin.display(description="opened", ordering="created_at")
    def opened(self, obj: ModerationCase) -> str:
        return f"{timezone.localtime(obj.created_at):%Y-%m-%d %H:%M}"

    @admin.display(description="decision", ordering="decided_at")
    def decision(self, obj: ModerationCase) -> str:
        if not obj.decided_at:
            return "—"
        who = obj.decided_by.get_username() if obj.decided_by else "?"
        when = f"{timezone.localtime(obj.decided_at):%Y-%m-%d %H:%M}"
        return format_html('{}<br><span class="mod-muted">{}</span>', who, when)

    # -- the queue page --

    def changelist_view(self, request, extra_context=None):
        counts = dict(
            ModerationCase.objects.values_list("state").annotate(n=Count("pk")).order_by()
        )
        first_flagged = (
            ModerationCase.objects.filter(state=State.FLAGGED)
            .order_by("created_at")
            .only("pk", "created_at")
            .first()
        )
        order = [State.FLAGGED, State.PENDING, State.REJECTED, State.APPROVED, State.AUTO_APPROVED]
        extra_context = {
            **(extra_context or {}),
            "title": "Moderation queue",
            "queue_counts": [(s, State(s).label, counts.get(s, 0)) for s in order],
            "flagged_count": counts.get(State.FLAGGED, 0),
            "pending_count": counts.get(State.PENDING, 0),
            "first_flagged": first_flagged,
        }
        response = super().changelist_view(request, extra_context)
        record_listed(
            request=request,
            response=response,
            action=AdminAccessLog.Action.QUEUE,
            conversation_of=lambda case: case.message.conversation,
        )
        return response

    # -- one case --

    def change_view(self, request, object_id, form_url="", extra_context=None):
        case = self.get_object(request, unquote(object_id))
        if case is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if not self.has_view_or_change_permission(request, case):
            raise PermissionDenied
        if request.method == "POST":
            return self._decide(request, case)
        if request.method != "GET":
            return HttpResponseNotAllowed(["GET", "POST"])
        message = case.message
        conversation = message.conversation
        record_access(
            request=request, conversations=[conversation], action=AdminAccessLog.Action.CONTEXT
        )
        # The prompt an answer replies to is always shown, whatever its timestamp.
        before = list(
            Message.objects.filter(conversation=conversation)
            .filter(Q(created_at__lt=message.created_at) | Q(pk=message.reply_to_id))
            .exclude(pk=message.pk)
            .select_related("author")
            .order_by("-created_at")[:CONTEXT_BEFORE]
        )[::-1]
        after = list(
            Message.objects.filter(conversation=conversation, created_at__gt=message.created_at)
            .select_related("author")
            .order_by("created_at")[:CONTEXT_AFTER]
        )
        around = [*before, message, *after]
        cases = reports.cases_by_message(m.pk for m in around)
        for m in around:
            m.cases = cases.get(m.pk, [])
            m.moderation_state = moderation.message_moderation_state([c.state for c in m.cases])
            m.is_target = m.pk == message.pk
        scores = sorted(case.category_scores.items(), key=lambda kv: -kv[1])
        shown_scores = [
            {"name": n, "score": s, "flagged": n in case.categories, "pct": f"{s * 100:.1f}"}
            for i, (n, s) in enumerate(scores)
            if i < 5 or n in case.categories
        ]
        other_cases = [c for c in cases.get(message.pk, []) if c.pk != case.pk]
        next_case = (
            ModerationCase.objects.filter(state=State.FLAGGED)
            .exclude(pk=case.pk)
            .order_by("created_at")
            .first()
        )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Case #{case.pk}: {case.get_state_display()}",
            "subtitle": None,
            "case": case,
            "state_badge": state_badge(case.state),
            "message": message,
            "conversation": conversation,
            "around": around,
            "scores": shown_scores,
            "events": case.events.select_related("actor"),
            "other_cases": other_cases,
            "can_decide": self.has_change_permission(request, case),
            "decidable": case.state in moderation.DECIDABLE,
            "undoable": case.state in moderation.DECIDED,
            "next_case": next_case,
            "flagged_left": ModerationCase.objects.filter(state=State.FLAGGED).count(),
            "hold": moderation.settings.MODERATION_HOLD_FLAGGED,
        }
        return TemplateResponse(request, "admin/chat/moderationcase/review.html", context)

    def _decide(self, request: HttpRequest, case: ModerationCase) -> HttpResponse:
        if not self.has_change_permission(request, case):
            raise PermissionDenied
        action = request.POST.get("decision", "")
        note = request.POST.get("note", "").strip()[:2000]
        try:
            if action == Action.UNDO:
                decision = moderation.case_undo(case_id=case.pk, actor=request.user, note=note)
            elif action in (Action.APPROVE, Action.REJECT):
                decision = moderation.case_decide(
                    case_id=case.pk, actor=request.user, action=action, note=note
                )
            else:
                raise moderation.InvalidTransition("Choose approve, reject or undo.")
        except moderation.InvalidTransition as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return HttpResponseRedirect(request.path)
        moderation.announce_sync(decision.change)
        self.log_change(request, case, f"{action}: {note}" if note else action)
        left = ModerationCase.objects.filter(state=State.FLAGGED).count()
        done = {Action.APPROVE: "approved", Action.REJECT: "rejected", Action.UNDO: "reopened"}
        text = f"Case #{case.pk} {done[action]}"
        if action == Action.REJECT:
            text += ": the message is hidden on every open page"
        self.message_user(request, f"{text}. {left} flagged case(s) left.", messages.SUCCESS)
        if action != Action.UNDO and request.POST.get("next") == "1":
            following = ModerationCase.objects.filter(state=State.FLAGGED).order_by("created_at")
            if (nxt := following.first()) is not None:
                return HttpResponseRedirect(
                    reverse("admin:chat_moderationcase_change", args=[nxt.pk])
                )
            return HttpResponseRedirect(reverse("admin:chat_moderationcase_changelist"))
        return HttpResponseRedirect(request.path)

    # -- bulk actions --

    @admin.action(description="Approve selected cases", permissions=["change"])
    def approve_selected(self, request, queryset):
        return self._bulk(request, queryset, Action.APPROVE)

    @admin.action(description="Reject selected cases (hide the messages)", permissions=["change"])
    def reject_selected(self, request, queryset):
        return self._bulk(request, queryset, Action.REJECT)

    def _bulk(self, request: HttpRequest, queryset: QuerySet, action: str):
        ids = list(queryset.order_by("created_at").values_list("pk", flat=True))
        if request.POST.get("confirm") == "yes":
            note = request.POST.get("note", "").strip()[:2000]
            decisions, skipped = moderation.cases_decide(
                case_ids=ids, actor=request.user, action=action, note=note
            )
            for decision in decisions:
                moderation.announce_sync(decision.change)
                self.log_change(request, decision.case, f"{action} (bulk): {note}".strip(": "))
            verb = "approved" if action == Action.APPROVE else "rejected"
            text = f"{len(decisions)} case(s) {verb}."
            if skipped:
                text += f" {skipped} skipped: already decided (undo them one by one first)."
            self.message_user(request, text, messages.SUCCESS if decisions else messages.WARNING)
            return None
        cases = list(queryset.select_related("message__conversation").order_by("created_at"))
        shown = {c.message.conversation_id: c.message.conversation for c in cases}
        record_access(
            request=request, conversations=shown.values(), action=AdminAccessLog.Action.BULK
        )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Approve cases" if action == Action.APPROVE else "Reject cases",
            "action": action,
            "action_name": request.POST.get("action", ""),
            "cases": [(c, excerpt(c.message.content, 200)) for c in cases],
            "ids": ids,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "undecidable": sum(1 for c in cases if c.state not in moderation.DECIDABLE),
        }
        return TemplateResponse(request, "admin/chat/moderationcase/bulk_decide.html", context)


# ---- conversations ------------------------------------------------------------------


def _count_subquery(queryset: QuerySet, outer: str = "conversation") -> Coalesce:
    counted = queryset.filter(**{outer: OuterRef("pk")}).order_by().values(outer)
    return Coalesce(
        Subquery(counted.annotate(n=Count("pk")).values("n"), output_field=IntegerField()),
        0,
    )


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    """Stored conversations, read-only: opening one shows its transcript (and writes an
    AdminAccessLog entry); CSV export of one conversation or of a filtered list."""

    list_display = [
        "title",
        "owner",
        "member_list",
        "message_count",
        "tokens",
        "status_counts",
        "open_cases",
        "last_activity",
    ]
    list_select_related = ["owner"]
    search_fields = [
        "title",
        "owner__username",
        "memberships__user__username",
        "messages__content",
    ]
    search_help_text = "Title, user name or message text"
    list_filter = [
        ("created_at", admin.DateFieldListFilter),
        ConversationModelFilter,
        ConversationStatusFilter,
        ConversationModerationFilter,
    ]
    date_hierarchy = "created_at"
    actions = ["export_selected"]
    list_per_page = 50

    def get_queryset(self, request):
        statuses = {
            f"_n_{status}": Count("messages", filter=Q(messages__status=status))
            for status in Message.Status.values
        }
        open_cases = ModerationCase.objects.filter(state__in=[State.FLAGGED, State.PENDING])
        return (
            super()
            .get_queryset(request)
            .annotate(
                _messages=Count("messages"),
                _prompt=Sum("messages__prompt_tokens"),
                _completion=Sum("messages__completion_tokens"),
                _tokens=Sum("messages__total_tokens"),
                # Subqueries, not joins: a second join would multiply the sums above.
                _members=_count_subquery(Membership.objects.all()),
                _open_cases=_count_subquery(open_cases, "message__conversation"),
                **statuses,
            )
            .prefetch_related(
                Prefetch(
                    "memberships",
                    queryset=Membership.objects.select_related("user").order_by("created_at"),
                )
            )
        )

    def changelist_view(self, request, extra_context=None):
        return super().changelist_view(request, {"title": "Conversations", **(extra_context or {})})

    def get_search_results(self, request, queryset, search_term):
        # Search across members and message text in a subquery: joining them into the
        # annotated queryset would multiply its counts and token sums.
        if not search_term:
            return queryset, False
        matched, _ = super().get_search_results(request, Conversation.objects.all(), search_term)
        return queryset.filter(pk__in=matched.values("pk")), False

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # review is read-only

    # -- columns --

    @admin.display(description="last activity", ordering="updated_at")
    def last_activity(self, obj: Conversation) -> str:
        return f"{timezone.localtime(obj.updated_at):%Y-%m-%d %H:%M}"

    @admin.display(description="members", ordering="_members")
    def member_list(self, obj: Conversation) -> str:
        names = [m.user.get_username() for m in obj.memberships.all()]
        shown = ", ".join(names[:4])
        return f"{shown} +{len(names) - 4}" if len(names) > 4 else shown

    @admin.display(ordering="_messages", description="messages")
    def message_count(self, obj: Conversation) -> int:
        return obj._messages

    @admin.display(ordering="_tokens", description="tokens")
    def tokens(self, obj: Conversation) -> str:
        return format_html(
            '{}<br><span class="mod-muted">{} + {}</span>',
            f"{obj._tokens or 0:,}",
            f"{obj._prompt or 0:,}",
            f"{obj._completion or 0:,}",
        )

    @admin.display(description="statuses")
    def status_counts(self, obj: Conversation) -> str:
        parts = [(status, getattr(obj, f"_n_{status}")) for status in Message.Status.values]
        return (
            format_html_join(
                " ", '<span class="st st-{}">{}&nbsp;{}</span>', ((s, n, s) for s, n in parts if n)
            )
            or "—"
        )

    @admin.display(ordering="_open_cases", description="open cases")
    def open_cases(self, obj: Conversation) -> str:
        if not obj._open_cases:
            return "0"
        url = reverse("admin:chat_moderationcase_changelist")
        return format_html('<a href="{}?conversation={}">{}</a>', url, obj.pk, obj._open_cases)

    # -- transcript, export, usage --

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("export/", view(self.export_filtered), name="chat_conversation_export_list"),
            path(
                "<path:object_id>/export/", view(self.export_one), name="chat_conversation_export"
            ),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        conversation = self.get_object(request, unquote(object_id))
        if conversation is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if not self.has_view_permission(request, conversation):
            raise PermissionDenied
        if request.method != "GET":
            return HttpResponseNotAllowed(["GET"])
        record_access(
            request=request, conversations=[conversation], action=AdminAccessLog.Action.VIEW
        )
        page = Paginator(
            conversation.messages.select_related("author").order_by("created_at", "pk"),
            TRANSCRIPT_PAGE,
        ).get_page(request.GET.get("page"))
        cases = reports.cases_by_message(m.pk for m in page)
        for m in page:
            m.cases = cases.get(m.pk, [])
            m.moderation_state = moderation.message_moderation_state([c.state for c in m.cases])
        statuses = [(s, getattr(conversation, f"_n_{s}")) for s in Message.Status.values]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": conversation.title,
            "subtitle": None,
            "conversation": conversation,
            "memberships": conversation.memberships.all(),
            "page": page,
            "statuses": [(s, n) for s, n in statuses if n],
            "totals": {
                "messages": conversation._messages,
                "tokens": conversation._tokens or 0,
                "prompt": conversation._prompt or 0,
                "completion": conversation._completion or 0,
                "open_cases": conversation._open_cases,
            },
            "export_url": reverse("admin:chat_conversation_export", args=[conversation.pk]),
            "has_delete_permission": self.has_delete_permission(request, conversation),
        }
        return TemplateResponse(request, "admin/chat/conversation/transcript.html", context)

    def export_one(self, request: HttpRequest, object_id: str) -> HttpResponse:
        conversation = self.get_object(request, unquote(object_id))
        if conversation is None:
            raise Http404("No such conversation.")
        if not self.has_view_permission(request, conversation):
            raise PermissionDenied
        record_access(
            request=request, conversations=[conversation], action=AdminAccessLog.Action.EXPORT
        )
        return csv_response(
            Conversation.objects.filter(pk=conversation.pk), f"conversation-{conversation.pk}.csv"
        )

    def export_filtered(self, request: HttpRequest) -> HttpResponse:
        """The changelist's current filter and search, as one CSV of messages."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        changelist = self.get_changelist_instance(request)
        return self._export(request, changelist.get_queryset(request))

    @admin.action(description="Export selected conversations as CSV", permissions=["view"])
    def export_selected(self, request, queryset):
        return self._export(request, queryset)

    def _export(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse:
        conversations = Conversation.objects.filter(pk__in=queryset.values("pk"))
        record_access(
            request=request, conversations=conversations, action=AdminAccessLog.Action.EXPORT
        )
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        return csv_response(conversations, f"conversations-{stamp}.csv")


# ---- messages and usage -------------------------------------------------------------


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = [
        "created_at",
        "conversation",
        "role",
        "author",
        "status",
        "text",
        "model",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "ttft_ms",
        "redacted",
    ]
    list_filter = ["status", "role", "model", "redacted", ("created_at", admin.DateFieldListFilter)]
    search_fields = ["content", "author__username", "conversation__title"]
    list_select_related = ["conversation", "author"]
    readonly_fields = [f.name for f in Message._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="text")
    def text(self, obj: Message) -> str:
        return excerpt(obj.content, 80)

    def changelist_view(self, request, extra_context=None):
        """The message list (and its search) shows text: logged per conversation shown."""
        response = super().changelist_view(request, extra_context)
        record_listed(
            request=request,
            response=response,
            action=AdminAccessLog.Action.LIST,
            conversation_of=lambda message: message.conversation,
        )
        return response

    def change_view(self, request, object_id, form_url="", extra_context=None):
        """One message's page shows its whole text: logged when the page is shown."""
        response = super().change_view(request, object_id, form_url, extra_context)
        message = (getattr(response, "context_data", None) or {}).get("original")
        if message is not None:
            record_access(
                request=request,
                conversations=[message.conversation],
                action=AdminAccessLog.Action.MESSAGE,
            )
        return response

    def get_urls(self):
        usage = self.admin_site.admin_view(self.usage_view)
        return [path("usage/", usage, name="chat_usage"), *super().get_urls()]

    def usage_view(self, request: HttpRequest) -> HttpResponse:
        """Tokens per day per user and per model, last 30 days, with totals."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        usage = reports.usage(days=USAGE_DAYS)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Token usage, last {USAGE_DAYS} days",
            "subtitle": None,
            "usage": usage,
            "charts": [usage.user_chart, usage.model_chart],
        }
        return TemplateResponse(request, "admin/chat/usage.html", context)


# ---- the access log -----------------------------------------------------------------


@admin.register(AdminAccessLog)
class AdminAccessLogAdmin(admin.ModelAdmin):
    """Readable by superusers only; nobody can add, change or delete an entry."""

    list_display = ["created_at", "username", "action", "conversation_link", "detail"]
    list_filter = ["action", ("created_at", admin.DateFieldListFilter), "username"]
    search_fields = ["username", "conversation_ref", "conversation_title", "detail"]
    actions = None
    date_hierarchy = "created_at"

    def has_view_permission(self, request, obj=None) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_module_permission(self, request) -> bool:
        return self.has_view_permission(request)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="conversation", ordering="conversation_title")
    def conversation_link(self, obj: AdminAccessLog) -> str:
        if obj.conversation_id is None:
            return f"{obj.conversation_title} ({obj.conversation_ref}, deleted)"
        url = reverse("admin:chat_conversation_change", args=[obj.conversation_id])
        return format_html('<a href="{}">{}</a>', url, obj.conversation_title)
