"""Handler unit tests: real ARI events recorded from the sandbox, replayed against a fake REST side.

The fixtures in tests/fixtures/ari/ were recorded by running the live tests
with ARI_RECORD_EVENTS=<file>; "{conference}" stands for the room's id.
"""

import asyncio
import logging
import uuid

import pytest
from asgiref.sync import sync_to_async

from conferences.ari import pin_throttle
from conferences.ari.client import AriError, AriNotFound
from conferences.ari.handlers import ConferenceApp
from conferences.ari.rules import entry_refusal, parse_room_args, role_from_channelvars, role_from_value, stasis_args
from conferences.models import Conference, ConferenceEvent, Participant
from tests.recorded import FakeAri, Timers, caller_events, load

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def app(server):
    ari = FakeAri()
    app = ConferenceApp(server_id=server.pk, app_name="conference", ari=ari, schedule=lambda delay, event: None)
    return app


async def replay(app, events):
    for event in events:
        await app.process_event(event)


def participants(conference):
    return list(Participant.objects.filter(conference=conference).order_by("id"))


async def test_join_and_hangup(app, make_conference):
    room = await sync_to_async(make_conference)("100")
    await replay(app, load("join_and_hangup", room))
    [alice] = await sync_to_async(participants)(room)
    assert (alice.caller_name, alice.caller_number, alice.role) == ("Alice Smith", "201", "participant")
    assert alice.left_reason == "hangup" and alice.left_at is not None
    assert app.ari.called("create_bridge") == [(f"conference-conference-{room.pk}", "conference 100")]
    assert app.ari.called("set_variable") == [(alice.channel_id, "TALK_DETECT(set)", "")]
    assert app.ari.called("add_channel") == [(f"conference-conference-{room.pk}", alice.channel_id)]
    # Alone: music on hold; once nobody is left: stopped.
    await app.music.idle()
    assert app.ari.called("start_bridge_moh") == [(f"conference-conference-{room.pk}", "default")]
    assert app.ari.called("stop_bridge_moh") == [(f"conference-conference-{room.pk}",)]
    room = await sync_to_async(Conference.objects.get)(pk=room.pk)
    assert room.seq == 5  # joined, conference.updated, moh on, left (moh off with it), conference.updated


async def test_replaying_the_same_events_twice_changes_nothing(app, make_conference):
    room = await sync_to_async(make_conference)("100")
    events = load("join_and_hangup", room)
    await replay(app, events)
    seq = (await sync_to_async(Conference.objects.get)(pk=room.pk)).seq
    app.state.calls.clear()  # a worker that forgot everything: the database alone keeps it idempotent
    await replay(app, events)
    assert len(await sync_to_async(participants)(room)) == 1
    assert (await sync_to_async(Conference.objects.get)(pk=room.pk)).seq == seq


async def test_right_pin_admits_after_the_digits(app, make_conference):
    room = await sync_to_async(make_conference)("108", pin="4321")
    await replay(app, load("right_pin", room))
    [caller] = await sync_to_async(participants)(room)
    assert caller.left_at is None
    assert app.ari.called("play")[0][1] == "sound:conf-getpin"
    assert len(app.ari.called("add_channel")) == 1


async def test_wrong_pin_three_times_hangs_up(app, make_conference):
    room = await sync_to_async(make_conference)("109", pin="4321")
    await replay(app, load("wrong_pin", room))
    assert await sync_to_async(participants)(room) == []
    sounds = [call[1] for call in app.ari.called("play")]
    assert sounds.count("sound:conf-invalidpin") == 3
    assert sounds.count("sound:conf-getpin") == 3
    assert len(app.ari.called("hangup")) == 1
    assert app.ari.called("add_channel") == []
    refused = await sync_to_async(list)(ConferenceEvent.objects.filter(conference=room, kind="refused"))
    assert [event.details["reason"] for event in refused] == ["wrong PIN"]


async def test_talking_follows_the_detector(app, make_conference):
    room = await sync_to_async(make_conference)("104")
    events = load("talking", room)
    started = next(i for i, e in enumerate(events) if e["type"] == "ChannelTalkingStarted")
    await replay(app, events[: started + 1])
    talker = await sync_to_async(Participant.objects.get)(channel_id=events[started]["channel"]["id"])
    assert talker.talking is True
    await replay(app, events[started + 1 :])
    talker = await sync_to_async(Participant.objects.get)(pk=talker.pk)
    assert talker.left_at is not None and talker.talking is False


