"""The ARI worker against the real Asterisk sandbox, with real (Local channel) callers."""

import asyncio
import random

import pytest
from django.contrib.auth.models import User

from conferences import moderation
from conferences.models import AsteriskServer, ConferenceEvent, Participant
from tests.live import db, events_of, participant, wait_roster
from tests.sandbox import Ears, eventually

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


async def is_gone(sandbox, caller):
    return not await sandbox.channel_exists(caller.channel_id)


async def moh_flags(conference):
    return await db(
        lambda: dict(
            Participant.objects.filter(conference=conference, left_at__isnull=True).values_list("channel_id", "moh")
        )
    )()


async def act(worker, conference, action, participant_id=None, actor=None):
    return await moderation.request(
        server_id=worker.server.pk,
        conference_id=conference.pk,
        action=action,
        participant_id=participant_id,
        actor_id=actor.pk if actor else None,
    )


# --- joining and leaving ------------------------------------------------------------


async def test_caller_joins_with_name_and_number_and_leaves_on_hangup(worker, sandbox, make_room, fresh_layer):
    from tests.live import RoomWatcher

    room = await make_room(100)
    async with RoomWatcher(fresh_layer, room.pk) as watcher:
        alice = await sandbox.caller(100, name="Alice Smith", number="201")
        await wait_roster(sandbox, worker, room, {alice.channel_id})
        joined = await db(participant)(alice.channel_id)
        assert (joined.caller_name, joined.caller_number, joined.role) == ("Alice Smith", "201", "participant")
        await sandbox.hangup(alice)
        await wait_roster(sandbox, worker, room, set())
        await eventually(lambda: watcher.of_type("participant.left"))
    left = await db(participant)(alice.channel_id)
    assert left.left_reason == Participant.LeftReason.HANGUP and left.left_at is not None
    frame = watcher.of_type("participant.joined")[0]["participant"]
    assert frame["caller_name"] == "Alice Smith" and frame["caller_number"] == "201"
    assert "channel_id" not in frame  # browsers never see ARI ids
    assert watcher.of_type("participant.left")[0]["participant"]["left_reason"] == "hangup"
    watcher.assert_seq_contiguous()


async def test_join_burst_of_20_ends_with_exact_roster_and_one_moh_state(worker, sandbox, make_room, fresh_layer):
    from tests.live import RoomWatcher

    room = await make_room(101)
    async with RoomWatcher(fresh_layer, room.pk) as watcher, Ears(sandbox) as ears:
        callers = await asyncio.gather(
            *(sandbox.caller(101, name=f"Burst {i}", number=f"30{i:02d}") for i in range(20))
        )
        await wait_roster(sandbox, worker, room, {c.channel_id for c in callers}, timeout=30)
        # Twenty silent callers: nobody is on hold, and nobody hears music.
        flags = await moh_flags(room)
        assert len(flags) == 20 and not any(flags.values())
        ear = await ears.listen(callers[7])
        await ears.steady(ear, False, 3)
        await eventually(lambda: len(watcher.of_type("participant.joined")) == 20)
    assert await db(lambda: Participant.objects.filter(conference=room).count())() == 20
    watcher.assert_seq_contiguous()
    assert sorted(f["participant"]["caller_number"] for f in watcher.of_type("participant.joined")) == sorted(
        c.number for c in callers
    )


async def test_fast_join_leave_churn_keeps_roster_and_moh_right(worker, sandbox, make_room):
    room = await make_room(102)
    rng = random.Random(4)
    present = []
    for step in range(40):
        if present and rng.random() < 0.45:
            leaving = present.pop(rng.randrange(len(present)))
            await sandbox.hangup(leaving)
        else:
            present.append(await sandbox.caller(102, name=f"Churn {step}", number=f"40{step:02d}"))
        await asyncio.sleep(rng.uniform(0, 0.08))
    # End with exactly one caller, who must be on hold.
    while len(present) > 1:
        await sandbox.hangup(present.pop())
    if not present:
        present.append(await sandbox.caller(102, name="Last", number="4999"))
    await wait_roster(sandbox, worker, room, {present[0].channel_id}, timeout=30)
    await eventually(lambda: moh_flags(room), message="moh flag")
    async with Ears(sandbox) as ears:
        ear = await ears.listen(present[0])
        await ears.wait(ear, True)
    assert await moh_flags(room) == {present[0].channel_id: True}
    # Every stay that ended was closed exactly once, as a hangup.
    reasons = await db(
        lambda: set(
            Participant.objects.filter(conference=room, left_at__isnull=False).values_list("left_reason", flat=True)
        )
    )()
    assert reasons <= {"hangup"}


