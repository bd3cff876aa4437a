"""The conference rules of the worker, as plain functions: no ARI, no database, no asyncio.

Each takes facts and returns a decision; conferences/ari/handlers.py gathers
the facts and carries the decisions out (conferences/ari/effects.py). Tested
with tables of cases in tests/test_rules.py.

- Names: the deterministic bridge id of a room, and back.
- Admission: which room a ``Stasis()`` call asks for, the caller's role, and
  whether the room lets it in (unknown, locked, full, PIN, admin).
- The PIN: what the digits typed lead to.
- Music on hold: who should hear it.
- Resync: what must change when Asterisk's bridges and channels and the
  database's present callers disagree after a reconnect.
"""

import math
import re
from dataclasses import dataclass, field
from enum import StrEnum

# Channels Asterisk itself puts into bridges: never participants.
HELPER_CHANNEL = re.compile(r"^(Announcer|Recorder|Snoop)/")
MAX_ROOM_DIGITS = 32  # Conference.number's max_length
ROLE_VARIABLE = "CONFERENCE_ROLE"  # set to "admin" by trusted dialplan only
ADMIN = "admin"
PARTICIPANT = "participant"


# --- names ------------------------------------------------------------------------------------


def room_bridge_id(app_name, conference_id):
    """The deterministic bridge id of a room: a restarted worker finds its bridges."""
    return f"{app_name}-conference-{conference_id}"


def conference_id_of_bridge(app_name, bridge_id):
    """The room of one of ``app_name``'s room bridges, or None for any other bridge id."""
    prefix = room_bridge_id(app_name, "")
    if not isinstance(bridge_id, str) or not bridge_id.startswith(prefix):
        return None
    rest = bridge_id[len(prefix) :]
    return int(rest) if rest.isascii() and rest.isdigit() else None


def is_helper_channel(channel):
    return bool(HELPER_CHANNEL.match(str(channel.get("name") or "")))


def stasis_args(channel, app_name):
    """The Stasis() arguments of a channel that sits in ``app_name``, from its dialplan snapshot."""
    dialplan = channel.get("dialplan") or {}
    if (dialplan.get("app_name") or "").lower() != "stasis":
        return None
    parts = [part.strip() for part in (dialplan.get("app_data") or "").split(",")]
    if not parts or parts[0] != app_name:
        return None
    return parts[1:]


# --- admission ----------------------------------------------------------------------------------


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
    if isinstance(value, str) and value.strip().lower() == ADMIN:
        return ADMIN
    return PARTICIPANT


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
    if role == ADMIN:
        return None
    if locked:
        return "locked"
    if max_participants and taken >= max_participants:
        return "full"
    return None


@dataclass(frozen=True)
class RoomFacts:
    """What admission needs to know of a room."""

    conference_id: int
    number: str
    locked: bool
    max_participants: int | None
    pin: str
    lobby: bool = False
    wait_for_leader: bool = False
    when_leader_leaves: str = "stay"
    moh_class: str = "default"
    waiting: int = 0  # callers waiting in the room (the lobby, or for the leader)
    leader_waiting: int = 0  # callers waiting for the leader right now (the worker's count)


class Verdict(StrEnum):
    REFUSE = "refuse"
    ASK_PIN = "ask_pin"
    ENTER = "enter"


@dataclass(frozen=True)
class Admission:
    """The decision for a caller entering the application: a verdict, and for a refusal its prompt and reason."""

    verdict: Verdict
    sound: str = ""
    reason: str = ""  # recorded in the room's timeline when there is a room; "" records nothing

    @classmethod
    def refuse(cls, sound, reason=""):
        return cls(Verdict.REFUSE, sound, reason)


ENTER = Admission(Verdict.ENTER)
ASK_PIN = Admission(Verdict.ASK_PIN)

