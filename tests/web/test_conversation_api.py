"""Managing conversations over the JSON API: rename, delete, members, leave; and what
open sockets see when that happens (in-process, through the real ASGI router)."""

import json
import uuid

import pytest
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient

from chat.domain import services
from chat.models import Conversation, Membership, Message, Role
from chat.web import api
from project.asgi import application

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(30)]


@pytest.fixture
def users(django_user_model):
    return {
        name: django_user_model.objects.create_user(name, password="x")
        for name in ("alice", "bob", "carol", "eve")
    }


@pytest.fixture
def conversation(users):
    conv = services.conversation_create(owner=users["alice"], title="Plans")
    services.member_set(conversation=conv, actor=users["alice"], username="bob", role=Role.MEMBER)
    services.member_set(conversation=conv, actor=users["alice"], username="carol", role=Role.VIEWER)
    return conv


async def client_for(user) -> AsyncClient:
    client = AsyncClient()
    await client.aforce_login(user)
    return client


async def socket_for(client: AsyncClient, conversation_id) -> WebsocketCommunicator:
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    comm = WebsocketCommunicator(
        application,
        f"/ws/chat/{conversation_id}/",
        headers=[(b"origin", b"http://localhost"), (b"host", b"localhost"), (b"cookie", cookie)],
    )
    connected, _ = await comm.connect()
    assert connected
    assert json.loads(await comm.receive_from())["type"] == "snapshot"
    return comm


async def close_code(comm: WebsocketCommunicator) -> int:
    """Read frames until the socket closes; its close code."""
    while True:
        output = await comm.receive_output(5)
        if output["type"] == "websocket.close":
            return output["code"]


async def frame_of_type(comm: WebsocketCommunicator, kind: str) -> dict:
    while True:
        frame = json.loads(await comm.receive_from(5))
        if frame["type"] == kind:
            return frame


def patch(client: AsyncClient, conversation_id, body):
    return client.patch(
        f"/api/conversations/{conversation_id}/", json.dumps(body), content_type="application/json"
    )


async def test_the_owner_renames_and_open_sockets_see_the_new_title(users, conversation):
    alice, bob = await client_for(users["alice"]), await client_for(users["bob"])
    bob_socket = await socket_for(bob, conversation.id)
    response = await patch(alice, conversation.id, {"title": "  Holiday plans "})
    assert response.status_code == 200
    assert response.json()["title"] == "Holiday plans"
    frame = await frame_of_type(bob_socket, "conversation")
    assert frame["conversation"] == {"id": str(conversation.id), "title": "Holiday plans"}
    got = await bob.get(f"/api/conversations/{conversation.id}/")
    assert got.json()["title"] == "Holiday plans"
    assert got.json()["role"] == "member"
    await bob_socket.disconnect()


@pytest.mark.parametrize(
    ("who", "body", "status"),
    [
        ("bob", {"title": "Mine now"}, 403),  # only the owner renames
        ("carol", {"title": "Mine now"}, 403),
        ("eve", {"title": "Mine now"}, 404),  # not a member: no such conversation
        ("alice", {"title": 42}, 400),
        ("alice", {"title": "x" * 201}, 400),
        ("alice", {}, 400),
    ],
)
async def test_rename_refusals(users, conversation, who, body, status):
    response = await patch(await client_for(users[who]), conversation.id, body)
    assert response.status_code == status
    assert set(response.json()["error"]) == {"code", "detail"}
    assert (await Conversation.objects.aget(pk=conversation.id)).title == "Plans"


# Every malformed body is a 400 `bad_json` whose detail says what was wrong; none is a
# 500 (30,000 nested brackets once raised RecursionError out of the view).
MALFORMED_BODIES = [
    (b"[" * 30_000, api.BODY_TOO_DEEP),
    (b'{"a":' * 10_000, api.BODY_TOO_DEEP),
    (b"{not json", api.BODY_NOT_JSON),
    (b"\xff\xfe\x00", api.BODY_NOT_JSON),  # not UTF-8
    (b"[1, 2]", api.BODY_NOT_OBJECT),
    (b'"a title"', api.BODY_NOT_OBJECT),
    (b"null", api.BODY_NOT_OBJECT),
]


