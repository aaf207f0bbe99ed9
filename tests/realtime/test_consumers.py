"""The consumer in-process through the real ASGI router (origin check, session auth,
URL routing), the in-memory channel layer and the in-process simulator."""

import asyncio
import json
from datetime import timedelta

import pytest
from django.test import AsyncClient
from django.utils import timezone

from chat.domain import services
from chat.fanout import get_layer, groups
from chat.fanout import publish as fanout
from chat.fanout.layer import LogEntry
from chat.generation import sweeper
from chat.models import Message
from tests.sockets import connect, frames_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(30)]


def count_to(n: int) -> str:
    return ", ".join(str(i) for i in range(1, n + 1))


@pytest.fixture(autouse=True)
def fast_simulator(settings):
    settings.SIMULATOR_TTFT_MS = 0
    settings.SIMULATOR_CHUNK_MS = 1
    settings.STREAM_FLUSH_MS = 20


def done_of(message_id: str):
    return lambda f: f["type"] == "done" and f["message"]["id"] == message_id


async def test_prompt_streams_and_is_stored_with_usage(users, conversation):
    comm = await connect(users["alice"], conversation.id)
    snapshot = comm.snapshot
    assert snapshot["conversation"]["role"] == "owner"
    assert snapshot["messages"] == []

    await comm.send_json_to({"type": "prompt", "content": "Count to 40", "client_msg_id": "a"})
    frames = await frames_until(comm, lambda f: f["type"] == "done")
    messages = [f["message"] for f in frames if f["type"] == "message"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    deltas = [f for f in frames if f["type"] == "delta"]
    assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1))
    assert "".join(d["text"] for d in deltas) == count_to(40)
    done = frames[-1]["message"]
    assert done["status"] == "complete"
    assert done["usage"]["completion_tokens"] > 0

    stored = await Message.objects.aget(pk=done["id"])
    assert stored.content == count_to(40)
    assert stored.total_tokens == done["usage"]["total_tokens"]
    assert stored.seq == len(deltas)
    await comm.disconnect()


@pytest.mark.parametrize("content", ["Count to 40", "Count to 5 [[sim fault=http_500]]"])
async def test_the_prompt_and_placeholder_reach_viewers_before_the_answer_however_slow(
    users, conversation, settings, monkeypatch, content
):
    # The answer starts while its prompt and placeholder are being published: its first
    # delta, and a `done` with no delta before it, must still come after them.
    settings.OPENAI_MAX_RETRIES = 0
    publish_frame = fanout.publish_frame

    async def slow_publish_frame(conversation_id, frame):
        if frame["type"] == "message":
            await asyncio.sleep(0.3)
        return await publish_frame(conversation_id, frame)

    monkeypatch.setattr(fanout, "publish_frame", slow_publish_frame)
    comm = await connect(users["alice"], conversation.id)
    await comm.send_json_to({"type": "prompt", "content": content})
    frames = await frames_until(comm, lambda f: f["type"] == "done")
    kinds = [f["type"] if f["type"] != "message" else f["message"]["role"] for f in frames]
    assert kinds[:2] == ["user", "assistant"]
    assert kinds[-1] == "done"
    assert set(kinds[2:-1]) <= {"delta"}
    assert frames[-1]["message"]["status"] == ("complete" if "40" in content else "failed")
    await comm.disconnect()


async def test_a_client_offering_the_compact_subprotocol_gets_short_deltas_beside_long_ones(
    users, conversation
):
    from chat.protocol import COMPACT_SUBPROTOCOL

    long = await connect(users["alice"], conversation.id)
    short = await connect(
        users["bob"], conversation.id, subprotocols=["other", COMPACT_SUBPROTOCOL]
    )
    assert (long.subprotocol, short.subprotocol) == (None, COMPACT_SUBPROTOCOL)
    assert short.snapshot["conversation"]["id"] == str(conversation.id)

    await long.send_json_to({"type": "prompt", "content": "Count to 60"})
    long_frames = await frames_until(long, lambda f: f["type"] == "done")
    short_frames = []
    while (
        not short_frames
        or not isinstance(short_frames[-1], dict)
        or (short_frames[-1]["type"] != "done")
    ):
        short_frames.append(json.loads(await short.receive_from(10)))

    long_deltas = [f for f in long_frames if f["type"] == "delta"]
    short_deltas = [f for f in short_frames if isinstance(f, list)]
    assert len(long_deltas) > 3
    # The same deltas, values in the order of the long form's keys, and nothing else short.
    assert short_deltas == [["d", f["message_id"], f["seq"], f["text"]] for f in long_deltas]

    def others(frames):  # presence depends on join timing; the rest is the same for all
        return [f for f in frames if f["type"] not in ("delta", "presence")]

    assert others(f for f in short_frames if isinstance(f, dict)) == others(long_frames)
    for comm in (long, short):
        await comm.disconnect()


