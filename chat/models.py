"""Conversations, their members, and the messages exchanged in them."""

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


class Role(models.TextChoices):
    OWNER = "owner"
    MEMBER = "member"  # may prompt and cancel
    VIEWER = "viewer"  # read-only


class Conversation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    title = models.CharField(max_length=200)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="owned_conversations"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]

    def __str__(self) -> str:
        return self.title


class Membership(models.Model):
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="memberships"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["conversation", "user"], name="one_membership")
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.conversation_id} as {self.role}"

    @property
    def can_write(self) -> bool:
        return self.role in (Role.OWNER, Role.MEMBER)


class Message(models.Model):
    class Sender(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    class Status(models.TextChoices):
        STREAMING = "streaming"
        COMPLETE = "complete"
        CANCELLED = "cancelled"
        FAILED = "failed"
        INTERRUPTED = "interrupted"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    role = models.CharField(max_length=10, choices=Sender.choices)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="chat_messages",
    )
    # For an assistant message: the user message it answers (regenerate answers it again).
    reply_to = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="replies"
    )
    # Set by the client so a retried send is idempotent (unique per conversation).
    # NULL, not "", for "none given": NULLs never collide in the unique constraint below.
    client_msg_id = models.CharField(max_length=100, null=True, blank=True)  # noqa: DJ001
    content = models.TextField(blank=True, default="")
    status = models.CharField(
        max_length=12, choices=Status.choices, default=Status.COMPLETE, db_index=True
    )
    model = models.CharField(max_length=200, blank=True, default="")
    finish_reason = models.CharField(max_length=40, blank=True, default="")
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    total_tokens = models.PositiveIntegerField(null=True, blank=True)
    usage_estimated = models.BooleanField(default=False)
    error_code = models.CharField(max_length=40, blank=True, default="")
    error_detail = models.CharField(max_length=500, blank=True, default="")
    error_retry_after = models.FloatField(null=True, blank=True)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    # Number of deltas published so far: the text checkpointed in `content` is exactly
    # the join of deltas 1..seq, so a snapshot built from the row is consistent.
    seq = models.PositiveIntegerField(default=0)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    # Hidden from viewers by moderation (rejected, or held while flagged); the text is
    # kept for staff. Derived from the message's moderation cases by chat.moderation.
    redacted = models.BooleanField(default=False)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["conversation", "client_msg_id"],
                condition=Q(client_msg_id__isnull=False),
                name="one_message_per_client_msg_id",
            ),
            # At most one generation at a time per conversation, enforced by the database
            # so two processes racing cannot both start one.
            models.UniqueConstraint(
                fields=["conversation"],
                condition=Q(status="streaming"),
                name="one_streaming_message_per_conversation",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.role} {self.id} ({self.status})"

    @property
    def usage(self) -> dict[str, int] | None:
        if self.total_tokens is None:
            return None
        return {
            "prompt_tokens": self.prompt_tokens or 0,
            "completion_tokens": self.completion_tokens or 0,
            "total_tokens": self.total_tokens,
        }


