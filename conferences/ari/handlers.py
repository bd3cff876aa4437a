"""What the worker does with each ARI event and each moderation request, for one Asterisk server.

``ConferenceApp`` is thin: each handler gathers the facts an event needs (one
database hop where it can, conferences/ari/store.py), asks the rules
(conferences/ari/rules.py: plain functions), changes the call's state
(conferences/ari/calls.py: one ``Call`` per channel, one ``Room`` per room
bridge) and carries out the effects (conferences/ari/effects.py). State
changes go through conferences.services, which broadcast after commit.

Events of one room are handled in the order Asterisk sent them; timers come
back as synthetic events (``_PinTimeout`` …) in the same order. A vanished
channel or bridge (404) is a normal race, logged and skipped.

Nothing a caller dials can make an admin. The dialplan contract is
``Stasis(<app>,<room number>)``: one argument, ASCII digits; anything else
(a SIP user part may contain ``,``, so ``100,admin`` would arrive as two
arguments through a dialplan that passes ``${EXTEN}`` unfiltered) is refused
with ``conf-invalid``. The admin role comes only from the channel variable
``CONFERENCE_ROLE=admin``, which trusted dialplan sets: read from the
``channelvars`` of the channel JSON (``channelvars = CONFERENCE_ROLE`` in
``ari.conf``), else asked with ``GET /channels/{id}/variable``.
"""

import asyncio
import contextlib
import contextvars
import dataclasses
import datetime
import logging
import secrets
import tempfile
import time

from django.core.files import File
from django.core.files.storage import default_storage

from conferences import protocol, services
from conferences.ari import pin_throttle, rules, store
from conferences.ari.announcements import AnnouncementHandlers
from conferences.ari.calls import ON_THE_WAY_IN, Call, Phase, Registry, Room
from conferences.ari.client import AriError, AriNotFound
from conferences.ari.effects import TRANSIENT_DB_ERRORS, DatabaseUnavailable, Effects
from conferences.ari.invites import InviteHandlers
from conferences.ari.lanes import RECEIVED_AT
from conferences.ari.music import BridgeMusic
from conferences.ari.rules import ADMIN, is_helper_channel, parse_room_args, role_from_channelvars, role_from_value
from conferences.models import Participant

logger = logging.getLogger(__name__)

# The time the event being handled was read off ARI's socket (each lane's task has its own).
_received_at = contextvars.ContextVar("received_at", default=None)


def event_clock():
    """``time.monotonic()`` of the moment the event being handled arrived; now, outside an event (commands,
    timers) or for one without the mark (replayed in tests)."""
    received = _received_at.get()
    return received if received is not None else time.monotonic()


# Commands whose handler's first hop checks that the room is this server's (with what it reads anyway):
# handle_command gives them a RoomRef instead of a hop of its own.
ROOM_CHECKED_BY_HANDLER = frozenset({"mute_all", "unmute_all"})


@dataclasses.dataclass(frozen=True)
class RoomRef:
    """A command's room by id alone, not checked yet (see ROOM_CHECKED_BY_HANDLER)."""

    pk: int


PIN_TRIES = 3  # per call; across calls, see pin_throttle
PIN_FIRST_TIMEOUT = 12.0  # seconds to start typing after the prompt began
PIN_DIGIT_TIMEOUT = 6.0  # seconds between digits
PROMPT_START_FALLBACK = 15.0  # the PIN timer starts anyway this long after the prompt was asked for
MAX_PIN_DIGITS = 32
FETCH_RETRY_DELAYS = (5.0, 30.0, 120.0, 600.0)  # seconds before each further try to fetch a recording
FETCHES_AT_ONCE = 2  # recording downloads under way at once (the rest of the ARI connections stay free)


# A caller who would wait in a room where rules.MAX_WAITING already wait.
TOO_MANY_WAITING = rules.Admission.refuse(rules.REFUSAL_SOUNDS["too many waiting"], "too many waiting")


class Refusal(services.ServiceError):
    """A moderation request that cannot be done; the message goes back to the requester."""