async def test_the_snapshot_is_the_first_frame_even_while_the_group_is_busy(
    users, conversation, settings
):
    # Deltas every few milliseconds and presence announcements from earlier joins reach
    # the group while each socket builds its snapshot; they wait for it.
    settings.SIMULATOR_CHUNK_MS = 1
    settings.STREAM_FLUSH_MS = 0
    first = await connect(users["alice"], conversation.id)
    await first.send_json_to({"type": "prompt", "content": "Count to 400"})
    await frames_until(first, lambda f: f["type"] == "delta" and f["seq"] >= 3)
    joined = []
    for user in ("bob", "alice", "bob", "alice", "bob"):
        # `connect` asserts that the first frame is the snapshot.
        joined.append(await connect(users[user], conversation.id, wait_presence=False))
    for comm in joined:
        streaming = [m for m in comm.snapshot["messages"] if m["status"] == "streaming"]
        text, seq = streaming[0]["content"], streaming[0]["seq"]
        frames = await frames_until(comm, done_of(streaming[0]["id"]))
        for frame in frames:
            assert frame["type"] != "snapshot", "a gap was healed: deltas were lost"
            if frame["type"] == "delta":
                assert frame["seq"] == seq + 1
                text, seq = text + frame["text"], frame["seq"]
        assert text == count_to(400)
    for comm in [first, *joined]:
        await comm.disconnect()


async def test_a_late_joiner_gets_the_text_so_far_then_only_newer_deltas(
    users, conversation, settings
):
    settings.SIMULATOR_CHUNK_MS = 5
    first = await connect(users["alice"], conversation.id)
    await first.send_json_to({"type": "prompt", "content": "Count to 120"})
    await frames_until(first, lambda f: f["type"] == "delta" and f["seq"] >= 3)

    late = await connect(users["bob"], conversation.id)
    snapshot = late.snapshot
    streaming = [m for m in snapshot["messages"] if m["status"] == "streaming"]
    assert len(streaming) == 1 and streaming[0]["seq"] >= 3
    text, seq = streaming[0]["content"], streaming[0]["seq"]
    frames = await frames_until(late, done_of(streaming[0]["id"]))
    for frame in frames:
        if frame["type"] == "delta":
            assert frame["seq"] == seq + 1, (
                "a delta the snapshot held came again, or one is missing"
            )
            text, seq = text + frame["text"], frame["seq"]
    assert text == count_to(120) == frames[-1]["message"]["content"]
    await first.disconnect()
    await late.disconnect()


async def test_removing_a_member_closes_their_socket_with_4403(users, conversation):
    bob = await connect(users["bob"], conversation.id)
    owner = AsyncClient()
    await owner.aforce_login(users["alice"])
    response = await owner.delete(f"/api/conversations/{conversation.id}/members/bob/")
    assert response.status_code == 204
    frames = []
    while True:
        output = await bob.receive_output(5)
        if output["type"] == "websocket.close":
            assert output["code"] == 4403
            break
        frames.append(output)
    await bob.disconnect()


async def test_frames_over_the_limit_close_with_1009(users, conversation, settings):
    settings.WS_MAX_FRAME_BYTES = 1000
    comm = await connect(users["alice"], conversation.id)
    await comm.send_to(text_data=json.dumps({"type": "prompt", "content": "é" * 600}))
    while (output := await comm.receive_output(5))["type"] == "websocket.send":
        pass
    assert output == {"type": "websocket.close", "code": 1009}
    await comm.disconnect()


