"""Talk time: each talking stretch's length summed per stay (``talk_seconds``), live and in the history.

The rules and the handlers with a recording fake ARI; tests/test_talk_time_live.py measures a far end
that talks for a known time on the sandbox.
"""

import math
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from conferences import broadcast, history, services
from conferences.ari import rules
from conferences.models import Participant
from tests.test_lobby_handlers import channel, enter, leave, new_app, start

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize(
    ("duration", "since", "now", "expected"),
    [
        (2500, None, 10.0, 2.5),  # Asterisk's measurement
        (0, 5.0, 10.0, 0.0),
        (None, 4.0, 10.0, 6.0),  # no duration: the worker's own clock
        ("2500", 4.0, 10.0, 6.0),  # not a number
        (-5, 4.0, 10.0, 6.0),
        (math.nan, 4.0, 10.0, 6.0),
        (1e12, 4.0, 10.0, 6.0),  # years: no measurement
        (True, 4.0, 10.0, 6.0),
        (None, None, 10.0, 0.0),  # nothing known
        (None, 20.0, 10.0, 0.0),  # a clock that went back
    ],
)
def test_a_talking_stretch(duration, since, now, expected):
    assert rules.talk_stretch(duration, since, now) == expected


def talking(channel_id, started, duration=None):
    event = {"type": "ChannelTalkingStarted" if started else "ChannelTalkingFinished", "channel": channel(channel_id)}
    if duration is not None:
        event["duration"] = duration
    return event


@sync_to_async
def seconds(channel_id):
    return Participant.objects.get(channel_id=channel_id).talk_seconds


async def room_of(app, room, number, channel_ids):
    """Callers ``channel_ids`` admitted to room ``number`` and in its bridge, one after the other."""
    for channel_id in channel_ids:
        await app.process_event(start(channel_id, number))
    for i, channel_id in enumerate(channel_ids):
        await enter(app, room, channel_id, list(channel_ids[: i + 1]))


async def test_stretches_add_up_in_the_stay_and_on_the_pages(server, make_conference, monkeypatch):
    frames = []
    monkeypatch.setattr(broadcast, "send_to_room", lambda conference_id, frame: frames.append(frame))
    app = new_app(server)
    room = await sync_to_async(make_conference)("320")
    await app.process_event(start("A", "320"))
    await enter(app, room, "A", ["A"])
    await app.process_event(talking("A", True))
    await app.process_event(talking("A", False, duration=1500))
    await app.process_event(talking("A", True))
    await app.process_event(talking("A", False, duration=2250))
    assert await seconds("A") == pytest.approx(3.75)
    states = [(f["participant"]["talking"], f["participant"]["talk_seconds"]) for f in frames if "participant" in f]
    talk = [state for i, state in enumerate(states) if i == 0 or state != states[i - 1]]  # music on hold aside
    assert talk[talk.index((True, 0.0)) :] == [(True, 0.0), (False, 1.5), (True, 1.5), (False, 3.8)]
    # A bogus finish (no stretch open, a nonsense duration) adds nothing.
    await app.process_event(talking("A", False, duration="lots"))
    assert await seconds("A") == pytest.approx(3.75)


async def test_a_stretch_still_open_is_closed_at_the_leave_and_at_a_moderators_mute(server, make_conference):
    app = new_app(server)
    room = await sync_to_async(make_conference)("321")
    await room_of(app, room, "321", ["A", "B"])
    await app.process_event(talking("A", True))
    app.state.call("A").talking_since -= 4.0  # talking for four seconds now
    await leave(app, room, "A", ["B"])
    assert await seconds("A") == pytest.approx(4.0, abs=0.5)

    await app.process_event(talking("B", True))
    app.state.call("B").talking_since -= 2.0
    b = await sync_to_async(lambda: Participant.objects.get(channel_id="B").pk)()
    assert await app.handle_command({"action": "mute", "conference_id": room.pk, "participant_id": b}) == (True, None)
    assert await seconds("B") == pytest.approx(2.0, abs=0.5)  # no ChannelTalkingFinished comes after a mute


