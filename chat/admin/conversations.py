"""Conversation review (`ConversationAdmin`): the list with counts and tokens, the
read-only transcript, and CSV export of one conversation or of a filtered list."""

import io

from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Count, IntegerField, OuterRef, Prefetch, Q, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from chat import moderation
from chat.admin.access import record_access
from chat.admin.filters import (
    ConversationModelFilter,
    ConversationModerationFilter,
    ConversationStatusFilter,
)
from chat.admin.reports import transcripts
from chat.models import AdminAccessLog, Conversation, Membership, Message, ModerationCase

State = ModerationCase.State

TRANSCRIPT_PAGE = 200


def csv_response(conversations: QuerySet[Conversation], filename: str) -> HttpResponse:
    """Every stored message of these conversations as a CSV download named `filename`."""
    buffer = io.StringIO()
    transcripts.write_transcripts_csv(buffer, conversations)
    response = HttpResponse(buffer.getvalue(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


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
        cases = transcripts.cases_by_message(m.pk for m in page)
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
