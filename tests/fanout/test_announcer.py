"""Presence announcements are folded per conversation: first at once, the rest at the
end of the interval, each reading the viewers as they are when it goes out.

The announcer keeps time with the running loop, so the tests run on a loop whose clock
jumps from timer to timer (tests/virtual_time.py) and assert when each announcement
went out, in loop time, rather than sleeping and measuring."""

import asyncio

import pytest

from chat.fanout.announcer import Announcer
from tests import virtual_time

# Only bounds a hang: on the virtual clock a wait this long costs nothing.
HANG_S = 3600


class Viewers:
    def __init__(self) -> None:
        self.now: dict[str, list[str]] = {}
        self.announced: list[tuple[str, list[str]]] = []
        self.times: list[float] = []  # loop time of each announcement
        self._changed = asyncio.Condition()

    async def announce(self, conversation_id: str) -> None:
        self.announced.append((conversation_id, list(self.now.get(conversation_id, []))))
        self.times.append(asyncio.get_running_loop().time())
        async with self._changed:
            self._changed.notify_all()

    async def until_announced(self, count: int) -> None:
        async with asyncio.timeout(HANG_S), self._changed:
            await self._changed.wait_for(lambda: len(self.announced) >= count)


def test_a_storm_of_joins_becomes_two_announcements_ending_with_the_full_list():
    async def storm() -> None:
        viewers = Viewers()
        announcer = Announcer(viewers.announce, interval_s=0.3)
        start = asyncio.get_running_loop().time()
        now = []
        for n in range(50):
            viewers.now["c1"] = [f"user{i}" for i in range(n + 1)]
            now.append(await announcer.changed("c1"))
        assert now == [True] + [False] * 49
        assert viewers.announced == [("c1", ["user0"])]  # the first join, at once
        assert viewers.times == [start]
        await viewers.until_announced(2)
        assert viewers.announced[-1] == ("c1", [f"user{i}" for i in range(50)])
        assert viewers.times[-1] == pytest.approx(start + 0.3)  # at the interval's end
        await asyncio.sleep(10 * 0.3)  # many intervals later: nothing more to announce
        assert len(viewers.announced) == 2
        viewers.now["c1"] = []  # and the next change, after a quiet interval, goes at once
        assert await announcer.changed("c1") is True
        assert viewers.announced[-1] == ("c1", [])

    virtual_time.run(storm())


async def test_conversations_are_folded_separately():
    viewers = Viewers()
    announcer = Announcer(viewers.announce, interval_s=0.3)
    viewers.now = {"c1": ["ann"], "c2": ["bob"]}
    await announcer.changed("c1")
    await announcer.changed("c2")
    assert viewers.announced == [("c1", ["ann"]), ("c2", ["bob"])]


def test_a_change_after_a_quiet_interval_is_announced_at_once():
    async def quiet() -> None:
        viewers = Viewers()
        announcer = Announcer(viewers.announce, interval_s=0.05)
        start = asyncio.get_running_loop().time()
        viewers.now["c1"] = ["ann"]
        assert await announcer.changed("c1") is True
        await asyncio.sleep(0.1)  # two intervals, on the loop's clock
        viewers.now["c1"] = []
        assert await announcer.changed("c1") is True
        assert viewers.announced == [("c1", ["ann"]), ("c1", [])]
        assert viewers.times == [start, pytest.approx(start + 0.1)]

    virtual_time.run(quiet())
