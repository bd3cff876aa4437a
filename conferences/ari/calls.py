"""What the worker knows between events: one ``Call`` per channel, one ``Room`` per room bridge.

A call's life is one explicit phase instead of entries in several dicts:

    ADMITTING ──▶ PIN ⇄ PIN_PAUSE ──▶ (WAITING ⇄) ENTERING ──▶ PRESENT ──▶ (gone)
        │            │                    │      │            │   │
        │            │                    │      └────────────┼───┘ (the leader left: wait again)
        └────────────┴──────▶ LEAVING ◀───┴───────────────────┘   (refused, denied, kicked, ended:
                                                                     a prompt, then hang up)
    DIALING ──(answered)──▶ ENTERING                                 (an invite: no PIN, no lobby)

``WAITING`` is a participant outside any bridge, hearing music on hold: in
the lobby until a moderator admits it, or until the room's leader is in.
``ENTERING`` is admitted and on its way into the bridge (it holds a seat);
``PRESENT`` is a participant in the room's bridge. ``DIALING`` is an
invite's call being placed: answered, it goes straight to ``ENTERING`` (no
PIN, no lobby). The registry is plain data: the
handlers change it, one room's calls from one room's events.
"""

from dataclasses import dataclass, field
from enum import StrEnum

from conferences.ari import rules
from conferences.ratelimit import TokenBucket


class Phase(StrEnum):
    ADMITTING = "admitting"
    PIN = "pin"
    PIN_PAUSE = "pin_pause"  # waiting out a pause before the PIN prompt: digits are ignored
    WAITING = "waiting"  # in the lobby or waiting for the leader, outside any bridge
    ENTERING = "entering"
    PRESENT = "present"
    LEAVING = "leaving"
    DIALING = "dialing"  # an invite's call the worker placed, not answered yet (conferences/ari/invites.py)


# Calls the worker is still letting in (not yet in the bridge, not refused).
ON_THE_WAY_IN = frozenset({Phase.ADMITTING, Phase.PIN, Phase.PIN_PAUSE, Phase.WAITING, Phase.ENTERING})


@dataclass
class Call:
    """One channel in the application, from StasisStart to its end."""

    channel_id: str
    conference_id: int | None = None
    phase: Phase = Phase.ADMITTING
    role: str = rules.PARTICIPANT
    caller_name: str = ""
    caller_number: str = ""
    # At the PIN prompt.
    digits: str = ""
    tries: int = 0
    attempt: int = 0
    prompt: str | None = None  # the playback id of the PIN prompt while it is queued or playing
    # Waiting (rules.LOBBY or rules.LEADER), and the moderator who admitted it from the lobby.
    waiting_for: str = ""
    admitted_by: int | None = None
    # In the room.
    participant_id: int | None = None
    moh: bool = False
    talking: bool = False  # as talk detection last said
    talking_since: float | None = None  # time.monotonic() of the ChannelTalkingStarted of an open stretch
    stretch_closed: bool = False  # a mute closed (and counted) the stretch: its finish adds nothing
    # Its stay's end is in the database (the hop committed): a later StasisEnd or ChannelDestroyed of the
    # same call has nothing left to write.
    left_recorded: bool = False
    kicked: bool = False
    kicked_by: int | None = None
    kicked_via: str | None = None  # the API token's name the kick came with
    # The keypad during the call: the room's sequences (read at the first key), the keys typed since,
    # and the rate of its actions.
    keypad: dict | None = None
    typed: str = ""
    typed_at: float = 0.0
    keypad_bucket: TokenBucket = field(default_factory=lambda: TokenBucket(rules.KEYPAD_RATE, rules.KEYPAD_BURST))
    # An invite's call: its Invite row, when it was placed, how long it may ring, what Asterisk's Dial
    # said last, and whether a moderator cancelled it or the worker's ring timer hung it up.
    invite_id: int | None = None
    dialed_at: float = 0.0
    ring_seconds: float = 0.0
    dial_status: str = ""
    shown_as: str = ""  # the caller ID the invited phone was shown (the room's)
    cancelled: bool = False
    timed_out: bool = False
    # Leaving: hang up when one of these playbacks finishes.
    hangup_after: set = field(default_factory=set)

    @property
    def holds_seat(self):
        """Admitted, not yet in the bridge: counted with the present ones against max participants."""
        return self.phase == Phase.ENTERING


@dataclass
class Room:
    """A room's bridge as the worker last saw it."""

    conference_id: int
    bridge_id: str
    channels: list = field(default_factory=list)  # the bridge's members, helpers included
    moh: bool | None = None  # music on hold playing; None: unknown (after a reconnect)
    recording: str | None = None  # the name of the recording being written of the bridge
    announcement: str = ""  # what a caller joining while it records hears
    announcing: set = field(default_factory=set)  # playbacks of a moderator's sound to the room (music paused)
    tones: tuple | None = None  # (join_leave_tones, announce_only_person), as read at the last join


class Registry:
    """The calls and rooms of one server."""

    def __init__(self):
        self.calls: dict[str, Call] = {}
        self.rooms: dict[int, Room] = {}

    def call(self, channel_id):
        return self.calls.get(channel_id)

    def forget(self, channel_id):
        return self.calls.pop(channel_id, None)

    def in_room(self, conference_id, phase=None):
        return [
            call
            for call in self.calls.values()
            if call.conference_id == conference_id and (phase is None or call.phase == phase)
        ]

    def waiting(self, conference_id, waiting_for):
        """The room's callers waiting for ``waiting_for`` (rules.LOBBY, rules.LEADER)."""
        return [call for call in self.in_room(conference_id, Phase.WAITING) if call.waiting_for == waiting_for]

    def seats_held(self, conference_id):
        """Calls admitted into the room and on their way into its bridge."""
        return sum(1 for call in self.in_room(conference_id) if call.holds_seat)

    def participants_in_bridge(self, conference_id):
        """The room's present participants that are in its bridge right now (Asterisk's own channels are not).

        Bridge snapshots also list Asterisk's Announcer channel (music on hold),
        whose events never reach the application: only calls the worker
        recorded as present count.
        """
        room = self.rooms.get(conference_id)
        if room is None:
            return []
        return [
            channel_id
            for channel_id in room.channels
            if (call := self.calls.get(channel_id)) is not None
            and call.phase == Phase.PRESENT
            and call.conference_id == conference_id
        ]

    def leaving_after(self, playback_id):
        """The call to hang up when ``playback_id`` finishes, if any."""
        for call in self.calls.values():
            if playback_id in call.hangup_after:
                return call
        return None