async def test_binary_and_sync_frames(users, conversation):
    comm = await connect(users["alice"], conversation.id)
    await comm.send_to(bytes_data=b"\x00\x01")
    error = (await frames_until(comm, lambda f: f["type"] == "error"))[-1]
    assert error["type"] == "error" and error["code"] == "bad_frame"
    await comm.send_json_to({"type": "sync"})
    assert (await frames_until(comm, lambda f: f["type"] != "presence"))[-1]["type"] == "snapshot"
    assert await comm.receive_nothing(0.2)
    await comm.disconnect()


async def test_presence_lists_each_viewer_once(users, conversation):
    alice1 = await connect(users["alice"], conversation.id)
    alice2 = await connect(users["alice"], conversation.id)
    bob = await connect(users["bob"], conversation.id)
    frames = await frames_until(
        alice1, lambda f: f["type"] == "presence" and len(f["viewers"]) == 2
    )
    assert frames[-1]["viewers"] == [{"username": "alice"}, {"username": "bob"}]
    await bob.disconnect()
    frames = await frames_until(
        alice1, lambda f: f["type"] == "presence" and len(f["viewers"]) == 1
    )
    assert frames[-1]["viewers"] == [{"username": "alice"}]
    await alice1.disconnect()
    await alice2.disconnect()


async def test_sweeper_interrupts_stale_streams_keeping_the_replay_log_text(
    users, conversation, settings
):
    settings.STREAM_STALE_S = 5
    watcher = await connect(users["bob"], conversation.id)
    prompt = await Message.objects.acreate(conversation=conversation, role="user", content="hi")
    stale = await Message.objects.acreate(
        conversation=conversation,
        role="assistant",
        reply_to=prompt,
        status="streaming",
        content="Hel",
        seq=1,
        heartbeat_at=timezone.now() - timedelta(seconds=60),
    )
    for seq, text in enumerate(["Hel", "lo ", "there"], start=1):
        get_layer().replay.append(LogEntry(str(conversation.id), str(stale.id), seq, text))
    alive = await Message.objects.acreate(
        conversation=await _other_conversation(users),
        role="assistant",
        status="streaming",
        heartbeat_at=timezone.now(),
    )

    assert await sweeper.sweep() == 1
    frames = await frames_until(watcher, done_of(str(stale.id)))
    assert frames[-1]["message"]["status"] == "interrupted"
    assert frames[-1]["message"]["content"] == "Hello there"
    await stale.arefresh_from_db()
    assert (stale.status, stale.content, stale.seq) == ("interrupted", "Hello there", 3)
    await alive.arefresh_from_db()
    assert alive.status == "streaming"
    await watcher.disconnect()


async def _other_conversation(users):
    from asgiref.sync import sync_to_async

    return await sync_to_async(services.conversation_create)(owner=users["eve"], title="other")


async def test_healthz_and_page(users, conversation, client):
    response = await AsyncClient().get("/healthz")
    assert response.status_code == 200
    assert json.loads(response.content) == {"ok": True, "database": True, "channel_layer": True}

    anonymous = await asyncio.to_thread(client.get, "/")
    assert anonymous.status_code == 302 and "/accounts/login/" in anonymous["Location"]
    await asyncio.to_thread(client.force_login, users["alice"])
    page = await asyncio.to_thread(client.get, f"/c/{conversation.id}/")
    assert page.status_code == 200
    assert b"replies come from the built-in simulator" in page.content
    assert str(conversation.id).encode() in page.content


async def test_api_scopes_everything_to_membership(users, conversation):
    eve, alice = AsyncClient(), AsyncClient()
    await eve.aforce_login(users["eve"])
    await alice.aforce_login(users["alice"])
    assert (await eve.get(f"/api/conversations/{conversation.id}/messages/")).status_code == 404
    listed = json.loads((await eve.get("/api/conversations/")).content)
    assert listed == {"conversations": []}
    mine = json.loads((await alice.get("/api/conversations/")).content)["conversations"]
    assert [c["id"] for c in mine] == [str(conversation.id)]
    bob = AsyncClient()
    await bob.aforce_login(users["bob"])
    refused = await bob.post(
        f"/api/conversations/{conversation.id}/members/",
        {"username": "eve", "role": "member"},
        content_type="application/json",
    )
    assert refused.status_code == 403
    assert (await AsyncClient().get("/api/conversations/")).status_code == 401


