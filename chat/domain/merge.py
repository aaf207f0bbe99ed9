"""The client's merge rule, as pure code: how a viewer folds `snapshot`, `message`,
`delta` and `done` frames into the text it shows. `static/chat/merge.js` is the same rule
for the page (tests/page/test_merge_js.py holds it to this one); this twin is what the property
tests exercise, and what Python clients use.

The rule: a snapshot replaces everything; a delta is applied only when its `seq` is the
next one for its message, ignored when already applied, and anything else (a gap, an
unknown message) asks for a fresh snapshot with `sync`.
"""

from dataclasses import dataclass, field
from typing import Any


@dataclass
class MessageView:
    content: str
    seq: int
    status: str


@dataclass
class ConversationView:
    """What one viewer shows; `apply` returns True when it must send `sync`."""

    messages: dict[str, MessageView] = field(default_factory=dict)

    def apply(self, frame: dict[str, Any]) -> bool:
        kind = frame.get("type")
        if kind == "snapshot":
            self.messages = {m["id"]: _view(m) for m in frame["messages"]}
        elif kind in ("message", "done"):
            message = frame["message"]
            known = self.messages.get(message["id"])
            # A late `message` echo must not roll back deltas already applied.
            if kind == "done" or known is None or known.seq < message["seq"]:
                self.messages[message["id"]] = _view(message)
        elif kind == "delta":
            return self._apply_delta(frame["message_id"], frame["seq"], frame["text"])
        return False

    def _apply_delta(self, message_id: str, seq: int, text: str) -> bool:
        view = self.messages.get(message_id)
        if view is None:
            return True
        if view.status != "streaming" or seq <= view.seq:
            return False  # a duplicate, or a straggler after `done`
        if seq != view.seq + 1:
            return True  # a gap: only a snapshot can fill it
        view.content += text
        view.seq = seq
        return False

    def text(self, message_id: str) -> str:
        return self.messages[message_id].content


def _view(message: dict[str, Any]) -> MessageView:
    return MessageView(message["content"], message["seq"], message["status"])