async def test_unknown_room_plays_conf_invalid_then_hangs_up(app, make_conference):
    room = await sync_to_async(make_conference)("100")
    start = next(e for e in load("join_and_hangup", room) if e["type"] == "StasisStart")
    start["args"] = ["999"]
    await app.process_event(start)
    [(channel_id, media, playback_id)] = app.ari.called("play")
    assert media == "sound:conf-invalid"
    await app.process_event({"type": "PlaybackFinished", "application": "conference", "playback": {"id": playback_id}})
    assert app.ari.called("hangup") == [(channel_id,)]


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"type": "StasisStart"},
        {"type": "StasisStart", "application": "conference", "channel": {"id": "x"}, "args": ["<script>"]},
        {"type": "StasisStart", "application": "conference", "channel": {"id": "x"}, "args": ["1" * 500]},
        {"type": "ChannelEnteredBridge", "application": "conference", "bridge": {"id": "someone-elses"}},
        {"type": "ChannelEnteredBridge", "application": "conference", "bridge": None, "channel": None},
        {"type": "ChannelDtmfReceived", "application": "conference", "channel": {"id": "nobody"}, "digit": "5"},
        {"type": "ChannelTalkingStarted", "application": "conference", "channel": {"id": "nobody"}},
        {"type": "_PinTimeout", "channel_id": "nobody", "attempt": 1, "digits": 0},
        {"type": "StasisStart", "application": "another-app", "channel": {"id": "y"}, "args": ["100"]},
    ],
)
async def test_odd_and_foreign_events_are_harmless(app, make_conference, event):
    await sync_to_async(make_conference)("100")
    await app.process_event(event)
    assert await sync_to_async(Participant.objects.count)() == 0
    assert app.ari.called("add_channel") == []


async def test_an_ari_error_during_admission_is_contained(app, make_conference):
    room = await sync_to_async(make_conference)("100")
    events = load("join_and_hangup", room)
    app.ari.fail["add_channel"] = AriError("POST /bridges/x/addChannel: 500 boom", status=500)
    await app.process_event(next(e for e in events if e["type"] == "StasisStart"))
    assert app.admissions == {}
    assert await sync_to_async(participants)(room) == []


async def test_a_vanished_channel_is_a_normal_race(app, make_conference, caplog):
    room = await sync_to_async(make_conference)("100")
    events = load("join_and_hangup", room)
    app.ari.fail["set_variable"] = AriNotFound("gone", status=404)
    await app.process_event(next(e for e in events if e["type"] == "StasisStart"))
    assert "ERROR" not in caplog.text


