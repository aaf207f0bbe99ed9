"""The JSON API: session auth, CSRF on writes (Django's middleware), JSON bodies."""

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from functools import wraps
from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_http_methods

from chat import moderation, protocol
from chat.domain import selectors, services
from chat.exceptions import ChatError, Forbidden, NotFound
from chat.fanout import presence
from chat.fanout import publish as fanout
from chat.models import Membership, Role
from chat.text import clean_user_text

log = logging.getLogger(__name__)

STATUS_FOR_CODE = {"forbidden": 403, "not_found": 404, "busy": 409}
VIEWERS_MAY_NOT_REPORT = "Viewers can read but not report messages."


def _error(code: str, detail: str, status: int) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "detail": detail}}, status=status)


def api_view(view: Callable[..., JsonResponse]) -> Callable[..., JsonResponse]:
    """Require a session, and turn ChatErrors into JSON errors with a fitting status."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
        if not request.user.is_authenticated:
            return _error("not_signed_in", "Sign in first.", 401)
        try:
            return view(request, *args, **kwargs)
        except ChatError as error:
            return _error(error.code, error.detail, STATUS_FOR_CODE.get(error.code, 400))
        except RequestDataTooBig:
            limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
            return _error("too_large", f"The request body is over {limit} bytes.", 413)

    return wrapper


BODY_NOT_JSON = "The body is not valid JSON."
BODY_TOO_DEEP = "The body is nested too deeply."
BODY_NOT_OBJECT = "The body must be a JSON object."


def _body(request: HttpRequest) -> dict[str, Any]:
    """The request's JSON object (`{}` for an empty body), or `BadJson` (a 400 `bad_json`
    whose detail says what was wrong): invalid JSON or UTF-8, nesting too deep to parse,
    or JSON that is not an object."""
    try:
        data = json.loads(request.body or b"{}")
    except ValueError:  # also UnicodeDecodeError: the body is not UTF-8
        raise protocol.BadJson(BODY_NOT_JSON) from None
    except RecursionError:
        # A few kilobytes of `[` exhaust the parser's recursion limit: the client's
        # mistake (or probe), not the server's.
        raise protocol.BadJson(BODY_TOO_DEEP) from None
    if not isinstance(data, dict):
        raise protocol.BadJson(BODY_NOT_OBJECT)
    return data


def _membership(request: HttpRequest, conversation_id: uuid.UUID) -> Membership:
    membership = selectors.membership_get(conversation_id=conversation_id, user=request.user)
    if membership is None:
        # Same answer for "not yours" and "does not exist": ids are not probeable.
        raise NotFound("No such conversation.")
    return membership


def _conversation_payload(membership: Membership) -> dict[str, Any]:
    conversation = membership.conversation
    return {
        "id": str(conversation.id),
        "title": conversation.title,
        "role": membership.role,
        "owner": conversation.owner.username,
        "created_at": conversation.created_at.isoformat(),
        "updated_at": conversation.updated_at.isoformat(),
    }


@require_http_methods(["GET", "POST"])
@api_view
def conversations(request: HttpRequest) -> JsonResponse:
    if request.method == "POST":
        title = _body(request).get("title", "")
        if not isinstance(title, str) or len(title) > 200:
            raise ChatError("title must be a string of at most 200 characters.")
        title = clean_user_text(title, field="title")
        conversation = services.conversation_create(owner=request.user, title=title)
        membership = selectors.membership_get(conversation_id=conversation.id, user=request.user)
        return JsonResponse(_conversation_payload(membership), status=201)
    items = [_conversation_payload(m) for m in selectors.conversation_list_for(user=request.user)]
    viewers = async_to_sync(_viewers_of)([item["id"] for item in items])
    for item, names in zip(items, viewers, strict=True):
        item["viewers"] = names
    return JsonResponse({"conversations": items})


async def _viewers_of(conversation_ids: list[str]) -> list[list[dict[str, str]]]:
    """Who is viewing each conversation now; empty where presence is unreadable."""

    async def one(conversation_id: str) -> list[dict[str, str]]:
        try:
            return await presence.viewers(conversation_id)
        except Exception:
            log.warning("presence of %s unreadable", conversation_id, exc_info=True)
            return []

    return list(await asyncio.gather(*(one(i) for i in conversation_ids)))


@require_http_methods(["GET", "PATCH", "DELETE"])
@api_view
def conversation(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    """One conversation: read it, rename it `{"title"}` (owner), or delete it (owner;
    its open sockets close with 4404)."""
    membership = _membership(request, conversation_id)
    if request.method == "DELETE":
        services.conversation_delete(conversation=membership.conversation, actor=request.user)
        async_to_sync(fanout.publish_conversation_deleted)(conversation_id)
        return HttpResponse(status=204)
    if request.method == "PATCH":
        title = _body(request).get("title")
        if not isinstance(title, str) or len(title) > 200:
            raise ChatError("title must be a string of at most 200 characters.")
        title = clean_user_text(title, field="title")
        services.conversation_rename(
            conversation=membership.conversation, actor=request.user, title=title
        )
        async_to_sync(fanout.publish_conversation_renamed)(
            conversation_id, membership.conversation.title
        )
    return JsonResponse(_conversation_payload(membership))


@require_http_methods(["GET"])
@api_view
def messages(request: HttpRequest, conversation_id: uuid.UUID) -> JsonResponse:
    _membership(request, conversation_id)
    items = [
        protocol.message_payload(m) for m in selectors.message_list(conversation_id=conversation_id)
    ]
    return JsonResponse({"messages": items})


@require_http_methods(["GET", "POST"])
@api_view
def members(request: HttpRequest, conversation_id: uuid.UUID) -> JsonResponse:
    membership = _membership(request, conversation_id)
    if request.method == "GET":
        # Any member may see who else is in the conversation: the owner first.
        rows = (
            Membership.objects.filter(conversation_id=conversation_id, user__is_active=True)
            .select_related("user")
            .order_by("created_at")
        )
        items = [{"username": m.user.username, "role": m.role} for m in rows]
        items.sort(key=lambda item: item["role"] != Role.OWNER)
        return JsonResponse({"members": items})
    data = _body(request)
    username, role = data.get("username"), data.get("role", "member")
    if not isinstance(username, str) or not isinstance(role, str):
        raise ChatError("username and role must be strings.")
    username = clean_user_text(username, field="username")
    added = services.member_set(
        conversation=membership.conversation, actor=request.user, username=username, role=role
    )
    return JsonResponse({"username": added.user.username, "role": added.role}, status=201)


@require_http_methods(["DELETE"])
@api_view
def member(request: HttpRequest, conversation_id: uuid.UUID, username: str) -> HttpResponse:
    membership = _membership(request, conversation_id)
    if username == request.user.get_username() and membership.role != Role.OWNER:
        # Leaving: anyone but the owner may remove themself.
        user_id = services.member_leave(membership=membership)
        async_to_sync(fanout.publish_member_removed)(conversation_id, user_id)
        return HttpResponse(status=204)
    if membership.conversation.owner_id != request.user.pk:
        raise Forbidden("Only the owner can manage members.")
    user_id = services.member_remove(
        conversation=membership.conversation,
        actor=request.user,
        username=clean_user_text(username, field="username"),
    )
    # Their open sockets on this conversation close with 4403 at once.
    async_to_sync(fanout.publish_member_removed)(conversation_id, user_id)
    return HttpResponse(status=204)


@require_http_methods(["POST"])
@api_view
def report(request: HttpRequest, conversation_id: uuid.UUID, message_id: str) -> JsonResponse:
    """The owner or a member reports a message for staff review: `{"reason": str}` ->
    201, or 200 with their earlier report of the same message. Viewers are read-only:
    403."""
    if not _membership(request, conversation_id).can_write:
        raise Forbidden(VIEWERS_MAY_NOT_REPORT)
    reason = _body(request).get("reason")
    if not isinstance(reason, str):
        raise moderation.BadReport("reason must be a string.")
    case, created = moderation.report_create(
        conversation_id=conversation_id,
        message_id=message_id,
        user=request.user,
        reason=clean_user_text(reason, field="reason"),
    )
    if created:
        moderation.wake()  # this process's retry loop runs the moderation call now
    payload = {"id": case.pk, "message_id": str(case.message_id), "state": case.state}
    return JsonResponse({"report": payload}, status=201 if created else 200)
