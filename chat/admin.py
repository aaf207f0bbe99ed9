"""Staff review of stored conversations and messages (read-mostly; text shown escaped)."""

from django.contrib import admin
from django.db.models import Count, Sum

from chat.models import Conversation, Membership, Message


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


class MessageInline(admin.TabularInline):
    model = Message
    extra = 0
    can_delete = False
    fields = ["created_at", "role", "author", "status", "content", "total_tokens", "model"]
    readonly_fields = fields
    show_change_link = True

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ["title", "owner", "message_count", "tokens", "created_at", "updated_at"]
    search_fields = ["title", "owner__username", "messages__content"]
    list_filter = ["created_at"]
    readonly_fields = ["id", "created_at", "updated_at"]
    inlines = [MembershipInline, MessageInline]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .select_related("owner")
            .annotate(_messages=Count("messages"), _tokens=Sum("messages__total_tokens"))
        )

    @admin.display(ordering="_messages")
    def message_count(self, obj: Conversation) -> int:
        return obj._messages

    @admin.display(ordering="_tokens", description="tokens")
    def tokens(self, obj: Conversation) -> int:
        return obj._tokens or 0


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = [
        "created_at",
        "conversation",
        "role",
        "author",
        "status",
        "model",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "ttft_ms",
    ]
    list_filter = ["status", "role", "model", "created_at"]
    search_fields = ["content", "author__username", "conversation__title"]
    list_select_related = ["conversation", "author"]
    readonly_fields = [f.name for f in Message._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False
