"""The lobby and the leader, against the sandbox Asterisk: who waits, who hears what, who gets in.

Waiting callers sit in the application outside any bridge with music on
hold. What a caller hears is measured at the audio level (tests/sandbox.py,
``Ears``): to hear what lies under the music, the test stops a waiting
caller's music itself (``Ears.stop_music``) while others talk in the room
and in the lobby.
"""

import pytest
from django.contrib.auth.models import User

from conferences.ari import rules
from conferences.models import Participant
from tests.live import EventLog, RoomWatcher, act, db, events_of, participant, wait_roster, waiting_channels
from tests.sandbox import Ears, eventually

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
async def moderator(transactional_db):
    return await db(User.objects.create_user)(username="mod", password="x")


async def waits(room, expected, timeout=15):
    """Until exactly ``expected`` ({channel id: waiting for}) wait in the room."""

    async def check():
        return await db(waiting_channels)(room) == expected

    await eventually(check, timeout=timeout, message=f"waiting in room {room.number} != {expected}")


async def row(caller):
    return await db(participant)(caller.channel_id)


async def left(caller, reason):
    async def check():
        found = await row(caller)
        return found is not None and found.left_at is not None and found.left_reason == reason

    await eventually(check, timeout=20, message=f"{caller.channel_id} did not leave ({reason})")


def kinds(events, *wanted):
    return [(event["kind"], event["actor_id"]) for event in events if event["kind"] in wanted]


