"""The review queue (`ModerationCaseAdmin`): the case list, one case in its
conversation with its verdict and history, single and bulk decisions."""

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Case, Count, IntegerField, Q, QuerySet, Value, When
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.text import Truncator

from chat import moderation
from chat.admin.access import record_access, record_listed
from chat.admin.display import excerpt, state_badge
from chat.admin.filters import CaseConversationFilter, CaseUserFilter, CategoryFilter
from chat.admin.reports import transcripts
from chat.models import AdminAccessLog, Message, ModerationCase, ModerationEvent

State = ModerationCase.State
Action = ModerationEvent.Action

CONTEXT_BEFORE = 4  # messages shown before the reviewed one
CONTEXT_AFTER = 2


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
        cases = transcripts.cases_by_message(m.pk for m in around)
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
            "hold": settings.MODERATION_HOLD_FLAGGED,
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
