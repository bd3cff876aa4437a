"""Invites by number: the worker places a call to bring someone into a room, and says how it goes.

A moderator's ``invite`` is judged by rules.invite_refusal (the number's
characters and the server's allowed pattern before anything is dialled, at
most ``max_open_invites`` ringing in the room, rate limits per moderator and
per room from the stored invites), stored with its actor, and originated
through the server's dial template (``POST /channels``, into this
application, with a channel id the worker chose: ``invite-<room>-<token>``,
which routes every event of the call to its room's lane). Its progress reaches
every page of the room as ``invite.updated``: ``dialing``, ``ringing``
(``Dial`` RINGING: ``ChannelStateChange`` would say the same, but the worker
leaves that event out of its filter, it is most of a busy PBX's events), then ``answered``
(``StasisStart``: straight into the bridge, no PIN, no lobby) or how it ended
(``ChannelDestroyed``'s cause and the last ``Dial`` status: rules.invite_outcome).
A moderator's ``cancel_invite`` hangs the call up; the worker's own ring timer
hangs up a call Asterisk let ring past the room's ring time.
"""

import logging
import secrets
import time

from conferences import services
from conferences.ari import rules, store
from conferences.ari.calls import Call, Phase
from conferences.ari.client import AriError

logger = logging.getLogger(__name__)

TIMER = "_InviteTimeout"


