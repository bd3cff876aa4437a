"""The lobby and the leader in the worker's handlers, with a recording fake ARI: the races a busy PBX makes.

Each case is one an attacker's review of the feature found (a hang-up, a
moderator or a database failure at the worst moment); tests/test_lobby.py
runs the common paths against the real sandbox.
"""

import pytest
from asgiref.sync import sync_to_async

from conferences.ari import rules, store
from conferences.ari.calls import Phase
from conferences.ari.client import AriError
from conferences.ari.effects import DatabaseUnavailable
from conferences.ari.handlers import ConferenceApp
from conferences.models import Conference, Participant
from tests.recorded import FakeAri

pytestmark = pytest.mark.django_db(transaction=True)


def new_app(server, **ari):
    return ConferenceApp(server_id=server.pk, app_name="conference", ari=FakeAri(**ari), schedule=lambda d, e: None)


@pytest.fixture
def app(server):
    return new_app(server)


def channel(channel_id, role=None, number=None):
    json = {
        "id": channel_id,
        "name": f"PJSIP/{channel_id}",
        "state": "Up",
        "caller": {"name": channel_id, "number": channel_id},
        "channelvars": {"CONFERENCE_ROLE": role or ""},
    }
    if number:
        json["dialplan"] = {"app_name": "Stasis", "app_data": f"conference,{number}"}
    return json


def start(channel_id, number, role=None):
    return {"type": "StasisStart", "channel": channel(channel_id, role), "args": [number]}


def bridge_event(kind, room, channel_id, members, role=None):
    bridge = {"id": rules.room_bridge_id("conference", room.pk), "channels": members}
    return {"type": kind, "bridge": bridge, "channel": channel(channel_id, role)}


async def enter(app, room, channel_id, members, role=None):
    await app.process_event(bridge_event("ChannelEnteredBridge", room, channel_id, members, role))


async def leave(app, room, channel_id, members, role=None):
    await app.process_event(bridge_event("ChannelLeftBridge", room, channel_id, members, role))


@sync_to_async
def rows(room):
    return {p.channel_id: (p.status, p.waiting_for, p.left_reason) for p in Participant.objects.filter(conference=room)}


@sync_to_async
def pk_of(channel_id):
    return Participant.objects.get(channel_id=channel_id).pk


async def command(app, room, action, participant=None):
    return await app.handle_command(
        {"action": action, "conference_id": room.pk, "participant_id": participant, "actor_id": None}
    )


def added(app):
    return [channel_id for _bridge, channel_id in app.ari.called("add_channel")]


async def test_a_database_failure_after_the_room_ended_repeats_into_the_same_end(app, make_conference):
    """The end's facts are read first and its writes come last: the repeated event does the same again."""
    room = await sync_to_async(make_conference)("300", when_leader_leaves="end")
    await app.process_event(start("L", "300", "admin"))
    await enter(app, room, "L", ["L"], "admin")
    await app.process_event(start("A", "300"))
    await enter(app, room, "A", ["L", "A"])
    real, written, failed = app.effects.db, [], []

    async def flaky(func, *args, **kwargs):
        if written and not failed:  # the database goes away right after the end was written
            failed.append(func)
            raise DatabaseUnavailable("gone")
        result = await real(func, *args, **kwargs)
        written.extend([func] if func is store.end_with_leader else [])
        return result

    app.effects.db = flaky
    event = bridge_event("ChannelLeftBridge", room, "L", ["A"], "admin")
    try:
        await app.process_event(event)
    except DatabaseUnavailable:
        await app.process_event(event)  # the lane's repeat
    assert (await rows(room))["A"] == ("present", "", "ended")
    assert [channel_id for _bridge, channel_id in app.ari.called("remove_channel")] == ["A"]
    assert len(app.ari.called("play")) == 1 and app.state.call("A").phase == Phase.LEAVING


async def test_a_caller_arriving_while_the_waiting_are_let_in_comes_straight_in(app, make_conference):
    room = await sync_to_async(make_conference)("301", wait_for_leader=True)
    await app.process_event(start("A", "301"))
    await app.process_event(start("L", "301", "admin"))
    await enter(app, room, "L", ["L"], "admin")  # A is released: on its way in, its row still waiting
    await app.process_event(start("C", "301"))  # before A's ChannelEnteredBridge
    assert app.state.call("C").phase == Phase.ENTERING
    await enter(app, room, "A", ["L", "A"])
    await enter(app, room, "C", ["L", "A", "C"])
    assert {cid: status for cid, (status, _for, _reason) in (await rows(room)).items()} == {
        "A": "present",
        "C": "present",
        "L": "present",
    }


async def test_opening_the_room_keeps_to_its_max_participants(app, make_conference):
    room = await sync_to_async(make_conference)("302", wait_for_leader=True, max_participants=3)
    for n in range(5):
        await app.process_event(start(f"W{n}", "302"))
    await app.process_event(start("L", "302", "admin"))
    await enter(app, room, "L", ["L"], "admin")
    assert added(app) == ["L", "W0", "W1"]  # the leader and two more: three
    assert [c.channel_id for c in app.state.waiting(room.pk, rules.LEADER)] == ["W2", "W3", "W4"]


