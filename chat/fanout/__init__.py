"""Conversation events: the one seam they all go through (see `layer.py`)."""

from typing import TYPE_CHECKING

from channels.layers import get_channel_layer

if TYPE_CHECKING:
    from chat.fanout.layer import ConversationLayer


def get_layer() -> "ConversationLayer":
    """The channel layer of the settings (`CHANNEL_LAYERS`): the project's own
    ConversationLayer, in-process or on Redis."""
    return get_channel_layer()