async def test_regenerate_answers_the_same_prompt_again_keeping_the_old_answer(users, conversation):
    comm = await connect(users["bob"], conversation.id)
    await comm.send_json_to({"type": "prompt", "content": "Count to 5"})
    first = (await frames_until(comm, lambda f: f["type"] == "done"))[-1]["message"]

    await comm.send_json_to({"type": "regenerate", "message_id": first["id"]})
    frames = await frames_until(comm, lambda f: f["type"] == "done")
    placeholder = next(f["message"] for f in frames if f["type"] == "message")
    second = frames[-1]["message"]
    assert placeholder["role"] == "assistant"
    assert placeholder["status"] == "streaming"
    assert second["id"] != first["id"]
    assert second["reply_to"] == first["reply_to"]
    assert second["content"] == "1, 2, 3, 4, 5"
    assert await Message.objects.filter(conversation=conversation).acount() == 3

    await comm.send_json_to({"type": "regenerate", "message_id": second["reply_to"]})
    error = (await frames_until(comm, lambda f: f["type"] == "error"))[-1]
    assert error["code"] == "not_found"  # a user message is not an answer
    await comm.disconnect()


async def test_a_socket_that_missed_deltas_gets_a_snapshot_instead_of_a_gap(users, conversation):
    viewer = await connect(users["bob"], conversation.id)
    prompt = await Message.objects.acreate(conversation=conversation, role="user", content="hi")
    streaming = await Message.objects.acreate(
        conversation=conversation,
        role="assistant",
        reply_to=prompt,
        status="streaming",
        heartbeat_at=timezone.now(),
    )
    for seq, text in enumerate(["one ", "two ", "three"], start=1):
        get_layer().replay.append(LogEntry(str(conversation.id), str(streaming.id), seq, text))
    # Deltas 1 and 2 were lost on the way (an overflowing channel, an outage): 3 arrives.
    await get_layer().group_send(
        groups.conversation(conversation.id),
        {
            "type": "chat.delta",
            "message_id": str(streaming.id),
            "seq": 3,
            "text": '{"type":"delta"}',
        },
    )
    frame = (await frames_until(viewer, lambda f: f["type"] in ("snapshot", "delta")))[-1]
    assert frame["type"] == "snapshot"
    healed = {m["id"]: m for m in frame["messages"]}[str(streaming.id)]
    assert (healed["content"], healed["seq"]) == ("one two three", 3)
    await viewer.disconnect()
    await Message.objects.filter(pk=streaming.pk).aupdate(status="complete")


async def test_a_socket_told_events_were_lost_gets_one_fresh_snapshot(users, conversation):
    viewer = await connect(users["bob"], conversation.id)
    # Stored while this process heard nothing of it: only a snapshot can show it.
    away = await Message.objects.acreate(conversation=conversation, role="user", content="hi")
    # What the Redis backend does once its subscriptions are confirmed again after a
    # lost connection (tests/fanout/test_fanout_layer.py shows when it does).
    get_layer()._state().resubscribed()
    frame = (await frames_until(viewer, lambda f: f["type"] == "snapshot"))[-1]
    assert str(away.id) in [m["id"] for m in frame["messages"]]
    # One snapshot, though both its groups (the conversation's, the user's) were told.
    later = []
    while not await viewer.receive_nothing(0.5):
        later.append(await viewer.receive_json_from())
    assert "snapshot" not in [f["type"] for f in later]
    await viewer.disconnect()


async def test_a_connect_that_cannot_send_its_snapshot_closes_1013_and_leaves_the_hub(
    users, conversation, monkeypatch
):
    from chat.realtime import snapshots
    from chat.realtime.hub import get_hub

    async def broken(membership):
        raise ConnectionError("layer down")

    monkeypatch.setattr(snapshots, "build", broken)
    comm = await connect(users["alice"], conversation.id, expect_snapshot=False)
    assert (await comm.receive_output(5)) == {"type": "websocket.close", "code": 1013}
    group = get_hub()._groups.get(f"conv.{conversation.id.hex}")
    assert group is None or not group.members, "the hub still hands events to a closed socket"
