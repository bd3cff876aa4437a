"""The worker's rules as tables of cases: admission, the PIN, music on hold, resync (conferences/ari/rules.py)."""

import pytest

from conferences.ari import rules
from conferences.ari.rules import ENTER, Admission, PinResult, PresentRow, Verdict

OPEN = rules.RoomFacts(conference_id=7, number="100", locked=False, max_participants=None, pin="")
LOCKED = rules.RoomFacts(conference_id=7, number="100", locked=True, max_participants=None, pin="")
SMALL = rules.RoomFacts(conference_id=7, number="100", locked=False, max_participants=2, pin="")
WITH_PIN = rules.RoomFacts(conference_id=7, number="100", locked=False, max_participants=2, pin="4321")
P, A = rules.PARTICIPANT, rules.ADMIN


@pytest.mark.parametrize(
    "problem,room,role,taken,expected",
    [
        (None, OPEN, P, 0, ENTER),
        (None, OPEN, P, 500, ENTER),  # no limit
        (None, None, P, 0, Admission.refuse("conf-invalid")),  # unknown room: nothing recorded
        ("extra arguments", OPEN, P, 0, Admission.refuse("conf-invalid", "invalid arguments")),
        ("extra arguments", None, P, 0, Admission.refuse("conf-invalid")),
        ("extra arguments", OPEN, A, 0, Admission.refuse("conf-invalid", "invalid arguments")),  # even an admin
        ("room number not digits", None, A, 0, Admission.refuse("conf-invalid")),
        (None, LOCKED, P, 0, Admission.refuse("conf-locked", "locked")),
        (None, LOCKED, A, 0, ENTER),  # admins pass a lock
        (None, SMALL, P, 1, ENTER),
        (None, SMALL, P, 2, Admission.refuse("conf-locked", "full")),
        (None, SMALL, P, 3, Admission.refuse("conf-locked", "full")),
        (None, SMALL, A, 9, ENTER),  # and a full room
        (None, WITH_PIN, P, 0, rules.ASK_PIN),
        (None, WITH_PIN, A, 5, rules.ASK_PIN),  # an admin still types the PIN
        (None, WITH_PIN, P, 2, Admission.refuse("conf-locked", "full")),  # full before the PIN is asked
    ],
)
def test_admission(problem, room, role, taken, expected):
    assert rules.admission(problem=problem, room=room, role=role, taken=taken) == expected


@pytest.mark.parametrize(
    "room,role,taken,expected",
    [
        (WITH_PIN, P, 1, ENTER),
        (WITH_PIN, P, 2, Admission.refuse("conf-locked", "full")),  # filled while the caller typed
        (rules.RoomFacts(7, "100", True, None, "1"), P, 0, Admission.refuse("conf-locked", "locked")),
        (rules.RoomFacts(7, "100", True, None, "1"), A, 0, ENTER),
        (None, P, 0, Admission.refuse("conf-invalid")),  # the room was deleted meanwhile
    ],
)
def test_after_the_right_pin_the_room_is_checked_again(room, role, taken, expected):
    assert rules.after_pin(room=room, role=role, taken=taken) == expected


@pytest.mark.parametrize(
    "digits,tries,expected",
    [
        ("4321", 0, PinResult.RIGHT),
        ("4321", 2, PinResult.RIGHT),
        ("1234", 0, PinResult.RETRY),
        ("1234", 1, PinResult.RETRY),
        ("1234", 2, PinResult.REFUSE),
        ("", 0, PinResult.RETRY),
        ("43210", 0, PinResult.RETRY),
    ],
)
def test_pin_result(digits, tries, expected):
    assert rules.pin_result(digits=digits, pin="4321", tries=tries, max_tries=3) == expected


@pytest.mark.parametrize(
    "in_bridge,channel,wanted,hears",
    [
        ([], "a", False, False),
        (["a"], "a", True, True),
        (["a"], "b", True, False),
        (["a", "b"], "a", False, False),
    ],
)
def test_music_on_hold_for_the_one_alone(in_bridge, channel, wanted, hears):
    assert rules.moh_wanted(in_bridge) is wanted
    assert rules.hears_moh(channel, in_bridge) is hears