async def test_music_on_hold_heard_only_when_alone(worker, sandbox, make_room):
    room = await make_room(103, moh_class="default")
    async with Ears(sandbox) as ears:
        alice = await sandbox.caller(103, name="Alice")
        await wait_roster(sandbox, worker, room, {alice.channel_id})
        ear = await ears.listen(alice)
        await ears.wait(ear, True)  # alone: music
        assert await moh_flags(room) == {alice.channel_id: True}

        bob = await sandbox.caller(103, name="Bob")  # silent: Alice should hear nothing now
        await wait_roster(sandbox, worker, room, {alice.channel_id, bob.channel_id})
        await ears.wait(ear, False)
        await ears.steady(ear, False, 2)
        assert await moh_flags(room) == {alice.channel_id: False, bob.channel_id: False}

        await sandbox.hangup(bob)
        await wait_roster(sandbox, worker, room, {alice.channel_id})
        await ears.wait(ear, True)  # alone again: music again
        assert await moh_flags(room) == {alice.channel_id: True}

        # Empty room, then a newcomer: alone, so music (the music's own Announcer
        # channel in the bridge is not a participant).
        await sandbox.hangup(alice)
        await wait_roster(sandbox, worker, room, set())
        carol = await sandbox.caller(103, name="Carol")
        await wait_roster(sandbox, worker, room, {carol.channel_id})
        carol_ear = await ears.listen(carol)
        await ears.wait(carol_ear, True)
        assert await moh_flags(room) == {carol.channel_id: True}


async def test_talking_is_reported_and_cleared_on_leave(worker, sandbox, make_room, fresh_layer):
    from tests.live import RoomWatcher

    room = await make_room(104)
    async with RoomWatcher(fresh_layer, room.pk) as watcher:
        listener = await sandbox.caller(104, name="Listener")
        talker = await sandbox.caller(104, far="talk", name="Talker")
        await wait_roster(sandbox, worker, room, {listener.channel_id, talker.channel_id})
        await eventually(lambda: db(lambda: participant(talker.channel_id).talking)(), message="talking")
        talker_id = (await db(participant)(talker.channel_id)).pk
        await sandbox.hangup(talker)
        await eventually(lambda: db(lambda: participant(talker.channel_id).left_at is not None)())
    left = await db(participant)(talker.channel_id)
    assert left.talking is False
    updates = [f["participant"] for f in watcher.of_type("participant.updated") if f["participant"]["id"] == talker_id]
    assert any(u["talking"] for u in updates)
    assert watcher.of_type("participant.left")[-1]["participant"]["talking"] is False
    assert not (await db(participant)(listener.channel_id)).talking


# --- admission --------------------------------------------------------------------------


async def test_unknown_room_is_refused_and_hung_up(worker, sandbox, make_room):
    await make_room(105)
    stranger = await sandbox.caller(999, name="Lost")
    await eventually(lambda: is_gone(sandbox, stranger), timeout=20, message="caller to unknown room hung up")
    assert await db(participant)(stranger.channel_id) is None


async def test_locked_room_refuses_callers_but_admits_admins(worker, sandbox, make_room):
    room = await make_room(106, locked=True)
    caller = await sandbox.caller(106, name="Late")
    admin = await sandbox.caller(106, name="Chair", admin=True)
    await wait_roster(sandbox, worker, room, {admin.channel_id})
    await eventually(lambda: is_gone(sandbox, caller), timeout=20, message="caller to locked room hung up")
    assert (await db(participant)(admin.channel_id)).role == "admin"
    assert await db(participant)(caller.channel_id) is None
    refused = await db(events_of)(room, ConferenceEvent.Kind.REFUSED)
    assert [event["details"]["reason"] for event in refused] == ["locked"]


async def test_full_room_refuses_the_next_caller_but_admits_admins(worker, sandbox, make_room):
    room = await make_room(107, max_participants=2)
    first = await sandbox.caller(107, name="One")
    second = await sandbox.caller(107, name="Two")
    await wait_roster(sandbox, worker, room, {first.channel_id, second.channel_id})
    third = await sandbox.caller(107, name="Three")
    await eventually(lambda: is_gone(sandbox, third), timeout=20, message="caller to a full room hung up")
    admin = await sandbox.caller(107, name="Chair", admin=True)
    await wait_roster(sandbox, worker, room, {first.channel_id, second.channel_id, admin.channel_id})
    refused = await db(events_of)(room, ConferenceEvent.Kind.REFUSED)
    assert [event["details"]["reason"] for event in refused] == ["full"]


