"""Serve the app with daphne, its websocket limits taken from the settings.

    python manage.py serve [-b 127.0.0.1] [-p 8000] [-v 1]

Every server process starts this way (`make run`, `make serve-cluster`, the Docker image,
the tests and the benchmark), so daphne's own cap on a websocket frame is
`WS_MAX_FRAME_BYTES`, the app's limit: a bigger frame ends the same way (close 1009)
whether daphne or the app sees it first (daphne's default cap is 1 MiB).
"""

from typing import Any

from daphne.cli import CommandLineInterface
from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from chat.realtime import direct_send

APPLICATION = "project.asgi:application"


# autobahn applies daphne's message cap to what the server sends too. With the daphne
# internals on, every frame to a client is written past it (chat/realtime/direct_send.py), so
# the cap can be the client's limit; without them, snapshots go through it and need room.
SEND_ROOM_WITHOUT_INTERNALS = 64


def daphne_arguments(*, bind: str, port: int, verbosity: int) -> list[str]:
    """The daphne command line for this deployment's settings."""
    frame_cap = settings.WS_MAX_FRAME_BYTES
    message_cap = frame_cap
    if not direct_send.wanted():
        message_cap *= SEND_ROOM_WITHOUT_INTERNALS
    return [
        "-b",
        bind,
        "-p",
        str(port),
        "-v",
        str(verbosity),
        "--websocket-max-message-size",
        str(message_cap),
        "--websocket-max-frame-size",
        str(frame_cap),
        APPLICATION,
    ]


class Command(BaseCommand):
    help = "Serve HTTP and websockets with daphne (websocket limits from WS_MAX_FRAME_BYTES)."
    # The server checks nothing a request would not: start fast.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("-b", "--bind", default="127.0.0.1", help="address to listen on")
        parser.add_argument("-p", "--port", type=int, default=8000, help="port to listen on")

    def handle(self, *args: Any, **options: Any) -> None:
        argv = daphne_arguments(
            bind=options["bind"], port=options["port"], verbosity=options["verbosity"]
        )
        CommandLineInterface().run(argv)
