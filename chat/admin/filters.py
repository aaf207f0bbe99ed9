"""List filters of the review queue (category, user, conversation) and of the
conversation list (model, message status, moderation)."""

import uuid

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.db.models import Exists, OuterRef, Q

from chat import moderation
from chat.models import Conversation, Message, ModerationCase

State = ModerationCase.State


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