async def test_right_pin_admits(worker, sandbox, make_room):
    room = await make_room(108, pin="4321")
    caller = await sandbox.caller(108, far="pin4321", name="Knows")
    await wait_roster(sandbox, worker, room, {caller.channel_id}, timeout=20)


async def test_wrong_pin_three_times_is_hung_up(worker, sandbox, make_room):
    room = await make_room(109, pin="4321")
    caller = await sandbox.caller(109, far="pin1111", name="Guesser")
    # One wrong PIN typed, then silence: two more tries time out; then conf-invalidpin and hangup.
    await eventually(lambda: is_gone(sandbox, caller), timeout=40, message="wrong-PIN caller hung up")
    assert await db(participant)(caller.channel_id) is None
    refused = await db(events_of)(room, ConferenceEvent.Kind.REFUSED)
    assert [event["details"]["reason"] for event in refused] == ["wrong PIN"]


# --- moderation ---------------------------------------------------------------------------


@pytest.fixture
async def moderator(transactional_db):
    return await db(User.objects.create_user)(username="mod", password="x")


async def test_mute_silences_a_caller_for_the_others_and_unmute_restores(worker, sandbox, make_room, moderator):
    room = await make_room(110)
    async with Ears(sandbox) as ears:
        listener = await sandbox.caller(110, name="Listener")
        talker = await sandbox.caller(110, far="talk", name="Talker")
        await wait_roster(sandbox, worker, room, {listener.channel_id, talker.channel_id})
        ear = await ears.listen(listener)
        await ears.wait(ear, True)  # the listener hears the talker

        talker_row = await db(participant)(talker.channel_id)
        assert await act(worker, room, "mute", talker_row.pk, moderator) == (True, None)
        await ears.wait(ear, False)
        await ears.steady(ear, False, 2)
        assert (await db(participant)(talker.channel_id)).muted is True

        assert await act(worker, room, "unmute", talker_row.pk, moderator) == (True, None)
        await ears.wait(ear, True)
        assert (await db(participant)(talker.channel_id)).muted is False
    kinds = [
        (event["kind"], event["actor_id"])
        for event in await db(events_of)(room)
        if event["kind"] in ("muted", "unmuted")
    ]
    assert kinds == [("muted", moderator.pk), ("unmuted", moderator.pk)]


async def test_kick_removes_plays_and_hangs_up(worker, sandbox, make_room, moderator):
    room = await make_room(111)
    stay = await sandbox.caller(111, name="Stays")
    go = await sandbox.caller(111, name="Goes")
    await wait_roster(sandbox, worker, room, {stay.channel_id, go.channel_id})
    target = await db(participant)(go.channel_id)
    assert await act(worker, room, "kick", target.pk, moderator) == (True, None)
    await wait_roster(sandbox, worker, room, {stay.channel_id})
    await eventually(lambda: is_gone(sandbox, go), timeout=20, message="kicked caller hung up")
    kicked = await db(participant)(go.channel_id)
    assert kicked.left_reason == Participant.LeftReason.KICKED
    assert [(e["kind"], e["actor_id"]) for e in await db(events_of)(room, "kicked")] == [("kicked", moderator.pk)]
    # Kicking again: a clear error.
    assert await act(worker, room, "kick", target.pk, moderator) == (False, "the caller has already left")


async def test_actions_on_a_participant_of_another_room_are_refused(worker, sandbox, make_room, moderator):
    room, other = await make_room(112), await make_room(113)
    mine = await sandbox.caller(112, name="Mine")
    theirs = await sandbox.caller(113, name="Theirs")
    await wait_roster(sandbox, worker, room, {mine.channel_id})
    await wait_roster(sandbox, worker, other, {theirs.channel_id})
    foreign = await db(participant)(theirs.channel_id)
    for action in ("kick", "mute", "unmute"):
        assert await act(worker, room, action, foreign.pk, moderator) == (False, "no such participant in this room")
    assert await act(worker, room, "kick", "1; DROP", moderator) == (False, "no such participant in this room")
    await asyncio.sleep(1)
    assert await sandbox.channel_exists(theirs.channel_id)
    still = await db(participant)(theirs.channel_id)
    assert still.left_at is None and not still.muted


