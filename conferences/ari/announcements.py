"""A moderator's announcement: a sound from the server's list played to the whole room (``play``).

The room's music on hold (a lone caller hears it) pauses while the sound
plays and comes back after it: the room's ``announcing`` holds the
playbacks under way, and music is wanted only when there are none
(ConferenceApp.apply_moh). A playback whose end Asterisk never reports is
taken as over after a while (``_AnnouncementOver``).
"""

import logging
import secrets

from conferences.ari import store

logger = logging.getLogger(__name__)

LONGEST = 300.0  # seconds after which a playback whose PlaybackFinished never came counts as over
TIMER = "_AnnouncementOver"


class AnnouncementHandlers:
    """The announcement part of ConferenceApp (conferences/ari/handlers.py), which it is mixed into."""

    async def do_play(self, conference, command, actor_id):
        from conferences.ari.handlers import Refusal

        name = command.get("sound")
        sound = await self.effects.db(store.sound_to_play, conference.pk, name)
        if sound is None:
            raise Refusal("no such sound on this room's server")
        room = self.state.rooms.get(conference.pk)
        if room is None or not self.state.participants_in_bridge(conference.pk):
            raise Refusal("nobody is in the room")
        playback_id = f"announce-{conference.pk}-{secrets.token_hex(8)}"
        room.announcing.add(playback_id)
        try:
            await self.apply_moh(conference.pk)  # the music pauses first
            await self.ari.play_to_bridge(room.bridge_id, f"sound:{sound}", playback_id)
        except BaseException:
            room.announcing.discard(playback_id)
            await self.apply_moh(conference.pk)
            raise
        self.schedule(LONGEST, {"type": TIMER, "conference_id": conference.pk, "playback_id": playback_id})
        await self.effects.db(store.record_played, conference.pk, name, actor_id)
        logger.info("conference %s: playing %s to the room", conference.pk, sound)

    async def announcement_over(self, conference_id, playback_id):
        """A moderator's sound ended (or was given up on): the music comes back if the room wants it."""
        room = self.state.rooms.get(conference_id)
        if room is None or playback_id not in room.announcing:
            return False
        room.announcing.discard(playback_id)
        await self.apply_moh(conference_id)
        return True

    async def on__AnnouncementOver(self, event):
        conference_id = event.get("conference_id")
        if isinstance(conference_id, int):
            await self.announcement_over(conference_id, event.get("playback_id"))
