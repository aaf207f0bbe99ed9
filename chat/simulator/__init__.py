"""Deterministic, offline stand-in for the OpenAI API; see `script` for the reference."""

from chat.simulator.script import (
    Drop,
    Emit,
    End,
    Plan,
    SimSettings,
    Simulator,
    Sleep,
    count_prompt_tokens,
    moderation_result,
    parse_directives,
    reply_for,
    tokenize,
)
from chat.simulator.server import SimulatorServer, serve
from chat.simulator.transport import SimulatorTransport, simulator_client

__all__ = [
    "Drop",
    "Emit",
    "End",
    "Plan",
    "SimSettings",
    "Simulator",
    "SimulatorServer",
    "SimulatorTransport",
    "Sleep",
    "count_prompt_tokens",
    "moderation_result",
    "parse_directives",
    "reply_for",
    "serve",
    "simulator_client",
    "tokenize",
]