@pytest.mark.parametrize(
    "bridge_id,expected",
    [
        ("conference-conference-7", 7),
        ("conference-conference-", None),
        ("conference-conference-7a", None),
        ("conference-conference-٧", None),  # a non-ASCII digit
        ("other-conference-7", None),
        ("", None),
        (None, None),
        (7, None),
    ],
)
def test_bridge_ids(bridge_id, expected):
    assert rules.conference_id_of_bridge("conference", bridge_id) == expected
    if expected is not None:
        assert rules.room_bridge_id("conference", expected) == bridge_id


def channel(channel_id, args=None, name=None):
    json = {"id": channel_id, "name": name or f"PJSIP/{channel_id}", "caller": {"number": "200"}}
    if args is not None:
        json["dialplan"] = {"app_name": "Stasis", "app_data": ",".join(["conference", *args])}
    return json


def bridge(conference_id, *members):
    return {"id": rules.room_bridge_id("conference", conference_id), "channels": list(members)}


def plan(channels, bridges, present, conference_ids=(7, 8), known=(), busy=(), waiting=()):
    return rules.resync_plan(
        waiting=list(waiting),
        app_name="conference",
        channels={c["id"]: c for c in channels},
        bridges=bridges,
        present=present,
        conference_ids=set(conference_ids),
        known_channels=set(known),
        busy_channels=set(busy),
    )


def row(pk, channel_id, conference_id=7, talking=False):
    return PresentRow(participant_id=pk, channel_id=channel_id, conference_id=conference_id, talking=talking)


def test_resync_keeps_callers_still_in_their_bridge_and_stops_stale_talking():
    result = plan([channel("a"), channel("b")], [bridge(7, "a", "b")], [row(1, "a"), row(2, "b", talking=True)])
    assert (result.lost, result.stop_talking, result.unknown, result.remove_bridges) == ([], [2], [], [])
    assert result.rooms == {7: ["a", "b"]}


def test_resync_marks_lost_those_gone_or_in_another_rooms_bridge():
    result = plan([channel("b")], [bridge(8, "b")], [row(1, "a"), row(2, "b", conference_id=7)])
    assert result.lost == [1, 2]
    # A channel has one participant row per server: b's stay ended, it is not recorded again in room 8,
    # whose bridge then holds no participant and goes.
    assert result.unknown == [] and result.remove_bridges == [rules.room_bridge_id("conference", 8)]


def test_resync_adds_callers_the_database_does_not_know_but_not_helpers_or_known_ones():
    channels = [channel("a"), channel("moh", name="Announcer/moh-1"), channel("old")]
    result = plan(channels, [bridge(7, "a", "moh", "old")], [], known=["old"])
    assert [c["id"] for _room, c in result.unknown] == ["a"]


def test_resync_removes_empty_leftover_bridges_and_those_of_deleted_rooms():
    channels = [channel("moh", name="Announcer/x"), channel("c")]
    result = plan(channels, [bridge(7, "moh"), bridge(9, "c"), bridge(8)], [], conference_ids=(7, 8))
    assert sorted(result.remove_bridges) == sorted(rules.room_bridge_id("conference", n) for n in (7, 8, 9))
    assert result.unknown == []  # room 9 is gone: its caller is not recorded


def test_resync_readmits_callers_in_the_application_outside_any_bridge():
    channels = [channel("waiting", args=["100"]), channel("typing", args=["100"]), channel("elsewhere")]
    result = plan(channels, [], [], busy=["typing"])
    assert [(c["id"], args) for c, args in result.readmit] == [("waiting", ["100"])]


def test_resync_ignores_bridges_of_other_applications_and_channels_that_are_gone():
    result = plan([channel("a")], [{"id": "someone-else", "channels": ["a"]}, bridge(7, "a", "gone")], [row(1, "a")])
    assert result.rooms == {7: ["a"]} and result.lost == []


