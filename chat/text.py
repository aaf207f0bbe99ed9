"""Text hygiene for what users type and what models send, before it is stored or shown.

PostgreSQL refuses NUL characters and neither database nor websocket can encode a lone
surrogate (valid JSON, `"\\ud800"`, but not UTF-8); bidirectional override characters
let a message display as something other than what it says.
"""

import re

from chat.exceptions import BadFrame

# Embeddings and overrides (LRE, RLE, PDF, LRO, RLO; LRI, RLI, FSI, PDI). The marks
# LRM/RLM that right-to-left text legitimately uses are kept.
_BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069]")


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def clean_user_text(text: str, *, field: str = "text") -> str:
    """Refuse text no database can store, and drop bidi overrides; raises BadFrame."""
    if "\x00" in text:
        raise BadFrame(f"The {field} contains a NUL character.")
    if not text.isascii():
        if _has_lone_surrogate(text):
            raise BadFrame(f"The {field} is not valid Unicode (a lone surrogate).")
        text = _BIDI_CONTROLS.sub("", text)
    return text


def clean_model_text(text: str) -> str:
    """Make upstream text storable without refusing it: the answer must not be lost."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    if not text.isascii() and _has_lone_surrogate(text):
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text
