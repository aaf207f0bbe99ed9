"""The SSE read endpoint `GET /api/conversations/<id>/events`: live over real daphne
processes on both deployments, and in-process (ASGI handler, in-memory layer) for what a
subprocess cannot be made to do: a patched keep-alive interval, a crafted replay log."""

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx2
import pytest
import redis.asyncio as aioredis
from django.test import AsyncClient

from chat.fanout import get_layer, groups
from chat.fanout import publish as fanout
from chat.models import Message
from tests.live import Session, new_user
from tests.sse_client import Sse, SseParser, events_url, open_stream


def count_to(n: int) -> str:
    return ", ".join(str(i) for i in range(1, n + 1))


def test_parser_handles_split_chunks_comments_and_multiline_data():
    parser = SseParser()
    wire = b': hi\n\nevent: delta\nid: m:1\ndata: {"a":\ndata: 1}\n\ndata: x\r\n\r\n'
    got = [e for i in range(len(wire)) for e in parser.feed(wire[i : i + 1])]
    assert got == [
        Sse(event="", comment="hi"),
        Sse(event="delta", id="m:1", data='{"a":\n1}'),
        Sse(event="message", data="x"),
    ]


# ---- live: real daphne, real HTTP client --------------------------------------------


def is_done_of(message_id: str) -> Callable[[Sse], bool]:
    return lambda e: e.event == "done" and e.json()["message"]["id"] == message_id


def delta_seqs(events: list[Sse], message_id: str) -> list[int]:
    seqs = []
    for event in events:
        frame = event.json()
        assert event.id == f"{message_id}:{frame['seq']}"
        assert frame["message_id"] == message_id
        seqs.append(frame["seq"])
    return seqs


@pytest.mark.multiprocess
@pytest.mark.timeout(60)
async def test_sse_member_gets_snapshot_messages_deltas_and_done(sessions, server):
    alice, bob = sessions["alice"], sessions["bob"]
    conv = await alice.create_conversation(members={"bob": "member"})
    stream = await open_stream(bob, conv)
    snapshot = (await stream.wait_for(lambda e: e.event == "snapshot")).json()
    assert snapshot["conversation"]["id"] == conv
    assert snapshot["messages"] == []

    asker = await alice.viewer(conv)
    user_msg, placeholder = await asker.prompt("Count to 60 [[sim chunk_ms=5]]")
    done = (await stream.wait_for(is_done_of(placeholder["id"]))).json()["message"]

    kinds = [e.event for e in stream.events]
    for event in stream.events:  # the event name is the frame's type
        assert event.json()["type"] == event.event
    assert kinds[0] == "snapshot"
    messages = [e.json()["message"] for e in stream.events if e.event == "message"]
    assert [m["id"] for m in messages] == [user_msg["id"], placeholder["id"]]
    # The placeholder comes before the first delta, done after the last.
    placeholder_at = next(
        i
        for i, e in enumerate(stream.events)
        if e.event == "message" and e.json()["message"]["role"] == "assistant"
    )
    assert placeholder_at < kinds.index("delta")
    assert len(kinds) - 1 - kinds[::-1].index("delta") < kinds.index("done")
    deltas = stream.deltas()
    assert delta_seqs(deltas, placeholder["id"]) == list(range(1, len(deltas) + 1))
    assert done["status"] == "complete"
    assert done["content"] == count_to(60)
    assert "".join(e.json()["text"] for e in deltas) == done["content"]
    await stream.close()
    await asker.close()


@pytest.mark.multiprocess
@pytest.mark.timeout(60)
async def test_sse_resume_with_last_event_id_sends_exactly_the_missing_deltas(sessions, server):
    alice, bob = sessions["alice"], sessions["bob"]
    conv = await alice.create_conversation(members={"bob": "member"})
    first = await open_stream(bob, conv)
    await first.wait_for(lambda e: e.event == "snapshot")
    asker = await alice.viewer(conv)
    _, placeholder = await asker.prompt("Count to 300 [[sim chunk_ms=10]]")
    mid = placeholder["id"]

    await first.wait_for(lambda e: len(first.deltas()) >= 5)
    await first.close()
    before = first.deltas()
    seqs_before = delta_seqs(before, mid)
    assert seqs_before == list(range(1, len(before) + 1))
    await asyncio.sleep(0.7)  # the stream goes on without this client

    second = await open_stream(bob, conv, last_event_id=before[-1].id)
    done = (await second.wait_for(is_done_of(mid), timeout=40)).json()["message"]
    after = second.deltas()
    # No snapshot: it resumed from the replay log, then went on live.
    assert "snapshot" not in [e.event for e in second.events]
    assert second.events[0].event == "delta"
    assert delta_seqs(after, mid) == list(
        range(seqs_before[-1] + 1, seqs_before[-1] + 1 + len(after))
    )
    assert after[-1].json()["seq"] == done["seq"]
    text = "".join(e.json()["text"] for e in before + after)
    assert text == done["content"] == count_to(300)
    stored = {m["id"]: m for m in await bob.messages(conv)}[mid]
    assert stored["status"] == "complete"
    assert stored["content"] == text
    await second.close()
    await asker.close()


