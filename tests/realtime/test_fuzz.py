"""Arbitrary frames thrown at a live consumer: each gets an answer (an `error`, or the
snapshot a valid `sync` asks for), the socket stays usable, and nothing is stored."""

import json

import pytest
from asgiref.sync import async_to_sync
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat import protocol
from chat.exceptions import ChatError
from chat.models import Message
from tests.sockets import connect, frames_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

KNOWN_CODES = {"bad_json", "bad_frame", "too_long", "not_found", "forbidden"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
frame_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["prompt", "cancel", "regenerate", "sync", "PROMPT", "", "delta"])},
    optional={
        "content": json_values,
        "message_id": json_values,
        "client_msg_id": json_values,
    },
)
huge_numbers = st.integers(min_value=10**30, max_value=10**300).map(
    lambda n: f'{{"type":"cancel","message_id":{n}}}'
)
frames = st.one_of(
    json_values.map(json.dumps),
    frame_like.map(json.dumps),
    huge_numbers,
    st.text(max_size=200),  # not JSON at all
    st.binary(max_size=64),  # binary frames
)


def is_accepted_write(raw: str | bytes) -> bool:
    """A frame that would legitimately store something (excluded: nothing may be stored)."""
    if isinstance(raw, bytes):
        return False
    try:
        return isinstance(protocol.parse_client_frame(raw), protocol.PromptFrame)
    except ChatError:
        return False


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(frames, min_size=1, max_size=15))
def test_arbitrary_frames_get_answers_and_change_nothing(users, conversation, batch):
    # The test communicator cannot send an empty frame (the live tests do).
    batch = [raw for raw in batch if raw and not is_accepted_write(raw)]
    async_to_sync(_throw)(users["bob"], conversation.id, batch)


async def _throw(user, conversation_id, batch) -> None:
    comm = await connect(user, conversation_id)
    for raw in batch:
        if isinstance(raw, bytes):
            await comm.send_to(bytes_data=raw)
        else:
            await comm.send_to(text_data=raw)
        answer = (await frames_until(comm, lambda f: f["type"] != "presence"))[-1]
        if answer["type"] == "error":
            assert answer["code"] in KNOWN_CODES, answer
        else:
            assert answer["type"] == "snapshot", answer
    await comm.send_json_to({"type": "sync"})
    assert (await frames_until(comm, lambda f: f["type"] == "snapshot"))[-1]["type"] == "snapshot"
    assert await Message.objects.acount() == 0
    await comm.disconnect()