def test_resync_keeps_waiting_callers_waiting_and_never_readmits_them():
    """A waiting caller still in the application keeps waiting (no second PIN); gone, it is lost; found in its
    room's bridge (admitted while the worker was away), it is present; in another room's bridge, lost."""
    waiting = [
        rules.WaitingRow(11, "held", 7, rules.LOBBY),
        rules.WaitingRow(12, "gone", 7, rules.LEADER),
        rules.WaitingRow(13, "entered", 7, rules.LOBBY),
        rules.WaitingRow(14, "moved", 7, rules.LOBBY),
    ]
    channels = [channel("held", args=["100"]), channel("entered", args=["100"]), channel("moved", args=["100"])]
    result = plan(
        channels, [bridge(7, "entered"), bridge(8, "moved")], [], known=["held", "entered", "moved"], waiting=waiting
    )
    assert [row.participant_id for row in result.waiting] == [11]
    assert sorted(result.lost) == [12, 14]
    assert [(room, c["id"]) for room, c in result.entered] == [(7, "entered")]
    assert result.readmit == [] and result.unknown == []
    assert result.remove_bridges == [rules.room_bridge_id("conference", 8)]  # room 7 keeps its bridge


LOBBY_ROOM = rules.RoomFacts(7, "100", False, None, "", lobby=True)
LEADER_ROOM = rules.RoomFacts(7, "100", False, None, "", wait_for_leader=True)
BOTH = rules.RoomFacts(7, "100", False, None, "", lobby=True, wait_for_leader=True)
HELD = rules.RoomFacts(7, "100", False, None, "", leader_waiting=2)  # its leader left ("wait")


@pytest.mark.parametrize(
    ("room", "role", "started", "from_lobby", "expected"),
    [
        (OPEN, P, False, False, ""),
        (LOBBY_ROOM, P, True, False, rules.LOBBY),
        (LOBBY_ROOM, A, False, False, ""),  # admins skip the lobby
        (LOBBY_ROOM, P, True, True, ""),  # admitted: in
        (LEADER_ROOM, P, False, False, rules.LEADER),
        (LEADER_ROOM, P, True, False, ""),  # the room has started (its leader came, or it was opened)
        (LEADER_ROOM, A, False, False, ""),  # the leader
        (BOTH, P, False, False, rules.LOBBY),  # PIN, then the lobby, then the leader
        (BOTH, P, False, True, rules.LEADER),
        (BOTH, P, True, True, ""),
        (HELD, P, True, False, rules.LEADER),  # others wait for the leader: so does a newcomer
        (HELD, A, True, False, ""),
    ],
)
def test_where_a_caller_who_may_enter_goes(room, role, started, from_lobby, expected):
    assert rules.waits_for(room=room, role=role, started=started, from_lobby=from_lobby) == expected


@pytest.mark.parametrize(
    ("when", "leaders_left", "others", "expected"),
    [
        ("stay", 0, [1], rules.STAY),
        ("end", 0, [1], rules.END),
        ("wait", 0, [1, 2], rules.WAIT),
        ("end", 1, [1], rules.STAY),  # another leader is still in
        ("wait", 0, [], rules.STAY),  # nobody left to wait
        ("bogus", 0, [1], rules.STAY),
    ],
)
def test_what_the_room_does_when_its_leader_leaves(when, leaders_left, others, expected):
    assert rules.when_leader_left(when=when, leaders_left=leaders_left, others=others) == expected


def test_verdicts_are_strings_for_logs():
    assert Verdict.REFUSE == "refuse" and PinResult.RIGHT == "right"


# --- the keypad during the call ----------------------------------------------------------------

KEYS = {rules.HAND: "*1", rules.SELF_MUTE: "*6"}


def typed(keys, sequences=KEYS, gaps=None):
    """Press ``keys`` one by one (``gaps``: seconds before each, 0.2 by default); the actions done, in order."""
    kept, done = "", []
    for index, key in enumerate(keys):
        gap = gaps[index] if gaps else 0.2
        kept, action = rules.keypad_press(kept, key, sequences, gap)
        if action:
            done.append(action)
    return done


