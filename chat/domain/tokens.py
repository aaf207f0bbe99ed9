"""Token estimates without a tokenizer, for the quota's reservations and for usage an
upstream did not report (a real tokenizer downloads its vocabulary at run time, which
an offline install cannot do)."""

from collections.abc import Sequence


def estimate_text_tokens(text: str) -> int:
    """About four characters per token, as OpenAI's guide says; rounded up."""
    return -(-len(text) // 4)


def estimate_prompt_tokens(messages: Sequence[dict[str, str]]) -> int:
    """The messages' text (`estimate_text_tokens`, rounded down) plus a few tokens per
    message and per request, as OpenAI's guide says."""
    return sum(len(m.get("content") or "") // 4 + 4 for m in messages) + 3
