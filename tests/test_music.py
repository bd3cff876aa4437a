"""BridgeMusic (conferences/ari/music.py): the rooms' music on hold carried out beside the lanes.

A fake Asterisk whose calls take as long as the test says: one slow bridge
must not hold the others' lanes, calls go one at a time, a wish taken back
before its turn costs nothing, failures are tried again without holding the
other bridges, a bridge that is gone is forgotten.
"""

import asyncio

import pytest

from conferences.ari.client import AriError, AriNotFound
from conferences.ari.music import BridgeMusic

pytestmark = pytest.mark.asyncio


class SlowAsterisk:
    """Start and stop calls that each wait ``delay`` s (or for ``gate``), with failures on request."""

    def __init__(self, delay=0.0):
        self.delay = delay
        self.calls = []  # ("start", bridge, class) / ("stop", bridge), in the order they began
        self.in_flight = 0
        self.most_in_flight = 0
        self.failures = {}  # bridge -> exceptions to raise, first first
        self.gate = None

    async def _call(self, *call):
        self.calls.append(call)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(self.delay)
            pending = self.failures.get(call[1])
            if pending:
                raise pending.pop(0)
        finally:
            self.in_flight -= 1

    async def start(self, bridge_id, moh_class):
        await self._call("start", bridge_id, moh_class)

    async def stop(self, bridge_id):
        await self._call("stop", bridge_id)


def music_for(asterisk, **options):
    return BridgeMusic(start=asterisk.start, stop=asterisk.stop, **options)


async def test_a_wish_returns_at_once_and_the_calls_go_one_at_a_time():
    asterisk = SlowAsterisk(delay=0.05)
    music = music_for(asterisk)
    loop = asyncio.get_running_loop()
    began = loop.time()
    for room in range(10):
        music.want(f"b{room}", "default")
    assert loop.time() - began < 0.01  # ten wishes, no call awaited
    await asyncio.wait_for(music.idle(), 5)
    assert [call[1] for call in asterisk.calls] == [f"b{room}" for room in range(10)]  # oldest wish first
    assert asterisk.most_in_flight == 1
    assert all(music.done(f"b{room}") for room in range(10))
    assert music.playing["b3"] == "default"


async def test_a_wish_taken_back_before_its_turn_costs_no_call():
    asterisk = SlowAsterisk()
    asterisk.gate = asyncio.Event()
    music = music_for(asterisk)
    music.want("busy", "default")  # in flight, held at the gate
    await asyncio.sleep(0)
    for bridge in ("new-1", "new-2"):
        music.silent(bridge)  # new bridges: nothing playing
        music.want(bridge, "default")  # the first caller, alone
        music.want(bridge, None)  # the second caller came before the music started
    asterisk.gate.set()
    await asyncio.wait_for(music.idle(), 5)
    assert asterisk.calls == [("start", "busy", "default")]
    assert music.done("new-1") and music.done("new-2")


async def test_silence_on_a_bridge_not_known_to_be_silent_is_asked_for():
    """After a restart the worker does not know what a bridge plays: stopping is not skipped."""
    asterisk = SlowAsterisk()
    music = music_for(asterisk)
    music.want("old", None)
    await asyncio.wait_for(music.idle(), 5)
    assert asterisk.calls == [("stop", "old")]


async def test_a_wish_changed_while_its_call_is_made_is_carried_out_after_it():
    asterisk = SlowAsterisk()
    asterisk.gate = asyncio.Event()
    music = music_for(asterisk)
    music.silent("b")
    music.want("b", "default")
    await asyncio.sleep(0)
    music.want("b", None)  # while the start is in flight
    asterisk.gate.set()
    await asyncio.wait_for(music.idle(), 5)
    assert asterisk.calls == [("start", "b", "default"), ("stop", "b")]
    assert music.done("b") and music.playing["b"] is None


async def test_a_failing_bridge_is_tried_again_without_holding_the_others():
    asterisk = SlowAsterisk()
    asterisk.failures["bad"] = [AriError("POST /bridges/bad/moh: timed out after 10 s")] * 2
    music = music_for(asterisk, first_pause=0.2)
    music.want("bad", "default")
    music.want("good", "default")
    await asyncio.sleep(0.05)
    assert ("start", "good", "default") in asterisk.calls  # not behind bad's pause
    assert not music.done("bad")
    assert await music.settled("bad", timeout=5)
    assert [call[1] for call in asterisk.calls].count("bad") == 3


async def test_a_bridge_failing_every_try_is_given_up_and_tried_again_with_the_next_wish():
    asterisk = SlowAsterisk()
    asterisk.failures["bad"] = [AriError("500")] * 3
    music = music_for(asterisk, attempts=3, first_pause=0.01)
    music.want("bad", "default")
    assert await music.settled("bad", timeout=5) is False
    assert len(asterisk.calls) == 3
    music.want("bad", None)  # the next change of the room
    music.want("bad", "default")
    assert await music.settled("bad", timeout=5)
    assert len(asterisk.calls) == 4


async def test_a_bridge_that_is_gone_is_forgotten():
    asterisk = SlowAsterisk()
    asterisk.failures["gone"] = [AriNotFound("404")]
    music = music_for(asterisk)
    music.want("gone", "default")
    await asyncio.wait_for(music.idle(), 5)
    assert asterisk.calls == [("start", "gone", "default")]
    assert "gone" not in music.wanted and music.done("gone")


async def test_settled_gives_up_at_its_timeout_and_close_ends_the_task():
    asterisk = SlowAsterisk()
    asterisk.gate = asyncio.Event()  # never opened: Asterisk does not answer
    music = music_for(asterisk)
    music.want("b", "default")
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert await music.settled("b", timeout=0.2) is False
    assert 0.15 < loop.time() - began < 1.0
    await music.close()
    assert music._task.done()


async def test_a_bug_in_one_call_does_not_end_the_music_of_the_others():
    asterisk = SlowAsterisk()
    asterisk.failures["broken"] = [RuntimeError("a bug")]
    music = music_for(asterisk)
    music.want("broken", "default")
    music.want("fine", "default")
    await asyncio.wait_for(music.idle(), 5)
    assert music.done("fine")
    music.want("later", "default")
    await asyncio.wait_for(music.idle(), 5)
    assert music.done("later")


async def test_the_same_wish_again_after_giving_up_is_tried_again():
    """The lanes repeat their wish with every event of the room: one given up on gets another round."""
    asterisk = SlowAsterisk()
    asterisk.failures["bad"] = [AriError("500")] * 2
    music = music_for(asterisk, attempts=2, first_pause=0.01)
    music.want("bad", "default")
    assert await music.settled("bad", timeout=5) is False
    music.want("bad", "default")
    assert await music.settled("bad", timeout=5)
    assert len(asterisk.calls) == 3


async def test_an_answer_to_a_call_made_before_a_forget_is_not_taken_as_known():
    """After a reconnect the worker forgets what bridges play; a call still under way says nothing then."""
    asterisk = SlowAsterisk()
    asterisk.gate = asyncio.Event()
    music = music_for(asterisk)
    music.want("b", "default")
    await asyncio.sleep(0)  # the start is under way, held at the gate
    music.forget("b")
    music.want("b", "default")  # asked afresh
    asterisk.gate.set()
    await asyncio.wait_for(music.idle(), 5)
    assert asterisk.calls == [("start", "b", "default"), ("start", "b", "default")]
    assert music.done("b")