@pytest.mark.parametrize(
    "keys,gaps,sequences,expected",
    [
        ("*1", None, KEYS, [rules.HAND]),
        ("*6", None, KEYS, [rules.SELF_MUTE]),
        ("*1*1", None, KEYS, [rules.HAND, rules.HAND]),  # up, then down
        ("1234*1", None, KEYS, [rules.HAND]),  # digits before: the sequence still ends what was typed
        ("**1", None, KEYS, [rules.HAND]),
        ("*7", None, KEYS, []),
        ("1*", None, KEYS, []),  # the keys of a sequence in the wrong order
        ("*1", [0.2, 3.5], KEYS, []),  # too slow: "*" forgotten before "1"
        ("*1", [9.0, 0.2], KEYS, [rules.HAND]),  # a long pause before the sequence does not matter
        ("*x1", None, KEYS, [rules.HAND]),  # not a keypad key (a hostile event): ignored, not a break
        ("*A1B", None, KEYS, [rules.HAND]),  # A-D (RFC 4733 events 12-15) are not keys of ours
        ("#5", None, {rules.HAND: "#5", rules.SELF_MUTE: "99"}, [rules.HAND]),
        ("*1", None, {rules.HAND: "#5", rules.SELF_MUTE: "99"}, []),
        ("999", None, {rules.HAND: "#5", rules.SELF_MUTE: "99"}, [rules.SELF_MUTE]),  # the third 9 starts anew
        ("*1", None, {rules.HAND: "", rules.SELF_MUTE: "*6"}, []),  # an empty sequence never fires
    ],
)
def test_keypad_sequences(keys, gaps, sequences, expected):
    assert typed(keys, sequences, gaps) == expected


def test_the_keys_kept_are_bounded():
    kept = ""
    for _ in range(1000):
        kept, action = rules.keypad_press(kept, "7", KEYS, 0.1)
        assert action is None
    assert len(kept) == rules.MAX_TYPED


@pytest.mark.parametrize(
    "muted,source,expected",
    [
        (False, "", rules.SelfMute.MUTE),
        (True, "self", rules.SelfMute.UNMUTE),
        (True, "moderator", rules.SelfMute.REFUSE),  # only a moderator unmutes
        (True, "", rules.SelfMute.REFUSE),  # muted, source unknown: treated as a moderator's
    ],
)
def test_self_mute(muted, source, expected):
    assert rules.self_mute(muted=muted, mute_source=source) == expected


def test_a_bridge_recordings_events_go_to_its_rooms_lane():
    bridge_id = rules.room_bridge_id("conference", 7)
    event = {"type": "RecordingFinished", "recording": {"name": "r", "target_uri": f"bridge:{bridge_id}"}}
    assert rules.lane_of_event(event, app_name="conference", room_of_channel=dict().get, room_of_number=dict().get) == 7
    other = {"type": "RecordingFinished", "recording": {"name": "r", "target_uri": "channel:x"}}
    assert (
        rules.lane_of_event(other, app_name="conference", room_of_channel={"x": 9}.get, room_of_number=dict().get)
        == rules.SERVER
    )


def _wav(data_size, riff_size=None, data=b"", extra=b""):
    """A 44-byte PCM WAV header (8 kHz, 16-bit mono, as Asterisk's ``wav`` format) with the sizes given."""
    fmt = (16).to_bytes(4, "little") + bytes.fromhex("0100 0100 401f0000 803e0000 0200 1000")
    riff = 36 + data_size if riff_size is None else riff_size
    return (
        b"RIFF"
        + riff.to_bytes(4, "little")
        + b"WAVE"
        + b"fmt "
        + fmt
        + b"data"
        + data_size.to_bytes(4, "little")
        + data
        + extra
    )


@pytest.mark.parametrize(
    "head,file_size,expected",
    [
        (_wav(16000), 44 + 16000, ([], 1.0)),  # closed properly: nothing to change
        (_wav(0, 0), 44 + 32768, ([(40, 32768), (4, 36 + 32768)], 2.048)),  # never closed (Asterisk was killed)
        (_wav(0, 0), 44 + 32769, ([(40, 32768), (4, 36 + 32768)], 2.048)),  # a torn last sample is left out
        (_wav(0, 36), 44 + 160, ([(40, 160), (4, 196)], 0.01)),
        (_wav(99999), 44 + 1000, ([(40, 1000), (4, 1036)], 0.0625)),  # says more than the file holds
        (_wav(1000), 44 + 1000 + 26, ([], 0.0625)),  # chunks after the data (LIST…) are left alone
        (_wav(0, 0), 44, ([(4, 36)], 0.0)),  # nothing was written: an empty recording
        (_wav(0), 44, ([], 0.0)),
        (b"RIFF\0\0\0\0WAVEdata\0\0\0\0", 100, None),  # data before fmt: not ours to guess
        (b"OggS" + bytes(40), 1000, None),
        (b"RIFF", 4, None),
        (b"", 0, None),
        (_wav(0, 0)[:30], 30, None),  # the header cut short
        (b"RIFF\0\0\0\0WAVEfmt " + (2**32 - 1).to_bytes(4, "little"), 10**6, None),  # a hostile chunk size
    ],
)
def test_wav_repair(head, file_size, expected):
    assert rules.wav_repair(head[: rules.WAV_HEAD], file_size) == expected