@pytest.mark.multiprocess
@pytest.mark.timeout(60)
# Redis channels exist only on Redis: the in-memory layer's side of this is
# test_sse_disconnect_leaves_the_group_and_stops_receiving.
@pytest.mark.parametrize("deployment", ["redis-postgres"], indirect=True)
async def test_sse_disconnect_unsubscribes_its_redis_channels(sessions, server, deployment):
    alice, bob = sessions["alice"], sessions["bob"]
    conv = await alice.create_conversation(members={"bob": "member"})
    prefix = deployment.env["CHANNEL_PREFIX"]
    conversation_channel = f"{prefix}:group:{{{groups.conversation(conv)}}}"
    client = aioredis.Redis.from_url(deployment.env["REDIS_URL"])

    async def subscribed() -> set[str]:
        return {c.decode() for c in await client.pubsub_channels(f"{prefix}*")}

    try:
        before = await subscribed()
        stream = await open_stream(bob, conv)
        await stream.wait_for(lambda e: e.event == "snapshot")
        added = await subscribed() - before
        # The conversation's and its user's groups, once for the process.
        assert conversation_channel in added
        assert len([c for c in added if c.startswith(f"{prefix}:group:{{user.")]) == 1
        await stream.close()
        for _ in range(100):  # the server notices the disconnect, then unsubscribes
            if await subscribed() == before:
                break
            await asyncio.sleep(0.05)
        assert await subscribed() == before
    finally:
        await client.aclose()


@pytest.mark.multiprocess
@pytest.mark.timeout(60)
async def test_sse_refuses_non_members_unknown_ids_and_anonymous_clients(sessions, server):
    alice, carol = sessions["alice"], sessions["carol"]
    conv = await alice.create_conversation()
    for session, path in ((carol, events_url(conv)), (alice, events_url(uuid.uuid4()))):
        response = await session.http.get(path)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    async with httpx2.AsyncClient(base_url=server.url, timeout=10) as anonymous:
        response = await anonymous.get(events_url(conv))
    assert response.status_code == 401
    assert response.json() == {"error": {"code": "not_signed_in", "detail": "Sign in first."}}


@pytest.mark.multiprocess
@pytest.mark.timeout(90)
async def test_sse_streams_count_with_sockets_in_the_per_user_limit_and_show_in_presence(
    deployment, server
):
    # A user of this test alone: its sockets and streams are counted across the server.
    name = new_user(deployment)
    reader, alice = await Session(server, name).login(), await Session(server, "alice").login()
    conv = await alice.create_conversation(members={name: "viewer"})
    watcher = await alice.viewer(conv)

    def shown(names: list[str]):
        return lambda f: f["type"] == "presence" and [v["username"] for v in f["viewers"]] == names

    stream = await open_stream(reader, conv)
    await stream.wait_for(lambda e: e.event == "snapshot")
    await watcher.wait_for(shown(sorted(["alice", name])), what="the SSE reader in presence")
    sockets = [await reader.viewer(conv) for _ in range(19)]  # 20 with the stream

    refused = await reader.http.get(events_url(conv))
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "too_many_connections"
    with pytest.raises(AssertionError, match="closed \\(4429\\)"):
        await reader.viewer(conv)

    for viewer in sockets:
        await viewer.close()
    start = len(watcher.frames)
    await stream.close()
    await watcher.wait_for(shown(["alice"]), what="the reader gone", start=start)
    await watcher.close()
    await reader.close()
    await alice.close()


# ---- in-process: the ASGI handler's view, the in-memory layer -----------------------


class InProcessStream:
    """`response.streaming_content` of Django's AsyncClient, read event by event."""

    def __init__(self, response: Any) -> None:
        self.response = response
        # Read once: each access of streaming_content wraps the iterator anew.
        self._chunks: AsyncIterator[bytes] = response.streaming_content
        self._parser = SseParser()
        self._ready: list[Sse] = []
        self.session_key = ""

    async def next(self, timeout: float = 5, *, presence: bool = False) -> Sse:
        """The next event; the stream's own presence announcements (its reader is a
        viewer too) are passed over unless `presence`."""
        while True:
            while not self._ready:
                # A timeout cancels the read, which ends the stream as a disconnect does.
                chunk = await asyncio.wait_for(anext(self._chunks), timeout)
                self._ready.extend(self._parser.feed(chunk))
            event = self._ready.pop(0)
            if presence or event.event != "presence" or event.json()["viewers"] == []:
                return event