def test_the_attendance_and_its_csv_count_the_time_talked(conference, make_participant, admin_client):
    now = timezone.now()
    stays = [
        {"joined_at": now - timedelta(minutes=10), "left_at": now - timedelta(minutes=5), "left_reason": "hangup",
         "caller_name": "Ann", "caller_number": "201", "talk_seconds": 30.4},
        {"joined_at": now - timedelta(minutes=5), "left_at": now, "left_reason": "hangup",
         "caller_name": "Ann", "caller_number": "201", "talk_seconds": 29.6},
    ]  # fmt: skip
    [meeting] = history.meetings(stays, now)
    [ann] = meeting.attendees
    assert ann.talked == timedelta(seconds=60) and ann.talked_display == "0:01:00"
    services.participant_join(conference_id=conference.pk, channel_id="c1", caller_name="Bob", caller_number="202")
    bob = Participant.objects.get(channel_id="c1")
    services.participant_talked(participant_id=bob.pk, seconds=12.25)
    services.participant_leave(participant_id=bob.pk, reason="hangup", talked=0.5)
    assert Participant.objects.get(pk=bob.pk).talk_seconds == pytest.approx(12.75)
    response = admin_client.get(f"/conferences/{conference.slug}/history/")
    assert b'data-role="talked">0:00:12<' in response.content
    meeting_id = bob.meeting_id
    csv = b"".join(admin_client.get(f"/conferences/{conference.slug}/history/?meeting={meeting_id}&format=csv"))
    header, row = csv.decode().splitlines()[:2]
    assert header.split(",")[-1] == "seconds_talked" and row.split(",")[-1] == "12.8"


async def test_a_mute_closes_the_stretch_once_even_when_its_finish_comes_after_or_the_reset_fails(
    server, make_conference
):
    from conferences.ari.client import AriError

    app = new_app(server)
    room = await sync_to_async(make_conference)("322")
    await app.process_event(start("A", "322"))
    await enter(app, room, "A", ["A"])
    await app.process_event(talking("A", True))
    app.state.call("A").talking_since -= 3.0
    a = await sync_to_async(lambda: Participant.objects.get(channel_id="A").pk)()
    assert await app.handle_command({"action": "mute", "conference_id": room.pk, "participant_id": a}) == (True, None)
    await app.process_event(talking("A", False, duration=3500))  # raised just before the mute took effect
    assert await seconds("A") == pytest.approx(3.0, abs=0.5)  # once, not 6.5

    # The detector's reset fails after the mute: the stretch was taken already; the leave adds nothing.
    await app.handle_command({"action": "unmute", "conference_id": room.pk, "participant_id": a})
    await app.process_event(talking("A", True))
    app.state.call("A").talking_since -= 2.0
    app.ari.fail["set_variable"] = AriError("HTTP 500", status=500)
    assert (await app.handle_command({"action": "mute", "conference_id": room.pk, "participant_id": a}))[0] is False
    assert app.state.call("A").talking is False  # no stretch left open to grow while muted
    del app.ari.fail["set_variable"]
    await leave(app, room, "A", [])
    assert await seconds("A") == pytest.approx(3.0, abs=0.5)  # the 2 s of that stretch are lost, nothing made up


def test_a_duration_too_large_for_a_float_is_no_measurement():
    assert rules.talk_stretch(10**400, 4.0, 10.0) == 6.0
    assert rules.plausible_seconds(float("inf"), 1.0, 100.0) is None


