"""Where the worker's decisions become effects: ARI calls and database hops.

``Effects.db(func, ...)`` runs one conferences/ari/store.py function in a
database thread, then sends from the event loop what the services broadcast
meanwhile (collected, not sent from the thread: no hop back into the loop per
frame). The ARI side wraps the client's calls that handlers share (prompts
that end in a hang-up, talk detection, music on hold) and names playbacks.

Database errors that pass (an unreachable or locked database) come out as
``DatabaseUnavailable``: the event must be tried again, not skipped.
"""

import logging

from channels.db import database_sync_to_async
from django.db import transaction

from conferences import broadcast, services
from conferences.ari import store
from conferences.ari.client import AriError, AriNotFound
from conferences.dbthreads import TRANSIENT_DB_ERRORS

logger = logging.getLogger(__name__)

PROMPT_HANGUP_TIMEOUT = 15.0  # hang up even when PlaybackFinished never comes
# A bridge's music is started and stopped one bridge at a time (conferences/ari/music.py), and Asterisk
# takes one lock for all of them: on a busy PBX a call may take seconds without anything being wrong.
MUSIC_TIMEOUT = 10.0


class DatabaseUnavailable(Exception):
    """The database could not be reached or was locked: the same event must be tried again."""


class Effects:
    """The ARI client and the database of one server's worker, as the handlers use them."""

    def __init__(self, *, ari, app_name, schedule, database=None, fence=None):
        self.ari = ari
        # fence(): raises lease.LeaseLost inside a write's transaction when this worker lost its lease.
        self.fence = fence
        self.app_name = app_name
        # schedule(delay, event): process ``event`` after ``delay`` seconds, in its room's order.
        self.schedule = schedule
        # A worker gives its DatabaseThreads; without (handler tests), Channels' database thread.
        self.database = database
        self._playbacks = 0

    async def db(self, func, /, *args, **kwargs):
        """One database hop: ``func(*args, **kwargs)`` in a database thread; broadcasts sent after it."""
        via = services.acted_via.get()  # the thread does not share the loop's context

        def run():
            with broadcast.collecting() as outbox, services.acting_via(via):
                if self.fence is None or func in store.READS:
                    return func(*args, **kwargs), list(outbox)
                with transaction.atomic():  # the check and the write commit together (conferences/ari/lease.py)
                    self.fence()
                    result = func(*args, **kwargs)
                return result, list(outbox)

        try:
            if self.database is not None:
                result, outbox = await self.database.run(run)
            else:
                result, outbox = await database_sync_to_async(run)()
        except TRANSIENT_DB_ERRORS as exc:
            raise DatabaseUnavailable(str(exc)) from exc
        await broadcast.send_collected(outbox)
        return result

    # --- ARI ---------------------------------------------------------------------------------

    def playback_id(self, channel_id):
        self._playbacks += 1
        return f"{self.app_name}-pb-{channel_id}-{self._playbacks}"

    async def play(self, channel_id, *sounds):
        """Play Asterisk's sounds to a channel, one after the other (to that channel only); returns the playback id."""
        playback_id = self.playback_id(channel_id)
        await self.ari.play(channel_id, ",".join(f"sound:{sound}" for sound in sounds), playback_id)
        return playback_id

    async def stop_playback(self, playback_id):
        """Stop a playback (queued or playing); one that ended already is fine."""
        try:
            await self.ari.stop_playback(playback_id)
        except AriNotFound:
            pass

    async def hangup(self, channel_id):
        """Hang a channel up; one that is gone already is fine."""
        try:
            await self.ari.hangup(channel_id)
        except AriNotFound:
            pass

    async def prompt_then_hangup(self, call, *sounds, answer=False):
        """Play ``sounds`` to a caller who may not stay, then hang up (also when the playback never finishes)."""
        channel_id = call.channel_id
        try:
            if answer:
                await self.ari.answer(channel_id)
            playback_id = self.playback_id(channel_id)
            call.hangup_after.add(playback_id)
            await self.ari.play(channel_id, ",".join(f"sound:{sound}" for sound in sounds), playback_id)
            self.schedule(PROMPT_HANGUP_TIMEOUT, {"type": "_HangupTimeout", "channel_id": channel_id})
        except AriNotFound:
            return
        except AriError as exc:
            logger.warning("channel %s: prompt %s failed (%s); hanging up", channel_id, sounds, exc)
            await self.hangup(channel_id)

    async def talk_detect(self, channel_id):
        await self.ari.set_variable(channel_id, "TALK_DETECT(set)", "")

    async def talk_detect_afresh(self, channel_id):
        """Talk detection removed and set again: it starts from silence (see ConferenceApp._mute)."""
        await self.ari.set_variable(channel_id, "TALK_DETECT(remove)", "")
        await self.ari.set_variable(channel_id, "TALK_DETECT(set)", "")

    async def start_moh(self, bridge_id, moh_class):
        await self.ari.start_bridge_moh(bridge_id, moh_class or "default", timeout=MUSIC_TIMEOUT)

    async def stop_moh(self, bridge_id):
        try:
            await self.ari.stop_bridge_moh(bridge_id, timeout=MUSIC_TIMEOUT)
        except AriError as exc:
            if exc.status not in (404, 409):  # nothing playing, or the bridge is gone
                raise

    async def remove_bridge(self, bridge_id):
        try:
            await self.ari.destroy_bridge(bridge_id)
        except AriNotFound:
            pass
