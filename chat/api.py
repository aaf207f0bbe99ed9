"""The JSON API: session auth, CSRF on writes (Django's middleware), JSON bodies."""

import json
import uuid
from collections.abc import Callable
from functools import wraps
from typing import Any

from asgiref.sync import async_to_sync
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_http_methods

from chat import fanout, protocol, selectors, services
from chat.exceptions import ChatError, Forbidden, NotFound
from chat.models import Membership
from chat.text import clean_user_text

STATUS_FOR_CODE = {"forbidden": 403, "not_found": 404}


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

    return wrapper


def _body(request: HttpRequest) -> dict[str, Any]:
    try:
        data = json.loads(request.body or b"{}")
    except ValueError:
        raise ChatError("The body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise ChatError("The body must be a JSON object.")
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
    return JsonResponse({"conversations": items})


@require_http_methods(["GET"])
@api_view
def messages(request: HttpRequest, conversation_id: uuid.UUID) -> JsonResponse:
    _membership(request, conversation_id)
    items = [
        protocol.message_payload(m) for m in selectors.message_list(conversation_id=conversation_id)
    ]
    return JsonResponse({"messages": items})


@require_http_methods(["POST"])
@api_view
def members(request: HttpRequest, conversation_id: uuid.UUID) -> JsonResponse:
    membership = _membership(request, conversation_id)
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