async def test_resync_marks_lost_adopts_unknown_and_removes_empty_bridges(server, make_conference, make_participant):
    room = await sync_to_async(make_conference)("100")
    empty_room = await sync_to_async(make_conference)("101")
    gone = await sync_to_async(make_participant)(room, "gone-1")
    stays = await sync_to_async(make_participant)(room, "stays-1", talking=True)
    bridge = f"conference-conference-{room.pk}"
    stasis = {"app_name": "Stasis", "app_data": "conference,100", "context": "conferences"}
    ari = FakeAri(
        channels=[
            {"id": "stays-1", "name": "Local/100@conferences-1;2", "caller": {"name": "S", "number": "1"}},
            {
                "id": "new-1",
                "name": "Local/100@conferences-admin-2;2",
                "caller": {"name": "N", "number": "2"},
                "dialplan": stasis,
                "channelvars": {"CONFERENCE_ROLE": "admin"},
            },
            {  # an ari.conf without channelvars: the role is asked for
                "id": "new-2",
                "name": "Local/100@conferences-admin-4;2",
                "caller": {"name": "M", "number": "4"},
                "dialplan": stasis,
            },
            {
                "id": "waiting-1",
                "name": "Local/100@conferences-3;2",
                "state": "Up",
                "caller": {},
                "dialplan": stasis,
                "channelvars": {"CONFERENCE_ROLE": "participant"},
            },
            {  # an old dialplan's Stasis(conference,100,admin): refused, never an admin
                "id": "waiting-2",
                "name": "Local/100,admin@test-unfiltered-5;2",
                "state": "Up",
                "caller": {"number": "5"},
                "dialplan": {"app_name": "Stasis", "app_data": "conference,100,admin"},
                "channelvars": {"CONFERENCE_ROLE": ""},
            },
        ],
        bridges=[
            {"id": bridge, "channels": ["stays-1", "new-1", "new-2"]},
            {"id": f"conference-conference-{empty_room.pk}", "channels": []},
            {"id": "not-ours", "channels": ["stays-1"]},
        ],
    )
    ari.variables[("new-2", "CONFERENCE_ROLE")] = "admin"
    app = ConferenceApp(server_id=server.pk, app_name="conference", ari=ari, schedule=lambda delay, event: None)
    await app.resync()
    assert (await sync_to_async(Participant.objects.get)(pk=gone.pk)).left_reason == "lost"
    kept = await sync_to_async(Participant.objects.get)(pk=stays.pk)
    assert kept.left_at is None and kept.talking is False
    adopted = await sync_to_async(Participant.objects.get)(channel_id="new-1")
    assert adopted.role == "admin" and adopted.caller_name == "N"
    assert (await sync_to_async(Participant.objects.get)(channel_id="new-2")).role == "admin"
    assert [call[0] for call in ari.called("get_variable")] == ["new-2"]
    assert ari.called("destroy_bridge") == [(f"conference-conference-{empty_room.pk}",)]
    await app.music.idle()
    assert ari.called("stop_bridge_moh") == [(bridge,)]  # three present: no music
    assert ari.called("start_bridge_moh") == []
    assert ari.called("add_channel") == [(bridge, "waiting-1")]  # cut-short admission done again
    assert ("waiting-2", "sound:conf-invalid") in [call[:2] for call in ari.called("play")]
    refused = await sync_to_async(list)(ConferenceEvent.objects.filter(conference=room, kind="refused"))
    assert [(e.details["reason"], e.details["caller_number"]) for e in refused] == [("invalid arguments", "5")]


@pytest.mark.parametrize(
    "args,expected",
    [
        (["100"], ("100", None)),
        (["1" * 32], ("1" * 32, None)),
        (["100", "admin"], ("100", "extra arguments")),  # Stasis(conference,100,admin)
        (["100", ""], ("100", "extra arguments")),  # a trailing comma is an argument too
        (["100", "participant"], ("100", "extra arguments")),
        (["x", "admin"], (None, "extra arguments")),
        ([], (None, "no room number")),
        ([""], (None, "room number not digits")),
        (["100a"], (None, "room number not digits")),
        (["100#"], (None, "room number not digits")),
        (["*100"], (None, "room number not digits")),
        ([" 100"], (None, "room number not digits")),
        (["100,admin"], (None, "room number not digits")),  # a quoted comma stays in one argument
        (["１２"], (None, "room number not digits")),  # fullwidth digits
        (["١٢"], (None, "room number not digits")),  # Arabic-Indic digits: str.isdigit() says yes
        (["²"], (None, "room number not digits")),
        (["1" * 33], (None, "room number too long")),
        (["12; DROP"], (None, "room number not digits")),
        ([100], (None, "room number not digits")),  # not text at all
    ],
)
def test_room_arguments(args, expected):
    assert parse_room_args(args) == expected


def test_stasis_arguments_from_the_dialplan_snapshot():
    assert stasis_args({"dialplan": {"app_name": "Stasis", "app_data": "conference,7,admin"}}, "conference") == [
        "7",
        "admin",
    ]
    assert stasis_args({"dialplan": {"app_name": "Stasis", "app_data": "conference,7"}}, "conference") == ["7"]
    assert stasis_args({"dialplan": {"app_name": "Stasis", "app_data": "other,7"}}, "conference") is None
    assert stasis_args({"dialplan": {"app_name": "Playback", "app_data": "x"}}, "conference") is None


@pytest.mark.parametrize(
    "value,role",
    [
        ("admin", "admin"),
        ("ADMIN ", "admin"),
        ("participant", "participant"),
        ("", "participant"),
        (None, "participant"),
        ("administrator", "participant"),
        ("admin,admin", "participant"),
        (["admin"], "participant"),
    ],
)
def test_role_from_the_variable(value, role):
    assert role_from_value(value) == role