# The prompt each refusal plays (Asterisk's core sounds).
REFUSAL_SOUNDS = {
    "locked": "conf-locked",
    "full": "conf-locked",
    "wrong PIN": "conf-invalidpin",
    "too many waiting": "conf-locked",
}


def admission(*, problem, room, role, taken):
    """What happens to a caller who entered the application.

    ``problem``: what parse_room_args found wrong with the arguments (None:
    fine); ``room``: the RoomFacts of the room asked for, None when there is
    no such room; ``taken``: seats in use (see entry_refusal).
    """
    if problem is not None:
        return Admission.refuse("conf-invalid", "invalid arguments" if room is not None else "")
    if room is None:
        return Admission.refuse("conf-invalid")
    closed = entry_refusal(role=role, locked=room.locked, max_participants=room.max_participants, taken=taken)
    if closed is not None:
        return Admission.refuse(REFUSAL_SOUNDS[closed], closed)
    return ASK_PIN if room.pin else ENTER


def after_pin(*, room, role, taken):
    """What happens once a caller typed the right PIN: the room may have closed meanwhile."""
    if room is None:
        return Admission.refuse("conf-invalid")
    closed = entry_refusal(role=role, locked=room.locked, max_participants=room.max_participants, taken=taken)
    if closed is not None:
        return Admission.refuse(REFUSAL_SOUNDS[closed], closed)
    return ENTER


# --- the lobby and the leader ---------------------------------------------------------------------

LOBBY = "lobby"  # waits for a moderator to admit it
LEADER = "leader"  # waits for a leader (an admin caller) or a moderator's open_room
STAY, END, WAIT = "stay", "end", "wait"  # Conference.when_leader_leaves
MAX_WAITING = 100  # callers waiting in one room at most: a flood of calls into a lobby is turned away
DENIED_SOUNDS = ("im-sorry", "goodbye")  # to a caller turned away from the lobby, before the hang-up
LEADER_LEFT_SOUND = "conf-leaderhasleft"  # to the others when the room ends with its leader


def waits_for(*, room, role, started, from_lobby=False):
    """Where a caller who may enter goes: ``""`` (into the room), ``LOBBY`` or ``LEADER``.

    PIN first, then the lobby, then the wait for the leader. ``started``: the
    room has callers in it (or on their way in). Admin callers skip both; a
    room whose callers wait for the leader keeps later callers waiting too,
    whether it waits from the start (``wait_for_leader``) or since its
    leader left (``when_leader_leaves: wait``).
    """
    if role == ADMIN:
        return ""
    if room.lobby and not from_lobby:
        return LOBBY
    if room.leader_waiting or (room.wait_for_leader and not started):
        return LEADER
    return ""


def when_leader_left(*, when, leaders_left, others):
    """What the room does once a leader left: ``STAY``, ``END`` or ``WAIT``.

    Only the last leader's leaving counts, and only when callers remain.
    """
    if leaders_left or not others or when not in (END, WAIT):
        return STAY
    return when


# --- the PIN ---------------------------------------------------------------------------------------


class PinResult(StrEnum):
    RIGHT = "right"
    RETRY = "retry"  # wrong: play conf-invalidpin and ask again
    REFUSE = "refuse"  # wrong, and the last try of this call


def pin_result(*, digits, pin, tries, max_tries):
    """The outcome of the digits typed; ``tries``: wrong tries of this call before this one."""
    if digits == pin:
        return PinResult.RIGHT
    return PinResult.REFUSE if tries + 1 >= max_tries else PinResult.RETRY


# --- music on hold ---------------------------------------------------------------------------------


# --- the keypad during the call -------------------------------------------------------------------

HAND = "hand"  # raise or lower the hand
SELF_MUTE = "self_mute"  # mute or unmute oneself
KEYPAD_ACTIONS = (HAND, SELF_MUTE)  # in the order of Conference.keypad_hand, keypad_mute
KEYPAD_KEYS = frozenset("0123456789*#")
KEY_GAP_SECONDS = 3.0  # keys further apart than this start a new sequence
MAX_TYPED = 8  # keys kept while a sequence may still be under way