@pytest.mark.parametrize(("body", "detail"), MALFORMED_BODIES)
async def test_malformed_bodies_get_400_bad_json_on_every_route_that_reads_one(
    users, conversation, body, detail
):
    alice = await client_for(users["alice"])
    base = f"/api/conversations/{conversation.id}"
    for method, url in (
        (alice.post, "/api/conversations/"),
        (alice.patch, f"{base}/"),
        (alice.post, f"{base}/members/"),
        (alice.post, f"{base}/messages/{uuid.uuid4()}/report/"),
    ):
        response = await method(url, body, content_type="application/json")
        assert response.status_code == 400, (url, response.status_code)
        assert response.json()["error"] == {"code": "bad_json", "detail": detail}
    assert await Conversation.objects.acount() == 1
    assert (await Conversation.objects.aget(pk=conversation.id)).title == "Plans"


async def test_the_owner_deletes_and_open_sockets_close_with_4404(users, conversation):
    alice, bob = await client_for(users["alice"]), await client_for(users["bob"])
    bob_socket = await socket_for(bob, conversation.id)
    for who in ("bob", "carol"):
        client = await client_for(users[who])
        response = await client.delete(f"/api/conversations/{conversation.id}/")
        assert response.status_code == 403
    assert (await alice.delete(f"/api/conversations/{conversation.id}/")).status_code == 204
    assert await close_code(bob_socket) == 4404
    assert not await Conversation.objects.filter(pk=conversation.id).aexists()
    assert (await bob.get(f"/api/conversations/{conversation.id}/")).status_code == 404
    assert (await alice.delete(f"/api/conversations/{conversation.id}/")).status_code == 404


async def test_delete_waits_for_a_running_answer(users, conversation):
    prompt = await Message.objects.acreate(
        conversation=conversation, role="user", author=users["bob"], content="hi"
    )
    await Message.objects.acreate(
        conversation=conversation, role="assistant", reply_to=prompt, status="streaming"
    )
    alice = await client_for(users["alice"])
    response = await alice.delete(f"/api/conversations/{conversation.id}/")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "busy"
    assert await Conversation.objects.filter(pk=conversation.id).aexists()


async def test_members_are_listed_for_every_member_owner_first(users, conversation):
    expected = [
        {"username": "alice", "role": "owner"},
        {"username": "bob", "role": "member"},
        {"username": "carol", "role": "viewer"},
    ]
    for who in ("alice", "bob", "carol"):
        response = await (await client_for(users[who])).get(
            f"/api/conversations/{conversation.id}/members/"
        )
        assert response.status_code == 200
        assert response.json() == {"members": expected}
    eve = await client_for(users["eve"])
    assert (await eve.get(f"/api/conversations/{conversation.id}/members/")).status_code == 404


async def test_a_member_leaves_and_their_sockets_close_with_4403(users, conversation):
    bob = await client_for(users["bob"])
    bob_socket = await socket_for(bob, conversation.id)
    response = await bob.delete(f"/api/conversations/{conversation.id}/members/bob/")
    assert response.status_code == 204
    assert await close_code(bob_socket) == 4403
    assert not await Membership.objects.filter(user=users["bob"]).aexists()
    listed = (await bob.get("/api/conversations/")).json()["conversations"]
    assert listed == []


async def test_a_viewer_may_leave_but_not_remove_others_and_the_owner_cannot_leave(
    users, conversation
):
    carol, alice = await client_for(users["carol"]), await client_for(users["alice"])
    members = f"/api/conversations/{conversation.id}/members/"
    assert (await carol.delete(f"{members}bob/")).status_code == 403
    assert (await carol.delete(f"{members}carol/")).status_code == 204
    # The owner's own membership is not removable (as before): delete the conversation.
    assert (await alice.delete(f"{members}alice/")).status_code == 404
    roles = {m.user.username async for m in Membership.objects.select_related("user")}
    assert roles == {"alice", "bob"}


async def test_the_list_says_who_is_viewing_each_conversation(users, conversation):
    other = await Conversation.objects.acreate(owner=users["alice"], title="Quiet")
    await Membership.objects.acreate(conversation=other, user=users["alice"], role=Role.OWNER)
    bob = await client_for(users["bob"])
    bob_socket = await socket_for(bob, conversation.id)
    alice = await client_for(users["alice"])
    listed = {
        c["title"]: c for c in (await alice.get("/api/conversations/")).json()["conversations"]
    }
    assert listed["Plans"]["viewers"] == [{"username": "bob"}]
    assert listed["Quiet"]["viewers"] == []
    # The fields that were there before are all still there.
    assert {"id", "title", "role", "owner", "created_at", "updated_at"} <= set(listed["Plans"])
    await bob_socket.disconnect()