async def test_a_caller_let_in_while_the_leader_leaves_waits_with_the_others(app, make_conference):
    room = await sync_to_async(make_conference)("303", when_leader_leaves="wait", lobby=True)
    await app.process_event(start("L", "303", "admin"))
    await enter(app, room, "L", ["L"], "admin")
    await app.process_event(start("A", "303"))  # in the lobby
    await sync_to_async(Conference.objects.filter(pk=room.pk).update)(lobby=False)
    await app.process_event(start("B", "303"))
    await enter(app, room, "B", ["L", "B"])
    assert await command(app, room, "admit", await pk_of("A")) == (True, None)
    assert app.state.call("A").phase == Phase.ENTERING
    await leave(app, room, "L", ["B"], "admin")  # before A's ChannelEnteredBridge
    await enter(app, room, "A", ["B", "A"])
    assert await rows(room) == {
        "L": ("present", "", "hangup"),
        "A": ("waiting", "leader", ""),
        "B": ("waiting", "leader", ""),
    }
    assert app.state.call("A").phase == Phase.WAITING


async def test_asterisk_refusing_a_release_keeps_the_caller_waiting_with_music(app, make_conference):
    room = await sync_to_async(make_conference)("306", wait_for_leader=True)
    for channel_id in ("A", "B"):
        await app.process_event(start(channel_id, "306"))
    real = app.ari.add_channel

    async def add_channel(bridge_id, channel_id, role=None, *, absorb_dtmf=False):
        if channel_id == "A":
            raise AriError("HTTP 500", status=500)
        return await real(bridge_id, channel_id, absorb_dtmf=absorb_dtmf)

    app.ari.add_channel = add_channel
    await app.process_event(start("L", "306", "admin"))
    await enter(app, room, "L", ["L"], "admin")
    assert app.state.call("A").phase == Phase.WAITING  # not forgotten: a moderator can still act on it
    assert app.state.call("B").phase == Phase.ENTERING  # the others are let in all the same
    assert [call[0] for call in app.ari.called("start_moh")].count("A") == 2  # its music again
    assert await command(app, room, "open_room") == (False, "1 caller(s) could not be changed")


async def test_a_channel_whose_stay_is_over_is_hung_up_after_a_worker_restart(app, make_conference, server):
    """Denied, and the worker restarted during the prompt: the new worker hangs it up, it does not stay on."""
    room = await sync_to_async(make_conference)("305", lobby=True)
    await app.process_event(start("A", "305"))
    assert await command(app, room, "deny", await pk_of("A")) == (True, None)
    restarted = new_app(server, channels=[channel("A", number="305")], bridges=[])
    await restarted.resync()
    assert restarted.ari.called("hangup") == [("A",)]
    assert (await rows(room))["A"] == ("waiting", "lobby", "denied")


async def test_a_resync_applies_the_leaders_rules(app, make_conference, server):
    """The leader entered while the worker was away: those waiting come in. A leader lost: the room ends."""
    room = await sync_to_async(make_conference)("304", wait_for_leader=True)
    await app.process_event(start("A", "304"))
    bridge = {"id": rules.room_bridge_id("conference", room.pk), "channels": ["L"]}
    restarted = new_app(
        server, channels=[channel("A", number="304"), channel("L", "admin", number="304")], bridges=[bridge]
    )
    await restarted.resync()
    assert "A" in added(restarted) and restarted.state.call("A").phase == Phase.ENTERING

    ended = await sync_to_async(make_conference)("307", when_leader_leaves="end")
    await app.process_event(start("L2", "307", "admin"))
    await enter(app, ended, "L2", ["L2"], "admin")
    await app.process_event(start("B", "307"))
    await enter(app, ended, "B", ["L2", "B"])
    bridge = {"id": rules.room_bridge_id("conference", ended.pk), "channels": ["B"]}  # L2 gone meanwhile
    restarted = new_app(server, channels=[channel("B", number="307")], bridges=[bridge])
    await restarted.resync()
    assert (await rows(ended)) == {"L2": ("present", "", "lost"), "B": ("present", "", "ended")}
    assert restarted.ari.called("play") and restarted.state.call("B").phase == Phase.LEAVING


async def test_moderators_cannot_reach_a_caller_that_went_back_to_waiting(app, make_conference):
    room = await sync_to_async(make_conference)("308", when_leader_leaves="wait")
    await app.process_event(start("L", "308", "admin"))
    await enter(app, room, "L", ["L"], "admin")
    await app.process_event(start("A", "308"))
    await enter(app, room, "A", ["L", "A"])
    await leave(app, room, "L", ["A"], "admin")
    a = await pk_of("A")
    for action in ("mute", "kick", "lower_hand"):
        assert await command(app, room, action, a) == (False, "no such participant in this room")
    assert app.ari.called("mute") == [] and app.ari.called("hangup") == []
    # A double admit, and a deleted room, get their own answers.
    lobby = await sync_to_async(make_conference)("309", lobby=True)
    await app.process_event(start("W", "309"))
    w = await pk_of("W")
    assert await command(app, lobby, "admit", w) == (True, None)
    assert await command(app, lobby, "admit", w) == (False, "the caller is already on the way in")


async def test_a_flood_of_calls_into_a_lobby_stops_at_the_waiting_limit(app, make_conference, monkeypatch):
    monkeypatch.setattr(rules, "MAX_WAITING", 3)
    room = await sync_to_async(make_conference)("310", lobby=True)
    for n in range(5):
        await app.process_event(start(f"F{n}", "310"))
    statuses = await rows(room)
    assert sorted(cid for cid, (status, _w, _r) in statuses.items() if status == "waiting") == ["F0", "F1", "F2"]
    assert [sound for _channel, sound, *_ in app.ari.called("play")][-2:] == ["sound:conf-locked"] * 2
