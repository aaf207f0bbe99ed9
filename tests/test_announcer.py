"""Presence announcements are folded per conversation: first at once, the rest at the
end of the interval, each reading the viewers as they are when it goes out."""

import asyncio

from chat.fanout.announcer import Announcer


class Viewers:
    def __init__(self) -> None:
        self.now: dict[str, list[str]] = {}
        self.announced: list[tuple[str, list[str]]] = []

    async def announce(self, conversation_id: str) -> None:
        self.announced.append((conversation_id, list(self.now.get(conversation_id, []))))


async def test_a_storm_of_joins_becomes_two_announcements_ending_with_the_full_list():
    viewers = Viewers()
    announcer = Announcer(viewers.announce, interval_s=0.3)
    now = []
    for n in range(50):
        viewers.now["c1"] = [f"user{i}" for i in range(n + 1)]
        now.append(await announcer.changed("c1"))
    assert now == [True] + [False] * 49
    assert viewers.announced == [("c1", ["user0"])]  # the first join, at once
    await asyncio.sleep(0.45)
    assert len(viewers.announced) == 2
    assert viewers.announced[-1] == ("c1", [f"user{i}" for i in range(50)])


async def test_conversations_are_folded_separately():
    viewers = Viewers()
    announcer = Announcer(viewers.announce, interval_s=0.3)
    viewers.now = {"c1": ["ann"], "c2": ["bob"]}
    await announcer.changed("c1")
    await announcer.changed("c2")
    assert viewers.announced == [("c1", ["ann"]), ("c2", ["bob"])]


async def test_a_change_after_a_quiet_interval_is_announced_at_once():
    viewers = Viewers()
    announcer = Announcer(viewers.announce, interval_s=0.05)
    viewers.now["c1"] = ["ann"]
    await announcer.changed("c1")
    await asyncio.sleep(0.1)
    viewers.now["c1"] = []
    await announcer.changed("c1")
    assert viewers.announced == [("c1", ["ann"]), ("c1", [])]