@pytest.fixture
def users(django_user_model):
    return {
        name: django_user_model.objects.create_user(name, password="x")
        for name in ("alice", "bob", "carol")
    }


@pytest.fixture
def streaming_message(conversation):
    """An assistant message mid-stream: three deltas in the replay log, one checkpointed."""
    message = Message.objects.create(
        conversation=conversation, role="assistant", status="streaming", content="a", seq=1
    )
    message_id = str(message.id)
    get_layer().replay.logs[message_id] = ["a", "b", "c"]
    yield message
    get_layer().replay.logs.pop(message_id, None)


async def open_in_process(user: Any, conversation_id: Any, **kwargs: Any) -> InProcessStream:
    client = AsyncClient()
    await client.aforce_login(user)
    response = await client.get(events_url(conversation_id), **kwargs)
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    stream = InProcessStream(response)
    stream.session_key = client.cookies["sessionid"].value
    return stream


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(30)
async def test_sse_sends_keepalive_comments_while_idle(settings, users, conversation):
    settings.SSE_KEEPALIVE_S = 0.05
    stream = await open_in_process(users["bob"], conversation.id)
    assert (await stream.next()).event == "snapshot"
    assert (await stream.next(timeout=2)).comment == "keep-alive"
    await fanout.publish_frame(conversation.id, {"type": "presence", "viewers": []})
    event = await stream.next()
    while event.comment:  # keep-alives may come before it, but it does arrive
        event = await stream.next()
    assert (event.event, event.json()) == ("presence", {"type": "presence", "viewers": []})
    assert (await stream.next(timeout=2)).comment == "keep-alive"


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["header", "query"])
async def test_sse_resume_replays_the_log_then_drops_live_deltas_it_sent(
    users, conversation, streaming_message, how
):
    mid = str(streaming_message.id)
    kwargs = (
        {"headers": {"Last-Event-ID": f"{mid}:1"}}
        if how == "header"
        else {"query_params": {"last_event_id": f"{mid}:1"}}
    )
    stream = await open_in_process(users["bob"], conversation.id, **kwargs)
    replayed = [await stream.next(), await stream.next()]
    assert [(e.event, e.id, e.json()["text"]) for e in replayed] == [
        ("delta", f"{mid}:2", "b"),
        ("delta", f"{mid}:3", "c"),
    ]
    assert replayed[0].json() == {"type": "delta", "message_id": mid, "seq": 2, "text": "b"}
    await fanout.publish_delta(conversation.id, mid, 3, "c")  # already sent: dropped
    await fanout.publish_delta(conversation.id, mid, 4, "d")
    live_delta = await stream.next()
    assert (live_delta.id, live_delta.json()["text"]) == (f"{mid}:4", "d")


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "last_event_id",
    ["garbage", "{mid}:x", "{mid}:-1", "{mid}", "{other}:1", "{finished}:1", "{mid}:1 no log"],
)
async def test_sse_resume_falls_back_to_a_snapshot(
    users, conversation, streaming_message, last_event_id
):
    mid = str(streaming_message.id)
    finished = await Message.objects.acreate(
        conversation=conversation, role="assistant", status="complete", content="done", seq=2
    )
    get_layer().replay.logs[str(finished.id)] = ["do", "ne"]
    if last_event_id.endswith(" no log"):
        last_event_id = last_event_id.removesuffix(" no log")
        del get_layer().replay.logs[mid]
    value = last_event_id.format(mid=mid, other=uuid.uuid4(), finished=finished.id)
    try:
        stream = await open_in_process(
            users["bob"], conversation.id, headers={"Last-Event-ID": value}
        )
        snapshot = await stream.next()
    finally:
        get_layer().replay.logs.pop(str(finished.id), None)
    assert snapshot.event == "snapshot"
    held = {m["id"]: m for m in snapshot.json()["messages"]}[mid]
    # From the log if there is one, else the checkpoint; live deltas at or below it drop.
    assert (held["content"], held["seq"]) == (
        ("abc", 3) if mid in get_layer().replay.logs else ("a", 1)
    )
    await fanout.publish_delta(conversation.id, mid, held["seq"], "dup")
    await fanout.publish_delta(conversation.id, mid, held["seq"] + 1, "next")
    assert (await stream.next()).id == f"{mid}:{held['seq'] + 1}"


