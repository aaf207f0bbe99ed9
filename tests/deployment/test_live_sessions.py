"""Sessions end everywhere at once: a password change (the page's form or the admin's)
and a user's deletion close that user's sockets and event streams on real daphne
processes, and a socket of a session signed in before the change is refused."""

import asyncio
import re

import pytest

from tests import live
from tests.live import PASSWORDS, Server, Session, new_user
from tests.sse_client import open_stream

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(90)]


async def form_post(session: Session, path: str, data: dict) -> int:
    """Submit a Django form page as a browser does: the status."""
    response = await live.form_post(session.http, path, data, Referer=session.server.url)
    return response.status_code


async def closed_with(viewer, code: int) -> None:
    await asyncio.wait_for(viewer._task, 15)  # the server closes it, at once
    assert viewer.close_code == code


async def test_a_password_change_closes_the_other_sessions_sockets_and_streams(
    deployment, server: Server
):
    name = new_user(deployment)
    owner = await Session(server, name).login()
    attacker = await Session(server, name).login()  # the same account, another session
    conv = await owner.create_conversation()
    stolen = await attacker.viewer(conv)
    stream = await open_stream(attacker, conv)
    await stream.wait_for(lambda e: e.event == "snapshot")

    new_password = f"{PASSWORDS[name]}-new"
    changed = await form_post(
        owner,
        "/accounts/password_change/",
        {
            "old_password": PASSWORDS[name],
            "new_password1": new_password,
            "new_password2": new_password,
        },
    )
    assert changed == 302
    await closed_with(stolen, 4401)
    ended = await stream.wait_for(lambda e: e.event == "error")
    assert ended.json()["code"] == "not_signed_in"
    # The old session can neither reconnect nor prompt; the owner's own carries on.
    with pytest.raises(AssertionError, match="closed"):
        await attacker.viewer(conv)
    mine = await owner.viewer(conv)
    _, placeholder = await mine.prompt("Count to 3")
    assert (await mine.done(placeholder["id"]))["content"] == "1, 2, 3"
    await mine.close()
    await stream.close()
    await owner.close()
    await attacker.close()


async def test_deleting_a_user_in_the_admin_closes_their_sockets_and_streams(
    deployment, server: Server
):
    name, staff = new_user(deployment), new_user(deployment, staff=True)
    user, admin = await Session(server, name).login(), await Session(server, staff).login()
    conv = await user.create_conversation()
    socket = await user.viewer(conv)
    stream = await open_stream(user, conv)
    await stream.wait_for(lambda e: e.event == "snapshot")

    users = (await admin.http.get(f"/admin/auth/user/?q={name}")).text
    user_id = re.search(r'href="/admin/auth/user/(\d+)/change/', users).group(1)
    deleted = await form_post(admin, f"/admin/auth/user/{user_id}/delete/", {"post": "yes"})
    assert deleted == 302
    await closed_with(socket, 4401)
    ended = await stream.wait_for(lambda e: e.event == "error")
    assert ended.json()["code"] == "not_signed_in"
    await stream.close()
    await user.close()
    await admin.close()