KEYPAD_RATE = 1.0  # keypad actions a second per call, after a burst of
KEYPAD_BURST = 3


def keypad_press(typed, key, sequences, gap):
    """A key pressed in the room: ``(keys kept, action or None)``.

    ``typed`` are the keys since the last action (``gap`` seconds before this
    one); ``sequences`` maps an action to its keys. An action's keys at the
    end of what was typed do it, and start afresh. Anything that is not a key
    of a telephone keypad is ignored.
    """
    if key not in KEYPAD_KEYS:
        return typed, None
    if gap > KEY_GAP_SECONDS:
        typed = ""
    typed = (typed + key)[-MAX_TYPED:]
    for action, keys in sequences.items():
        if keys and typed.endswith(keys):
            return "", action
    return typed, None


class SelfMute(StrEnum):
    MUTE = "mute"
    UNMUTE = "unmute"
    REFUSE = "refuse"  # a moderator muted this caller: only a moderator unmutes


def self_mute(*, muted, mute_source):
    """What the self-mute keys do for a caller in this state."""
    if not muted:
        return SelfMute.MUTE
    if mute_source == "self":
        return SelfMute.UNMUTE
    return SelfMute.REFUSE


# What a caller hears after a key (played to that caller only).
KEYPAD_SOUNDS = {
    "hand_raised": ("beep",),
    "hand_lowered": ("beep", "beep"),
    SelfMute.MUTE: ("conf-muted",),
    SelfMute.UNMUTE: ("conf-unmuted",),
    SelfMute.REFUSE: ("beeperr", "conf-muted"),
}


MAX_TALK_STRETCH = 24 * 3600.0  # seconds: a longer "duration" from Asterisk is no measurement
MAX_RECORDING_SECONDS = 7 * 24 * 3600.0


def plausible_seconds(value, per_second, limit):
    """``value / per_second`` as seconds when it is a finite number in 0..``limit``, else None (a number
    from an event: a string, a boolean, NaN, an infinity or one too large for a float are no measurement)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        seconds = float(value) / per_second
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) and 0.0 <= seconds <= limit else None


def talk_stretch(duration_ms, since, now):
    """The seconds a talking stretch lasted: Asterisk's ``duration`` (ms) of ChannelTalkingFinished when it
    is a plausible number, else the worker's own clock from ChannelTalkingStarted (0 without one)."""
    seconds = plausible_seconds(duration_ms, 1000.0, MAX_TALK_STRETCH)
    if seconds is not None:
        return seconds
    if since is None:
        return 0.0
    return min(max(0.0, now - since), MAX_TALK_STRETCH)


def recording_name(app_name, conference_id, stamp, token):
    """The name of a room's recording on Asterisk: unique (``ifExists=fail``), safe as a file name."""
    return f"{app_name}-{conference_id}-{stamp}-{token}"


RECORDING_NAME_TAIL = re.compile(r"[0-9]{8}-[0-9]{6}-[0-9a-f]{6}")


WAV_HEAD = 512  # bytes read to find a WAV file's "fmt " and "data" chunks (Asterisk writes 44)


