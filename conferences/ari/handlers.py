"""What the worker does with each ARI event and each moderation request.

``ConferenceApp`` turns Asterisk into conference rooms for one server: it
admits callers (room lookup, lock, capacity, PIN), keeps one mixing bridge per
room, follows joins, leaves and talking, plays music on hold to a lone
participant and carries out moderation. State changes go through
``conferences.services``; this module decides, calls ARI and translates
errors. Events are processed one at a time, in the order Asterisk sent them;
timers come back as synthetic events through the same queue.

Nothing a caller dials can make an admin. The dialplan contract is
``Stasis(<app>,<room number>)``: one argument, ASCII digits; anything else
(a SIP user part may contain ``,``, so ``100,admin`` would arrive as two
arguments through a dialplan that passes ``${EXTEN}`` unfiltered) is refused
with ``conf-invalid``. The admin role comes only from the channel variable
``CONFERENCE_ROLE=admin``, which trusted dialplan sets: read from the
``channelvars`` of the channel JSON (``channelvars = CONFERENCE_ROLE`` in
``ari.conf``), else asked with ``GET /channels/{id}/variable``.
"""

import logging
import re
from dataclasses import dataclass, field

from channels.db import database_sync_to_async
from django.db import InterfaceError, OperationalError

from conferences import broadcast, services
from conferences.ari import pin_throttle
from conferences.ari.client import AriError, AriNotFound
from conferences.models import Conference, ConferenceEvent, Participant

logger = logging.getLogger(__name__)

db = database_sync_to_async


async def call_service(func, /, **kwargs):
    """Run a service function in the database thread, then send what it broadcast from here."""

    def run():
        with broadcast.collecting() as outbox:
            return func(**kwargs), list(outbox)

    result, outbox = await db(run)()
    await broadcast.send_collected(outbox)
    return result


# Channels Asterisk itself puts into bridges: never participants.
HELPER_CHANNEL = re.compile(r"^(Announcer|Recorder|Snoop)/")

PIN_TRIES = 3  # per call; across calls, see pin_throttle
PIN_FIRST_TIMEOUT = 12.0  # seconds to start typing after the prompt began
PIN_DIGIT_TIMEOUT = 6.0  # seconds between digits
PROMPT_HANGUP_TIMEOUT = 15.0  # hang up even when PlaybackFinished never comes
MAX_PIN_DIGITS = 32
MAX_ROOM_DIGITS = 32  # Conference.number's max_length
ROLE_VARIABLE = "CONFERENCE_ROLE"  # set to "admin" by trusted dialplan only


class DatabaseUnavailable(Exception):
    """The database could not be reached or was locked: the same event must be tried again."""


TRANSIENT_DB_ERRORS = (OperationalError, InterfaceError)


class Refusal(services.ServiceError):
    """A moderation request that cannot be done; the message goes back to the requester."""


@dataclass
class Admission:
    """A caller on the way in: prompts played, PIN digits typed so far."""

    channel_id: str
    conference_id: int
    role: str
    caller_name: str = ""
    caller_number: str = ""
    digits: str = ""
    tries: int = 0
    attempt: int = 0
    paused: bool = False  # waiting out a PIN pause: digits are ignored
    admitted: bool = False


@dataclass
class PresentCaller:
    """A participant in a room's bridge, as the worker last recorded it."""

    conference_id: int
    participant_id: int
    moh: bool = False


@dataclass
class RoomState:
    """What the worker knows of a room's bridge between events."""

    bridge_id: str
    moh: bool | None = None  # None: unknown (after a reconnect)
    channels: list[str] = field(default_factory=list)


def room_bridge_id(app_name, conference_id):
    """The deterministic bridge id of a room: a restarted worker finds its bridges."""
    return f"{app_name}-conference-{conference_id}"


def is_helper_channel(channel):
    return bool(HELPER_CHANNEL.match(channel.get("name", "")))