async def test_the_lobby_admits_and_denies_one_caller_at_a_time_and_a_waiting_caller_hears_nothing(
    runner, sandbox, make_room, moderator, fresh_layer
):
    room = await make_room(151, lobby=True)
    log = EventLog()
    worker = await runner.start(configure=log)
    async with Ears(sandbox) as ears, RoomWatcher(fresh_layer, room.pk) as watcher:
        # The first caller waits: no bridge, no stay yet; admitted, it is in the room.
        talker = await sandbox.typist(ears, 151, name="Talker", number="301", talking=True)
        await waits(room, {talker.channel_id: "lobby"})
        assert await sandbox.bridge_members(rules.room_bridge_id("conference", room.pk)) == set()
        assert await act(worker, room, "admit", (await row(talker)).pk, moderator) == (True, None)
        await wait_roster(sandbox, worker, room, {talker.channel_id})
        await waits(room, {})

        # Two more wait while the talker talks in the room; one of them talks too, in the lobby.
        listener = await sandbox.caller(151, name="Listener", number="302")
        chatty = await sandbox.typist(ears, 151, name="Chatty", number="303", talking=True)
        await waits(room, {listener.channel_id: "lobby", chatty.channel_id: "lobby"})
        ear = await ears.listen(listener)
        await ears.wait(ear, True)  # music on hold
        await ears.stop_music(listener)
        await ears.wait(ear, False)
        await ears.steady(ear, False, 3)  # neither the room's talker nor the other waiting caller

        # Admitting one lets that one in, and nobody else (jigasi #616): it hears the room now.
        assert await act(worker, room, "admit", (await row(listener)).pk, moderator) == (True, None)
        await wait_roster(sandbox, worker, room, {talker.channel_id, listener.channel_id})
        await ears.wait(ear, True)
        await waits(room, {chatty.channel_id: "lobby"})
        later = await sandbox.caller(151, name="Later", number="304")
        await waits(room, {chatty.channel_id: "lobby", later.channel_id: "lobby"})

        # Deny: a prompt to that caller, then the hang-up; "denied" in its stay and the room's timeline.
        chatty_row = await row(chatty)
        assert await act(worker, room, "deny", chatty_row.pk, moderator) == (True, None)
        await left(chatty, Participant.LeftReason.DENIED)

        async def chatty_gone():
            return not await sandbox.channel_exists(chatty.channel_id)

        await eventually(chatty_gone, timeout=20, message="the denied caller is hung up")
        assert log.sounds(chatty.channel_id) == [f"sound:{sound}" for sound in rules.DENIED_SOUNDS]

        # A caller who hangs up while waiting leaves the list.
        await sandbox.hangup(later)
        await left(later, Participant.LeftReason.HANGUP)
        await waits(room, {})

        # Admin callers skip the lobby.
        boss = await sandbox.caller(151, name="Boss", number="305", admin=True)
        await wait_roster(sandbox, worker, room, {talker.channel_id, listener.channel_id, boss.channel_id})

        # Moderators' mistakes are refused: admitting a present caller, denying a gone one.
        assert await act(worker, room, "admit", (await row(listener)).pk, moderator) == (
            False,
            "no such waiting caller in this room",
        )
        assert await act(worker, room, "deny", chatty_row.pk, moderator) == (
            False,
            "no such waiting caller in this room",
        )

        # admit_all, then lobby off (those waiting come in, new callers too), then on again.
        first = await sandbox.caller(151, name="A", number="306")
        second = await sandbox.caller(151, name="B", number="307")
        await waits(room, {first.channel_id: "lobby", second.channel_id: "lobby"})
        assert await act(worker, room, "admit_all", None, moderator) == (True, None)
        present = {talker.channel_id, listener.channel_id, boss.channel_id, first.channel_id, second.channel_id}
        await wait_roster(sandbox, worker, room, present)
        third = await sandbox.caller(151, name="C", number="308")
        await waits(room, {third.channel_id: "lobby"})
        assert await act(worker, room, "lobby_off", None, moderator) == (True, None)
        present.add(third.channel_id)
        await wait_roster(sandbox, worker, room, present)
        fourth = await sandbox.caller(151, name="D", number="309")
        present.add(fourth.channel_id)
        await wait_roster(sandbox, worker, room, present)
        assert await act(worker, room, "lobby_on", None, moderator) == (True, None)
        fifth = await sandbox.caller(151, name="E", number="310")
        await waits(room, {fifth.channel_id: "lobby"})
        await eventually(  # its frames reached the page too
            lambda: watcher.of_type("conference.updated")[-1]["conference"]["waiting_count"] == 1,
            message="the pages never counted the last waiting caller",
        )

    # What the pages saw: waiting callers arrive as such, admission is an update to present, deny a leave.
    frames = [f for f in watcher.frames if f.get("participant", {}).get("caller_name") == "Listener"]
    assert [(f["type"], f["participant"]["status"]) for f in frames[:2]] == [
        ("participant.joined", "waiting"),
        ("participant.updated", "present"),
    ]
    assert frames[0]["participant"]["waiting_for"] == "lobby" and frames[1]["participant"]["waiting_for"] is None
    [denied] = [f for f in watcher.of_type("participant.left") if f["participant"]["caller_name"] == "Chatty"]
    assert denied["participant"]["left_reason"] == "denied"
    counts = [f["conference"]["waiting_count"] for f in watcher.of_type("conference.updated")]
    assert 2 in counts and counts[-1] == 1
    watcher.assert_seq_contiguous()
    events = await db(events_of)(room)
    assert kinds(events, "admitted", "denied", "lobby_on", "lobby_off") == [
        ("admitted", moderator.pk),  # the talker
        ("admitted", moderator.pk),  # the listener
        ("denied", moderator.pk),
        ("admitted", moderator.pk),  # admit_all: A and B
        ("admitted", moderator.pk),
        ("lobby_off", moderator.pk),
        ("admitted", moderator.pk),  # lobby off: C
        ("lobby_on", moderator.pk),
    ]
    assert len([e for e in events if e["kind"] == "waiting"]) == 8  # all but D (lobby off) and the admin


async def test_the_pin_comes_first_then_the_lobby(runner, sandbox, make_room, moderator, own_cache):
    room = await make_room(152, lobby=True, pin="2468")
    worker = await runner.start()
    wrong = await sandbox.caller(152, far="pin1111", name="Wrong", number="311")
    right = await sandbox.caller(152, far="pin2468", name="Right", number="312")
    await waits(room, {right.channel_id: "lobby"}, timeout=20)
    assert await db(participant)(wrong.channel_id) is None  # never listed: a wrong PIN is no waiting caller
    assert await act(worker, room, "admit", (await row(right)).pk, moderator) == (True, None)
    await wait_roster(sandbox, worker, room, {right.channel_id})