@pytest.mark.parametrize(
    "channel,role",
    [
        ({"channelvars": {"CONFERENCE_ROLE": "admin"}}, "admin"),
        ({"channelvars": {"CONFERENCE_ROLE": ""}}, "participant"),  # configured, not set
        ({"channelvars": {"CONFERENCE_ROLE": "participant", "OTHER": "admin"}}, "participant"),
        ({"channelvars": {"OTHER": "admin"}}, None),  # channelvars without CONFERENCE_ROLE: ask
        ({"channelvars": None}, None),
        ({"channelvars": "CONFERENCE_ROLE=admin"}, None),
        ({}, None),  # ari.conf without channelvars: ask
    ],
)
def test_role_from_channelvars(channel, role):
    assert role_from_channelvars(channel) == role


@pytest.mark.parametrize(
    "role,locked,max_participants,taken,reason",
    [
        ("participant", False, 0, 500, None),  # 0: no limit
        ("participant", False, 3, 2, None),
        ("participant", False, 3, 3, "full"),
        ("participant", False, 3, 4, "full"),
        ("participant", True, 0, 0, "locked"),
        ("participant", True, 3, 3, "locked"),  # the lock is named first
        ("admin", True, 3, 9, None),  # an admin passes both
        ("admin", False, 1, 1, None),
    ],
)
def test_entry_rules(role, locked, max_participants, taken, reason):
    assert entry_refusal(role=role, locked=locked, max_participants=max_participants, taken=taken) == reason


# --- caller-side trust, PIN re-checks and the PIN throttle -------------------------------


@pytest.fixture(autouse=True)
def _own_cache(settings):
    """A cache of this test's own: wrong-PIN counts never carry over from another test."""
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": f"h{uuid.uuid4().hex}"}
    }


@pytest.fixture
def timers():
    return Timers()


@pytest.fixture
def pin_app(server, timers):
    return ConferenceApp(server_id=server.pk, app_name="conference", ari=FakeAri(), schedule=timers)


async def test_dialled_admin_argument_is_refused_and_recorded(app, make_conference, caplog):
    """Stasis(conference,133,admin) from a dialplan that passes ${EXTEN} unfiltered (real events)."""
    room = await sync_to_async(make_conference)("133", locked=True)
    events = load("invalid_arguments", room)
    start = next(e for e in events if e["type"] == "StasisStart")
    assert start["args"] == ["133", "admin"]
    caplog.set_level(logging.INFO, logger="conferences.ari.handlers")
    await replay(app, events)
    assert await sync_to_async(participants)(room) == []
    assert app.ari.called("add_channel") == [] and app.ari.called("get_variable") == []
    assert [call[1] for call in app.ari.called("play")] == ["sound:conf-invalid"]
    assert app.ari.called("hangup") == [(start["channel"]["id"],)]
    refused = await sync_to_async(list)(ConferenceEvent.objects.filter(conference=room, kind="refused"))
    assert [event.details["reason"] for event in refused] == ["invalid arguments"]
    assert f"channel {start['channel']['id']} refused: extra arguments" in caplog.text


@pytest.mark.parametrize(
    "args",
    [["100", "admin"], ["100", ""], ["100a"], ["１００"], [""], [], ["1" * 40], ["100", "admin", "x"]],
)
async def test_hostile_stasis_arguments_are_refused_with_conf_invalid(app, make_conference, caplog, args):
    room = await sync_to_async(make_conference)("100")
    start, _keys = caller_events(room, "hostile-1", "666", fixture="join_and_hangup")
    start["args"] = args
    start["channel"]["channelvars"] = {"CONFERENCE_ROLE": "admin"}  # even a trusted admin's channel
    await app.process_event(start)
    assert [call[1] for call in app.ari.called("play")] == ["sound:conf-invalid"]
    assert app.ari.called("add_channel") == [] and app.admissions == {}
    reasons = await sync_to_async(
        lambda: list(ConferenceEvent.objects.filter(conference=room).values_list("details__reason", flat=True))
    )()
    assert reasons == (["invalid arguments"] if args[:1] == ["100"] else [])
    assert "channel hostile-1 refused" in caplog.text


async def test_locked_room_refuses_and_admits_the_admin(app, make_conference):
    """Recorded: the admin context's caller carries CONFERENCE_ROLE=admin in its channelvars."""
    room = await sync_to_async(make_conference)("106", locked=True)
    events = load("locked_room_and_admin", room)
    assert [e["args"] for e in events if e["type"] == "StasisStart"] == [["106"], ["106"]]
    await replay(app, events)
    [chair] = await sync_to_async(participants)(room)
    assert chair.role == "admin" and chair.caller_name == "Chair"
    assert [call[1] for call in app.ari.called("play")] == ["sound:conf-locked"]
    assert len(app.ari.called("hangup")) == 1
    assert app.ari.called("get_variable") == []  # channelvars said it


