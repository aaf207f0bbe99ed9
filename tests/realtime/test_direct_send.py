"""Frames written straight to a daphne socket (chat/realtime/direct_send.py), on real sockets and
real Twisted and autobahn objects; the live tests run whole streams through it."""

import functools
import socket

import pytest
from autobahn.websocket.protocol import TrafficStats
from autobahn.websocket.protocol import WebSocketProtocol as AutobahnProtocol
from daphne.ws_protocol import WebSocketProtocol
from twisted.internet import selectreactor, tcp

from chat.fanout import events
from chat.realtime import direct_send
from chat.realtime.viewer import Viewer
from tests.live import ROOT


@pytest.fixture
def pair():
    """A Twisted TCP transport on one end of a socket pair, and the other end, with the
    smallest buffers the kernel allows (see `buffered`)."""
    ours, peer = socket.socketpair()
    # The kernel raises these to its minimum (a few KB): writes larger than `buffered`
    # are certain not to fit, whatever the machine's default buffer sizes.
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
    reactor = selectreactor.SelectReactor()  # never run: queued writes are driven by hand
    transport = tcp.Connection(ours, None, reactor)
    transport.connected = 1
    peer.setblocking(False)
    yield transport, peer, reactor
    ours.close()
    peer.close()


def buffered(transport: tcp.Connection, peer: socket.socket) -> int:
    """The most the pair's kernel buffers hold: our send buffer and the peer's receive
    buffer, as the kernel reports them (bookkeeping included, so more than the data)."""
    sent = transport.socket.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    return sent + peer.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def drain(peer: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = peer.recv(1 << 20)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


def test_a_write_reaches_the_peer_without_a_reactor_turn(pair):
    transport, peer, reactor = pair
    direct_send.write_at_once(transport, b"frame one")
    direct_send.write_at_once(transport, b"frame two")
    assert drain(peer) == b"frame oneframe two"
    assert transport.dataBuffer == b"" and transport._tempDataBuffer == []
    assert transport not in reactor.getWriters()


def test_what_the_socket_does_not_take_is_queued_in_order(pair):
    transport, peer, reactor = pair
    big = bytes(range(256)) * (4 * buffered(transport, peer) // 256)  # 4 buffers' worth
    direct_send.write_at_once(transport, big)
    received = drain(peer)
    assert received and big.startswith(received)  # what the socket took went at once
    assert transport._tempDataBuffer  # and the rest is queued
    assert transport in reactor.getWriters()  # Twisted sends the rest when writable
    # The socket has room again: "after" still goes behind the queue, never ahead.
    direct_send.write_at_once(transport, b"after")
    while len(received) < len(big) + 5:
        transport.doWrite()
        received += drain(peer)
    assert received == big + b"after"
    assert transport not in reactor.getWriters()


def test_a_write_to_a_closed_peer_goes_the_queued_way(pair):
    transport, peer, _ = pair
    peer.close()
    direct_send.write_at_once(transport, b"x" * 10)  # EPIPE or ECONNRESET: not raised here
    lost = None
    for _ in range(3):  # Twisted's own write finds the connection lost
        lost = transport.doWrite()
        if lost:
            break
    assert lost is not None and lost != 0


def test_only_plain_tcp_transports_write_at_once(pair):
    transport, _, _ = pair
    direct_send.write_at_once_on(transport)
    assert transport.write.func is direct_send.write_at_once
    direct_send.write_at_once_on(transport)  # once only
    assert transport.write.args == (transport,)
    other = object.__new__(type("TLSLayer", (), {"write": lambda self, data: None}))
    direct_send.write_at_once_on(other)
    assert "write" not in vars(other)


def test_prepared_frames_are_unmasked_final_text_frames():
    short = direct_send.prepare('{"type":"delta","text":"é"}')
    assert short[0] == 0x81 and short[1] == len('{"type":"delta","text":"é"}'.encode())
    assert short[2:] == '{"type":"delta","text":"é"}'.encode()
    long = direct_send.prepare("x" * 300)
    assert long[:4] == bytes([0x81, 126, 1, 44]) and long[4:] == b"x" * 300


def _open_protocol(transport) -> WebSocketProtocol:
    direct_send.write_at_once_on(transport)  # what the installed onOpen does
    protocol = WebSocketProtocol()
    protocol.transport = transport
    protocol.state = AutobahnProtocol.STATE_OPEN
    protocol.send_queue = []
    return protocol


async def _handle_reply(protocol, message):  # the shape of daphne's ASGI `send`
    raise AssertionError("the direct path must not go through ASGI")


@pytest.fixture
def internals_on(monkeypatch):
    monkeypatch.setattr(direct_send, "_enabled", True)


def test_a_daphne_send_gets_a_socket_and_anything_else_none(pair, internals_on):
    transport, peer, _ = pair
    protocol = _open_protocol(transport)
    socket_ = direct_send.socket_for(functools.partial(_handle_reply, protocol))
    assert socket_ is not None
    assert socket_.write(direct_send.prepare("hello")) is True
    assert drain(peer) == direct_send.prepare("hello")
    assert direct_send.socket_for(_handle_reply) is None
    assert direct_send.socket_for(functools.partial(_handle_reply, object())) is None


def test_with_the_internals_off_every_socket_takes_the_asgi_path(pair, monkeypatch):
    transport, _, _ = pair
    monkeypatch.setattr(direct_send, "_enabled", False)
    protocol = _open_protocol(transport)
    assert direct_send.socket_for(functools.partial(_handle_reply, protocol)) is None


def test_the_self_check_refuses_versions_outside_the_tested_range(monkeypatch):
    assert direct_send._self_check() is None  # the pinned versions are within range
    monkeypatch.setitem(direct_send.VERSION_BOUNDS, "autobahn", ((99,), (100,)))
    assert "autobahn" in direct_send._self_check()


def test_pyproject_bounds_the_versions_the_internals_were_tested_with():
    text = (ROOT / "pyproject.toml").read_text()
    for package, (low, high) in direct_send.VERSION_BOUNDS.items():
        bound = f'"{package}>={".".join(map(str, low))},<{".".join(map(str, high))}"'
        assert bound in text, bound


def test_unsent_bytes_are_what_the_peer_has_not_taken(pair, internals_on):
    transport, peer, _ = pair
    protocol = _open_protocol(transport)
    socket_ = direct_send.socket_for(functools.partial(_handle_reply, protocol))
    assert socket_.unsent() == 0
    big = b"y" * (4 * buffered(transport, peer))  # 4 buffers' worth
    socket_.write(big)
    queued = socket_.unsent()
    assert 0 < queued < len(big)  # the kernel took some (the socket was empty), not all
    drain(peer)
    transport.doWrite()
    assert socket_.unsent() < queued  # the peer read some: less waits


@pytest.mark.parametrize("code", [1009, 1012, 1013, 4401])
def test_any_close_code_reaches_the_peer(pair, internals_on, code):
    transport, peer, _ = pair
    protocol = _open_protocol(transport)
    # What autobahn's factory would have configured on a server's protocol.
    protocol.factory = type("Factory", (), {"isServer": True})()
    protocol.maskServerFrames = False
    protocol.logFrames = False
    protocol.trackedTimings = None
    protocol.trafficStats = TrafficStats()
    protocol.logOctets = False
    protocol.closeHandshakeTimeout = 0  # no timer: this reactor never runs
    socket_ = direct_send.socket_for(functools.partial(_handle_reply, protocol))
    assert socket_.close(code) is True
    frame = drain(peer)
    assert frame[0] == 0x88 and int.from_bytes(frame[2:4], "big") == code  # a close frame
    assert socket_.close(code) is False  # closing already: nothing more is sent
    assert drain(peer) == b""


@pytest.mark.parametrize("state", ["closing", "closed", "queued"])
def test_no_direct_write_unless_open_with_nothing_queued(pair, internals_on, state):
    transport, peer, _ = pair
    protocol = _open_protocol(transport)
    if state == "queued":
        protocol.send_queue = [(b"earlier", False)]
    else:
        protocol.state = {
            "closing": AutobahnProtocol.STATE_CLOSING,
            "closed": AutobahnProtocol.STATE_CLOSED,
        }[state]
    socket_ = direct_send.socket_for(functools.partial(_handle_reply, protocol))
    assert socket_.write(direct_send.prepare("late")) is False  # the caller takes ASGI
    assert drain(peer) == b""


class FakeConnection:
    """A daphne connection as the group events see it, writing to a list."""

    def __init__(self, *, open_: bool = True, unsent: int = 0) -> None:
        self.written: list[bytes] = []
        self.open = open_
        self.queued = unsent

    def write(self, frame: bytes) -> bool:
        if self.open:
            self.written.append(frame)
        return self.open

    def unsent(self) -> int:
        return self.queued


class Socket(Viewer):
    """The group-event side of a consumer over a fake connection."""

    joined = True

    def __init__(self, *, open_: bool = True, unsent: int = 0) -> None:
        self.sent_seq = {}
        self.socket = FakeConnection(open_=open_, unsent=unsent)
        self.user = type("U", (), {"pk": 1})()
        self.snapshots = 0

    @property
    def written(self) -> list[bytes]:
        return self.socket.written

    async def send_snapshot(self) -> None:
        self.snapshots += 1


def delta(seq: int, text: str = "x") -> dict:
    return events.delta("m1", seq, text)


def test_the_next_delta_is_written_now_and_its_frame_built_once_for_every_socket():
    sockets = [Socket(), Socket(), Socket()]
    event = delta(1, "hi")
    assert all(s.deliver_now(event) for s in sockets)
    frames = [s.written[0] for s in sockets]
    assert frames[0] == direct_send.prepare(event["text"])
    assert frames[0] is frames[1] is frames[2]  # framed once, not per socket
    assert all(s.sent_seq == {"m1": 1} for s in sockets)


def test_deltas_already_shown_are_dropped_and_gaps_left_to_the_async_path():
    socket_ = Socket()
    socket_.sent_seq["m1"] = 3  # from its snapshot
    assert socket_.deliver_now(delta(2)) is True and socket_.written == []
    assert socket_.deliver_now(delta(3)) is True and socket_.written == []
    assert socket_.deliver_now(delta(5)) is False  # 4 is missing: a snapshot heals it
    assert socket_.written == [] and socket_.sent_seq["m1"] == 3
    assert socket_.deliver_now(delta(4)) is True and socket_.sent_seq["m1"] == 4


def test_no_delta_of_a_message_is_forwarded_after_its_done():
    socket_ = Socket()
    assert socket_.deliver_now(delta(1))
    done = events.done("m1", {})
    assert socket_.deliver_now(done) is True
    assert socket_.deliver_now(delta(2)) is True  # handled: dropped
    assert socket_.written == [direct_send.prepare(delta(1)["text"]), done["frame:text"]]


def test_what_cannot_be_written_now_is_left_to_the_async_path():
    closing = Socket(open_=False)
    assert closing.deliver_now(delta(1)) is False and closing.sent_seq == {}
    held = Socket()
    held._held = []  # connect has not sent its snapshot yet
    assert held.deliver_now(delta(1)) is False and held.written == []
    other_server = Socket()
    other_server.socket = None
    assert other_server.deliver_now(delta(1)) is False
    frame_event = {"type": "chat.frame", "text": '{"type":"presence","viewers":[]}'}
    assert Socket().deliver_now(frame_event) is True
    assert Socket().deliver_now({"type": "chat.member_removed", "user_id": 1}) is False


async def test_a_peer_that_stops_reading_gets_no_live_frames_then_one_snapshot(settings):
    settings.WS_MAX_UNSENT_BYTES = 1000
    socket_ = Socket(unsent=5000)  # more waits than the bound allows
    assert socket_.deliver_now(delta(1)) is True  # handled: held back, not written
    assert socket_.deliver_now(delta(2)) is True
    assert socket_.written == [] and socket_._catching_up is not None
    socket_.owe_snapshot()  # a `sync` meanwhile adds nothing
    socket_.socket.queued = 100  # the peer has read
    await socket_._catching_up
    assert socket_.snapshots == 1 and socket_._catching_up is None
    assert socket_.deliver_now(delta(3)) is False  # a gap now: the async path heals it