def wav_repair(head, file_size):
    """What to rewrite in a WAV file that was never closed, and the seconds of audio it holds.

    Asterisk writes a WAV header with zero sizes when a recording starts and
    fills them in when it closes the file; one that died mid-recording
    (SIGKILL, a power cut) leaves them zero, and players take the file for
    empty. ``head``: the first bytes of the file (``WAV_HEAD``); returns
    ``(fixes, seconds)`` with ``fixes`` a list of ``(offset, value)`` of
    little-endian 32-bit sizes to write (empty when the header is right), or
    None for anything that is not a PCM WAV with its data chunk last.
    """
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    block = rate = None
    at = 12
    while at + 8 <= len(head):
        chunk, size = head[at : at + 4], int.from_bytes(head[at + 4 : at + 8], "little")
        if chunk == b"fmt " and at + 8 + 16 <= len(head):
            rate = int.from_bytes(head[at + 12 : at + 16], "little")
            block = int.from_bytes(head[at + 20 : at + 22], "little")
        elif chunk == b"data":
            if not rate or not block:
                return None
            start = at + 8
            if 0 < size <= file_size - start:  # closed properly (what follows, if anything, is other chunks)
                return [], size / (rate * block)
            held = max(0, file_size - start) // block * block
            fixes = [(at + 4, held), (4, start - 8 + held)]
            fixes = [(at_, value) for at_, value in fixes if int.from_bytes(head[at_ : at_ + 4], "little") != value]
            return fixes, held / (rate * block)
        at += 8 + size + (size & 1)
    return None


def is_our_recording(app_name, conference_id, name):
    """Whether ``name`` is one ``recording_name`` made for the room: another application's recording of
    the bridge (or a hostile name: slashes, dots) is neither adopted, fetched nor deleted."""
    prefix = f"{app_name}-{conference_id}-"
    if not isinstance(name, str) or not name.startswith(prefix):
        return False
    return RECORDING_NAME_TAIL.fullmatch(name[len(prefix) :]) is not None


def recording_room(app_name, name):
    """``(conference id, started at as a UTC "YYYYmmdd-HHMMSS" stamp)`` of a name ``recording_name`` made, or
    None: how a recording Asterisk holds is traced to its room when the site has no row of it."""
    prefix = f"{app_name}-"
    if not isinstance(name, str) or not name.startswith(prefix):
        return None
    number, _, tail = name[len(prefix) :].partition("-")
    if not number.isascii() or not number.isdigit() or len(number) > 18 or not RECORDING_NAME_TAIL.fullmatch(tail):
        return None
    return int(number), tail[:15]


# --- invites ----------------------------------------------------------------------------------

INVITE_NUMBER = re.compile(r"^[0-9*#+]{1,32}$")
INVITE_CHANNEL_PREFIX = "invite-"
INVITES_BY_MODERATOR = (10, 300)  # at most 10 invites by one moderator in 5 minutes, all rooms together
INVITES_BY_ROOM = (20, 300)  # at most 20 invites into one room in 5 minutes, all moderators together
INVITE_TIMER_SLACK = 10.0  # seconds after the ring time before the worker hangs up a call Asterisk did not
OPEN_INVITE = ("dialing", "ringing")
# Hangup causes (Q.850, as Asterisk's AST_CAUSE_*) of a call that was never answered, as an outcome.
BUSY_CAUSES = frozenset({17, 21})  # user busy; call rejected (the phone's "decline")
NO_ANSWER_CAUSES = frozenset({18, 19})  # no user responding; no answer
# 16 (normal clearing) and 0 (unknown: Asterisk before 22.4 on a dial timeout) before an answer: the
# ring time ran out when it ran out; anything else is a failure (unallocated number, congestion...).
DIAL_STATUSES = {"BUSY": "busy", "NOANSWER": "no_answer", "CONGESTION": "failed", "CHANUNAVAIL": "failed"}


INVITE_CHANNEL = re.compile(r"^invite-([0-9]{1,18})-[0-9a-f]{16}$")


def invite_channel_id(conference_id, token):
    """The id of an invite's channel (``POST /channels?channelId=``): it names the room, so every event of
    the call goes to the room's lane before the worker has seen the channel."""
    return f"{INVITE_CHANNEL_PREFIX}{conference_id}-{token}"


def room_of_invite_channel(channel_id):
    """The room an invite channel id names, or None for any other channel."""
    match = INVITE_CHANNEL.match(channel_id) if isinstance(channel_id, str) else None
    return int(match.group(1)) if match else None