class InviteHandlers:
    """The invite part of ConferenceApp (conferences/ari/handlers.py), which it is mixed into."""

    async def do_invite(self, conference, command, actor_id):
        from conferences.ari.handlers import Refusal

        number = command.get("number")
        facts = await self.effects.db(store.invite_facts, conference.pk, actor_id, number)
        refusal = rules.invite_refusal(
            number=number,
            pattern=facts.pattern,
            template=facts.template,
            open_invites=facts.open_invites,
            max_open=facts.max_open,
            by_moderator=facts.by_moderator,
            by_room=facts.by_room,
            room_numbers=(number,) if facts.is_room_number else (),
        )
        if refusal is None and facts.max_participants is not None:
            if facts.present + facts.open_invites >= facts.max_participants:  # an invite holds a seat
                refusal = "the room is full"
        if refusal is not None:
            logger.info("conference %s: invite of %r refused: %s", conference.pk, str(number)[:40], refusal)
            raise Refusal(refusal)
        channel_id = rules.invite_channel_id(conference.pk, secrets.token_hex(8))
        try:
            invite_id = await self.effects.db(store.invite_created, conference.pk, number, actor_id, channel_id)
        except services.ServiceError as exc:  # the moderator's limit, counted again under a lock
            raise Refusal(str(exc)) from None
        if invite_id is None:
            raise Refusal("no such room")
        call = Call(
            channel_id,
            conference.pk,
            Phase.DIALING,
            caller_number=number,
            invite_id=invite_id,
            dialed_at=time.monotonic(),
            ring_seconds=facts.ring_seconds,
        )
        caller_id = rules.invite_caller_id(facts.caller_id, facts.room_name, facts.room_number)
        call.shown_as = caller_id.partition("<")[0].strip().strip('"')
        self.state.calls[channel_id] = call
        try:
            await self.ari.originate(
                endpoint=rules.dial_endpoint(facts.template, number),
                app=self.app_name,
                app_args="invite",
                channel_id=channel_id,
                caller_id=caller_id,
                timeout=facts.ring_seconds,
            )
        except AriError as exc:
            self.state.forget(channel_id)
            logger.warning("conference %s: invite %s: Asterisk refused the call: %s", conference.pk, invite_id, exc)
            if exc.status is None:  # no answer from Asterisk (a timeout): the call may exist all the same
                await self.effects.hangup(channel_id)
            await self.effects.db(store.invite_updated, invite_id, "failed")
            raise
        self.schedule(facts.ring_seconds + rules.INVITE_TIMER_SLACK, {"type": TIMER, "channel_id": channel_id})

    async def do_cancel_invite(self, conference, command, actor_id):
        from conferences.ari.handlers import Refusal

        found = await self.effects.db(store.open_invite, conference.pk, command.get("invite"))
        if found is None:
            raise Refusal("no such invite ringing in this room")
        invite_id, channel_id = found
        call = self.state.call(channel_id)
        if call is not None and call.phase == Phase.DIALING:
            call.cancelled = True  # its ChannelDestroyed says "cancelled"
            await self.effects.hangup(channel_id)
            return
        # Not (or no longer) ringing for this worker: a call a restart lost, or answered a moment ago.
        if call is None:
            await self.effects.hangup(channel_id)
            await self.effects.db(store.invite_updated, invite_id, "cancelled")
            return
        raise Refusal("no such invite ringing in this room")

    def _dialing(self, channel_id):
        call = self.state.call(channel_id)
        return call if call is not None and call.phase == Phase.DIALING else None

    async def on_Dial(self, event):
        """``Dial`` of an originated channel names it as the ``peer``; its ``dialstatus`` says how it goes
        (RINGING, then ANSWER, or BUSY, NOANSWER, CONGESTION, CHANUNAVAIL, CANCEL)."""
        call = self._dialing((event.get("peer") or {}).get("id"))
        if call is None:
            return
        status = str(event.get("dialstatus") or "").upper()[:16]
        if status == "RINGING":
            await self.effects.db(store.invite_updated, call.invite_id, "ringing")
        elif status:
            call.dial_status = status

    async def invite_answered(self, call, channel):
        """The invited phone answered (its channel entered the application): into the room's bridge."""
        if call.cancelled:
            await self.effects.hangup(call.channel_id)  # cancelled as it answered
            return
        facts, _present = await self.effects.db(store.room_now, call.conference_id)
        if facts is None:
            await self.effects.hangup(call.channel_id)
            return
        # The name the phone's side gave (SIP's connected line), unless it is only the room's own caller ID
        # coming back (a Local channel, a PBX that echoes it).
        name = str((channel.get("connected") or {}).get("name") or "").strip()[:80]
        call.caller_name = "" if name == call.shown_as else name
        try:
            await self.enter_bridge(call, facts)
        except AriError as exc:  # it hung up as it answered, or the bridge refused it
            logger.info("conference %s: invite %s: not into the room: %s", call.conference_id, call.invite_id, exc)
            await self.effects.db(store.invite_updated, call.invite_id, "failed")
            await self.effects.hangup(call.channel_id)

    async def invite_joined(self, call):
        """The invitee is present: its invite is answered, with its participant."""
        if call.invite_id is not None:
            await self.effects.db(store.invite_updated, call.invite_id, "answered", None, call.participant_id)

    async def invite_ended(self, call, event):
        cause = event.get("cause")
        cause = cause if isinstance(cause, int) and not isinstance(cause, bool) and 0 <= cause < 1000 else None
        ran_out = call.timed_out or time.monotonic() - call.dialed_at >= call.ring_seconds - 1.0
        outcome = rules.invite_outcome(
            cause=cause, dial_status=call.dial_status, cancelled=call.cancelled, timed_out=ran_out
        )
        await self.effects.db(store.invite_updated, call.invite_id, outcome, cause)

    async def on__InviteTimeout(self, event):
        call = self._dialing(event.get("channel_id"))
        if call is not None:
            call.timed_out = True
            await self.effects.hangup(call.channel_id)

    async def resync_invites(self, channels):
        """After a (re)connect: an open invite whose call is gone ended unseen (``failed``); one still
        ringing is followed again; one answered meanwhile is found by the bridge resync."""
        for invite_id, conference_id, channel_id, ring_seconds, number, age, participant_id in await self.effects.db(
            store.open_invites, self.server_id
        ):
            channel = channels.get(channel_id)
            call = self.state.call(channel_id)
            if participant_id is not None:  # answered while the worker was away: in the room
                await self.effects.db(store.invite_updated, invite_id, "answered", None, participant_id)
                continue
            if channel is None:
                if call is not None:
                    self.state.forget(channel_id)
                await self.effects.db(store.invite_updated, invite_id, "failed")
                continue
            if call is None:
                self.state.calls[channel_id] = Call(
                    channel_id,
                    conference_id,
                    Phase.DIALING,
                    caller_number=number,
                    invite_id=invite_id,
                    dialed_at=time.monotonic() - age,  # placed before the restart: its ring time runs on
                    ring_seconds=ring_seconds,
                )
                left = max(1.0, ring_seconds + rules.INVITE_TIMER_SLACK - age)
                self.schedule(left, {"type": TIMER, "channel_id": channel_id})
