"""Rooms side by side: each lane's items one at a time and in order, different lanes at once.

The worker puts everything about one room (its ARI events, its callers'
events before they are in the bridge, its moderation commands, its timers) in
that room's lane. A lane is a queue and a task that handles its items one
after the other; lanes run concurrently, so a moderator's click in one room
never waits behind another room's admissions. Server-wide work (a resync)
waits until every lane is idle (``drain``) and runs alone: the worker stops
handing out items meanwhile, so nothing overtakes it.

Lanes live as long as the worker: there is one per room of the server (and
one for the rest), a queue and a waiting task each. Plain asyncio, no ARI and
no database: tested in tests/test_lanes.py.
"""

import asyncio
import contextlib
import logging

from conferencesite import logformat

RECEIVED_AT = "_conference_received_at"  # put into every ARI event when read: monotonic seconds

logger = logging.getLogger(__name__)


class Lane:
    def __init__(self, key):
        self.key = key
        self.queue = asyncio.Queue()
        self.task = None
        self.busy = False


class Lanes:
    """Runs ``handle(item)`` for items of one key in order, for different keys concurrently."""

    def __init__(self, handle):
        self.handle = handle
        self.lanes: dict = {}
        self._changed = asyncio.Event()
        self.closing = False

    def submit(self, key, item):
        """Queue ``item`` behind the others of ``key``; returns at once."""
        if self.closing:
            return
        lane = self.lanes.get(key)
        if lane is None:
            lane = self.lanes[key] = Lane(key)
            lane.task = asyncio.create_task(self._run(lane), name=f"lane-{key}")
        lane.queue.put_nowait(item)

    def pending(self):
        """Items queued or in hand, all lanes together."""
        return sum(lane.queue.qsize() + lane.busy for lane in self.lanes.values())

    def waiting(self, key):
        """Items queued in one lane, the one in hand included."""
        lane = self.lanes.get(key)
        return 0 if lane is None else lane.queue.qsize() + lane.busy

    async def drain(self):
        """Wait until every lane has handled everything it was given."""
        while self.pending():
            self._changed.clear()
            await self._changed.wait()

    async def close(self, timeout):
        """Take no more items; let each lane finish the item in hand (at most ``timeout`` s), drop the rest."""
        self.closing = True
        for lane in self.lanes.values():
            while not lane.queue.empty():
                lane.queue.get_nowait()
            lane.queue.put_nowait(None)  # wakes a waiting lane so that it ends
        tasks = [lane.task for lane in self.lanes.values() if not lane.task.done()]
        if tasks:
            _done, still = await asyncio.wait(tasks, timeout=timeout)
            for task in still:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _run(self, lane):
        if isinstance(lane.key, int) and not isinstance(lane.key, bool):  # a room's lane (not the server's)
            logformat.room.set(lane.key)  # this lane's task only: every log line of its items names the room
        while True:
            item = await lane.queue.get()
            if self.closing:
                return
            lane.busy = True
            try:
                await self.handle(item)
            except Exception:
                # The handler logs what it knows; one failed item never ends its lane.
                logger.exception("lane %s: an item failed", lane.key)
            finally:
                lane.busy = False
                self._changed.set()