# Never invited, whatever a server's pattern says: emergency numbers (a conference has no business
# calling them, and a call would show the room's caller ID to the emergency service).
NEVER_INVITED = frozenset({"112", "911", "999", "000", "08", "110", "119", "118"})


def compile_number_pattern(pattern):
    """Staff's pattern of numbers that may be invited, compiled by RE2 (linear time, whatever the pattern:
    Python's ``re`` can take exponential time on ``(\\d|\\d)+`` and a 32-key number); ``re2.error`` if bad."""
    import re2

    options = re2.Options()
    options.log_errors = False
    return re2.compile(pattern, options)


def invite_refusal(*, number, pattern, template, open_invites, max_open, by_moderator, by_room, room_numbers=()):
    """Why an invite of ``number`` is refused (a protocol error text), or None; the number is checked
    before it goes anywhere near the dial template. ``room_numbers``: the server's rooms' numbers (an
    invite of one would bring a room's audio into another through the PBX's own dialplan)."""
    import re2

    if not template:
        return "invites are not set up for this room's server"
    if not isinstance(number, str) or not INVITE_NUMBER.fullmatch(number):
        return "a number holds only 0-9 * # + (at most 32)"
    try:
        allowed = compile_number_pattern(pattern).fullmatch(number) is not None
    except re2.error:
        allowed = False
    if not allowed or number.lstrip("+") in NEVER_INVITED or number in room_numbers:
        return "this number may not be invited"
    if open_invites >= max_open:
        return "too many invites are ringing in this room"
    if by_moderator >= INVITES_BY_MODERATOR[0] or by_room >= INVITES_BY_ROOM[0]:
        return "too many invites lately; try again in a few minutes"
    return None


def dial_endpoint(template, number):
    """The ARI ``endpoint`` of an invite: the template with its one ``{number}`` replaced (never
    ``str.format``: a template is not a format string)."""
    return template.replace("{number}", number, 1)


CALLER_ID_UNSAFE = re.compile(r'["<>\\\x00-\x1f\x7f]')


def invite_caller_id(template, name, number):
    """The caller ID an invited phone shows: ``"Name" <number>`` by default, quotes and angle brackets
    taken out of the room's name (it is staff's text, but it goes into a SIP header)."""
    clean = CALLER_ID_UNSAFE.sub("", str(name or "")).strip()[:40]
    if template:
        text = template.replace("{name}", clean).replace("{number}", str(number))
        text = CALLER_ID_UNSAFE.sub("", text).strip()[:80]
        return f'"{text}" <{number}>'
    return f'"{clean}" <{number}>' if clean else f"<{number}>"


def invite_outcome(*, cause, dial_status=None, cancelled=False, timed_out=False):
    """The final status of an invite whose channel ended before it was answered."""
    if cancelled:
        return "cancelled"
    if isinstance(cause, int) and not isinstance(cause, bool) and cause in BUSY_CAUSES:
        return "busy"  # before the Dial status: a SIP 603 Decline is cause 21 with Dial status NOANSWER
    mapped = DIAL_STATUSES.get(str(dial_status or "").upper())
    if mapped is not None:
        return mapped
    if dial_status and str(dial_status).upper() == "CANCEL" and timed_out:
        return "no_answer"
    if isinstance(cause, int) and not isinstance(cause, bool):
        if cause in BUSY_CAUSES:
            return "busy"
        if cause in NO_ANSWER_CAUSES:
            return "no_answer"
        if cause in (0, 16):
            return "no_answer" if timed_out else "failed"
    return "no_answer" if timed_out else "failed"


def moh_wanted(participants_in_bridge):
    """Music on hold plays to a room's bridge when exactly one participant is in it."""
    return len(participants_in_bridge) == 1


def hears_moh(channel_id, participants_in_bridge):
    """Whether the caller of ``channel_id`` hears the room's music (the participant alone in its bridge)."""
    return moh_wanted(participants_in_bridge) and channel_id in participants_in_bridge