async def test_callers_wait_for_the_leader_and_the_room_ends_with_the_leader(runner, sandbox, make_room, fresh_layer):
    room = await make_room(153, wait_for_leader=True, when_leader_leaves="end")
    log = EventLog()
    worker = await runner.start(configure=log)
    async with Ears(sandbox) as ears:
        talker = await sandbox.typist(ears, 153, name="Talker", number="321", talking=True)
        listener = await sandbox.caller(153, name="Listener", number="322")
        await waits(room, {talker.channel_id: "leader", listener.channel_id: "leader"})
        ear = await ears.listen(listener)
        await ears.wait(ear, True)  # music
        await ears.stop_music(listener)
        await ears.wait(ear, False)
        await ears.steady(ear, False, 3)  # the other waiting caller talks: not heard

        leader = await sandbox.caller(153, name="Leader", number="323", admin=True)
        await wait_roster(sandbox, worker, room, {talker.channel_id, listener.channel_id, leader.channel_id})
        await ears.wait(ear, True)  # the talker, now in the room
        await waits(room, {})

        await sandbox.hangup(leader)
        await left(talker, Participant.LeftReason.ENDED)
        await left(listener, Participant.LeftReason.ENDED)
        await eventually(
            lambda: log.sounds(listener.channel_id) == [f"sound:{rules.LEADER_LEFT_SOUND}"],
            message="the others hear that the leader left",
        )

        async def all_gone():
            return not any([await sandbox.channel_exists(c.channel_id) for c in (talker, listener)])

        await eventually(all_gone, timeout=20, message="the others are hung up")
    events = await db(events_of)(room)
    assert kinds(events, "waiting", "room_opened", "room_ended") == [
        ("waiting", None),
        ("waiting", None),
        ("room_opened", None),
        ("room_ended", None),
    ]
    [opened] = [e for e in events if e["kind"] == "room_opened"]
    assert opened["details"] == {"callers": 2, "by": "leader"}


async def test_when_the_leader_leaves_the_others_wait_again_until_a_moderator_opens_the_room(
    runner, sandbox, make_room, moderator
):
    room = await make_room(154, when_leader_leaves="wait")
    worker = await runner.start()
    alice = await sandbox.caller(154, name="Alice", number="331")
    leader = await sandbox.caller(154, name="Leader", number="332", admin=True)
    second = await sandbox.caller(154, name="Second leader", number="333", admin=True)
    await wait_roster(sandbox, worker, room, {alice.channel_id, leader.channel_id, second.channel_id})

    await sandbox.hangup(leader)  # another leader is still in: nothing changes
    await wait_roster(sandbox, worker, room, {alice.channel_id, second.channel_id})
    await sandbox.hangup(second)
    await waits(room, {alice.channel_id: "leader"})
    await wait_roster(sandbox, worker, room, set())
    bob = await sandbox.caller(154, name="Bob", number="334")  # a later caller waits too
    await waits(room, {alice.channel_id: "leader", bob.channel_id: "leader"})
    alice_row = await row(alice)
    assert alice_row.meeting_id is not None and alice_row.status == "waiting"

    # The worker restarts meanwhile: the waiting stay waiting (no second admission, no PIN), then the room opens.
    await runner.stop()
    worker = await runner.start()
    await waits(room, {alice.channel_id: "leader", bob.channel_id: "leader"})
    assert await act(worker, room, "open_room", None, moderator) == (True, None)
    await wait_roster(sandbox, worker, room, {alice.channel_id, bob.channel_id})
    events = await db(events_of)(room)
    assert kinds(events, "room_waiting", "room_opened") == [("room_waiting", None), ("room_opened", moderator.pk)]
    # Alice never left the call: one stay, in one meeting, from her first join.
    reopened = await row(alice)
    assert (reopened.joined_at, reopened.meeting_id) == (alice_row.joined_at, alice_row.meeting_id)