async def test_without_asterisks_duration_a_stretch_is_timed_by_when_its_events_arrived(server, make_conference):
    """A finish that waited in its room's lane (other rooms' work, a slow database) is not counted longer:
    the worker's own clock reads the times the two events were read off ARI's socket."""
    import time

    from conferences.ari.lanes import RECEIVED_AT

    app = new_app(server)
    room = await sync_to_async(make_conference)("324")
    await app.process_event(start("A", "324"))
    await enter(app, room, "A", ["A"])
    read = time.monotonic() - 10.0
    await app.process_event({**talking("A", True), RECEIVED_AT: read})
    await app.process_event({**talking("A", False), RECEIVED_AT: read + 3.0})  # handled 7 s after it came
    assert await seconds("A") == pytest.approx(3.0)
    await app.process_event({**talking("A", True), RECEIVED_AT: read + 5.0})
    await leave(app, room, "A", [])  # the leave, read now: the open stretch ran 5 s
    assert await seconds("A") == pytest.approx(8.0, abs=0.5)


async def test_mute_all_closes_the_talkers_stretches_and_restarts_their_detectors_beside_its_write(
    server, make_conference
):
    """Mute all writes the cut-short stretches with the mutes, and restarts each talker's detector (remove,
    then set, in that order) while that write runs; a caller whose restart fails is muted all the same."""
    from conferences.ari.client import AriNotFound

    app = new_app(server)
    room = await sync_to_async(make_conference)("323")
    await room_of(app, room, "323", ["A", "B", "C"])
    for channel_id in ("A", "B"):
        await app.process_event(talking(channel_id, True))
        app.state.call(channel_id).talking_since -= 2.0
    app.ari.calls.clear()
    assert await app.handle_command({"action": "mute_all", "conference_id": room.pk}) == (True, None)
    restarts = [(c, v) for c, v, _value in app.ari.called("set_variable")]
    for channel_id in ("A", "B"):
        assert [v for c, v in restarts if c == channel_id] == ["TALK_DETECT(remove)", "TALK_DETECT(set)"]
        assert await seconds(channel_id) == pytest.approx(2.0, abs=0.5)
    assert not [c for c, _v in restarts if c == "C"]  # silent: its detector is left alone
    rows = await sync_to_async(lambda: set(Participant.objects.values_list("channel_id", "muted", "talking")))()
    assert rows == {("A", True, False), ("B", True, False), ("C", True, False)}

    assert await app.handle_command({"action": "unmute_all", "conference_id": room.pk}) == (True, None)
    await app.process_event(talking("A", True))
    app.state.call("A").talking_since -= 1.0
    app.ari.fail["set_variable"] = AriNotFound("gone", status=404)
    assert await app.handle_command({"action": "mute_all", "conference_id": room.pk}) == (True, None)
    assert await seconds("A") == pytest.approx(3.0, abs=0.5)
    assert await sync_to_async(lambda: Participant.objects.get(channel_id="A").muted)() is True


async def test_a_stay_ended_at_the_bridge_is_not_written_again_at_stasis_end(server, make_conference, monkeypatch):
    """ChannelLeftBridge writes the end of the stay; the StasisEnd (and ChannelDestroyed) that follow make
    no database hop of their own. A caller that leaves the application without a bridge event first still
    has its stay ended by the StasisEnd."""
    from conferences.ari import store

    writes = []
    real = store.record_leave
    monkeypatch.setattr(store, "record_leave", lambda *a, **k: writes.append(a[1]) or real(*a, **k))
    app = new_app(server)
    room = await sync_to_async(make_conference)("324")
    await room_of(app, room, "324", ["A", "B"])
    await leave(app, room, "A", ["B"])
    await app.process_event({"type": "StasisEnd", "channel": channel("A")})
    await app.process_event({"type": "ChannelDestroyed", "channel": channel("A")})
    assert writes == ["A"]
    await app.process_event({"type": "StasisEnd", "channel": channel("B")})  # no ChannelLeftBridge first
    assert writes == ["A", "B"]
    left = await sync_to_async(lambda: dict(Participant.objects.values_list("channel_id", "left_reason")))()
    assert left == {"A": "hangup", "B": "hangup"}