# --- resync ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PresentRow:
    """A participant the database holds as present."""

    participant_id: int
    channel_id: str
    conference_id: int
    talking: bool
    role: str = PARTICIPANT


@dataclass(frozen=True)
class WaitingRow:
    """A caller the database holds as waiting (in the lobby, or for the leader)."""

    participant_id: int
    channel_id: str
    conference_id: int
    waiting_for: str


@dataclass
class ResyncPlan:
    """What a resync must change: each list is carried out in this order."""

    # conference id -> the bridge's channels that still exist (the room's bridge state to keep)
    rooms: dict = field(default_factory=dict)
    bridge_ids: dict = field(default_factory=dict)  # conference id -> bridge id
    lost: list = field(default_factory=list)  # participant ids whose channel left their room's bridge
    stop_talking: list = field(default_factory=list)  # participant ids still present but marked talking
    unknown: list = field(default_factory=list)  # (conference id, channel) in a bridge, unknown to the database
    remove_bridges: list = field(default_factory=list)  # bridge ids: empty leftovers or of rooms that are gone
    readmit: list = field(default_factory=list)  # (channel, args): in the application, in no bridge
    waiting: list = field(default_factory=list)  # WaitingRows still waiting (in the application, in no bridge)
    entered: list = field(default_factory=list)  # (conference id, channel): waiting ones found in their room's bridge


def resync_plan(*, app_name, channels, bridges, present, conference_ids, known_channels, busy_channels, waiting=()):
    """Compare Asterisk's state with the database's after a (re)connect.

    ``channels``: id -> channel JSON of every channel (``GET /channels``);
    ``bridges``: every bridge JSON (``GET /bridges``); ``present``: the
    PresentRows of this server; ``conference_ids``: the rooms that exist;
    ``known_channels``: channel ids the database has a participant row for
    (present or not); ``busy_channels``: channels the worker is already
    handling (on their way in, or being hung up after a prompt) — not readmitted;
    ``waiting``: the WaitingRows of this server. A waiting caller whose channel
    is gone is lost; one found in its room's bridge entered it meanwhile; one
    still in the application keeps waiting (not readmitted: no second PIN).
    """
    plan = ResyncPlan()
    in_bridge = {}  # channel id -> conference id, participants only
    for bridge in bridges:
        conference_id = conference_id_of_bridge(app_name, bridge.get("id"))
        if conference_id is None:
            continue
        members = [cid for cid in bridge.get("channels") or [] if cid in channels]
        plan.rooms[conference_id] = members
        plan.bridge_ids[conference_id] = bridge["id"]
        for channel_id in members:
            if not is_helper_channel(channels[channel_id]):
                in_bridge[channel_id] = conference_id

    still_present = set()
    for row in present:
        if in_bridge.get(row.channel_id) != row.conference_id:
            plan.lost.append(row.participant_id)
            continue
        still_present.add(row.channel_id)
        if row.talking:
            plan.stop_talking.append(row.participant_id)

    for row in waiting:
        if row.channel_id not in channels:
            plan.lost.append(row.participant_id)
        elif in_bridge.get(row.channel_id) == row.conference_id:
            plan.entered.append((row.conference_id, channels[row.channel_id]))
            still_present.add(row.channel_id)
        elif row.channel_id in in_bridge:
            plan.lost.append(row.participant_id)  # in another room's bridge: not this room's caller any more
        else:
            plan.waiting.append(row)
    still_waiting = {row.channel_id for row in plan.waiting}

    recorded = set(known_channels) | {row.channel_id for row in present}
    for channel_id, conference_id in in_bridge.items():
        if conference_id in conference_ids and channel_id not in recorded:
            plan.unknown.append((conference_id, channels[channel_id]))
            still_present.add(channel_id)

    for conference_id, members in plan.rooms.items():
        participants = [cid for cid in members if cid in still_present and in_bridge.get(cid) == conference_id]
        if conference_id not in conference_ids or not participants:
            plan.remove_bridges.append(plan.bridge_ids[conference_id])

    for channel_id, channel in channels.items():
        args = stasis_args(channel, app_name)
        if (
            args is None
            or channel_id in in_bridge
            or channel_id in busy_channels
            or channel_id in still_waiting
            or is_helper_channel(channel)
        ):
            continue
        plan.readmit.append((channel, args))
    return plan