async def test_without_channelvars_the_role_is_asked_of_asterisk(app, make_conference):
    """A PBX whose ari.conf lacks channelvars: GET /channels/{id}/variable decides."""
    room = await sync_to_async(make_conference)("106", locked=True)
    events = load("locked_room_and_admin", room)
    for event in events:
        (event.get("channel") or {}).pop("channelvars", None)
    starts = [e for e in events if e["type"] == "StasisStart"]
    late, chair = (start["channel"]["id"] for start in starts)
    app.ari.variables[(chair, "CONFERENCE_ROLE")] = "admin"
    await replay(app, events)
    assert sorted(app.ari.called("get_variable")) == sorted([(late, "CONFERENCE_ROLE"), (chair, "CONFERENCE_ROLE")])
    [admitted] = await sync_to_async(participants)(room)
    assert (admitted.channel_id, admitted.role) == (chair, "admin")


async def test_an_unreadable_role_is_no_admin(app, make_conference, caplog):
    room = await sync_to_async(make_conference)("106", locked=True)
    events = load("locked_room_and_admin", room)
    chair = next(e for e in events if e["type"] == "StasisStart" and e["channel"]["caller"]["name"] == "Chair")
    chair["channel"].pop("channelvars", None)
    app.ari.fail["get_variable"] = AriError("GET /channels/x/variable: timed out after 5.0 s")
    await app.process_event(chair)
    assert [call[1] for call in app.ari.called("play")] == ["sound:conf-locked"]
    assert "treated as a participant" in caplog.text


async def test_room_locked_during_the_pin_prompt_refuses_the_right_pin(pin_app, make_conference):
    room = await sync_to_async(make_conference)("108", pin="4321")
    start, keys = caller_events(room, "typing-1", "201")
    await pin_app.process_event(start)
    assert pin_app.ari.called("play")[-1][1] == "sound:conf-getpin"
    await sync_to_async(Conference.objects.filter(pk=room.pk).update)(locked=True)  # a moderator locks
    await replay(pin_app, keys("4321#"))
    assert pin_app.ari.called("add_channel") == []
    assert pin_app.ari.called("play")[-1][1] == "sound:conf-locked"
    refused = await sync_to_async(list)(ConferenceEvent.objects.filter(conference=room, kind="refused"))
    assert [event.details["reason"] for event in refused] == ["locked"]


async def test_concurrent_right_pins_fill_the_last_seat_once(pin_app, make_conference, make_participant):
    room = await sync_to_async(make_conference)("108", pin="4321", max_participants=2)
    present = await sync_to_async(make_participant)(room, "seated-1")
    callers = [caller_events(room, f"typing-{i}", f"20{i}") for i in range(3)]
    for start, _keys in callers:
        await pin_app.process_event(start)  # one seat free: all three get the prompt
    assert len(pin_app.admissions) == 3
    for _start, keys in callers:
        await replay(pin_app, keys("4321#"))
    assert pin_app.ari.called("add_channel") == [(f"conference-conference-{room.pk}", "typing-0")]
    refused = await sync_to_async(list)(ConferenceEvent.objects.filter(conference=room, kind="refused"))
    assert [event.details["reason"] for event in refused] == ["full", "full"]
    assert present.left_at is None


@pytest.fixture
def low_pin_limits(monkeypatch):
    monkeypatch.setattr(pin_throttle, "PIN_FAILS_PER_CALLER", 2)
    monkeypatch.setattr(pin_throttle, "PIN_FAILS_PER_ROOM", 4)
    monkeypatch.setattr(pin_throttle, "PIN_PAUSE", 7.0)


