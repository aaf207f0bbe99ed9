"""The admin access log: `record_access` and `record_listed` write who saw which
conversation's stored message text, on which page; `AdminAccessLogAdmin` lets
superusers read the log and nobody change it."""

from collections.abc import Callable, Iterable
from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.html import format_html

from chat.models import AdminAccessLog, Conversation


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