# --- which room an item concerns (the worker's lanes) ---------------------------------------------

SERVER = "server"  # the lane of what concerns no room (refused numbers, other applications' leftovers)
CHANNEL_TIMERS = {"_PinTimeout", "_PinPauseOver", "_HangupTimeout", "_InviteTimeout"}


@dataclass(frozen=True)
class LookUp:
    """The room of a number the worker does not know yet: look it up, then route again."""

    number: str


def event_channel_id(event):
    """The channel an ARI (or synthetic) event is about, or None."""
    if event.get("type") in CHANNEL_TIMERS:
        return event.get("channel_id")
    channel = event.get("channel")
    if isinstance(channel, dict):
        return channel.get("id")
    peer = event.get("peer")
    if event.get("type") == "Dial" and isinstance(peer, dict):  # the dialled channel (an invite's)
        return peer.get("id")
    recording = event.get("recording")
    if isinstance(recording, dict):  # a bridge's recording: its room's lane (rules.lane_of_event)
        return None
    playback = event.get("playback")
    if isinstance(playback, dict):
        target = str(playback.get("target_uri") or "")
        if target.startswith("channel:"):
            return target[len("channel:") :]
    return None


def lane_of_event(event, *, app_name, room_of_channel, room_of_number):
    """The lane of an event: its room's id, ``SERVER``, or ``LookUp(number)``.

    ``room_of_channel(channel id)`` and ``room_of_number(number)`` are what the
    worker knows (None: not known). A bridge event belongs to the bridge's
    room; a StasisStart to the room its one argument names; anything else
    about a channel to the room the channel was routed to.
    """
    bridge = event.get("bridge")
    if isinstance(bridge, dict):
        conference_id = conference_id_of_bridge(app_name, bridge.get("id"))
        if conference_id is not None:
            return conference_id
    recording = event.get("recording")
    if isinstance(recording, dict):
        target = str(recording.get("target_uri") or "")
        if target.startswith("bridge:"):
            conference_id = conference_id_of_bridge(app_name, target[len("bridge:") :])
            if conference_id is not None:
                return conference_id
    playback = event.get("playback")
    if isinstance(playback, dict):  # a playback to a room's bridge (a moderator's sound): the room's lane
        target = str(playback.get("target_uri") or "")
        if target.startswith("bridge:"):
            conference_id = conference_id_of_bridge(app_name, target[len("bridge:") :])
            if conference_id is not None:
                return conference_id
    if event.get("type") == "_AnnouncementOver" and isinstance(event.get("conference_id"), int):
        return event["conference_id"]
    invited = room_of_invite_channel(event_channel_id(event))
    if invited is not None:  # an invite's call, from its first event (the handlers check it is one)
        return invited
    if event.get("type") == "StasisStart":
        args = event.get("args")
        number, problem = parse_room_args(args if isinstance(args, list) else [args])
        if problem is not None or number is None:
            return SERVER
        conference_id = room_of_number(number)
        return conference_id if conference_id is not None else LookUp(number)
    channel_id = event_channel_id(event)
    if channel_id is not None:
        conference_id = room_of_channel(channel_id)
        if conference_id is not None:
            return conference_id
    return SERVER


def lane_of_command(command):
    """The lane of a moderation command: the room it names (an id that is not an int goes to ``SERVER``)."""
    conference_id = command.get("conference_id")
    if isinstance(conference_id, int) and not isinstance(conference_id, bool):
        return conference_id
    return SERVER