def stasis_args(channel, app_name):
    """The Stasis() arguments of a channel that sits in ``app_name``, from its dialplan snapshot."""
    dialplan = channel.get("dialplan") or {}
    if (dialplan.get("app_name") or "").lower() != "stasis":
        return None
    parts = [part.strip() for part in (dialplan.get("app_data") or "").split(",")]
    if not parts or parts[0] != app_name:
        return None
    return parts[1:]


def parse_room_args(args):
    """``(room number, problem)`` from the arguments of ``Stasis(app,<room number>)``.

    ``problem`` is None for exactly one argument of 1 to ``MAX_ROOM_DIGITS``
    ASCII digits. Otherwise it says why the call is refused; ``number`` is
    then still the first argument when that is a well-formed room number (so
    the refusal of ``100,admin`` is recorded in room 100), else None.
    """
    first = args[0] if args else None
    digits = isinstance(first, str) and first.isascii() and first.isdigit()
    number = first if digits and len(first) <= MAX_ROOM_DIGITS else None
    if first is None:
        return None, "no room number"
    if len(args) > 1:
        return number, "extra arguments"
    if not digits:
        return None, "room number not digits"
    if number is None:
        return None, "room number too long"
    return number, None


def role_from_value(value):
    """The role a CONFERENCE_ROLE value grants: admin for ``admin``, else participant."""
    if isinstance(value, str) and value.strip().lower() == "admin":
        return Participant.Role.ADMIN
    return Participant.Role.PARTICIPANT


def role_from_channelvars(channel):
    """The role from the channel JSON's ``channelvars``; None when they do not carry CONFERENCE_ROLE."""
    channelvars = channel.get("channelvars")
    if not isinstance(channelvars, dict) or ROLE_VARIABLE not in channelvars:
        return None  # ari.conf without "channelvars = CONFERENCE_ROLE": ask Asterisk
    return role_from_value(channelvars[ROLE_VARIABLE])


def entry_refusal(*, role, locked, max_participants, taken):
    """Why a caller may not enter a room right now (``locked``, ``full``), or None.

    ``taken``: seats in use, present participants plus callers already on
    their way into the bridge. Admins pass a lock and a full room.
    """
    if role == Participant.Role.ADMIN:
        return None
    if locked:
        return "locked"
    if max_participants and taken >= max_participants:
        return "full"
    return None


# --- database helpers (run in a thread) -----------------------------------------------


def _find_conference(server_id, number):
    return Conference.objects.filter(server_id=server_id, number=number).first()


def _conference(conference_id):
    return Conference.objects.filter(pk=conference_id).first()


def _present_count(conference_id):
    return Participant.objects.filter(conference_id=conference_id, left_at__isnull=True).count()


def _participant_by_channel(server_id, channel_id):
    return Participant.objects.filter(server_id=server_id, channel_id=channel_id).select_related("conference").first()


def _present_participant(conference_id, participant_id):
    return Participant.objects.filter(pk=participant_id, conference_id=conference_id, left_at__isnull=True).first()


def _participant_in_conference(conference_id, participant_id):
    return Participant.objects.filter(pk=participant_id, conference_id=conference_id).first()


def _present_participants(conference_id):
    return list(Participant.objects.filter(conference_id=conference_id, left_at__isnull=True))


def _present_on_server(server_id):
    return list(Participant.objects.filter(server_id=server_id, left_at__isnull=True).select_related("conference"))


def _conferences_by_id(server_id):
    return {conference.pk: conference for conference in Conference.objects.filter(server_id=server_id)}


def _refused(conference, reason, caller_number):
    services.conference_record(
        conference=conference,
        kind=ConferenceEvent.Kind.REFUSED,
        details={"reason": reason, "caller_number": (caller_number or "")[:80]},
    )


def _user(user_id):
    from django.contrib.auth import get_user_model

    if user_id is None:
        return None
    return get_user_model().objects.filter(pk=user_id).first()


