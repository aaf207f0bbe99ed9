"""Token estimates without a tokenizer, for the quota's reservations and for usage an
upstream did not report (a real tokenizer downloads its vocabulary at run time, which
an offline install cannot do)."""

from collections.abc import Sequence


def estimate_prompt_tokens(messages: Sequence[dict[str, str]]) -> int:
    """About four characters per token plus a few per message, as OpenAI's guide says."""
    return sum(len(m.get("content") or "") // 4 + 4 for m in messages) + 3