@pytest.mark.parametrize(
    "name,expected",
    [
        ("conference-12-20261202-031500-a1b2c3", (12, "20261202-031500")),
        ("conference-12-20261202-031500-a1b2c", None),
        ("conference-x-20261202-031500-a1b2c3", None),
        ("conference--20261202-031500-a1b2c3", None),
        ("conference-١٢-20261202-031500-a1b2c3", None),  # digits, but not ASCII ones
        ("conference-12-20261202-031500-a1b2c3/../x", None),
        ("other-12-20261202-031500-a1b2c3", None),  # another application's
        ("conference-1" + "0" * 30 + "-20261202-031500-a1b2c3", None),
        (None, None),
        (12, None),
    ],
)
def test_the_room_of_a_recording_name(name, expected):
    assert rules.recording_room("conference", name) == expected


# --- invites ------------------------------------------------------------------------------------

INVITE_OK = {"pattern": "7[0-9]{3}", "template": "Local/{number}@test", "open_invites": 0, "max_open": 2}


@pytest.mark.parametrize(
    "number,changes,expected",
    [
        ("7001", {}, None),
        ("7001", {"template": ""}, "invites are not set up for this room's server"),
        ("", {}, "a number holds only 0-9 * # + (at most 32)"),
        ("7001,admin", {}, "a number holds only 0-9 * # + (at most 32)"),  # Stasis/Dial arguments
        ("7001&foo", {}, "a number holds only 0-9 * # + (at most 32)"),
        ("7001@evil", {}, "a number holds only 0-9 * # + (at most 32)"),  # another context or host
        ("70/01", {}, "a number holds only 0-9 * # + (at most 32)"),  # another technology
        ("7001 ", {}, "a number holds only 0-9 * # + (at most 32)"),
        ("٧٠٠١", {}, "a number holds only 0-9 * # + (at most 32)"),  # digits, not ASCII ones
        ("7" * 33, {}, "a number holds only 0-9 * # + (at most 32)"),
        (7001, {}, "a number holds only 0-9 * # + (at most 32)"),
        (None, {}, "a number holds only 0-9 * # + (at most 32)"),
        ("+4930123456", {}, "this number may not be invited"),  # outside the allowed pattern
        ("70011", {}, "this number may not be invited"),  # the whole number must match
        ("17001", {}, "this number may not be invited"),
        ("7001", {"pattern": "(unclosed"}, "this number may not be invited"),
        ("+4930123456", {"pattern": r"\+49[0-9]+"}, None),
        ("*97", {"pattern": r"\*9[0-9]"}, None),
        ("7001", {"open_invites": 2}, "too many invites are ringing in this room"),
        ("7001", {"by_moderator": 10}, "too many invites lately; try again in a few minutes"),
        ("7001", {"by_moderator": 9, "by_room": 20}, "too many invites lately; try again in a few minutes"),
        ("7001", {"by_moderator": 9, "by_room": 19}, None),
        ("7001\n", {}, "a number holds only 0-9 * # + (at most 32)"),  # "$" would let a newline through
        ("7001", {"pattern": r"\d+\s?"}, None),
        ("112", {"pattern": "[0-9]{2,6}"}, "this number may not be invited"),  # emergency: never
        ("911", {"pattern": "[0-9]+"}, "this number may not be invited"),
        ("+112", {"pattern": r"\+?[0-9]+"}, "this number may not be invited"),
        ("999", {"pattern": ".*"}, "this number may not be invited"),
        ("100", {"pattern": "[0-9]{3}", "room_numbers": ("100",)}, "this number may not be invited"),  # a room
        # RE2: linear time, whatever staff wrote (Python's re takes seconds on these with 31 digits and a *).
        ("1" * 31 + "*", {"pattern": r"(\d|\d)+"}, "this number may not be invited"),
        ("1" * 31 + "*", {"pattern": r"((\d)+)+"}, "this number may not be invited"),
        ("7001", {"pattern": "(?!112)[0-9]+"}, "this number may not be invited"),  # RE2 has no look-arounds
    ],
)
def test_invite_refusal(number, changes, expected):
    facts = {**INVITE_OK, "by_moderator": 0, "by_room": 0, **changes}
    assert rules.invite_refusal(number=number, **facts) == expected