class ConferenceApp:
    """The conference logic of one Asterisk server's Stasis application."""

    def __init__(self, *, server_id, app_name, ari, schedule):
        self.server_id = server_id
        self.app_name = app_name
        self.ari = ari
        # schedule(delay, event): process ``event`` after ``delay`` seconds, in queue order.
        self.schedule = schedule
        self.admissions: dict[str, Admission] = {}
        self.rooms: dict[int, RoomState] = {}
        self.after_playback: dict[str, str] = {}  # playback id -> channel to hang up
        self.kicking: dict[str, int | None] = {}  # channel id -> acting user id
        # Present participants' channels -> their room. Bridge snapshots also list
        # Asterisk's own Announcer channel (music on hold), whose events never reach
        # the application: only channels recorded here count as participants.
        self.present: dict[str, PresentCaller] = {}
        self._playback_counter = 0
        self.pin_first_timeout = PIN_FIRST_TIMEOUT
        self.pin_digit_timeout = PIN_DIGIT_TIMEOUT

    # --- names ------------------------------------------------------------------

    @property
    def bridge_prefix(self):
        return room_bridge_id(self.app_name, "")

    def bridge_id(self, conference_id):
        return room_bridge_id(self.app_name, conference_id)

    def conference_id_of_bridge(self, bridge_id):
        if not bridge_id or not bridge_id.startswith(self.bridge_prefix):
            return None
        rest = bridge_id[len(self.bridge_prefix) :]
        return int(rest) if rest.isdigit() else None

    def _playback_id(self, channel_id):
        self._playback_counter += 1
        return f"{self.app_name}-pb-{channel_id}-{self._playback_counter}"

    # --- dispatch ---------------------------------------------------------------

    async def process_event(self, event):
        """Handle one ARI (or synthetic) event; errors are logged, never raised."""
        kind = event.get("type", "")
        if event.get("application") not in (None, self.app_name):
            return
        handler = getattr(self, "on_" + kind, None)
        if handler is None:
            return
        try:
            await handler(event)
        except TRANSIENT_DB_ERRORS as exc:
            raise DatabaseUnavailable(str(exc)) from exc
        except AriNotFound as exc:
            logger.info("server %s: %s: object gone meanwhile (%s)", self.server_id, kind, exc)
        except AriError as exc:
            logger.warning("server %s: %s: ARI error: %s", self.server_id, kind, exc)
        except Exception:
            logger.exception("server %s: %s: handler failed; event skipped", self.server_id, kind)

    # --- admission --------------------------------------------------------------

    async def on_StasisStart(self, event):
        channel = event.get("channel") or {}
        channel_id = channel.get("id")
        if not channel_id or is_helper_channel(channel):
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
        if channel_id in self.admissions:
            return
        existing = await db(_participant_by_channel)(self.server_id, channel_id)
        if existing is not None:
            return
        caller = channel.get("caller") or {}
        caller_number = caller.get("number", "")
        args = [arg if isinstance(arg, str) else repr(arg) for arg in args]
        number, problem = parse_room_args(args)
        conference = await db(_find_conference)(self.server_id, number) if number else None
        if problem is not None:
            logger.warning(
                "server %s: channel %s refused: %s in Stasis arguments %r (caller %r)",
                self.server_id,
                channel_id,
                problem,
                [arg[:40] for arg in args[:4]],
                str(caller_number)[:40],
            )
            if conference is not None:
                await db(_refused)(conference, "invalid arguments", caller_number)
            await self.refuse(channel, "conf-invalid")
            return
        if conference is None:
            logger.info("server %s: channel %s refused: unknown room %r", self.server_id, channel_id, number)
            await self.refuse(channel, "conf-invalid")
            return
        role = await self.caller_role(channel)
        admission = Admission(
            channel_id=channel_id,
            conference_id=conference.pk,
            role=role,
            caller_name=caller.get("name", ""),
            caller_number=caller_number,
        )
        if await self.refuse_if_closed(admission, conference, channel):
            return
        self.admissions[channel_id] = admission
        if channel.get("state") != "Up":
            await self.ari.answer(channel_id)
        if conference.pin:
            await self.prompt_pin(admission)
            return
        await self.enter_bridge(admission, conference)

    async def caller_role(self, channel):
        """The channel's role: CONFERENCE_ROLE from its ``channelvars``, else asked of Asterisk."""
        role = role_from_channelvars(channel)
        if role is not None:
            return role
        try:
            value = await self.ari.get_variable(channel["id"], ROLE_VARIABLE)
        except AriNotFound:
            raise  # the channel is gone: a normal race, handled by the caller
        except AriError as exc:
            # Least privilege: an admin may be held back by a lock, nobody gains one.
            logger.warning(
                "server %s: channel %s: %s unreadable (%s); treated as a participant",
                self.server_id,
                channel["id"],
                ROLE_VARIABLE,
                exc,
            )
            return Participant.Role.PARTICIPANT
        return role_from_value(value)

    async def refuse_if_closed(self, admission, conference, channel=None):
        """Refuse (and record) a caller that a locked or full room keeps out; True when refused."""
        taken = await db(_present_count)(conference.pk) + self._admitting(conference.pk)
        reason = entry_refusal(
            role=admission.role, locked=conference.locked, max_participants=conference.max_participants, taken=taken
        )
        if reason is None:
            return False
        logger.info("conference %s: channel %s refused: room %s", conference.pk, admission.channel_id, reason)
        await db(_refused)(conference, reason, admission.caller_number)
        await self.refuse(channel or {"id": admission.channel_id, "state": "Up"}, "conf-locked")
        return True

    def _admitting(self, conference_id):
        return sum(1 for a in self.admissions.values() if a.conference_id == conference_id and a.admitted)

    async def refuse(self, channel, sound):
        """Play a prompt to a caller who may not enter, then hang up."""
        channel_id = channel["id"]
        self.admissions.pop(channel_id, None)
        try:
            if channel.get("state") != "Up":
                await self.ari.answer(channel_id)
            playback_id = self._playback_id(channel_id)
            self.after_playback[playback_id] = channel_id
            await self.ari.play(channel_id, f"sound:{sound}", playback_id)
            self.schedule(PROMPT_HANGUP_TIMEOUT, {"type": "_HangupTimeout", "channel_id": channel_id})
        except AriNotFound:
            return
        except AriError as exc:
            logger.warning(
                "server %s: channel %s: prompt %s failed (%s); hanging up", self.server_id, channel_id, sound, exc
            )
            await self._hangup(channel_id)

    async def _hangup(self, channel_id):
        try:
            await self.ari.hangup(channel_id)
        except AriNotFound:
            pass

    async def on_PlaybackFinished(self, event):
        playback = event.get("playback") or {}
        channel_id = self.after_playback.pop(playback.get("id"), None)
        if channel_id:
            await self._hangup(channel_id)

    async def on__HangupTimeout(self, event):
        channel_id = event["channel_id"]
        if channel_id in self.after_playback.values():
            for playback_id in [p for p, c in self.after_playback.items() if c == channel_id]:
                del self.after_playback[playback_id]
            await self._hangup(channel_id)

    async def prompt_pin(self, admission):
        """Ask for the PIN; after too many wrong PINs lately, first a pause (``pin_throttle``)."""
        admission.digits = ""
        admission.attempt += 1
        caller_failures, room_failures = await pin_throttle.failures(admission.conference_id, admission.caller_number)
        pause = pin_throttle.pause_for(caller_failures, room_failures)
        if not pause:
            await self._ask_pin(admission)
            return
        logger.info(
            "conference %s: channel %s: %s wrong PINs from this number, %s in the room lately; PIN prompt in %.0f s",
            admission.conference_id,
            admission.channel_id,
            caller_failures,
            room_failures,
            pause,
        )
        admission.paused = True
        await self.ari.play(
            admission.channel_id, f"sound:{pin_throttle.PIN_PAUSE_SOUND}", self._playback_id(admission.channel_id)
        )
        over = {"type": "_PinPauseOver", "channel_id": admission.channel_id, "attempt": admission.attempt}
        self.schedule(pause, over)

    async def _ask_pin(self, admission):
        admission.paused = False
        admission.digits = ""
        await self.ari.play(admission.channel_id, "sound:conf-getpin", self._playback_id(admission.channel_id))
        self.schedule(
            self.pin_first_timeout,
            {"type": "_PinTimeout", "channel_id": admission.channel_id, "attempt": admission.attempt, "digits": 0},
        )

    async def on__PinPauseOver(self, event):
        admission = self.admissions.get(event.get("channel_id"))
        if admission is None or admission.admitted or not admission.paused or admission.attempt != event.get("attempt"):
            return
        await self._ask_pin(admission)

    async def on_ChannelDtmfReceived(self, event):
        channel_id = (event.get("channel") or {}).get("id")
        admission = self.admissions.get(channel_id)
        if admission is None or admission.admitted or admission.paused:
            return
        digit = str(event.get("digit", ""))
        if digit == "#":
            await self.check_pin(admission)
            return
        if digit.isdigit() and len(admission.digits) < MAX_PIN_DIGITS:
            admission.digits += digit
            self.schedule(
                self.pin_digit_timeout,
                {
                    "type": "_PinTimeout",
                    "channel_id": channel_id,
                    "attempt": admission.attempt,
                    "digits": len(admission.digits),
                },
            )

    async def on__PinTimeout(self, event):
        admission = self.admissions.get(event.get("channel_id"))
        if admission is None or admission.admitted or admission.paused or admission.attempt != event.get("attempt"):
            return
        if len(admission.digits) != event.get("digits"):
            return  # a digit came meanwhile; its own timer counts
        await self.check_pin(admission)

    async def check_pin(self, admission):
        """Judge the digits typed: the right PIN enters (if the room is still open), a wrong one counts."""
        conference = await db(_conference)(admission.conference_id)
        if conference is None:
            logger.info("channel %s refused: its room was deleted during the PIN prompt", admission.channel_id)
            self.admissions.pop(admission.channel_id, None)
            await self.refuse({"id": admission.channel_id, "state": "Up"}, "conf-invalid")
            return
        if admission.digits == conference.pin:
            await pin_throttle.forget_caller(conference.pk, admission.caller_number)
            # The room may have been locked or filled while this caller typed.
            if await self.refuse_if_closed(admission, conference):
                return
            await self.enter_bridge(admission, conference)
            return
        admission.tries += 1
        if admission.digits:  # a timeout with nothing typed is no guess
            await pin_throttle.record_failure(conference.pk, admission.caller_number)
        logger.info(
            "conference %s: channel %s: wrong PIN (try %s of %s)",
            conference.pk,
            admission.channel_id,
            admission.tries,
            PIN_TRIES,
        )
        if admission.tries >= PIN_TRIES:
            logger.info("conference %s: channel %s refused: wrong PIN", conference.pk, admission.channel_id)
            await db(_refused)(conference, "wrong PIN", admission.caller_number)
            await self.refuse({"id": admission.channel_id, "state": "Up"}, "conf-invalidpin")
            return
        await self.ari.play(admission.channel_id, "sound:conf-invalidpin", self._playback_id(admission.channel_id))
        await self.prompt_pin(admission)

    async def enter_bridge(self, admission, conference):
        """Put an admitted caller into the room's bridge, with talk detection on."""
        admission.admitted = True
        room = await self.ensure_bridge(conference)
        try:
            await self.ari.set_variable(admission.channel_id, "TALK_DETECT(set)", "")
            await self.ari.add_channel(room.bridge_id, admission.channel_id)
        except AriError:
            self.admissions.pop(admission.channel_id, None)
            raise

    async def ensure_bridge(self, conference):
        """Create the room's mixing bridge, or reuse it when it exists (it outlives the app)."""
        room = self.rooms.get(conference.pk)
        if room is not None:
            return room
        bridge_id = self.bridge_id(conference.pk)
        bridge = await self.ari.create_bridge(bridge_id, f"conference {conference.number}")
        room = RoomState(bridge_id=bridge_id, channels=list((bridge or {}).get("channels") or []))
        self.rooms[conference.pk] = room
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
        channel_id = channel["id"]
        room = self.rooms.setdefault(conference_id, RoomState(bridge_id=bridge["id"]))
        room.channels = list(bridge.get("channels") or [])
        if is_helper_channel(channel):
            pass
        elif entered:
            await self._joined(conference_id, channel)
        else:
            await self._left(channel_id)
        await self.apply_moh(conference_id)

    async def _joined(self, conference_id, channel):
        channel_id = channel["id"]
        admission = self.admissions.pop(channel_id, None)
        conference = await db(_conference)(conference_id)
        if conference is None:
            return
        role = admission.role if admission else Participant.Role.PARTICIPANT
        participant = await self._record_join(conference, channel, role)
        if participant.left_at is None and participant.conference_id == conference_id:
            self.present[channel_id] = PresentCaller(conference_id, participant.pk, participant.moh)

    async def _record_join(self, conference, channel, role):
        """The participant row (and broadcast) of a channel found in the room's bridge."""
        caller = channel.get("caller") or {}
        participant, _created = await call_service(
            services.participant_join,
            conference=conference,
            channel_id=channel["id"],
            caller_number=caller.get("number", ""),
            caller_name=caller.get("name", ""),
            role=role,
        )
        return participant

    async def _left(self, channel_id, reason=None):
        self.present.pop(channel_id, None)
        participant = await db(_participant_by_channel)(self.server_id, channel_id)
        if participant is None or participant.left_at is not None:
            return
        actor_id = None
        if reason is None:
            if channel_id in self.kicking:
                reason = Participant.LeftReason.KICKED
                actor_id = self.kicking.pop(channel_id)
            else:
                reason = Participant.LeftReason.HANGUP
        actor = await db(_user)(actor_id)
        await call_service(services.participant_leave, participant=participant, reason=reason, actor=actor)

    async def on_StasisEnd(self, event):
        channel_id = (event.get("channel") or {}).get("id")
        if not channel_id:
            return
        self.admissions.pop(channel_id, None)
        # Normally ChannelLeftBridge came first; this covers a channel that left the
        # application without leaving the bridge event behind.
        await self._left(channel_id)

    async def on_ChannelDestroyed(self, event):
        channel_id = (event.get("channel") or {}).get("id")
        self.admissions.pop(channel_id, None)
        self.kicking.pop(channel_id, None)

    async def on_ChannelTalkingStarted(self, event):
        await self._talking(event, True)

    async def on_ChannelTalkingFinished(self, event):
        await self._talking(event, False)

    async def _talking(self, event, talking):
        caller = self.present.get((event.get("channel") or {}).get("id"))
        if caller is None:
            return
        await call_service(
            services.participant_update, participant=Participant(pk=caller.participant_id), talking=talking
        )

    async def on_BridgeDestroyed(self, event):
        conference_id = self.conference_id_of_bridge((event.get("bridge") or {}).get("id"))
        if conference_id is not None:
            self.rooms.pop(conference_id, None)

    # --- music on hold --------------------------------------------------------------

    def participant_channels(self, conference_id, room):
        """The room's participants that are in its bridge right now."""
        return [
            channel_id
            for channel_id in room.channels
            if channel_id in self.present and self.present[channel_id].conference_id == conference_id
        ]

    async def apply_moh(self, conference_id):
        """Music on hold when exactly one participant is in the bridge, derived from the bridge itself."""
        room = self.rooms.get(conference_id)
        if room is None:
            return
        present = self.participant_channels(conference_id, room)
        want = len(present) == 1
        if want and room.moh is not True:
            conference = await db(_conference)(conference_id)
            if conference is None:
                return
            await self.ari.start_bridge_moh(room.bridge_id, conference.moh_class or "default")
            room.moh = True
        elif not want and room.moh is not False:
            try:
                await self.ari.stop_bridge_moh(room.bridge_id)
            except AriError as exc:
                if exc.status not in (404, 409):
                    raise
            room.moh = False
        # The moh flag of each present participant follows; only changes touch the database.
        for channel_id, caller in list(self.present.items()):
            if caller.conference_id != conference_id:
                continue
            hears = want and channel_id in present
            if caller.moh != hears:
                await call_service(
                    services.participant_update, participant=Participant(pk=caller.participant_id), moh=hears
                )
                caller.moh = hears

    # --- moderation -------------------------------------------------------------------

    async def handle_command(self, command):
        """Carry out one moderation request; returns ``(ok, error message)``."""
        action = command.get("action")
        handler = getattr(self, "do_" + str(action), None)
        if handler is None:
            return False, "unknown action"
        try:
            conference = await db(_conference)(command.get("conference_id"))
            if conference is None or conference.server_id != self.server_id:
                return False, "no such room"
            actor = await db(_user)(command.get("actor_id"))
            await handler(conference, command, actor)
        except TRANSIENT_DB_ERRORS:
            logger.warning("server %s: %s: database unavailable", self.server_id, action)
            return False, "the database is unavailable; try again"
        except Refusal as exc:
            return False, str(exc)
        except AriNotFound:
            return False, "the caller has already left"
        except AriError as exc:
            logger.warning("conference %s: %s failed: %s", conference.pk, action, exc)
            return False, "Asterisk refused the request"
        return True, None

    async def _target(self, conference, command):
        participant_id = command.get("participant_id")
        if not isinstance(participant_id, int) or isinstance(participant_id, bool):
            raise Refusal("no such participant in this room")
        participant = await db(_participant_in_conference)(conference.pk, participant_id)
        if participant is None:
            raise Refusal("no such participant in this room")
        if participant.left_at is not None:
            raise Refusal("the caller has already left")
        return participant

    async def do_mute(self, conference, command, actor):
        participant = await self._target(conference, command)
        await self.ari.mute(participant.channel_id, "in")
        await call_service(services.participant_update, participant=participant, muted=True, actor=actor)

    async def do_unmute(self, conference, command, actor):
        participant = await self._target(conference, command)
        await self.ari.unmute(participant.channel_id, "in")
        await call_service(services.participant_update, participant=participant, muted=False, actor=actor)

    async def do_kick(self, conference, command, actor):
        participant = await self._target(conference, command)
        room = self.rooms.get(conference.pk)
        bridge_id = room.bridge_id if room else self.bridge_id(conference.pk)
        self.kicking[participant.channel_id] = actor.pk if actor else None
        try:
            await self.ari.remove_channel(bridge_id, participant.channel_id)
        except AriError:
            self.kicking.pop(participant.channel_id, None)
            raise
        await self.refuse({"id": participant.channel_id, "state": "Up"}, "conf-kicked")

    async def _set_all_muted(self, conference, actor, muted):
        failed = 0
        for participant in await db(_present_participants)(conference.pk):
            if participant.role == Participant.Role.ADMIN or participant.muted == muted:
                continue
            try:
                if muted:
                    await self.ari.mute(participant.channel_id, "in")
                else:
                    await self.ari.unmute(participant.channel_id, "in")
            except AriError as exc:
                failed += 1
                logger.info("conference %s: participant %s: %s", conference.pk, participant.pk, exc)
                continue
            await call_service(
                services.participant_update, participant=participant, muted=muted, actor=actor, audit=False
            )
        kind = ConferenceEvent.Kind.MUTED_ALL if muted else ConferenceEvent.Kind.UNMUTED_ALL
        await call_service(services.conference_record, conference=conference, kind=kind, actor=actor)
        if failed:
            raise Refusal(f"{failed} caller(s) could not be changed")

    async def do_mute_all(self, conference, command, actor):
        await self._set_all_muted(conference, actor, True)

    async def do_unmute_all(self, conference, command, actor):
        await self._set_all_muted(conference, actor, False)

    async def do_lock(self, conference, command, actor):
        await call_service(services.conference_set_locked, conference=conference, locked=True, actor=actor)

    async def do_unlock(self, conference, command, actor):
        await call_service(services.conference_set_locked, conference=conference, locked=False, actor=actor)

    # --- resync -----------------------------------------------------------------------

    async def resync(self):
        """Reconcile the database with Asterisk's bridges and channels after a (re)connect.

        Callers found in a room's bridge that the database does not know are
        recorded with the role of their CONFERENCE_ROLE; callers still in the
        application outside any bridge go through ``admit`` again.
        """
        channels = {channel["id"]: channel for channel in await self.ari.channels()}
        bridges = [bridge for bridge in await self.ari.bridges() if self.conference_id_of_bridge(bridge["id"])]
        conferences = await db(_conferences_by_id)(self.server_id)

        self.rooms = {}
        in_bridge = {}  # channel id -> conference id, participants only
        for bridge in bridges:
            conference_id = self.conference_id_of_bridge(bridge["id"])
            members = [cid for cid in bridge.get("channels") or [] if cid in channels]
            self.rooms[conference_id] = RoomState(bridge_id=bridge["id"], channels=members)
            for channel_id in members:
                if not is_helper_channel(channels[channel_id]):
                    in_bridge[channel_id] = conference_id

        # Participants whose channel is no longer in their room's bridge were lost meanwhile.
        lost = 0
        for participant in await db(_present_on_server)(self.server_id):
            if in_bridge.get(participant.channel_id) != participant.conference_id:
                self.kicking.pop(participant.channel_id, None)
                await call_service(
                    services.participant_leave, participant=participant, reason=Participant.LeftReason.LOST
                )
                lost += 1
            elif participant.talking:
                await call_service(services.participant_update, participant=participant, talking=False)

        # Callers in a room's bridge that the database does not know.
        added = 0
        for channel_id, conference_id in in_bridge.items():
            conference = conferences.get(conference_id)
            if conference is None:
                continue
            known = await db(_participant_by_channel)(self.server_id, channel_id)
            if known is not None:
                continue
            channel = channels[channel_id]
            # The worker put it there before the reconnect; its role is its CONFERENCE_ROLE,
            # never its Stasis() arguments.
            try:
                role = await self.caller_role(channel)
            except AriNotFound:
                continue  # hung up meanwhile
            self.admissions.pop(channel_id, None)
            await self._record_join(conference, channel, role)
            try:
                await self.ari.set_variable(channel_id, "TALK_DETECT(set)", "")
            except AriNotFound:
                pass
            added += 1

        self.present = {
            p.channel_id: PresentCaller(p.conference_id, p.pk, p.moh)
            for p in await db(_present_on_server)(self.server_id)
        }

        # Music on hold by the rule; empty leftover bridges go.
        for conference_id, room in list(self.rooms.items()):
            if conference_id not in conferences or not self.participant_channels(conference_id, room):
                await self._remove_bridge(room)
                self.rooms.pop(conference_id, None)
                continue
            room.moh = None  # whatever played before, apply the rule afresh
            await self.apply_moh(conference_id)

        # Forget what refers to channels that are gone.
        for registry in (self.admissions, self.kicking):
            for channel_id in [cid for cid in registry if cid not in channels]:
                del registry[channel_id]

        # Callers left in the application outside any bridge (their admission was
        # cut short by the disconnect) go through admission again.
        readmitted = 0
        for channel_id, channel in channels.items():
            args = stasis_args(channel, self.app_name)
            if args is None or channel_id in in_bridge or channel_id in self.admissions or is_helper_channel(channel):
                continue
            if channel_id in self.after_playback.values():
                continue
            try:
                await self.admit(channel, args)  # the same rules as at StasisStart
            except AriNotFound:
                continue  # hung up meanwhile
            readmitted += 1
        logger.info(
            "server %s: resync done: %s rooms with callers, %s lost, %s added, %s re-admitted",
            self.server_id,
            len(self.rooms),
            lost,
            added,
            readmitted,
        )

    async def _remove_bridge(self, room):
        try:
            await self.ari.destroy_bridge(room.bridge_id)
        except AriNotFound:
            pass
