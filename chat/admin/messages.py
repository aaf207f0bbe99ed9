"""The message list (`MessageAdmin`), read-only and logged, and its token usage page
(`/admin/chat/message/usage/`)."""

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path

from chat.admin.access import record_access, record_listed
from chat.admin.display import excerpt
from chat.admin.reports import usage as usage_report
from chat.models import AdminAccessLog, Message

USAGE_DAYS = 30


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
        usage = usage_report.usage(days=USAGE_DAYS)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Token usage, last {USAGE_DAYS} days",
            "subtitle": None,
            "usage": usage,
            "charts": [usage.user_chart, usage.model_chart],
        }
        return TemplateResponse(request, "admin/chat/usage.html", context)