class ConferenceApp(InviteHandlers, AnnouncementHandlers):
    """The conference logic of one Asterisk server's Stasis application (invites: conferences/ari/invites.py;
    a moderator's sounds: conferences/ari/announcements.py)."""

    def __init__(self, *, server_id, app_name, ari, schedule, database=None, fence=None):
        self.server_id = server_id
        self.app_name = app_name
        self.effects = Effects(ari=ari, app_name=app_name, schedule=schedule, database=database, fence=fence)
        # Bridge music beside the lanes: a lane never waits for Asterisk to start or stop it (music.py).
        self.music = BridgeMusic(start=self.effects.start_moh, stop=self.effects.stop_moh)
        self.state = Registry()
        self.fetches = {}  # recording name -> the background task fetching its file
        self.fetch_slots = asyncio.Semaphore(FETCHES_AT_ONCE)
        self.pin_first_timeout = PIN_FIRST_TIMEOUT
        self.pin_digit_timeout = PIN_DIGIT_TIMEOUT

    @property
    def ari(self):
        return self.effects.ari

    @ari.setter
    def ari(self, client):
        self.effects.ari = client

    @property
    def schedule(self):
        return self.effects.schedule

    @property
    def admissions(self):
        """The calls being let in (not yet in their room's bridge, not refused), by channel id."""
        return {channel_id: call for channel_id, call in self.state.calls.items() if call.phase in ON_THE_WAY_IN}

    def bridge_id(self, conference_id):
        return rules.room_bridge_id(self.app_name, conference_id)

    def conference_id_of_bridge(self, bridge_id):
        return rules.conference_id_of_bridge(self.app_name, bridge_id)

    # --- dispatch ---------------------------------------------------------------

    @classmethod
    def event_types(cls):
        """The ARI event types the application has a handler for (not its own timers)."""
        return {name[3:] for name in dir(cls) if name.startswith("on_") and not name.startswith("on__")}

    def handles(self, event):
        """Whether ``event`` has a handler (ARI events and the worker's timers)."""
        return hasattr(self, "on_" + str(event.get("type", "")))

    async def process_event(self, event):
        """Handle one ARI (or synthetic) event; errors are logged, never raised (the database's excepted)."""
        kind = event.get("type", "")
        if event.get("application") not in (None, self.app_name):
            return
        handler = getattr(self, "on_" + kind, None)
        if handler is None:
            return
        received = event.get(RECEIVED_AT)
        token = _received_at.set(received if isinstance(received, float) else None)
        try:
            await handler(event)
        except DatabaseUnavailable:
            raise
        except TRANSIENT_DB_ERRORS as exc:
            raise DatabaseUnavailable(str(exc)) from exc
        except AriNotFound as exc:
            logger.info("server %s: %s: object gone meanwhile (%s)", self.server_id, kind, exc)
        except AriError as exc:
            logger.warning("server %s: %s: ARI error: %s", self.server_id, kind, exc)
        except Exception:
            logger.exception("server %s: %s: handler failed; event skipped", self.server_id, kind)
        finally:
            _received_at.reset(token)

    # --- admission --------------------------------------------------------------

    async def on_StasisStart(self, event):
        channel = event.get("channel") or {}
        if not channel.get("id") or is_helper_channel(channel):
            return
        args = event.get("args") or []
        await self.admit(channel, args if isinstance(args, list) else [args])

    async def admit(self, channel, args):
        """Run the admission rules for a channel that entered the application.

        Arguments other than one room number are refused (``conf-invalid``);
        the role is the channel's CONFERENCE_ROLE; lock and capacity are
        checked now and again once a PIN is right.
        """
        channel_id = channel["id"]
        known_call = self.state.call(channel_id)
        if known_call is not None:
            if known_call.phase == Phase.DIALING and channel.get("state") == "Up":
                await self.invite_answered(known_call, channel)  # an invite's call, answered
            return
        caller = channel.get("caller") or {}
        args = [arg if isinstance(arg, str) else repr(arg) for arg in args]
        number, problem = parse_room_args(args)
        known, room, present = await self.effects.db(store.admission_facts, self.server_id, channel_id, number)
        if known:
            # Its stay is over, but it is still here: denied, ended or kicked, and the prompt before its
            # hang-up was cut short by a worker restart.
            logger.info("server %s: channel %s: its stay is over; hanging up", self.server_id, channel_id)
            await self.effects.hangup(channel_id)
            return
        if known is not None:
            return  # in a room already (the resync looks after it)
        call = Call(
            channel_id=channel_id,
            conference_id=room.conference_id if room else None,
            caller_name=caller.get("name", ""),
            caller_number=caller.get("number", ""),
        )
        if problem is None and room is not None:
            call.role = await self.caller_role(channel)
        decision = rules.admission(
            problem=problem, room=room, role=call.role, taken=present + self.state.seats_held(call.conference_id)
        )
        if decision.verdict == rules.Verdict.REFUSE:
            if problem is not None:
                logger.warning(
                    "server %s: channel %s refused: %s in Stasis arguments %r (caller %r)",
                    self.server_id,
                    channel_id,
                    problem,
                    [arg[:40] for arg in args[:4]],
                    str(call.caller_number)[:40],
                )
            elif room is None:
                logger.info("server %s: channel %s refused: unknown room %r", self.server_id, channel_id, number)
            await self.refuse(call, decision, answer=channel.get("state") != "Up")
            return
        waiting_for = ""
        if decision.verdict == rules.Verdict.ENTER:
            waiting_for = self.waits_for(call, room, present)
            if waiting_for and self.too_many_waiting(room):
                await self.refuse(call, TOO_MANY_WAITING, answer=channel.get("state") != "Up")
                return
            if waiting_for:
                await self.record_waiting(call, waiting_for)
        # Known to the worker from here on: a database hop that fails before this repeats the whole event.
        self.state.calls[channel_id] = call
        if channel.get("state") != "Up":
            await self.ari.answer(channel_id)
        if decision.verdict == rules.Verdict.ASK_PIN:
            await self.prompt_pin(call)
        elif waiting_for:
            await self.start_waiting(call, room.moh_class)
        else:
            await self.enter_bridge(call, room)

    async def caller_role(self, channel):
        """The channel's role: CONFERENCE_ROLE from its ``channelvars``, else asked of Asterisk."""
        role = role_from_channelvars(channel)
        if role is not None:
            return role
        try:
            value = await self.ari.get_variable(channel["id"], rules.ROLE_VARIABLE)
        except AriNotFound:
            raise  # the channel is gone: a normal race, handled by the caller
        except AriError as exc:
            # Least privilege: an admin may be held back by a lock, nobody gains one.
            logger.warning(
                "server %s: channel %s: %s unreadable (%s); treated as a participant",
                self.server_id,
                channel["id"],
                rules.ROLE_VARIABLE,
                exc,
            )
            return rules.PARTICIPANT
        return role_from_value(value)

    async def refuse(self, call, decision, *, answer=False):
        """A caller who may not enter: recorded in the room (when there is one), a prompt, then hang up."""
        if decision.reason and call.conference_id is not None:
            if decision.reason in rules.REFUSAL_SOUNDS:
                logger.info(
                    "conference %s: channel %s refused: %s", call.conference_id, call.channel_id, decision.reason
                )
            await self.effects.db(store.record_refusal, call.conference_id, decision.reason, call.caller_number)
        call.phase = Phase.LEAVING
        self.state.calls[call.channel_id] = call
        await self.effects.prompt_then_hangup(call, decision.sound, answer=answer)

    async def on_PlaybackFinished(self, event):
        playback = event.get("playback") or {}
        playback_id = playback.get("id")
        target = str(playback.get("target_uri") or "")
        if target.startswith("bridge:"):
            conference_id = self.conference_id_of_bridge(target[len("bridge:") :])
            if conference_id is not None and await self.announcement_over(conference_id, playback_id):
                return
        call = self.state.leaving_after(playback_id)
        if call is not None:
            call.hangup_after.discard(playback_id)
            await self.effects.hangup(call.channel_id)
            return
        call = self.state.call(rules.event_channel_id(event))
        if call is not None and call.prompt == playback_id:
            call.prompt = None

    async def on__HangupTimeout(self, event):
        call = self.state.call(event.get("channel_id"))
        if call is not None and call.hangup_after:
            call.hangup_after.clear()
            await self.effects.hangup(call.channel_id)

    # --- the PIN ------------------------------------------------------------------

    async def prompt_pin(self, call):
        """Ask for the PIN; after too many wrong PINs lately, first a pause (``pin_throttle``)."""
        call.digits = ""
        call.attempt += 1
        caller_failures, room_failures = await pin_throttle.failures(call.conference_id, call.caller_number)
        pause = pin_throttle.pause_for(caller_failures, room_failures)
        if not pause:
            await self._ask_pin(call)
            return
        logger.info(
            "conference %s: channel %s: %s wrong PINs from this number, %s in the room lately; PIN prompt in %.0f s",
            call.conference_id,
            call.channel_id,
            caller_failures,
            room_failures,
            pause,
        )
        call.phase = Phase.PIN_PAUSE
        await self.effects.play(call.channel_id, pin_throttle.PIN_PAUSE_SOUND)
        self.schedule(pause, {"type": "_PinPauseOver", "channel_id": call.channel_id, "attempt": call.attempt})

    async def _ask_pin(self, call):
        """The PIN prompt. The time to start typing counts from when the prompt begins to play
        (PlaybackStarted: after a wrong PIN it waits behind conf-invalidpin), with a later
        fallback in case Asterisk never says so."""
        call.phase = Phase.PIN
        call.digits = ""
        call.prompt = await self.effects.play(call.channel_id, "conf-getpin")
        self._pin_timer(call, self.pin_first_timeout + PROMPT_START_FALLBACK)

    def _pin_timer(self, call, delay):
        """Judge the digits typed so far after ``delay`` unless more come (or a new prompt starts) meanwhile."""
        digits = len(call.digits)
        self.schedule(
            delay, {"type": "_PinTimeout", "channel_id": call.channel_id, "attempt": call.attempt, "digits": digits}
        )

    async def on_PlaybackStarted(self, event):
        playback_id = (event.get("playback") or {}).get("id")
        call = self._at_pin(rules.event_channel_id(event))
        if call is not None and playback_id is not None and call.prompt == playback_id:
            self._pin_timer(call, self.pin_first_timeout)

    def _at_pin(self, channel_id, phase=Phase.PIN):
        call = self.state.call(channel_id)
        return call if call is not None and call.phase == phase else None

    async def on__PinPauseOver(self, event):
        call = self._at_pin(event.get("channel_id"), Phase.PIN_PAUSE)
        if call is not None and call.attempt == event.get("attempt"):
            await self._ask_pin(call)

    async def on_ChannelDtmfReceived(self, event):
        channel_id = (event.get("channel") or {}).get("id")
        digit = str(event.get("digit", ""))
        present = self._at_pin(channel_id, Phase.PRESENT)
        if present is not None:
            await self.keypad(present, digit)
            return
        call = self._at_pin(channel_id)
        if call is None:
            return
        if call.prompt is not None:
            # A caller who types stops the prompt (Asterisk would make the bridge wait for it to end).
            prompt, call.prompt = call.prompt, None
            await self.effects.stop_playback(prompt)
        if digit == "#":
            await self.check_pin(call)
            return
        if digit.isdigit() and len(call.digits) < MAX_PIN_DIGITS:
            call.digits += digit
            self._pin_timer(call, self.pin_digit_timeout)

    async def on__PinTimeout(self, event):
        call = self._at_pin(event.get("channel_id"))
        if call is None or call.attempt != event.get("attempt"):
            return
        if len(call.digits) != event.get("digits"):
            return  # a digit came meanwhile; its own timer counts
        await self.check_pin(call)

    async def check_pin(self, call):
        """Judge the digits typed: the right PIN enters (if the room is still open), a wrong one counts."""
        room, present = await self.effects.db(store.room_now, call.conference_id)
        if room is None:
            logger.info("channel %s refused: its room was deleted during the PIN prompt", call.channel_id)
            await self.refuse(call, rules.Admission.refuse("conf-invalid"))
            return
        result = rules.pin_result(digits=call.digits, pin=room.pin, tries=call.tries, max_tries=PIN_TRIES)
        if result == rules.PinResult.RIGHT:
            await pin_throttle.forget_caller(room.conference_id, call.caller_number)
            # The room may have been locked or filled while this caller typed.
            decision = rules.after_pin(
                room=room, role=call.role, taken=present + self.state.seats_held(room.conference_id)
            )
            if decision.verdict == rules.Verdict.REFUSE:
                await self.refuse(call, decision)
                return
            await self.let_in(call, room, present)
            return
        call.tries += 1
        if call.digits:  # a timeout with nothing typed is no guess
            await pin_throttle.record_failure(room.conference_id, call.caller_number)
        logger.info(
            "conference %s: channel %s: wrong PIN (try %s of %s)",
            room.conference_id,
            call.channel_id,
            call.tries,
            PIN_TRIES,
        )
        if result == rules.PinResult.REFUSE:
            await self.refuse(call, rules.Admission.refuse("conf-invalidpin", "wrong PIN"))
            return
        await self.effects.play(call.channel_id, "conf-invalidpin")
        await self.prompt_pin(call)

    # --- the keypad during the call -------------------------------------------------------

    async def keypad(self, call, key):
        """A key a caller in the room pressed: the room's sequences raise or lower the hand, mute or unmute.

        The keys typed are kept only once the action is done: a database
        outage repeats the event (conferences/ari/lanes.py), which then
        finds the same sequence again. At most KEYPAD_RATE actions a second
        per call (a burst of KEYPAD_BURST): a caller who floods the keys
        cannot flood the room's timeline, its pages or Asterisk's prompts.
        """
        if call.participant_id is None:
            return
        if call.keypad is None:
            call.keypad = await self.effects.db(store.keypad_keys, call.conference_id)
            if call.keypad is None:
                return  # the room was deleted
        now = time.monotonic()
        typed, action = rules.keypad_press(call.typed, key, call.keypad, now - call.typed_at)
        if action is not None and not call.keypad_bucket.take():
            logger.info("conference %s: channel %s: keypad too fast; ignored", call.conference_id, call.channel_id)
            action = None
        if action is not None:
            await self._keypad_action(call, action)
        call.typed, call.typed_at = typed, now

    async def _keypad_action(self, call, action):
        state = await self.effects.db(store.keypad_state, call.participant_id)
        if state is None:
            return
        hand_raised, muted, mute_source = state
        if action == rules.HAND:
            await self.effects.db(store.set_hand, call.participant_id, not hand_raised, by_self=True)
            sounds = rules.KEYPAD_SOUNDS["hand_lowered" if hand_raised else "hand_raised"]
        else:
            decision = rules.self_mute(muted=muted, mute_source=mute_source)
            if decision == rules.SelfMute.MUTE:
                await self._mute(call.channel_id)
                await self.effects.db(store.self_mute, call.participant_id, True)
            elif decision == rules.SelfMute.UNMUTE:
                await self._unmute(call.channel_id)
                await self.effects.db(store.self_mute, call.participant_id, False)
            sounds = rules.KEYPAD_SOUNDS[decision]
        if call.prompt is not None:  # the previous key's prompt: this one replaces it
            prompt, call.prompt = call.prompt, None
            await self.effects.stop_playback(prompt)
        call.prompt = await self.effects.play(call.channel_id, *sounds)

    # --- the lobby and the leader ------------------------------------------------------

    def leader_in(self, conference_id):
        """An admin caller of the room is in its bridge or on the way in (the worker's own calls)."""
        return any(
            call.role == rules.ADMIN and call.phase in (Phase.PRESENT, Phase.ENTERING)
            for call in self.state.in_room(conference_id)
        )

    def waits_for(self, call, facts, present, *, from_lobby=False):
        """Where a caller who may enter goes (rules.waits_for), from the worker's own calls: a row still
        says "waiting for the leader" while its caller is on the way into the bridge."""
        conference_id = facts.conference_id
        leader_in = self.leader_in(conference_id)
        facts = dataclasses.replace(
            facts, leader_waiting=0 if leader_in else len(self.state.waiting(conference_id, rules.LEADER))
        )
        started = leader_in or present + self.state.seats_held(conference_id) > 0
        return rules.waits_for(room=facts, role=call.role, started=started, from_lobby=from_lobby)

    def too_many_waiting(self, facts):
        return facts.waiting >= rules.MAX_WAITING

    async def let_in(self, call, facts, present):
        """A caller who may enter (its PIN typed): into the lobby, to wait for the leader, or into the room."""
        waiting_for = self.waits_for(call, facts, present)
        if not waiting_for:
            await self.enter_bridge(call, facts)
            return
        if self.too_many_waiting(facts):
            await self.refuse(call, TOO_MANY_WAITING)
            return
        await self.record_waiting(call, waiting_for)  # first: a database outage repeats the event
        await self.start_waiting(call, facts.moh_class)

    async def record_waiting(self, call, waiting_for):
        """The waiting caller as a participant (``status: waiting``): its moderators see it from now on."""
        joined = await self.effects.db(
            store.record_join, call.conference_id, store.caller_channel(call), call.role, waiting_for
        )
        if joined is not None:
            call.participant_id = joined[0]
        call.waiting_for = waiting_for

    async def start_waiting(self, call, moh_class):
        """Outside any bridge, the caller hears music on hold and nothing of the room or the other waiting."""
        call.phase = Phase.WAITING
        logger.info("conference %s: channel %s waits (%s)", call.conference_id, call.channel_id, call.waiting_for)
        await self.ari.start_moh(call.channel_id, moh_class or "default")

    async def release(self, call, facts, admitted_by=None):
        """A waiting caller goes into the room: the music stops, the caller enters the bridge.

        When Asterisk refuses (not a hang-up), the caller keeps waiting, with its music.
        """
        call.admitted_by = admitted_by
        try:
            await self.ari.stop_moh(call.channel_id)
        except AriNotFound:
            raise
        except AriError as exc:
            logger.info("channel %s: music on hold not stopped (%s)", call.channel_id, exc)
        try:
            await self.enter_bridge(call, facts)
        except AriNotFound:
            raise
        except AriError:
            call.phase, call.admitted_by = Phase.WAITING, None
            self.state.calls[call.channel_id] = call  # enter_bridge forgot it
            try:
                await self.ari.start_moh(call.channel_id, facts.moh_class or "default")
            except AriError as exc:
                logger.info("channel %s: music on hold not restarted (%s)", call.channel_id, exc)
            raise

    async def _waiting_call(self, conference, command, waiting_for=None):
        """The waiting caller a command names (one this worker holds): ``(participant id, call)``, or a Refusal."""
        participant_id = command.get("participant_id")
        found = await self.effects.db(store.waiting_target, conference.pk, participant_id)
        if found is None:
            raise Refusal("no such waiting caller in this room")
        channel_id, waits = found
        call = self.state.call(channel_id)
        if call is not None and call.phase == Phase.ENTERING:
            raise Refusal("the caller is already on the way in")
        if call is None or call.phase != Phase.WAITING:
            raise Refusal("the caller has already left")
        if waiting_for is not None and waits != waiting_for:
            raise Refusal("this caller waits for the leader: open the room")
        return participant_id, call

    async def _room_now(self, conference_id):
        facts, present = await self.effects.db(store.room_now, conference_id)
        if facts is None:
            raise Refusal("no such room")
        return facts, present + self.state.seats_held(conference_id)

    async def _admit_one(self, facts, taken, participant_id, call, actor_id):
        """Let one caller in from the lobby: into the room, or to wait for the leader. False when the room is full."""
        if rules.entry_refusal(role=call.role, locked=False, max_participants=facts.max_participants, taken=taken):
            return False
        if self.waits_for(call, facts, taken, from_lobby=True):
            await self.effects.db(store.to_leader_wait, participant_id, actor_id)
            call.waiting_for = rules.LEADER
            return True
        await self.release(call, facts, admitted_by=actor_id)
        return True

    async def do_admit(self, conference, command, actor_id):
        participant_id, call = await self._waiting_call(conference, command, rules.LOBBY)
        facts, taken = await self._room_now(conference.pk)
        if not await self._admit_one(facts, taken, participant_id, call, actor_id):
            raise Refusal("the room is full")

    async def do_admit_all(self, conference, command, actor_id):
        await self._admit_all(conference, actor_id)

    async def _admit_all(self, conference, actor_id):
        """Everyone in the lobby, in arrival order, as far as the room has seats."""
        facts, taken = await self._room_now(conference.pk)
        refused = 0
        for participant_id, channel_id in await self.effects.db(store.waiting_targets, conference.pk, rules.LOBBY):
            call = self.state.call(channel_id)
            if call is None or call.phase != Phase.WAITING:
                continue  # hung up meanwhile (its leave is on its way), or on its way in already
            try:
                admitted = await self._admit_one(facts, taken, participant_id, call, actor_id)
            except AriNotFound:
                continue
            except AriError as exc:
                logger.info("conference %s: channel %s not admitted: %s", conference.pk, channel_id, exc)
                admitted = False
            if not admitted:
                refused += 1
            elif call.phase == Phase.ENTERING:
                taken += 1
        if refused:
            raise Refusal(protocol.callers_not_changed(refused))

    async def do_deny(self, conference, command, actor_id):
        """A caller turned away from the lobby (or the wait for the leader): a prompt, then hang up."""
        participant_id, call = await self._waiting_call(conference, command)
        await self.effects.db(store.deny, participant_id, actor_id)
        call.phase, call.participant_id = Phase.LEAVING, None
        try:
            await self.ari.stop_moh(call.channel_id)
        except AriError:
            pass  # the prompt plays anyway, or the caller is gone
        await self.effects.prompt_then_hangup(call, *rules.DENIED_SOUNDS)

    async def do_lobby_on(self, conference, command, actor_id):
        await self.effects.db(store.set_lobby, conference.pk, True, actor_id)

    async def do_lobby_off(self, conference, command, actor_id):
        """The lobby off: new callers come straight in, and those waiting in it are let in (as far as seats go)."""
        await self.effects.db(store.set_lobby, conference.pk, False, actor_id)
        await self._admit_all(conference, actor_id)

    async def do_open_room(self, conference, command, actor_id):
        not_in = await self.open_room(conference.pk, actor_id)
        if not_in:
            raise Refusal(protocol.callers_not_changed(not_in))

    async def open_room(self, conference_id, actor_id=None):
        """Let in the callers waiting for the leader, as far as seats go: the leader is in, or a moderator
        opened the room. Returns how many could not come in (they keep waiting)."""
        waiting = self.state.waiting(conference_id, rules.LEADER)
        if not waiting:
            return 0
        facts, present = await self.effects.db(store.room_now, conference_id)
        if facts is None:
            return 0
        taken = present + self.state.seats_held(conference_id)
        let_in = []
        for call in waiting:
            if not rules.entry_refusal(
                role=call.role, locked=False, max_participants=facts.max_participants, taken=taken
            ):
                let_in.append(call)
                taken += 1
        await self.effects.db(store.room_opened, conference_id, actor_id, len(let_in))
        failed = 0
        for call in let_in:
            try:
                await self.release(call, facts)
            except AriNotFound:
                continue  # hung up meanwhile
            except AriError as exc:
                logger.info("conference %s: channel %s not let in: %s", conference_id, call.channel_id, exc)
                failed += 1
        return len(waiting) - len(let_in) + failed

    async def leader_left(self, conference_id):
        """The room's last leader left: the others stay, are hung up (``end``) or wait again (``wait``).

        A leader on its way into the bridge counts as one. The database's
        facts are read first and its writes come last: a failed hop repeats
        the event, which then finds the same facts.
        """
        facts = await self.effects.db(store.leader_left_facts, conference_id)
        if facts is None:
            return
        when, leaders, others, moh_class = facts
        leaders += sum(1 for call in self.state.in_room(conference_id, Phase.ENTERING) if call.role == rules.ADMIN)
        outcome = rules.when_leader_left(when=when, leaders_left=leaders, others=others)
        if outcome == rules.STAY:
            return
        logger.info("conference %s: the leader left: %s (%s callers)", conference_id, outcome, len(others))
        if outcome == rules.END:
            await self.effects.db(store.end_with_leader, conference_id, [pk for pk, _channel in others])
            calls = [self.state.call(channel_id) for _pk, channel_id in others]
            for call in calls:
                if call is not None:
                    call.phase, call.participant_id = Phase.LEAVING, None
            await self._out_of_the_room(conference_id, others, lambda call: self._ended(call))
            return
        await self._back_to_waiting(conference_id, others, moh_class)

    async def _ended(self, call):
        await self.effects.prompt_then_hangup(call, rules.LEADER_LEFT_SOUND)

    async def _back_to_waiting(self, conference_id, targets, moh_class):
        """Present callers ``[(participant id, channel id)]`` go back to waiting for the leader, with music."""
        await self.effects.db(store.wait_for_leader, conference_id, [pk for pk, _channel in targets])
        for _pk, channel_id in targets:
            call = self.state.call(channel_id)
            if call is not None:
                call.phase, call.waiting_for, call.talking = Phase.WAITING, rules.LEADER, False

        async def music(call):
            try:
                await self.ari.start_moh(call.channel_id, moh_class or "default")
            except AriNotFound:
                pass

        await self._out_of_the_room(conference_id, targets, music)

    async def _out_of_the_room(self, conference_id, targets, then):
        """Take callers out of the room's bridge (they stay in the application), then ``then(call)`` for each."""
        room = self.state.rooms.get(conference_id)
        bridge_id = room.bridge_id if room else self.bridge_id(conference_id)

        async def one(channel_id):
            try:
                await self.ari.remove_channel(bridge_id, channel_id)
            except AriNotFound:
                pass
            except AriError as exc:
                logger.info("channel %s: not removed from %s (%s)", channel_id, bridge_id, exc)
            call = self.state.call(channel_id)
            if call is not None:
                await then(call)

        await asyncio.gather(*(one(channel_id) for _pk, channel_id in targets))

    # --- into the bridge -------------------------------------------------------------

    async def enter_bridge(self, call, facts):
        """Put an admitted caller into the room's bridge, with talk detection on."""
        call.phase = Phase.ENTERING
        room = await self.ensure_bridge(facts)
        try:
            await self.effects.talk_detect(call.channel_id)
            # The keypad is the caller's own: the room does not hear the keys (absorbDTMF).
            await self.ari.add_channel(room.bridge_id, call.channel_id, absorb_dtmf=True)
        except AriError:
            self.state.forget(call.channel_id)
            raise

    async def ensure_bridge(self, facts):
        """Create the room's mixing bridge, or reuse it when it exists (it outlives the app)."""
        room = self.state.rooms.get(facts.conference_id)
        if room is not None:
            return room
        bridge_id = self.bridge_id(facts.conference_id)
        bridge = await self.ari.create_bridge(bridge_id, f"conference {facts.number}")
        room = Room(facts.conference_id, bridge_id, channels=list((bridge or {}).get("channels") or []))
        self.state.rooms[facts.conference_id] = room
        if not room.channels:
            self.music.silent(bridge_id)  # no announcer in it: no music playing, none to stop
        return room

    # --- in the room --------------------------------------------------------------

    async def on_ChannelEnteredBridge(self, event):
        await self._bridge_changed(event, entered=True)

    async def on_ChannelLeftBridge(self, event):
        await self._bridge_changed(event, entered=False)

    async def _bridge_changed(self, event, *, entered):
        bridge = event.get("bridge") or {}
        channel = event.get("channel") or {}
        conference_id = self.conference_id_of_bridge(bridge.get("id"))
        if conference_id is None or not channel.get("id"):
            return
        room = self.state.rooms.setdefault(conference_id, Room(conference_id, bridge["id"]))
        room.channels = list(bridge.get("channels") or [])
        if is_helper_channel(channel):
            pass
        elif entered:
            await self._joined(conference_id, channel)
        else:
            await self._left(channel["id"], from_bridge=True)
        await self.apply_moh(conference_id)

    async def _joined(self, conference_id, channel):
        channel_id = channel["id"]
        call = self.state.call(channel_id)
        if call is None:  # in the bridge without being admitted by this worker (e.g. added by hand)
            caller = channel.get("caller") or {}
            call = Call(
                channel_id, conference_id, caller_name=caller.get("name", ""), caller_number=caller.get("number", "")
            )
        if call.invite_id is not None:  # its caller ID is the room's own (what the invitee saw): say who it is
            channel = {**channel, "caller": {"name": call.caller_name, "number": call.caller_number}}
        joined, tones = await self.effects.db(
            store.record_entry, conference_id, channel, call.role, admitted_by=call.admitted_by
        )
        if joined is None or not joined[1]:
            self.state.forget(channel_id)  # the room was deleted, or the channel's stay there is over
            return
        participant_id, _present, moh = joined
        call.conference_id, call.phase, call.waiting_for = conference_id, Phase.PRESENT, ""
        call.participant_id, call.moh, call.left_recorded = participant_id, moh, False
        self.state.calls[channel_id] = call
        await self.invite_joined(call)
        call.invite_id = None  # answered: from here on an ordinary participant
        await self.recording_on_join(conference_id, call)
        room = self.state.rooms.get(conference_id)
        if room is not None:
            room.tones = tones
        if tones is not None and any(tones):
            await self.tones_on_join(conference_id, call, tones)
        if call.role == rules.ADMIN:
            await self.open_room(conference_id)  # the leader is in
        elif self.state.waiting(conference_id, rules.LEADER) and not self.leader_in(conference_id):
            # Let in while the leader left meanwhile (when_leader_leaves: wait): it waits with the others.
            moh_class = await self.effects.db(store.moh_class, conference_id)
            await self._back_to_waiting(conference_id, [(participant_id, channel_id)], moh_class)

    async def _left(self, channel_id, *, from_bridge=False):
        """A caller's stay ended: it left the bridge (``from_bridge``), the application, or the PBX."""
        call = self.state.call(channel_id)
        if from_bridge and call is not None and call.phase in (Phase.WAITING, Phase.LEAVING):
            return  # taken out to wait for the leader, or to hear why it must go: still in the application
        reason, actor_id, via = Participant.LeftReason.HANGUP, None, None
        if call is not None and call.kicked:
            reason, actor_id, via = Participant.LeftReason.KICKED, call.kicked_by, call.kicked_via
        leader = call is not None and call.phase == Phase.PRESENT and call.role == rules.ADMIN
        was_present = call is not None and call.phase == Phase.PRESENT
        if call is not None and call.left_recorded and not was_present:
            return  # ChannelLeftBridge wrote the end of this stay already: its StasisEnd has nothing to add
        talked = self.open_stretch(call)
        with services.acting_via(via):
            await self.effects.db(store.record_leave, self.server_id, channel_id, reason, actor_id, talked)
        if call is not None:
            call.left_recorded = True
            call.talking, call.talking_since = False, None
        if leader:
            await self.leader_left(call.conference_id)  # a failed hop repeats the event: the call is still PRESENT
        if was_present and from_bridge:
            await self.tone_on_leave(call.conference_id)
        if call is not None:
            call.participant_id = None
            if call.phase in (Phase.PRESENT, Phase.WAITING):
                call.phase = Phase.LEAVING

    async def on_StasisEnd(self, event):
        channel_id = (event.get("channel") or {}).get("id")
        if not channel_id:
            return
        call = self.state.call(channel_id)
        if call is not None and call.phase in ON_THE_WAY_IN:
            self.state.forget(channel_id)
        # Normally ChannelLeftBridge came first; this covers a channel that left the
        # application without leaving the bridge event behind.
        await self._left(channel_id)

    async def on_ChannelDestroyed(self, event):
        channel_id = (event.get("channel") or {}).get("id")
        call = self.state.call(channel_id)
        if call is not None and call.invite_id is not None and call.participant_id is None:
            await self.invite_ended(call, event)  # never answered, or gone on its way into the room
        if call is not None and call.phase in (Phase.PRESENT, Phase.WAITING):
            await self._left(channel_id)  # gone without leaving its bridge or the application first
        self.state.forget(channel_id)

    async def on_ChannelTalkingStarted(self, event):
        await self._talking(event, True)

    async def on_ChannelTalkingFinished(self, event):
        await self._talking(event, False)

    async def _talking(self, event, talking):
        call = self.state.call((event.get("channel") or {}).get("id"))
        if call is None or call.phase != Phase.PRESENT or call.participant_id is None:
            return
        now = event_clock()  # when it was read, not when its lane came to it (rooms share the loop)
        if talking:
            await self.effects.db(store.update, call.participant_id, talking=True)
            call.talking, call.talking_since, call.stretch_closed = True, now, False
            return
        # A finish of a stretch that a mute closed and counted already adds nothing.
        seconds = 0.0 if call.stretch_closed else rules.talk_stretch(event.get("duration"), call.talking_since, now)
        await self.effects.db(store.talked, call.participant_id, seconds)
        call.talking, call.talking_since, call.stretch_closed = False, None, False

    def open_stretch(self, call):
        """The seconds of the call's talking stretch still open (0 when it is not talking)."""
        if call is None or not call.talking:
            return 0.0
        return rules.talk_stretch(None, call.talking_since, event_clock())

    async def on_BridgeDestroyed(self, event):
        conference_id = self.conference_id_of_bridge((event.get("bridge") or {}).get("id"))
        if conference_id is not None:
            self.state.rooms.pop(conference_id, None)
            self.music.forget(self.bridge_id(conference_id))

    # --- music on hold --------------------------------------------------------------

    async def apply_moh(self, conference_id):
        """Music on hold when exactly one participant is in the bridge, derived from the bridge itself.

        The bridge's music is handed to ``self.music``, which starts or stops it beside the lanes; the
        participants' ``moh`` flags follow the rule at once.
        """
        room = self.state.rooms.get(conference_id)
        if room is None:
            return
        in_bridge = self.state.participants_in_bridge(conference_id)
        want = rules.moh_wanted(in_bridge) and not room.announcing  # paused while a moderator's sound plays
        # Told every time, not only on a change: a wish BridgeMusic gave up on is tried again with the next event.
        if want:
            moh_class = self.music.wanted.get(room.bridge_id)  # the class asked for already: no read
            if moh_class is None:
                moh_class = await self.effects.db(store.moh_class, conference_id)
                if moh_class is None:
                    return  # the room was deleted
            self.music.want(room.bridge_id, moh_class or "default")
        else:
            self.music.want(room.bridge_id, None)
        room.moh = want
        # The moh flag of each present participant follows; only changes touch the database.
        changed = [
            call
            for call in self.state.in_room(conference_id, Phase.PRESENT)
            if call.participant_id is not None and call.moh != rules.hears_moh(call.channel_id, in_bridge)
        ]
        if changed:
            await self.effects.db(store.set_moh, {call.participant_id: not call.moh for call in changed})
            for call in changed:  # after the hop: a failed one is tried again with the event
                call.moh = not call.moh

    # --- moderation -------------------------------------------------------------------

    async def handle_command(self, command):
        """Carry out one moderation request; returns ``(ok, error message)``."""
        action = command.get("action")
        handler = getattr(self, "do_" + str(action), None)
        if handler is None:
            return False, "unknown action"
        conference_id = command.get("conference_id")
        try:
            if action in ROOM_CHECKED_BY_HANDLER:  # its first hop checks the room too: one hop less
                if not isinstance(conference_id, int) or isinstance(conference_id, bool):
                    return False, "no such room"
                conference = RoomRef(conference_id)
            else:
                conference = await self.effects.db(store.room_of_server, self.server_id, conference_id)
            if conference is None:
                return False, "no such room"
            with services.acting_via(command.get("via")):
                await handler(conference, command, command.get("actor_id"))
        except (DatabaseUnavailable, *TRANSIENT_DB_ERRORS):
            logger.warning("server %s: %s: database unavailable", self.server_id, action)
            return False, "the database is unavailable; try again"
        except Refusal as exc:
            return False, str(exc)
        except AriNotFound:
            return False, "the caller has already left"
        except AriError as exc:
            logger.warning("conference %s: %s failed: %s", conference_id, action, exc)
            return False, "Asterisk refused the request"
        return True, None

    async def _target(self, conference, command):
        """The channel of the command's participant, present in the command's room; or a Refusal."""
        participant_id = command.get("participant_id")
        found = await self.effects.db(store.target, conference.pk, participant_id)
        if found is None:
            raise Refusal("no such participant in this room")
        channel_id, _role, left = found
        if left:
            raise Refusal("the caller has already left")
        return participant_id, channel_id

    async def do_mute(self, conference, command, actor_id):
        participant_id, channel_id = await self._target(conference, command)
        await self._mute(channel_id)
        await self.effects.db(store.moderator_mute, participant_id, True, actor_id)

    async def do_unmute(self, conference, command, actor_id):
        """Clears any mute (the caller's own too) and lowers the caller's hand."""
        participant_id, channel_id = await self._target(conference, command)
        await self.ari.unmute(channel_id, "in")
        await self.effects.db(store.moderator_mute, participant_id, False, actor_id)

    async def do_lower_hand(self, conference, command, actor_id):
        participant_id, _channel_id = await self._target(conference, command)
        await self.effects.db(store.set_hand, participant_id, False, actor_id)

    async def do_kick(self, conference, command, actor_id):
        _participant_id, channel_id = await self._target(conference, command)
        room = self.state.rooms.get(conference.pk)
        bridge_id = room.bridge_id if room else self.bridge_id(conference.pk)
        call = self.state.call(channel_id)
        if call is None:  # present in the database, unknown to this worker (a resync will tell)
            call = self.state.calls[channel_id] = Call(channel_id, conference.pk, phase=Phase.PRESENT)
        call.kicked, call.kicked_by, call.kicked_via = True, actor_id, command.get("via")
        try:
            await self.ari.remove_channel(bridge_id, channel_id)
        except AriError:
            call.kicked, call.kicked_by = False, None
            raise
        await self.effects.prompt_then_hangup(call, "conf-kicked")

    async def _set_all_muted(self, conference, actor_id, muted):
        targets = await self.effects.db(store.mute_all_targets, conference.pk, muted, self.server_id)
        if targets is None:
            raise Refusal("no such room")
        # Independent channels: Asterisk needs no order among them, so all at once.
        talked = {}  # participant id -> seconds of the stretch a mute cut short, written with the rest
        afresh = []  # channels whose talk detection starts again: beside the database hop, not before it
        if muted:
            changes = (self._mute(channel_id, talked=talked, afresh=afresh) for _pk, channel_id in targets)
        else:
            changes = (self._unmute(channel_id) for _pk, channel_id in targets)
        outcomes = await asyncio.gather(*changes, return_exceptions=True)
        done, failed = [], 0
        for (participant_id, _channel_id), outcome in zip(targets, outcomes, strict=True):
            if isinstance(outcome, AriError):
                failed += 1
                logger.info("conference %s: participant %s: %s", conference.pk, participant_id, outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                done.append(participant_id)
        restarts = [self.effects.talk_detect_afresh(channel_id) for channel_id in afresh]
        outcomes = await asyncio.gather(
            self.effects.db(store.record_mute_all, conference.pk, muted, done, actor_id, talked),
            *restarts,
            return_exceptions=True,
        )
        for outcome in outcomes[1:]:  # a caller gone meanwhile has no detector to restart
            if isinstance(outcome, BaseException) and not isinstance(outcome, AriError):
                raise outcome
        if isinstance(outcomes[0], BaseException):
            raise outcomes[0]
        if failed:
            raise Refusal(protocol.callers_not_changed(failed))

    async def _mute(self, channel_id, *, talked=None, afresh=None):
        """Mute a caller's voice to the room (``talked``: where to leave a cut-short stretch's seconds for
        the caller to write, instead of a database hop of its own; ``afresh``: where to leave the channel
        whose talk detection the caller restarts, instead of restarting it here).

        ``POST /channels/{id}/mute`` drops the audio before talk detection, so
        a caller muted while talking gets no ChannelTalkingFinished, and its
        detector stays "talking": after the unmute it would never raise
        ChannelTalkingStarted again. Such a caller's detector starts afresh
        (and the caller is recorded as not talking).
        """
        await self.ari.mute(channel_id, "in")
        call = self.state.call(channel_id)
        if call is not None and call.talking:
            # The stretch ends here (no ChannelTalkingFinished comes after a mute): its length is taken now,
            # and a finish already on its way is not counted again (Call.stretch_closed).
            seconds = self.open_stretch(call)
            call.talking, call.talking_since, call.stretch_closed = False, None, True
            if afresh is not None:
                afresh.append(channel_id)
            else:
                await self.effects.talk_detect_afresh(channel_id)
            if call.participant_id is not None and talked is not None:
                talked[call.participant_id] = seconds
            elif call.participant_id is not None:
                await self.effects.db(store.talked, call.participant_id, seconds)

    async def _unmute(self, channel_id):
        await self.ari.unmute(channel_id, "in")

    async def do_mute_all(self, conference, command, actor_id):
        await self._set_all_muted(conference, actor_id, True)

    async def do_unmute_all(self, conference, command, actor_id):
        await self._set_all_muted(conference, actor_id, False)

    async def do_lock(self, conference, command, actor_id):
        await self.effects.db(
            services.conference_set_locked, conference_id=conference.pk, locked=True, actor_id=actor_id
        )

    async def do_unlock(self, conference, command, actor_id):
        await self.effects.db(
            services.conference_set_locked, conference_id=conference.pk, locked=False, actor_id=actor_id
        )

    # --- recordings -------------------------------------------------------------------

    async def do_record_start(self, conference, command, actor_id):
        await self.start_recording(conference.pk, actor_id, by_moderator=True)

    async def start_recording(self, conference_id, actor_id=None, *, by_moderator=False):
        """Announce, then record the room's bridge (a quiet room does not end the file)."""
        facts = await self.effects.db(store.recording_facts, conference_id)
        if facts is None:
            raise Refusal("no such room")
        mode, announcement, live = facts
        if mode == "never":
            raise Refusal("this room is never recorded")
        if live is not None:
            raise Refusal("the room is being recorded already")
        room = self.state.rooms.get(conference_id)
        if room is None or not self.state.participants_in_bridge(conference_id):
            raise Refusal("nobody is in the room")
        if room.recording is not None:  # recording on Asterisk, its row not written (yet)
            raise Refusal("the room is being recorded already")
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        name = rules.recording_name(self.app_name, conference_id, stamp, secrets.token_hex(3))
        await self.ari.record_bridge(room.bridge_id, name)
        room.recording, room.announcement = name, announcement
        if announcement:  # only once it records: a room is never told so when it is not
            try:
                await self.ari.play_to_bridge(room.bridge_id, f"sound:{announcement}")
            except AriError as exc:
                logger.warning("conference %s: announcement %s not played: %s", conference_id, announcement, exc)
        await self.effects.db(store.recording_started, conference_id, name, actor_id)

    async def do_record_stop(self, conference, command, actor_id):
        facts = await self.effects.db(store.recording_facts, conference.pk)
        live = facts[2] if facts else None
        if live is None:
            raise Refusal("the room is not being recorded")
        await self.effects.db(store.recording_stopping, live, actor_id)
        try:
            await self.ari.stop_recording(live)
        except AriNotFound:
            # Gone on Asterisk already: it ended and its RecordingFinished was lost (or comes later: then
            # it finds the row finished). Finished now, and fetched.
            logger.info("conference %s: recording %s had ended already", conference.pk, live)
            await self._finished_meanwhile(conference.pk, live)

    async def _finished_meanwhile(self, conference_id, name):
        ended = await self.effects.db(store.recording_finished, name)
        room = self.state.rooms.get(conference_id)
        if room is not None and room.recording == name:
            room.recording = None
        if ended is not None and ended[2] == "finished":
            self.fetch_later(ended[0], name)

    async def on_RecordingStarted(self, event):
        recording = event.get("recording") or {}
        conference_id = self._recorded_room(recording)
        if conference_id is not None:
            await self.effects.db(store.recording_started, conference_id, recording["name"])

    async def on_RecordingFinished(self, event):
        await self._recording_ended(event.get("recording") or {}, "")

    async def on_RecordingFailed(self, event):
        recording = event.get("recording") or {}
        await self._recording_ended(recording, str(recording.get("cause") or "Asterisk reported a failure"))

    def _recorded_room(self, recording):
        """The room of one of this worker's recordings; None for anything else (another application's)."""
        target = str(recording.get("target_uri") or "")
        if not target.startswith("bridge:"):
            return None
        conference_id = self.conference_id_of_bridge(target[len("bridge:") :])
        if conference_id is None or not rules.is_our_recording(self.app_name, conference_id, recording.get("name")):
            return None
        return conference_id

    async def _recording_ended(self, recording, error):
        conference_id = self._recorded_room(recording)
        if conference_id is None:
            return
        duration = rules.plausible_seconds(recording.get("duration"), 1.0, rules.MAX_RECORDING_SECONDS)
        ended = await self.effects.db(store.recording_finished, recording["name"], duration, error)
        if ended is None:  # no row: the worker that started it died before writing one (and missed its start)
            await self._adopt(conference_id, recording["name"])
            ended = await self.effects.db(store.recording_finished, recording["name"], duration, error)
        room = self.state.rooms.get(conference_id)
        if room is not None and room.recording == recording["name"]:
            room.recording = None
        if ended is not None and ended[2] == "finished":
            self.fetch_later(ended[0], recording["name"])
        await self.keep_recording(conference_id)

    async def keep_recording(self, conference_id):
        """An ``always`` room with callers in it records: after a file ended (callers came back before its
        end was handled) or failed, a new one starts."""
        if not self.state.participants_in_bridge(conference_id):
            return
        facts = await self.effects.db(store.recording_facts, conference_id)
        if facts is None or facts[0] != "always" or facts[2] is not None:
            return
        try:
            await self.start_recording(conference_id)
        except Refusal:
            pass
        except AriError as exc:
            logger.warning("conference %s: recording not started: %s", conference_id, exc)

    async def stop_fetches(self):
        """Cancel the downloads under way (the worker stops): the next worker fetches what is left."""
        tasks = list(self.fetches.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def fetch_later(self, recording_id, name):
        """Fetch a finished recording's file in the background (not in the room's lane: files are large)."""
        if name in self.fetches:
            return  # under way already
        task = asyncio.get_running_loop().create_task(self.fetch_recording(recording_id, name))
        self.fetches[name] = task
        task.add_done_callback(lambda _task: self.fetches.pop(name, None))

    async def fetch_recording(self, recording_id, name, delays=FETCH_RETRY_DELAYS):
        """Copy a stored recording from Asterisk into the site's storage, then delete it on Asterisk.

        Through ARI (``GET /recordings/stored/{name}/file``), so Asterisk may be
        on another host. A failed fetch is tried again later and never loses
        the file: Asterisk's copy goes only once the site's is saved.
        """
        for attempt, delay in enumerate((0.0, *delays)):
            if delay:
                await asyncio.sleep(delay)
            try:
                async with self.fetch_slots:  # a few at a time: downloads hold ARI connections for long
                    stored = await self._fetch_once(recording_id, name)
            except AriNotFound:
                await self.effects.db(store.recording_fetch_failed, recording_id, "not found on Asterisk")
                logger.warning("recording %s: not found on Asterisk", name)
                return False
            except (AriError, OSError) as exc:
                logger.warning("recording %s: fetch %s failed: %s", name, attempt + 1, exc)
                try:
                    await self.effects.db(store.recording_fetch_failed, recording_id, str(exc))
                except DatabaseUnavailable:
                    pass
                continue
            except DatabaseUnavailable as exc:
                logger.warning("recording %s: not recorded as stored yet: %s", name, exc)
                continue
            except Exception as exc:  # a storage that refuses the name, a database error: said, tried again
                logger.exception("recording %s: fetch %s failed", name, attempt + 1)
                try:
                    await self.effects.db(store.recording_fetch_failed, recording_id, f"{type(exc).__name__}: {exc}")
                except Exception:
                    logger.warning("recording %s: its error could not be recorded either", name)
                continue
            if stored:
                return True
        return False

    async def _fetch_once(self, recording_id, name):
        with tempfile.TemporaryFile() as spool:
            size = await self.ari.stored_recording_file(name, spool)
            seconds = await asyncio.to_thread(_repair_wav, spool, size)
            spool.seek(0)
            file_name = await asyncio.to_thread(
                default_storage.save, f"recordings/{time.strftime('%Y/%m', time.gmtime())}/{name}.wav", File(spool)
            )
        try:
            await self.effects.db(store.recording_stored, recording_id, file_name, size, seconds)
        except BaseException:
            await asyncio.to_thread(default_storage.delete, file_name)  # no copy the database does not know of
            raise
        try:
            await self.ari.delete_stored_recording(name)
        except AriError as exc:  # the site has its copy: a leftover on Asterisk is only disk space
            logger.warning("recording %s: stored, but not deleted on Asterisk: %s", name, exc)
        logger.info("recording %s: stored as %s (%s bytes)", name, file_name, size)
        return True

    async def _adopt(self, conference_id, name):
        stamp = rules.recording_room(self.app_name, name)
        started_at = None
        if stamp is not None:
            with contextlib.suppress(ValueError):
                started_at = datetime.datetime.strptime(stamp[1], "%Y%m%d-%H%M%S").replace(tzinfo=datetime.UTC)
        logger.warning("conference %s: recording %s was not known to the site: adopted", conference_id, name)
        await self.effects.db(store.recording_adopted, conference_id, name, started_at)

    async def adopt_stored_recordings(self):
        """Files Asterisk holds of recordings this application made that the site has no row of (the worker
        that started them died before writing one, and they ended while none ran): adopted and fetched."""
        try:
            listed = await self.ari.stored_recordings()
        except AriError as exc:
            logger.warning("server %s: stored recordings not listed: %s", self.server_id, exc)
            return
        rooms = {}
        for item in listed if isinstance(listed, list) else ():
            name = item.get("name") if isinstance(item, dict) else None
            found = rules.recording_room(self.app_name, name)
            if found is not None and item.get("format") == "wav":
                rooms[name] = found[0]
        if not rooms:
            return
        for name, conference_id in (await self.effects.db(store.unknown_recordings, self.server_id, rooms)).items():
            await self._adopt(conference_id, name)
            await self._finished_meanwhile(conference_id, name)

    async def resync_recordings(self):
        """After a (re)connect: recordings still live on Asterisk go on; ones that ended meanwhile are
        finished (Asterisk kept their files) and fetched, as are ones a previous fetch left behind."""
        for name, conference_id in await self.effects.db(store.live_recordings, self.server_id):
            try:
                await self.ari.live_recording(name)
            except AriNotFound:
                await self._finished_meanwhile(conference_id, name)
                continue
            room = self.state.rooms.get(conference_id)
            facts = await self.effects.db(store.recording_facts, conference_id)
            if room is not None and facts is not None:
                room.recording, room.announcement = name, facts[1]
        await self.adopt_stored_recordings()
        for recording_id, name, _conference_id in await self.effects.db(store.recordings_to_fetch, self.server_id):
            self.fetch_later(recording_id, name)

    async def recording_on_join(self, conference_id, call):
        """A caller entering a room: it hears that the room is recorded; the first caller of an ``always``
        room starts the recording."""
        room = self.state.rooms.get(conference_id)
        if room is not None and room.recording and room.announcement:
            try:
                await self.effects.play(call.channel_id, room.announcement)
            except AriError as exc:
                logger.info("channel %s: recording announcement not played: %s", call.channel_id, exc)
            return
        if len(self.state.participants_in_bridge(conference_id)) == 1:  # the first caller in
            await self.keep_recording(conference_id)

    # --- resync -----------------------------------------------------------------------

    async def resync(self):
        """Reconcile the database with Asterisk's bridges and channels after a (re)connect.

        The plan comes from rules.resync_plan. Callers found in a room's bridge
        that the database does not know are recorded with the role of their
        CONFERENCE_ROLE, never their Stasis() arguments; callers still in the
        application outside any bridge go through ``admit`` again.
        """
        channels = {channel["id"]: channel for channel in await self.ari.channels()}
        bridges = await self.ari.bridges()
        present, conference_ids, known, waiting = await self.effects.db(store.resync_facts, self.server_id, channels)
        busy = {call.channel_id for call in self.state.calls.values() if call.phase in ON_THE_WAY_IN}
        leaving = {call.channel_id for call in self.state.calls.values() if call.hangup_after}
        plan = rules.resync_plan(
            app_name=self.app_name,
            channels=channels,
            bridges=bridges,
            present=present,
            conference_ids=conference_ids,
            known_channels=known,
            busy_channels=busy | leaving,
            waiting=waiting,
        )
        await self.effects.db(store.resync_apply, plan)

        added = 0
        for conference_id, channel in [*plan.unknown, *plan.entered]:
            try:
                role = await self.caller_role(channel)
            except AriNotFound:
                continue  # hung up meanwhile
            await self.effects.db(store.record_join, conference_id, channel, role)  # a waiting one: now present
            try:
                await self.effects.talk_detect(channel["id"])
            except AriNotFound:
                pass
            added += 1

        # The worker's state, rebuilt: the database's present callers, Asterisk's bridges.
        kept = {
            channel_id: call
            for channel_id, call in self.state.calls.items()
            if channel_id in channels and call.phase != Phase.PRESENT
        }
        self.state.calls = kept
        for channel_id, conference_id, participant_id, moh, role in await self.effects.db(
            store.present_calls, self.server_id
        ):
            self.state.calls[channel_id] = Call(
                channel_id, conference_id, Phase.PRESENT, role=role, participant_id=participant_id, moh=moh
            )
        still_waiting = {row.channel_id for row in plan.waiting}
        for channel_id, conference_id, participant_id, waiting_for, role, moh_class in await self.effects.db(
            store.waiting_calls, self.server_id
        ):
            if channel_id not in still_waiting:
                continue
            call = self.state.calls.get(channel_id)
            if call is None or call.phase != Phase.WAITING:
                call = self.state.calls[channel_id] = Call(channel_id, conference_id, Phase.WAITING, role=role)
                try:
                    await self.ari.start_moh(channel_id, moh_class or "default")  # it may have stopped meanwhile
                except AriNotFound:
                    pass
            call.participant_id, call.waiting_for = participant_id, waiting_for
        self.state.rooms = {
            conference_id: Room(conference_id, plan.bridge_ids[conference_id], channels=members)
            for conference_id, members in plan.rooms.items()
        }
        for bridge_id in plan.remove_bridges:
            self.music.forget(bridge_id)
            await self.effects.remove_bridge(bridge_id)
            self.state.rooms.pop(self.conference_id_of_bridge(bridge_id), None)
        for conference_id, room in list(self.state.rooms.items()):
            # What each bridge plays is not known after a reconnect (Asterisk may have restarted): asked afresh.
            self.music.forget(room.bridge_id)
            await self.apply_moh(conference_id)

        # The leader's rules for what happened while the worker was away: a leader found in its room lets
        # in those waiting for it; a leader gone (lost) is a leader who left.
        for conference_id in {call.conference_id for call in self.state.calls.values() if call.phase == Phase.WAITING}:
            if self.leader_in(conference_id):
                await self.open_room(conference_id)
        lost = set(plan.lost)
        left_by_leader = {row.conference_id for row in present if row.participant_id in lost and row.role == ADMIN}
        for conference_id in left_by_leader:
            await self.leader_left(conference_id)

        await self.resync_recordings()
        await self.resync_invites(channels)

        readmitted = 0
        for channel, args in plan.readmit:
            try:
                await self.admit(channel, args)  # the same rules as at StasisStart
            except AriNotFound:
                self.state.forget(channel["id"])
                continue  # hung up meanwhile
            readmitted += 1
        logger.info(
            "server %s: resync done: %s rooms with callers, %s waiting, %s lost, %s added, %s re-admitted",
            self.server_id,
            len(self.state.rooms),
            len(plan.waiting),
            len(plan.lost),
            added,
            readmitted,
        )


def _repair_wav(handle, size):
    """Fill in the sizes of a WAV file Asterisk never closed (rules.wav_repair); the seconds it holds, or
    None when it is no WAV of the kind Asterisk writes (then it is stored as it came)."""
    handle.seek(0)
    repair = rules.wav_repair(handle.read(rules.WAV_HEAD), size)
    if repair is None:
        return None
    fixes, seconds = repair
    for offset, value in fixes:
        handle.seek(offset)
        handle.write(value.to_bytes(4, "little"))
    if fixes:
        logger.warning("a recording's WAV header said %s; its sizes were filled in (%.1f s)", "0 bytes", seconds)
    return seconds