REVOCATIONS = {
    # name: (event for the stream's user or conversation, error code, the same for others)
    "member_removed": (
        lambda conv, bob, key: fanout.publish_member_removed(conv.id, bob.pk),
        "forbidden",
        lambda conv, bob, key: fanout.publish_member_removed(conv.id, bob.pk + 1),
    ),
    "signed_out": (
        lambda conv, bob, key: fanout.publish_signed_out(bob.pk, key),
        "not_signed_in",
        lambda conv, bob, key: fanout.publish_signed_out(bob.pk, "another-session"),
    ),
    "deactivated": (
        lambda conv, bob, key: fanout.publish_signed_out(bob.pk, None),
        "not_signed_in",
        lambda conv, bob, key: fanout.publish_signed_out(bob.pk + 1, None),
    ),
    "conversation_deleted": (
        lambda conv, bob, key: fanout.publish_conversation_deleted(conv.id),
        "not_found",
        lambda conv, bob, key: fanout.publish_conversation_deleted(uuid.uuid4()),
    ),
}


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", REVOCATIONS)
async def test_sse_lost_access_ends_the_stream_with_an_error_event(users, conversation, name):
    revoke, code, revoke_other = REVOCATIONS[name]
    layer = get_layer()
    bob = users["bob"]
    stream = await open_in_process(bob, conversation.id)
    assert (await stream.next()).event == "snapshot"
    await revoke_other(conversation, bob, stream.session_key)  # not this stream's business
    await fanout.publish_frame(conversation.id, {"type": "presence", "viewers": []})
    assert (await stream.next()).event == "presence"
    await revoke(conversation, bob, stream.session_key)
    error = await stream.next()
    assert error.event == "error"
    assert error.json()["type"] == "error"
    assert error.json()["code"] == code
    with pytest.raises(StopAsyncIteration):
        await stream.next()
    assert not layer.wants(groups.conversation(conversation.id))
    assert not layer.wants(groups.user(bob.pk))


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(30)
async def test_sse_lost_deltas_are_healed_with_a_fresh_snapshot(
    users, conversation, streaming_message
):
    mid = str(streaming_message.id)
    stream = await open_in_process(users["bob"], conversation.id)
    assert (await stream.next()).json()["messages"][0]["seq"] == 3
    get_layer().replay.logs[mid] += ["d", "e"]
    await fanout.publish_delta(conversation.id, mid, 5, "e")  # 4 never arrived
    snapshot = (await stream.next()).json()
    assert snapshot["type"] == "snapshot"
    assert (snapshot["messages"][0]["content"], snapshot["messages"][0]["seq"]) == ("abcde", 5)
    await fanout.publish_delta(conversation.id, mid, 6, "f")
    assert (await stream.next()).id == f"{mid}:6"


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(30)
async def test_sse_disconnect_leaves_the_group_and_stops_receiving(users, conversation):
    layer = get_layer()
    group = groups.conversation(conversation.id)
    stream = await open_in_process(users["bob"], conversation.id)
    assert (await stream.next()).event == "snapshot"
    assert layer.wants(group) and layer.wants(groups.user(users["bob"].pk))
    # What Django's ASGI handler does when the client goes: cancel the response task.
    reader = asyncio.ensure_future(stream.next(timeout=20))
    await asyncio.sleep(0.05)
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reader
    assert not layer.wants(group)
    assert not layer.wants(groups.user(users["bob"].pk))


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(30)
async def test_sse_ends_after_its_byte_bound_of_live_events_and_resumes_from_the_last_id(
    settings, users, conversation, streaming_message
):
    """A reader that stops reading can make the server hold at most SSE_MAX_STREAM_BYTES
    of one stream; the start (here a snapshot larger than the bound) is not counted."""
    mid = str(streaming_message.id)
    settings.SSE_MAX_STREAM_BYTES = 2000
    await Message.objects.acreate(
        conversation=conversation, role="user", status="complete", content="q" * 5000, seq=0
    )
    stream = await open_in_process(users["bob"], conversation.id)
    assert (await stream.next()).event == "snapshot"
    texts = [f"{seq}" + "x" * 499 for seq in range(4, 12)]
    for seq, text in enumerate(texts, start=4):
        get_layer().replay.logs[mid].append(text)
        await fanout.publish_delta(conversation.id, mid, seq, text)
    received = []
    with contextlib.suppress(StopAsyncIteration):  # the stream's end, not a timeout
        while True:
            received.append(await stream.next())
    # Deltas of about 600 bytes: the stream ends once it has sent more than 2000 bytes of
    # live events (its own presence among them), long before the eighth delta.
    deltas = [e.id for e in received if e.event == "delta"]
    assert 3 <= len(deltas) <= 4
    assert deltas == [f"{mid}:{seq}" for seq in range(4, 4 + len(deltas))]
    # A reconnect with the last id gets exactly the rest, from the replay log.
    resumed = await open_in_process(
        users["bob"], conversation.id, headers={"Last-Event-ID": deltas[-1]}
    )
    rest = [await resumed.next() for _ in range(8 - len(deltas))]
    assert [(e.id, e.json()["text"]) for e in rest] == [
        (f"{mid}:{seq}", texts[seq - 4]) for seq in range(4 + len(deltas), 12)
    ]