async def test_wrong_pins_across_calls_bring_a_pause_then_a_prompt(pin_app, make_conference, low_pin_limits, timers):
    room = await sync_to_async(make_conference)("108", pin="4321")
    for call in range(2):  # two calls from 555, one wrong PIN each, then they hang up
        start, keys = caller_events(room, f"guess-{call}", "555")
        await pin_app.process_event(start)
        assert [call[1] for call in pin_app.ari.called("play")][-1] == "sound:conf-getpin"  # no pause yet
        await replay(pin_app, keys("1111#"))
        await pin_app.process_event({"type": "StasisEnd", "application": "conference", "channel": start["channel"]})
    timers.pending.clear()
    start, keys = caller_events(room, "guess-2", "555")
    await pin_app.process_event(start)
    # The next call from that number: a prompt, a pause, no PIN prompt yet, digits ignored.
    assert [call[1] for call in pin_app.ari.called("play")][-1] == "sound:one-moment-please"
    [(delay, over)] = timers.of_type("_PinPauseOver")
    assert delay == 7.0
    await replay(pin_app, keys("4321#"))
    assert pin_app.ari.called("add_channel") == []
    # After the pause: the PIN prompt, and the right PIN gets in.
    await pin_app.process_event(over)
    assert [call[1] for call in pin_app.ari.called("play")][-1] == "sound:conf-getpin"
    await replay(pin_app, keys("4321#"))
    assert pin_app.ari.called("add_channel") == [(f"conference-conference-{room.pk}", "guess-2")]
    # The right PIN cleared that number's count: its next call has no pause.
    assert await pin_throttle.failures(room.pk, "555") == (0, 2)


async def test_wrong_pins_within_one_call_pause_the_next_try(pin_app, make_conference, low_pin_limits, timers):
    room = await sync_to_async(make_conference)("108", pin="4321")
    start, keys = caller_events(room, "guess-1", "555")
    await pin_app.process_event(start)
    await replay(pin_app, keys("1111#"))
    assert not timers.of_type("_PinPauseOver")
    await replay(pin_app, keys("2222#"))  # the second wrong PIN reaches the limit
    sounds = [call[1] for call in pin_app.ari.called("play")]
    assert sounds[-2:] == ["sound:conf-invalidpin", "sound:one-moment-please"]
    [(_delay, over)] = timers.of_type("_PinPauseOver")
    stale = [event for _delay, event in timers.of_type("_PinTimeout")]
    for event in stale:  # timers of earlier prompts do not count as tries
        await pin_app.process_event(event)
    assert pin_app.admissions["guess-1"].tries == 2
    await pin_app.process_event(over)
    await pin_app.process_event(over)  # a timer delivered twice asks once
    assert [call[1] for call in pin_app.ari.called("play")].count("sound:conf-getpin") == 3


async def test_wrong_pins_from_many_numbers_pause_every_caller_of_the_room(
    pin_app, make_conference, low_pin_limits, timers
):
    room = await sync_to_async(make_conference)("108", pin="4321")
    other = await sync_to_async(make_conference)("109", pin="4321")
    for n in range(4):  # four numbers, one wrong PIN each: no number reaches its own limit
        start, keys = caller_events(room, f"guess-{n}", f"60{n}")
        await pin_app.process_event(start)
        assert [call[1] for call in pin_app.ari.called("play")][-1] == "sound:conf-getpin"
        await replay(pin_app, keys("9999#"))
    start, _keys = caller_events(room, "fresh-1", "777")  # a number never seen
    await pin_app.process_event(start)
    assert [call[1] for call in pin_app.ari.called("play")][-1] == "sound:one-moment-please"
    start, _keys = caller_events(other, "fresh-2", "777")  # another room: no pause
    await pin_app.process_event(start)
    assert [call[1] for call in pin_app.ari.called("play")][-1] == "sound:conf-getpin"


async def test_the_pin_pause_ends_with_the_window(pin_app, make_conference, low_pin_limits, monkeypatch):
    monkeypatch.setattr(pin_throttle, "PIN_FAIL_WINDOW", 1)
    room = await sync_to_async(make_conference)("108", pin="4321")
    for call in range(2):
        start, keys = caller_events(room, f"guess-{call}", "555")
        await pin_app.process_event(start)
        await replay(pin_app, keys("1111#"))
    assert pin_throttle.pause_for(*await pin_throttle.failures(room.pk, "555")) == 7.0
    await asyncio.sleep(2.1)  # a wrong PIN weighs for one to two windows
    assert await pin_throttle.failures(room.pk, "555") == (0, 0)
    start, keys = caller_events(room, "later-1", "555")
    await pin_app.process_event(start)
    assert [call[1] for call in pin_app.ari.called("play")][-1] == "sound:conf-getpin"
    await replay(pin_app, keys("4321#"))
    assert len(pin_app.ari.called("add_channel")) == 1
