"""Handler unit tests: real ARI events recorded from the sandbox, replayed against a fake REST side.

The fixtures in tests/fixtures/ari/ were recorded by running the live tests
with ARI_RECORD_EVENTS=<file>; "{conference}" stands for the room's id.
"""

import json
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async

from conferences.ari.client import AriError, AriNotFound
from conferences.ari.handlers import ConferenceApp, parse_room_args, stasis_args
from conferences.models import Conference, ConferenceEvent, Participant

pytestmark = pytest.mark.django_db(transaction=True)

FIXTURES = Path(__file__).parent / "fixtures" / "ari"


class FakeAri:
    """Records REST calls; answers like Asterisk does; can be told to fail."""

    def __init__(self, channels=(), bridges=()):
        self.calls = []
        self.fail = {}  # method name -> exception
        self._channels = list(channels)
        self._bridges = list(bridges)

    def __getattr__(self, name):
        async def call(*args, **kwargs):
            self.calls.append((name, *args))
            if name in self.fail:
                raise self.fail[name]
            if name == "create_bridge":
                return {"id": args[0], "channels": []}
            if name == "channels":
                return self._channels
            if name == "bridges":
                return self._bridges
            return None

        return call

    def called(self, name):
        return [call[1:] for call in self.calls if call[0] == name]


def load(name, conference):
    text = (FIXTURES / f"{name}.json").read_text().replace("{conference}", str(conference.pk))
    return json.loads(text)


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
    assert app.ari.called("start_bridge_moh") == [(f"conference-conference-{room.pk}", "default")]
    assert app.ari.called("stop_bridge_moh") == [(f"conference-conference-{room.pk}",)]
    room = await sync_to_async(Conference.objects.get)(pk=room.pk)
    assert room.seq == 5  # joined, conference.updated, moh on, left (moh off with it), conference.updated


async def test_replaying_the_same_events_twice_changes_nothing(app, make_conference):
    room = await sync_to_async(make_conference)("100")
    events = load("join_and_hangup", room)
    await replay(app, events)
    seq = (await sync_to_async(Conference.objects.get)(pk=room.pk)).seq
    app.admissions.clear()
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


async def test_locked_room_refuses_and_admits_the_admin(app, make_conference):
    room = await sync_to_async(make_conference)("106", locked=True)
    await replay(app, load("locked_room_and_admin", room))
    [chair] = await sync_to_async(participants)(room)
    assert chair.role == "admin" and chair.caller_name == "Chair"
    assert [call[1] for call in app.ari.called("play")] == ["sound:conf-locked"]
    assert len(app.ari.called("hangup")) == 1


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
    dialplan = {"app_name": "Stasis", "app_data": "conference,100,admin", "context": "conferences-admin"}
    ari = FakeAri(
        channels=[
            {"id": "stays-1", "name": "Local/100@conferences-1;2", "caller": {"name": "S", "number": "1"}},
            {
                "id": "new-1",
                "name": "Local/100@conferences-2;2",
                "caller": {"name": "N", "number": "2"},
                "dialplan": dialplan,
            },
            {
                "id": "waiting-1",
                "name": "Local/100@conferences-3;2",
                "state": "Up",
                "caller": {},
                "dialplan": {"app_name": "Stasis", "app_data": "conference,100"},
            },
        ],
        bridges=[
            {"id": bridge, "channels": ["stays-1", "new-1"]},
            {"id": f"conference-conference-{empty_room.pk}", "channels": []},
            {"id": "not-ours", "channels": ["stays-1"]},
        ],
    )
    app = ConferenceApp(server_id=server.pk, app_name="conference", ari=ari, schedule=lambda delay, event: None)
    await app.resync()
    assert (await sync_to_async(Participant.objects.get)(pk=gone.pk)).left_reason == "lost"
    kept = await sync_to_async(Participant.objects.get)(pk=stays.pk)
    assert kept.left_at is None and kept.talking is False
    adopted = await sync_to_async(Participant.objects.get)(channel_id="new-1")
    assert adopted.role == "admin" and adopted.caller_name == "N"
    assert ari.called("destroy_bridge") == [(f"conference-conference-{empty_room.pk}",)]
    assert ari.called("stop_bridge_moh") == [(bridge,)]  # two present: no music
    assert ari.called("start_bridge_moh") == []
    assert ari.called("add_channel") == [(bridge, "waiting-1")]  # cut-short admission done again


def test_room_arguments():
    assert parse_room_args(["100"]) == ("100", "participant")
    assert parse_room_args(["100", "admin"]) == ("100", "admin")
    assert parse_room_args(["100", "ADMIN "]) == ("100", "admin")
    assert parse_room_args([]) == (None, "participant")
    assert parse_room_args(["１２"]) == (None, "participant")  # non-ASCII digits
    assert parse_room_args(["12; DROP"]) == (None, "participant")
    assert stasis_args({"dialplan": {"app_name": "Stasis", "app_data": "conference,7,admin"}}, "conference") == [
        "7",
        "admin",
    ]
    assert stasis_args({"dialplan": {"app_name": "Stasis", "app_data": "other,7"}}, "conference") is None
    assert stasis_args({"dialplan": {"app_name": "Playback", "app_data": "x"}}, "conference") is None
