"""Response headers Django 5.2 does not set by itself."""

import re
import uuid
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from chat.ops import logs

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class ContentSecurityPolicyMiddleware:
    """Adds the Content-Security-Policy of settings to every response that lacks one."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if settings.CONTENT_SECURITY_POLICY:
            response.headers.setdefault("Content-Security-Policy", settings.CONTENT_SECURITY_POLICY)
        return response


class RequestIdMiddleware:
    """Names every request (the proxy's X-Request-ID when it is sane) so its log lines
    can be found together; echoes the id in the response."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        given = request.headers.get("X-Request-ID", "")
        rid = given if _REQUEST_ID.match(given) else uuid.uuid4().hex[:16]
        token = logs.request_id.set(rid)
        try:
            response = self.get_response(request)
        finally:
            logs.request_id.reset(token)
        response.headers["X-Request-ID"] = rid
        return response