class TokenUsage(models.Model):
    """A user's token spend for one generation: reserved before the upstream call from
    the request's size and `max_tokens`, settled from the real (or estimated) usage."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="token_usage"
    )
    message = models.OneToOneField(
        Message, null=True, on_delete=models.SET_NULL, related_name="token_usage"
    )
    day = models.DateField(db_index=True)  # UTC day the generation started
    reserved = models.PositiveIntegerField()
    used = models.PositiveIntegerField(null=True, blank=True)
    settled = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [
            models.Index(fields=["user", "day"]),
            models.Index(fields=["user", "settled"]),
            # The prompt rate: a user's generations started in the last minute.
            models.Index(fields=["user", "created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.user_id} {self.day}: {self.used if self.settled else self.reserved}"


# --- Moderation and review (chat/moderation/ holds the services) ---------------------


class ModerationCase(models.Model):
    """One review of one message: the model's verdict, then maybe a human decision.

    A completed assistant message gets one `auto` case; every member report is a
    `report` case. The state machine lives in `chat.moderation`.
    """

    class State(models.TextChoices):
        PENDING = "pending"  # waiting for (or retrying) the moderation call
        AUTO_APPROVED = "auto_approved", "auto-approved"  # the model did not flag it
        FLAGGED = "flagged"  # waiting for a human
        APPROVED = "approved"
        REJECTED = "rejected"  # the message is redacted for viewers

    class Source(models.TextChoices):
        AUTO = "auto", "completed answer"
        REPORT = "report", "member report"

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="moderation_cases")
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.AUTO)
    reporter = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="moderation_reports",
    )
    reason = models.TextField(blank=True, default="")
    state = models.CharField(
        max_length=16, choices=State.choices, default=State.PENDING, db_index=True
    )
    # The moderation call's raw verdict; `flagged` is None until it answered.
    flagged = models.BooleanField(null=True, blank=True)
    categories = models.JSONField(default=list, blank=True)  # names of flagged categories
    category_scores = models.JSONField(default=dict, blank=True)
    top_score = models.FloatField(null=True, blank=True)
    moderation_model = models.CharField(max_length=200, blank=True, default="")
    result = models.JSONField(null=True, blank=True)
    moderated_at = models.DateTimeField(null=True, blank=True)
    # Retries: the number of calls started, the last failure's code, and when the case
    # may be tried again (also a lease: a worker that took it holds it until then).
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.CharField(max_length=200, blank=True, default="")
    next_attempt_at = models.DateTimeField(null=True, blank=True, db_index=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="moderation_decisions",
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    note = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["message"], condition=Q(source="auto"), name="one_auto_case_per_message"
            ),
            models.UniqueConstraint(
                fields=["message", "reporter"],
                condition=Q(source="report"),
                name="one_report_per_member_and_message",
            ),
        ]

    def __str__(self) -> str:
        return f"case {self.pk} ({self.state}) of message {self.message_id}"


class ModerationEvent(models.Model):
    """Audit trail of a case: every staff decision and undo, with who, when and a note."""

    class Action(models.TextChoices):
        APPROVE = "approve"
        REJECT = "reject"
        UNDO = "undo"

    case = models.ForeignKey(ModerationCase, on_delete=models.CASCADE, related_name="events")
    action = models.CharField(max_length=10, choices=Action.choices)
    from_state = models.CharField(max_length=16, choices=ModerationCase.State.choices)
    to_state = models.CharField(max_length=16, choices=ModerationCase.State.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    note = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "pk"]

    def __str__(self) -> str:
        return f"{self.action} of case {self.case_id} by {self.actor_id}"


class AdminAccessLog(models.Model):
    """Who saw stored message text of which conversation in the admin, on which page, and
    when (privacy audit): one entry per conversation whose text a page showed.

    The conversation's id and title are copied so the entry outlives the conversation;
    `detail` holds the search term of a list page, when there was one.
    """

    class Action(models.TextChoices):
        VIEW = "view", "opened transcript"
        CONTEXT = "context", "opened case context"
        EXPORT = "export", "exported CSV"
        LIST = "list", "listed messages"
        MESSAGE = "message", "opened message"
        QUEUE = "queue", "listed cases"
        BULK = "bulk", "confirmed bulk decision"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    username = models.CharField(max_length=150)
    conversation = models.ForeignKey(
        Conversation, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    conversation_ref = models.CharField(max_length=36)
    conversation_title = models.CharField(max_length=200, blank=True, default="")
    action = models.CharField(max_length=10, choices=Action.choices)
    detail = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        verbose_name = "admin access log entry"
        verbose_name_plural = "admin access log entries"

    def __str__(self) -> str:
        return f"{self.username} {self.action} {self.conversation_ref}"
