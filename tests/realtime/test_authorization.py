"""Authorization holds for every action, not only at connect."""

import json

import pytest
from django.test import AsyncClient

from chat.models import Membership, Message, Role
from tests.sockets import connect, frames_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(30)]


async def closed_with(comm) -> int:
    while True:
        output = await comm.receive_output(5)
        if output["type"] == "websocket.close":
            return output["code"]


async def test_signing_out_closes_that_sessions_sockets_with_4401(users, conversation):
    client = AsyncClient()
    await client.aforce_login(users["alice"])
    other_session = await connect(users["alice"], conversation.id)
    comm = await connect(users["alice"], conversation.id, client=client)
    await client.post("/accounts/logout/")
    assert await closed_with(comm) == 4401
    # Another browser of the same user stays signed in.
    await other_session.send_json_to({"type": "sync"})
    frame = (await frames_until(other_session, lambda f: f["type"] == "snapshot"))[-1]
    assert frame["type"] == "snapshot"
    await other_session.disconnect()


async def test_deactivating_a_user_closes_all_their_sockets(users, conversation):
    first = await connect(users["bob"], conversation.id)
    second = await connect(users["bob"], conversation.id)
    bob = users["bob"]
    bob.is_active = False
    await bob.asave()
    assert await closed_with(first) == 4401
    assert await closed_with(second) == 4401


async def test_a_role_change_applies_to_the_next_frame(users, conversation):
    comm = await connect(users["bob"], conversation.id)
    await Membership.objects.filter(user=users["bob"]).aupdate(role=Role.VIEWER)
    await comm.send_json_to({"type": "prompt", "content": "hi"})
    error = (await frames_until(comm, lambda f: f["type"] == "error"))[-1]
    assert error["code"] == "forbidden"
    assert await Message.objects.acount() == 0
    await comm.disconnect()


@pytest.mark.parametrize("frame", [{"type": "sync"}, {"type": "prompt", "content": "hi"}])
async def test_a_member_removed_without_notice_is_closed_at_their_next_frame(
    users, conversation, frame
):
    comm = await connect(users["bob"], conversation.id)
    await Membership.objects.filter(user=users["bob"]).adelete()
    await comm.send_to(text_data=json.dumps(frame))
    assert await closed_with(comm) == 4403
    assert await Message.objects.acount() == 0


@pytest.mark.parametrize("frame", [{"type": "sync"}, {"type": "prompt", "content": "hi"}])
async def test_a_deleted_session_is_noticed_at_the_next_frame(users, conversation, frame):
    from django.contrib.sessions.models import Session

    comm = await connect(users["alice"], conversation.id)
    await Session.objects.all().adelete()  # e.g. expired and cleared
    await comm.send_json_to(frame)
    assert await closed_with(comm) == 4401
    assert await Message.objects.acount() == 0


async def test_a_viewer_cannot_regenerate_and_nothing_is_stored(users, conversation):
    prompt = await Message.objects.acreate(conversation=conversation, role="user", content="hi")
    answer = await Message.objects.acreate(
        conversation=conversation, role="assistant", reply_to=prompt, content="hello"
    )
    await Membership.objects.filter(user=users["bob"]).aupdate(role=Role.VIEWER)
    comm = await connect(users["bob"], conversation.id)
    await comm.send_json_to({"type": "regenerate", "message_id": str(answer.id)})
    error = (await frames_until(comm, lambda f: f["type"] == "error"))[-1]
    assert error["code"] == "forbidden"
    assert await Message.objects.acount() == 2
    await comm.disconnect()
