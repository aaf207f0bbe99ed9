"""Frame parsing, frame shapes and group naming: pure logic, no sockets."""

import json
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chat import protocol
from chat.exceptions import ChatError
from chat.fanout import groups
from chat.upstream.errors import translate_error

GROUP_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{oops", "bad_json"),
        ("[1, 2]", "bad_json"),
        ('"prompt"', "bad_json"),
        ("{}", "bad_frame"),
        ('{"type": "dance"}', "bad_frame"),
        ('{"type": "prompt"}', "bad_frame"),
        ('{"type": "prompt", "content": 5}', "bad_frame"),
        ('{"type": "prompt", "content": "   "}', "bad_frame"),
        ('{"type": "prompt", "content": "hi", "client_msg_id": ""}', "bad_frame"),
        ('{"type": "cancel"}', "bad_frame"),
        ('{"type": "cancel", "message_id": 7}', "bad_frame"),
        ('{"type": "regenerate", "message_id": ""}', "bad_frame"),
        ("[" * 100_000, "bad_json"),
    ],
)
def test_refused_frames_say_why(raw, code):
    with pytest.raises(ChatError) as refused:
        protocol.parse_client_frame(raw)
    assert refused.value.code == code


def test_prompt_length_limit(settings):
    settings.PROMPT_MAX_CHARS = 10
    assert protocol.parse_client_frame('{"type":"prompt","content":"0123456789"}').content
    with pytest.raises(ChatError) as refused:
        protocol.parse_client_frame('{"type":"prompt","content":"0123456789x"}')
    assert refused.value.code == "too_long"


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        ('{"type":"prompt","content":"hi","client_msg_id":"x"}', protocol.PromptFrame),
        ('{"type":"cancel","message_id":"m"}', protocol.CancelFrame),
        ('{"type":"regenerate","message_id":"m"}', protocol.RegenerateFrame),
        ('{"type":"sync","extra":"ignored"}', protocol.SyncFrame),
    ],
)
def test_valid_frames_parse(raw, kind):
    assert isinstance(protocol.parse_client_frame(raw), kind)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_any_json_is_parsed_or_refused_with_a_code(value):
    raw = json.dumps(value)
    try:
        protocol.parse_client_frame(raw)
    except ChatError as refused:
        assert refused.code in {"bad_json", "bad_frame", "too_long"}


def test_delta_frame_is_compact_json():
    text = protocol.delta_frame_text("m1", 3, 'say "hi" <b>')
    assert json.loads(text) == {
        "type": "delta",
        "message_id": "m1",
        "seq": 3,
        "text": 'say "hi" <b>',
    }
    assert text.startswith('{"type":"delta","message_id":"m1","seq":3,"text":')


@given(st.uuids(), st.integers(min_value=1, max_value=10**7), st.text())
def test_the_compact_delta_holds_the_same_values_cut_from_the_long_frame(message_id, seq, text):
    long = protocol.delta_frame_text(str(message_id), seq, text)
    short = protocol.compact_delta_text(str(message_id), seq, long)
    assert json.loads(short) == ["d", str(message_id), seq, text]
    # The text's JSON is the long frame's own (escapes and all): 37 bytes fewer.
    assert len(long.encode()) - len(short.encode()) == 37


def test_a_compact_delta_of_an_unexpected_long_frame_is_built_anew():
    reordered = '{"text":"a\\"b","type":"delta","message_id":"m1","seq":12}'
    assert json.loads(protocol.compact_delta_text("m1", 12, reordered)) == ["d", "m1", 12, 'a"b']


@given(st.uuids())
def test_group_names_are_valid_for_channels(value):
    for name in (groups.conversation(value), groups.generation(str(value))):
        assert set(name) <= GROUP_NAME_CHARS and len(name) < 100


def test_group_names_refuse_anything_but_ids():
    with pytest.raises(ValueError, match="badly formed"):
        groups.conversation("../../etc; DROP")
    assert groups.conversation(uuid.UUID(int=1)) != groups.generation(uuid.UUID(int=1))


def test_unexpected_upstream_errors_leak_no_text():
    error = translate_error(RuntimeError("secret sk-123 in a traceback"))
    assert error.code == "upstream_error"
    assert "sk-123" not in error.detail


def test_the_upstream_description_carries_no_credentials(settings):
    from chat.upstream.client import describe_upstream

    settings.USE_SIMULATOR = False
    settings.OPENAI_BASE_URL = "https://user:hunter2@llm.example:8443/v1?api-key=sk-9"
    described = describe_upstream()
    assert "https://llm.example:8443/v1" in described
    assert "hunter2" not in described
    assert "sk-9" not in described


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        ("hello\x00world", "NUL"),
        ("bad \ud800 surrogate", "surrogate"),
        ("\u202e\u2066 \n\t ", "empty"),
    ],
)
def test_unstorable_prompts_are_refused_with_a_clear_error(content, detail):
    with pytest.raises(ChatError, match=detail) as refused:
        protocol.parse_client_frame(json.dumps({"type": "prompt", "content": content}))
    assert refused.value.code == "bad_frame"


def test_bidi_overrides_are_dropped_and_right_to_left_text_kept():
    frame = protocol.parse_client_frame(
        json.dumps({"type": "prompt", "content": "abc\u202edef \u05e9\u05dc\u05d5\u05dd\u200f"})
    )
    assert frame.content == "abcdef \u05e9\u05dc\u05d5\u05dd\u200f"


@given(st.text(st.characters(blacklist_categories=[])))
def test_model_text_is_always_made_storable(text):
    from chat.text import clean_model_text

    cleaned = clean_model_text(text)
    assert "\x00" not in cleaned
    cleaned.encode("utf-8")  # never raises
    if "\x00" not in text and text.encode("utf-8", "surrogatepass") == text.encode(
        "utf-8", "replace"
    ):
        assert cleaned == text