async def test_mute_all_spares_admins_and_lock_refuses_newcomers(worker, sandbox, make_room, moderator, fresh_layer):
    from tests.live import RoomWatcher

    room = await make_room(114)
    async with RoomWatcher(fresh_layer, room.pk) as watcher:
        a = await sandbox.caller(114, name="A")
        b = await sandbox.caller(114, name="B")
        chair = await sandbox.caller(114, name="Chair", admin=True)
        await wait_roster(sandbox, worker, room, {a.channel_id, b.channel_id, chair.channel_id})
        assert await act(worker, room, "mute_all", actor=moderator) == (True, None)
        muted = await db(lambda: dict(Participant.objects.filter(conference=room).values_list("channel_id", "muted")))()
        assert muted == {a.channel_id: True, b.channel_id: True, chair.channel_id: False}
        assert await act(worker, room, "unmute_all", actor=moderator) == (True, None)
        assert await act(worker, room, "lock", actor=moderator) == (True, None)
        late = await sandbox.caller(114, name="Late")
        await eventually(lambda: is_gone(sandbox, late), timeout=20, message="locked out")
        assert await act(worker, room, "unlock", actor=moderator) == (True, None)
        await eventually(lambda: len(watcher.of_type("conference.updated")) >= 5)
    locked_states = [f["conference"]["locked"] for f in watcher.of_type("conference.updated")]
    assert True in locked_states and locked_states[-1] is False
    kinds = [e["kind"] for e in await db(events_of)(room) if e["actor_id"] == moderator.pk]
    assert kinds == ["muted_all", "unmuted_all", "locked", "unlocked"]
    watcher.assert_seq_contiguous()


async def test_moderation_answers_clearly_when_the_worker_is_away(pbx, make_room, fresh_layer):
    room = await make_room(115)
    ok, error = await moderation.request(server_id=pbx.pk, conference_id=room.pk, action="lock", timeout=1)
    assert (ok, error) == (False, moderation.WORKER_DOWN)
    assert (await db(lambda: type(room).objects.get(pk=room.pk).locked)()) is False


# --- reconnect and resync -------------------------------------------------------------------


async def test_worker_restart_mid_call_keeps_the_roster_without_duplicates(runner, sandbox, make_room):
    room = await make_room(116)
    worker = await runner.start()
    callers = [await sandbox.caller(116, name=f"Stay {i}") for i in range(3)]
    await wait_roster(sandbox, worker, room, {c.channel_id for c in callers})
    await runner.stop()
    # While the worker is away: the callers stay in the room; one of them hangs up.
    assert await sandbox.bridge_members(worker.app.bridge_id(room.pk)) == {c.channel_id for c in callers}
    await sandbox.hangup(callers[0])
    await eventually(lambda: is_gone(sandbox, callers[0]))
    worker = await runner.start()
    await wait_roster(sandbox, worker, room, {callers[1].channel_id, callers[2].channel_id})
    assert (await db(participant)(callers[0].channel_id)).left_reason == "lost"
    assert await db(lambda: Participant.objects.filter(conference=room).count())() == 3
    status = await db(AsteriskServer.objects.get)(pk=worker.server.pk)
    assert status.connected


async def test_resync_adopts_callers_in_the_bridge_that_the_database_does_not_know(runner, sandbox, make_room):
    room = await make_room(117)
    worker = await runner.start()
    known = await sandbox.caller(117, name="Known")
    await wait_roster(sandbox, worker, room, {known.channel_id})
    await runner.stop()
    # As if the worker had died between the bridge join and the database write:
    await db(lambda: Participant.objects.filter(channel_id=known.channel_id).delete())()
    worker = await runner.start()
    await wait_roster(sandbox, worker, room, {known.channel_id})
    adopted = await db(participant)(known.channel_id)
    assert adopted.caller_name == "Known" and adopted.moh is True


async def test_empty_leftover_bridges_are_removed_at_resync(runner, sandbox, make_room):
    room = await make_room(118)
    worker = await runner.start()
    caller = await sandbox.caller(118)
    await wait_roster(sandbox, worker, room, {caller.channel_id})
    await runner.stop()
    await sandbox.hangup(caller)
    await eventually(lambda: is_gone(sandbox, caller))
    assert worker.app.bridge_id(room.pk) in {b["id"] for b in await sandbox.bridges()}
    await runner.start()
    assert worker.app.bridge_id(room.pk) not in {b["id"] for b in await sandbox.bridges()}


