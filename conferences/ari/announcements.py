"""Sounds to the room: a moderator's (``play``, a sound from the server's list), and the room's own tones
(a tone when someone joins or leaves; "you are the only person" to a caller alone).

The room's music on hold (a lone caller hears it) pauses while the sound
plays and comes back after it: the room's ``announcing`` holds the
playbacks under way, and music is wanted only when there are none
(ConferenceApp.apply_moh). A playback whose end Asterisk never reports is
taken as over after a while (``_AnnouncementOver``).
"""

import logging
import secrets

from conferences.ari import store
from conferences.ari.client import AriError

logger = logging.getLogger(__name__)

ONLY_PERSON = "conf-onlyperson"  # "you are currently the only person in this conference"
JOIN_TONE, LEAVE_TONE = "confbridge-join", "confbridge-leave"  # ConfBridge's own tones
LONGEST = 300.0  # seconds after which a playback whose PlaybackFinished never came counts as over
TIMER = "_AnnouncementOver"
# How long a sound waits for the room's music to stop (conferences/ari/music.py does it beside the lanes);
# past that the sound plays anyway: a late stop on a busy PBX must not hold the room's lane.
MUSIC_PAUSE_WAIT = 2.0


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
        await self.play_to_room(conference.pk, sound)
        await self.effects.db(store.record_played, conference.pk, name, actor_id)
        logger.info("conference %s: playing %s to the room", conference.pk, sound)

    async def play_to_room(self, conference_id, sound):
        """Play ``sound`` to the room's bridge, the music paused around it."""
        room = self.state.rooms.get(conference_id)
        if room is None:
            return
        playback_id = f"announce-{conference_id}-{secrets.token_hex(8)}"
        room.announcing.add(playback_id)
        try:
            await self.apply_moh(conference_id)  # the music pauses first
            await self.music.settled(room.bridge_id, MUSIC_PAUSE_WAIT)
            await self.ari.play_to_bridge(room.bridge_id, f"sound:{sound}", playback_id)
        except BaseException:
            room.announcing.discard(playback_id)
            await self.apply_moh(conference_id)
            raise
        self.schedule(LONGEST, {"type": TIMER, "conference_id": conference_id, "playback_id": playback_id})

    async def tones_on_join(self, conference_id, call, tones):
        """A caller is in: alone, it may hear that it is (``only_person``); with others, the room may hear a
        tone (``join_leave_tones``). ``tones``: the room's ``(join_leave_tones, announce_only_person)``."""
        join_leave, only_person = tones
        in_bridge = self.state.participants_in_bridge(conference_id)
        try:
            if only_person and in_bridge == [call.channel_id]:
                await self.effects.play(call.channel_id, ONLY_PERSON)
            elif join_leave and len(in_bridge) > 1:
                await self.play_to_room(conference_id, JOIN_TONE)
        except AriError as exc:
            logger.info("conference %s: join tone not played: %s", conference_id, exc)

    async def tone_on_leave(self, conference_id):
        """Someone left: the others hear the leave tone (the room's setting as read at the last join)."""
        room = self.state.rooms.get(conference_id)
        if room is None or not room.tones or not room.tones[0]:
            return
        if self.state.participants_in_bridge(conference_id):
            try:
                await self.play_to_room(conference_id, LEAVE_TONE)
            except AriError as exc:
                logger.info("conference %s: leave tone not played: %s", conference_id, exc)

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
