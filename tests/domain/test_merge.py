"""The merge rule under any arrival order, duplicates and gaps (property-based)."""

from hypothesis import given, settings
from hypothesis import strategies as st

from chat.domain.merge import ConversationView

MID = "m1"


def message(content: str, seq: int, status: str = "streaming") -> dict:
    return {"id": MID, "role": "assistant", "content": content, "seq": seq, "status": status}


def delta(seq: int, texts: list[str]) -> dict:
    return {"type": "delta", "message_id": MID, "seq": seq, "text": texts[seq - 1]}


@st.composite
def deliveries(draw):
    """A stream of deltas, the point the viewer's snapshot was taken, and what arrived
    after it: any subset of deltas, duplicated and shuffled (the layer may drop,
    repeat with reconnects, and a sync races live frames)."""
    texts = draw(st.lists(st.text(min_size=1, max_size=4), min_size=1, max_size=25))
    snapshot_at = draw(st.integers(0, len(texts)))
    arrived = draw(st.lists(st.integers(1, len(texts)), max_size=3 * len(texts)))
    return texts, snapshot_at, arrived


@settings(max_examples=300)
@given(deliveries())
def test_any_arrival_order_ends_with_the_exact_text(case):
    texts, snapshot_at, arrived = case
    view = ConversationView()
    view.apply(
        {"type": "snapshot", "messages": [message("".join(texts[:snapshot_at]), snapshot_at)]}
    )
    published = 0  # how far the server has got when each frame arrives
    for seq in arrived:
        published = max(published, seq)
        if view.apply(delta(seq, texts)):
            # `sync`: the server answers with a snapshot of what it has published.
            view.apply(
                {"type": "snapshot", "messages": [message("".join(texts[:published]), published)]}
            )
        shown = view.text(MID)
        # Never a wrong character: what is shown is always a prefix of the answer.
        assert "".join(texts).startswith(shown)
        assert shown == "".join(texts[: view.messages[MID].seq])
    view.apply({"type": "done", "message": message("".join(texts), len(texts), "complete")})
    assert view.text(MID) == "".join(texts)


@given(st.lists(st.text(min_size=1, max_size=3), min_size=2, max_size=10))
def test_in_order_deltas_never_ask_for_sync(texts):
    view = ConversationView()
    view.apply({"type": "message", "message": message("", 0)})
    assert not any(view.apply(delta(seq, texts)) for seq in range(1, len(texts) + 1))
    assert view.text(MID) == "".join(texts)
    # A stale echo of the placeholder does not roll the text back.
    view.apply({"type": "message", "message": message("", 0)})
    assert view.text(MID) == "".join(texts)


def test_a_delta_for_an_unknown_message_asks_for_sync():
    assert ConversationView().apply({"type": "delta", "message_id": "x", "seq": 1, "text": "a"})


def test_deltas_after_done_are_ignored():
    view = ConversationView()
    view.apply({"type": "done", "message": message("final", 3, "cancelled")})
    assert view.apply({"type": "delta", "message_id": MID, "seq": 4, "text": "!"}) is False
    assert view.text(MID) == "final"