@pytest.mark.parametrize(
    "cause,dial_status,cancelled,timed_out,expected",
    [
        (17, None, False, False, "busy"),
        (21, None, False, False, "busy"),  # declined
        (19, None, False, False, "no_answer"),
        (18, None, False, False, "no_answer"),
        (0, None, False, True, "no_answer"),  # Asterisk before 22.4: cause 0 on a dial timeout
        (16, None, False, True, "no_answer"),
        (16, None, False, False, "failed"),  # hung up before the ring time: not a no-answer
        (0, None, False, False, "failed"),
        (34, None, False, False, "failed"),  # congestion
        (1, None, False, False, "failed"),  # unallocated number
        (16, "BUSY", False, False, "busy"),  # the Dial status knows better than a normal clearing
        (21, "NOANSWER", False, False, "busy"),  # a SIP 603 Decline (tests/test_invites.py, real SIP)
        (16, "NOANSWER", False, False, "no_answer"),
        (16, "CONGESTION", False, False, "failed"),
        (16, "CHANUNAVAIL", False, False, "failed"),
        (16, "CANCEL", False, True, "no_answer"),  # the worker's ring timer hung it up
        (17, "BUSY", True, False, "cancelled"),  # the moderator cancelled first
        (None, None, False, False, "failed"),
        ("17", None, False, False, "failed"),
        (True, None, False, False, "failed"),
    ],
)
def test_invite_outcome(cause, dial_status, cancelled, timed_out, expected):
    assert (
        rules.invite_outcome(cause=cause, dial_status=dial_status, cancelled=cancelled, timed_out=timed_out) == expected
    )


@pytest.mark.parametrize(
    "template,name,number,expected",
    [
        ("", "Daily stand-up", "100", '"Daily stand-up" <100>'),
        ("", 'Evil" <666>\r\nX-Header: 1', "100", '"Evil 666X-Header: 1" <100>'),
        ("", "", "100", "<100>"),
        ("Conference {name}", "Board", "300", '"Conference Board" <300>'),
        ("{name} ({number})", "Sales", "200", '"Sales (200)" <200>'),
    ],
)
def test_invite_caller_id(template, name, number, expected):
    assert rules.invite_caller_id(template, name, number) == expected


def test_an_invite_channel_names_its_room_and_its_events_go_to_the_rooms_lane():
    channel_id = rules.invite_channel_id(42, "0123456789abcdef")
    assert rules.room_of_invite_channel(channel_id) == 42
    for other in ("invite-42-xyz", "invite--0123456789abcdef", "1733112345.42", None, 42):
        assert rules.room_of_invite_channel(other) is None
    for event in (
        {"type": "ChannelStateChange", "channel": {"id": channel_id}},
        {"type": "Dial", "peer": {"id": channel_id}, "dialstatus": "RINGING"},
        {"type": "StasisStart", "channel": {"id": channel_id}, "args": ["invite"]},
        {"type": "ChannelDestroyed", "channel": {"id": channel_id}, "cause": 17},
        {"type": "_InviteTimeout", "channel_id": channel_id},
    ):
        lane = rules.lane_of_event(event, app_name="conference", room_of_channel={}.get, room_of_number={}.get)
        assert lane == 42, event
    assert rules.dial_endpoint("PJSIP/{number}@trunk", "7001") == "PJSIP/7001@trunk"
    assert rules.dial_endpoint("Local/{number}@ctx", "{number}") == "Local/{number}@ctx"  # never re-expanded
