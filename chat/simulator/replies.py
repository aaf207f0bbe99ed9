"""What the simulator answers: prompt parsing, tokens, and replies made a piece at a time.

The rules (which reply for which prompt) are documented in `script`. `reply_tokens()`
yields a reply's tokens as they are read: reading the first k tokens costs memory and
time in proportion to k, whatever size the directives ask for; sizes are clamped to the
maxima of `limits`. `reply_text()` and `reply_for()` join a whole (clamped) reply.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import unquote_plus

from chat.simulator.limits import MAX_COUNT, MAX_REPLY_CHARS, MAX_WORDS, bounded_int

_WORD_TEXT = """
the a an and but or so because while when after before about above across against along
among around behind below beside between beyond during except inside near through toward
under until upon within without time year people way day man woman child world life hand
part place case week company system program question work government number night point
home water room mother area money story fact month lot right study book eye job word
business issue side kind head house service friend father power hour game line end
member law car city community name president team minute idea kid body information back
parent face others level office door health person art war history party result change
morning reason research girl guy moment air teacher force education river garden window
letter market island bridge road is was has had will can could would should might must
make take give find tell ask seem feel try leave call keep let begin show hear play run
move live believe bring happen write provide sit stand lose pay meet include continue
set learn lead understand watch follow stop create speak read allow add spend grow open
walk win offer remember love consider appear buy wait serve die send expect build stay
fall cut reach remain suggest raise pass sell require report decide pull good new first
last long great little own other old big high different small large next early young
important few public bad same able quiet bright simple careful gentle warm cold green
blue quick slow happy calm clear strong soft sharp
"""
WORDS: tuple[str, ...] = tuple(_WORD_TEXT.split())

# A word (letters) with at most one leading space; digit runs of up to 3; whitespace that
# leaves its last space to a following word; any other whitespace run; any other char.
_TOKEN_RE = re.compile(
    r" ?[^\W\d_]+|\d{1,3}|\s+?(?= [^\W\d_])|\s+|.",
    re.DOTALL,
)
_DIRECTIVE_RE = re.compile(r"\[\[sim(?:\s+([^\]]*))?\]\]", re.IGNORECASE)
_COUNT_RE = re.compile(r"count to (\d+)", re.IGNORECASE)


# --- tokens and prompts --------------------------------------------------------------------


def tokenize(text: str) -> list[str]:
    """Split text into OpenAI-like token pieces; `"".join(tokenize(t)) == t` always."""
    return _TOKEN_RE.findall(text)


def iter_tokens(text: str) -> Iterator[str]:
    """The tokens of `tokenize(text)`, one at a time."""
    return (match.group(0) for match in _TOKEN_RE.finditer(text))


def count_tokens(text: str) -> int:
    """`len(tokenize(text))`, without building the list."""
    return sum(1 for _ in _TOKEN_RE.finditer(text))


def content_text(content: Any) -> str:
    """Text of a message content: a string, or the joined `text` parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "")
            for part in content
            if isinstance(part, Mapping)
            and part.get("type") == "text"
            and isinstance(part.get("text"), str)
        )
    return ""


def count_prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """Prompt tokens: each message costs its tokens plus 3, plus 3 for the reply primer."""
    return sum(count_tokens(content_text(m.get("content"))) + 3 for m in messages) + 3


def last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """Text of the last message with role "user" (empty if none)."""
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def parse_directives(text: str) -> tuple[str, dict[str, str]]:
    """Remove `[[sim k=v ...]]` directives from text; return (clean text, merged keys)."""
    found: dict[str, str] = {}
    for match in _DIRECTIVE_RE.finditer(text):
        for item in (match.group(1) or "").split():
            key, sep, value = item.partition("=")
            if sep and key:
                found[key.lower()] = value
    return _DIRECTIVE_RE.sub("", text).strip(), found


def directive_key(text: str) -> str:
    """The exact directive text of a message, used to count `times=K` faults."""
    return " ".join(m.group(0) for m in _DIRECTIVE_RE.finditer(text))


# --- replies -------------------------------------------------------------------------------


def _rng(prompt: str) -> random.Random:
    """A generator seeded from the prompt, stable across processes."""
    return random.Random(int.from_bytes(hashlib.sha256(prompt.encode()).digest(), "big"))


def _split_words(rng: random.Random, total: int) -> Iterator[int]:
    """Sentence lengths of 4-12 words adding up to `total` (the last may be shorter)."""
    while total > 0:
        take = min(total, rng.randint(4, 12))
        yield take
        total -= take


def _sentences(rng: random.Random, word_counts: Iterable[int]) -> Iterator[str]:
    """Capitalised sentences of random words, one per entry of word_counts, each but the
    first led by a space."""
    lead = ""
    for count in word_counts:
        words = [rng.choice(WORDS) for _ in range(count)]
        words[0] = words[0].capitalize()
        yield lead + " ".join(words) + "."
        lead = " "


def _word_sentences(prompt: str, total: int) -> Iterator[str]:
    """Exactly `total` words in sentences, seeded by the prompt."""
    # All sentence lengths are drawn before the first word. Walk past them without
    # keeping them to reach the state the words start from, then draw the same lengths
    # again from a second generator, one sentence at a time.
    words_rng = _rng(prompt)
    for _ in _split_words(words_rng, total):
        pass
    yield from _sentences(words_rng, _split_words(_rng(prompt), total))


def _default_sentences(prompt: str) -> Iterator[str]:
    """2-5 sentences of 5-14 words, seeded by the prompt."""
    rng = _rng(prompt)
    counts = [rng.randint(5, 14) for _ in range(rng.randint(2, 5))]
    yield from _sentences(rng, counts)


def _numbers(n: int) -> Iterator[str]:
    """``"1, 2, ..., n"`` as "1", ", 2", ..., ", n"."""
    if n >= 1:
        yield "1"
    for i in range(2, n + 1):
        yield f", {i}"


def count_target(prompt: str) -> int | None:
    """N of the first "count to N" in the prompt (any case), clamped; None without one."""
    match = _COUNT_RE.search(prompt)
    return bounded_int(match.group(1), MAX_COUNT) if match else None


def _pieces(prompt: str, directives: Mapping[str, str]) -> Iterator[str]:
    """The reply as consecutive pieces, each ending where a token ends (after "." or a
    digit run followed by ","), so tokenizing piece by piece equals tokenizing it whole."""
    if "reply" in directives:
        yield unquote_plus(directives["reply"])[:MAX_REPLY_CHARS]
        return
    words = bounded_int(directives.get("words"), MAX_WORDS)
    if words is not None and words >= 0:
        yield from _word_sentences(prompt, words)
        return
    n = count_target(prompt)
    if n is not None:
        yield from _numbers(n)
        return
    yield from _default_sentences(prompt)


def reply_tokens(prompt: str, directives: Mapping[str, str]) -> Iterator[str]:
    """The reply's tokens (as `tokenize(reply_text(...))`), made as they are read."""
    for piece in _pieces(prompt, directives):
        yield from iter_tokens(piece)


def reply_text(prompt: str, directives: Mapping[str, str]) -> str:
    """The deterministic reply for a clean prompt and its directives (clamped in size)."""
    return "".join(_pieces(prompt, directives))


def reply_for(messages: Sequence[Mapping[str, Any]]) -> str:
    """The reply the simulator gives to these messages."""
    prompt, directives = parse_directives(last_user_text(messages))
    return reply_text(prompt, directives)
