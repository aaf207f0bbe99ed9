from django.urls import path

from chat.realtime import sse
from chat.web import api, views

urlpatterns = [
    path("", views.chat_page, name="chat"),
    path("c/<uuid:conversation_id>/", views.chat_page, name="conversation"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("metrics", views.metrics_view, name="metrics"),
    path("api/conversations/", api.conversations, name="api-conversations"),
    path("api/conversations/<uuid:conversation_id>/", api.conversation, name="api-conversation"),
    path("api/conversations/<uuid:conversation_id>/messages/", api.messages, name="api-messages"),
    path("api/conversations/<uuid:conversation_id>/members/", api.members, name="api-members"),
    path(
        "api/conversations/<uuid:conversation_id>/messages/<str:message_id>/report/",
        api.report,
        name="api-report",
    ),
    path("api/conversations/<uuid:conversation_id>/events", sse.events, name="api-events"),
    path(
        "api/conversations/<uuid:conversation_id>/members/<str:username>/",
        api.member,
        name="api-member",
    ),
]