@pytest.mark.parametrize("how,reason", [("restart", "hangup"), ("crash", "lost")])
async def test_asterisk_restart_mid_call_ends_every_stay_and_recovers(
    worker, sandbox, make_room, fresh_layer, how, reason
):
    """A clean restart hangs the calls up (Asterisk says so); after a crash the resync finds them lost."""
    from tests.live import RoomWatcher
    from tests.sandbox_control import crash_asterisk, restart_asterisk

    room = await make_room(119)
    async with RoomWatcher(fresh_layer, room.pk) as watcher:
        callers = [await sandbox.caller(119, name=f"Before {i}") for i in range(3)]
        await wait_roster(sandbox, worker, room, {c.channel_id for c in callers})
        resyncs = worker.resyncs
        await (restart_asterisk() if how == "restart" else crash_asterisk())
        await eventually(lambda: worker.resyncs > resyncs, timeout=60, message="reconnected")
        await wait_roster(sandbox, worker, room, set())
        # The room works again after the restart.
        after = await sandbox.caller(119, name="After")
        await wait_roster(sandbox, worker, room, {after.channel_id})
        await eventually(lambda: watcher.of_type("asterisk.status"))
    ids = [c.channel_id for c in callers]
    reasons = await db(
        lambda: list(Participant.objects.filter(channel_id__in=ids).values_list("left_reason", flat=True))
    )()
    assert reasons == [reason] * 3
    statuses = [f["connected"] for f in watcher.of_type("asterisk.status")]
    assert statuses[:2] == [False, True]
    status = await db(AsteriskServer.objects.get)(pk=worker.server.pk)
    assert status.connected and status.last_error
    watcher.assert_seq_contiguous()


# --- admin actions go the same way --------------------------------------------------------


async def test_admin_actions_use_the_same_moderation_path(worker, sandbox, make_room, client):
    from asgiref.sync import sync_to_async

    room = await make_room(120)
    a = await sandbox.caller(120, name="A")
    b = await sandbox.caller(120, name="B")
    await wait_roster(sandbox, worker, room, {a.channel_id, b.channel_id})
    staff = await db(User.objects.create_superuser)(username="boss", password="x", email="")
    await sync_to_async(client.force_login)(staff)
    target = await db(participant)(b.channel_id)
    response = await sync_to_async(client.post)(
        "/admin/conferences/participant/", {"action": "kick", "_selected_action": [target.pk]}, follow=True
    )
    assert response.status_code == 200
    assert "done" in response.content.decode(), [str(m) for m in response.context["messages"]]
    await wait_roster(sandbox, worker, room, {a.channel_id})
    assert (await db(participant)(b.channel_id)).left_reason == "kicked"
    response = await sync_to_async(client.post)(
        "/admin/conferences/conference/", {"action": "lock", "_selected_action": [room.pk]}, follow=True
    )
    assert (await db(lambda: type(room).objects.get(pk=room.pk).locked)()) is True
    kinds = [(e["kind"], e["actor_id"]) for e in await db(events_of)(room) if e["actor_id"]]
    assert kinds == [("kicked", staff.pk), ("locked", staff.pk)]


async def test_admin_action_refused_for_staff_without_the_moderator_role(worker, sandbox, make_room, client):
    from asgiref.sync import sync_to_async
    from django.contrib.auth.models import Permission

    room = await make_room(121)
    a = await sandbox.caller(121, name="A")
    await wait_roster(sandbox, worker, room, {a.channel_id})

    def make_staff():
        user = User.objects.create_user(username="clerk", password="x", is_staff=True)
        user.user_permissions.set(Permission.objects.filter(codename__in=["view_participant", "view_conference"]))
        return user

    clerk = await db(make_staff)()
    await sync_to_async(client.force_login)(clerk)
    target = await db(participant)(a.channel_id)
    response = await sync_to_async(client.post)(
        "/admin/conferences/participant/", {"action": "kick", "_selected_action": [target.pk]}, follow=True
    )
    assert "not a moderator of this room" in response.content.decode()
    await asyncio.sleep(0.5)
    assert (await db(participant)(a.channel_id)).left_at is None


async def test_keepalive_pings_notice_a_frozen_asterisk_and_the_link_comes_back(runner, sandbox, make_room):
    """A hung Asterisk (SIGSTOP) answers no pings: the worker drops the link, then reconnects."""
    import os
    import signal

    from tests.sandbox_control import STATE

    room = await make_room(122)

    def quick_keepalive(worker):
        worker.ping_interval = worker.ping_timeout = 1.0

    worker = await runner.start(configure=quick_keepalive)
    pid = int((STATE / "asterisk.pid").read_text().strip())
    resyncs = worker.resyncs
    caller = await sandbox.caller(122, name="Before")
    await wait_roster(sandbox, worker, room, {caller.channel_id})
    os.kill(pid, signal.SIGSTOP)
    try:
        await eventually(lambda: not worker.connected, timeout=30, message="link dropped by keepalive")
    finally:
        os.kill(pid, signal.SIGCONT)
    await eventually(lambda: worker.connected and worker.resyncs > resyncs, timeout=40, message="link back")
    state = await db(AsteriskServer.objects.get)(pk=worker.server.pk)
    assert state.connected
    await wait_roster(sandbox, worker, room, {caller.channel_id})
