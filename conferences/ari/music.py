"""Music on hold of the rooms' bridges, carried out beside the lanes, never in their way.

A room's lane decides whether its bridge should play music (the rule in
conferences/ari/rules.py: one caller alone hears it) and tells ``BridgeMusic``;
it does not wait for Asterisk to do it. Asterisk's bridge music is slow to
start and stop on a busy PBX, and it is slow for every room at once:
res_stasis.c starts a bridge's music by creating an announcer channel and
pushing it into the bridge while holding the lock of its one container of
music channels (``app_bridges_moh``), which stopping needs as well. With ten
rooms filling at once on this project's 2-core sandbox, the tenth start
waited over 5 s, and a lane that awaited it held its room's admissions
(and every moderation click of that room) as long.

So the wishes are kept per bridge and carried out by one task, one call at a
time (Asterisk would serialise them anyway; concurrent ones would only hold
HTTP connections the other rooms' calls need), oldest wish first. A wish that
is taken back before its turn (the second caller arrives while the first
one's music has not started yet) costs no call at all. A call that fails is
tried again a few times with a growing pause (the other bridges go on
meanwhile); a bridge that is gone is forgotten. ``settled`` lets the rare
caller that needs the music off before it goes on (a moderator's sound
played to the room) wait for it.

Plain asyncio; the calls are two coroutines given at construction (tested in
tests/test_music.py with a slow fake).
"""

import asyncio
import logging

from conferences.ari.client import AriError, AriNotFound

logger = logging.getLogger(__name__)

ATTEMPTS = 4  # tries of one change before it is given up (the next change of the room tries again)
FIRST_PAUSE = 0.5  # seconds before the second try; doubled for each further one


class BridgeMusic:
    """The music each bridge should play, and one task that makes Asterisk play it.

    ``start(bridge_id, moh_class)`` and ``stop(bridge_id)`` are the ARI calls
    (``stop`` treats "nothing playing" as done); ``wanted[bridge]`` is the
    class to play (or None for silence), ``playing[bridge]`` what Asterisk
    last confirmed (None: not known, after a failure or before the first call).
    """

    def __init__(self, *, start, stop, attempts=ATTEMPTS, first_pause=FIRST_PAUSE):
        self._start = start
        self._stop = stop
        self.attempts = attempts
        self.first_pause = first_pause
        self.wanted: dict[str, str | None] = {}
        self.playing: dict[str, str | None] = {}
        self._known: set[str] = set()  # bridges whose ``playing`` is confirmed
        # Bridges to look at, oldest wish first -> not before when (loop time; 0: at once).
        self._due: dict[str, float] = {}
        self._tries: dict[str, int] = {}  # failed calls of a bridge's current wish
        self._forgotten: dict[str, int] = {}  # how often each bridge was forgotten (a call under way is stale)
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._task = None
        self.calls = 0  # ARI calls made (for tests and the benchmark's log)

    # --- what the lanes use -----------------------------------------------------------

    def want(self, bridge_id, moh_class):
        """The bridge should play ``moh_class`` (None: no music); returns at once."""
        if self.wanted.get(bridge_id, ...) != moh_class:
            self._tries.pop(bridge_id, None)  # a new wish gets all its tries
        self.wanted[bridge_id] = moh_class
        if self.done(bridge_id):
            self._due.pop(bridge_id, None)
            self._changed.set()
            return
        self._due.setdefault(bridge_id, 0.0)
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="bridge-music")

    def silent(self, bridge_id):
        """The bridge is known to play nothing (a new one, no channel in it): silence needs no call."""
        if bridge_id not in self.wanted:
            self.playing[bridge_id] = None
            self._known.add(bridge_id)

    def forget(self, bridge_id):
        """The bridge is gone, or what it plays is no longer known: nothing more to do for it until a wish."""
        self._forgotten[bridge_id] = self._forgotten.get(bridge_id, 0) + 1
        self.wanted.pop(bridge_id, None)
        self.playing.pop(bridge_id, None)
        self._known.discard(bridge_id)
        self._due.pop(bridge_id, None)
        self._tries.pop(bridge_id, None)
        self._changed.set()

    def done(self, bridge_id):
        """Whether Asterisk confirmed what the bridge should play (a forgotten bridge is done)."""
        if bridge_id not in self.wanted:
            return True
        return bridge_id in self._known and self.playing.get(bridge_id) == self.wanted[bridge_id]

    async def settled(self, bridge_id, timeout):
        """Wait (at most ``timeout`` s) until the bridge plays what it should; returns whether it does."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.done(bridge_id):
            if bridge_id not in self._due:
                return False  # given up on (failed every try): waiting longer changes nothing
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return self.done(bridge_id)
        return True

    async def idle(self):
        """Wait until nothing is left to do (tests)."""
        while self._due:
            self._changed.clear()
            await self._changed.wait()

    async def close(self):
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    # --- the task -----------------------------------------------------------------------

    async def _run(self):
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            ready = next((bridge for bridge, not_before in self._due.items() if not_before <= now), None)
            if ready is None:
                self._wake.clear()
                pause = min(self._due.values(), default=None)
                try:
                    await asyncio.wait_for(self._wake.wait(), None if pause is None else max(pause - now, 0.0))
                except TimeoutError:
                    pass
                continue
            try:
                await self._carry_out(ready)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not end the music of every room
                logger.exception("bridge %s: music on hold failed", ready)
                self._due.pop(ready, None)
            self._changed.set()

    async def _carry_out(self, bridge_id):
        """One call towards what the bridge should play; the bridge leaves ``_due`` when done or given up."""
        moh_class = self.wanted[bridge_id]
        forgotten = self._forgotten.get(bridge_id, 0)
        self.calls += 1
        try:
            if moh_class is None:
                await self._stop(bridge_id)
            else:
                await self._start(bridge_id, moh_class)
        except AriNotFound:
            logger.info("bridge %s: gone before its music could change", bridge_id)
            self.forget(bridge_id)
            return
        except AriError as exc:
            self._known.discard(bridge_id)  # a timed-out call may still have happened: not known
            if self._forgotten.get(bridge_id, 0) != forgotten:
                return  # forgotten meanwhile: a new wish starts with all its tries
            tries = self._tries[bridge_id] = self._tries.get(bridge_id, 0) + 1
            if tries >= self.attempts:
                logger.warning("bridge %s: music on hold not changed after %s tries: %s", bridge_id, tries, exc)
                self._due.pop(bridge_id, None)
                self._tries.pop(bridge_id, None)
                return
            logger.info("bridge %s: music on hold (try %s): %s; trying again", bridge_id, tries, exc)
            # To the back of the line, not before the pause is over: the other bridges go on meanwhile.
            self._due.pop(bridge_id, None)
            self._due[bridge_id] = asyncio.get_running_loop().time() + self.first_pause * 2 ** (tries - 1)
            return
        if self._forgotten.get(bridge_id, 0) != forgotten:
            return  # forgotten while the call was made: its answer says nothing about what is known now
        self.playing[bridge_id] = moh_class
        self._known.add(bridge_id)
        self._tries.pop(bridge_id, None)
        if self.done(bridge_id):
            self._due.pop(bridge_id, None)
        else:  # a newer wish came while the call was made: to the back of the line
            self._due.pop(bridge_id, None)
            self._due[bridge_id] = 0.0
