"""Event-loop CPU per conversation event received from Redis and handed to its sockets.

    .venv/bin/python -m bench.hub_cost [--conversations 100] [--sockets 10] [--events 200]

Against the local Redis (`REDIS_URL`, default redis://127.0.0.1:6379/0), in this
process: `--conversations` channels, each with `--sockets` stand-in sockets that take
every event without awaiting (as a viewer's open socket under daphne does); a thread
publishes `--events` deltas to every channel, a pipeline per round, and the event loop's
thread CPU (`time.thread_time`, so the publishing thread is not counted) is divided by
the events received. Measured two ways in the same run:
- `subscriber`: the subscriber connection alone, each payload counted (the baseline);
- `hub`: through the hub to the sockets, what a server does with every flush it receives.
Run it at two commits to compare hub changes (bench/REPORT.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class StandInSocket:
    """Takes every event at once, as an open socket under daphne does."""

    received = 0

    def deliver_now(self, event: dict) -> bool:
        StandInSocket.received += 1
        return True

    async def deliver(self, event: dict) -> None:
        StandInSocket.received += 1


def publish_rounds(url: str, channels: list[str], payload: bytes, events: int) -> None:
    import redis

    client = redis.Redis.from_url(url)
    for _ in range(events):
        with client.pipeline(transaction=False) as pipe:
            for channel in channels:
                pipe.publish(channel, payload)
            pipe.execute()
        time.sleep(0.002)  # flushes arrive spread out, as from running answers
    client.close()


async def until(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("events did not arrive")
        await asyncio.sleep(0.01)


async def measure(url: str, conversations: int, sockets: int, events: int) -> dict:
    from chat.fanout import events as conversation_events
    from chat.fanout import get_layer
    from chat.fanout.redis.subscriber import Subscriber
    from chat.realtime.hub import get_hub

    layer = get_layer()
    run = uuid.uuid4().hex[:8]
    groups = [f"conv.{run}{i:024x}" for i in range(conversations)]
    channels = [layer.group_channel(g) for g in groups]
    payload = conversation_events.serialize(
        conversation_events.delta(str(uuid.uuid4()), 1, "hello there")
    )
    out = {}

    async def timed(name: str, expected: int, count) -> None:
        loop = asyncio.get_running_loop()
        cpu = time.thread_time()
        publishing = loop.run_in_executor(None, publish_rounds, url, channels, payload, events)
        await until(lambda: count() >= expected)
        await publishing
        cpu = time.thread_time() - cpu
        out[name] = {
            "events": conversations * events,
            "loop_us_per_event": round(cpu * 1e6 / (conversations * events), 2),
        }

    counted = [0]

    def on_message(_payload: bytes) -> None:
        counted[0] += 1

    subscriber = Subscriber(url)
    for channel in channels:
        await subscriber.subscribe(channel, on_message)
    await timed("subscriber", conversations * events, lambda: counted[0])
    subscriber.close()

    hub = get_hub()
    for group in groups:
        for _ in range(sockets):
            await hub.join(group, StandInSocket())
    await timed("hub", conversations * events * sockets, lambda: StandInSocket.received)
    out["hub"]["sockets_per_conversation"] = sockets
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--conversations", type=int, default=100)
    parser.add_argument("--sockets", type=int, default=10)
    parser.add_argument("--events", type=int, default=200)
    args = parser.parse_args()
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    os.environ.update(REDIS_URL=url, DJANGO_SETTINGS_MODULE="project.settings")
    os.environ.setdefault("DJANGO_DEBUG", "1")
    import django

    django.setup()
    result = asyncio.run(measure(url, args.conversations, args.sockets, args.events))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
