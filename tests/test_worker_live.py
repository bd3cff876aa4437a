"""The ARI worker against the real Asterisk sandbox, with real (Local channel) callers."""

import asyncio
import random

import pytest
from django.contrib.auth.models import User

from conferences import moderation
from conferences.models import AsteriskServer, ConferenceEvent, Participant
from tests.live import EventLog, act, db, events_of, participant, wait_roster
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


# --- caller-side trust: nothing dialled makes an admin ---------------------------------------


async def test_dialled_admin_suffix_through_the_shipped_dialplan_is_an_ordinary_participant(
    runner, sandbox, make_room, moderator
):
    """FILTER(0-9) keeps the digits of what was dialled: "130,admin" is room 130, no admin."""
    room = await make_room(130)
    log = EventLog()
    worker = await runner.start(configure=log)
    dialled = ["130,admin", "130a", "130#", "1a3b0,admin"]
    callers = [await sandbox.caller(text, name=f"Dialled {text}", number=f"50{i}") for i, text in enumerate(dialled)]
    chair = await sandbox.caller(130, name="Chair", admin=True)
    await wait_roster(sandbox, worker, room, {c.channel_id for c in callers} | {chair.channel_id})
    assert [log.stasis_args(c.channel_id) for c in callers] == [["130"]] * 4
    roles = await db(lambda: dict(Participant.objects.filter(conference=room).values_list("channel_id", "role")))()
    assert roles == {**{c.channel_id: "participant" for c in callers}, chair.channel_id: "admin"}
    # Mute all mutes them; only the admin context's caller is spared.
    assert await act(worker, room, "mute_all", actor=moderator) == (True, None)
    muted = await db(lambda: dict(Participant.objects.filter(conference=room).values_list("channel_id", "muted")))()
    assert muted == {**{c.channel_id: True for c in callers}, chair.channel_id: False}
    # A locked room keeps them out.
    assert await act(worker, room, "lock", actor=moderator) == (True, None)
    late = await sandbox.caller("130,admin", name="Late", number="599")
    await eventually(lambda: is_gone(sandbox, late), timeout=20, message="locked out")
    assert log.sounds(late.channel_id) == ["sound:conf-locked"]
    assert await db(participant)(late.channel_id) is None
    refused = await db(events_of)(room, ConferenceEvent.Kind.REFUSED)
    assert [(e["details"]["reason"], e["details"]["caller_number"]) for e in refused] == [("locked", "599")]


@pytest.mark.parametrize("dialled", ["*131", "admin", "１３１", ",admin", "#"])
async def test_dialled_strings_without_a_leading_digit_reach_no_room(worker, sandbox, make_room, dialled):
    """The shipped pattern _X. needs an ASCII digit first: these never reach Stasis()."""
    room = await make_room(131)
    caller = await sandbox.caller(dialled, name="Odd")
    await eventually(lambda: is_gone(sandbox, caller), timeout=10, message="caller with no extension hung up")
    assert await db(lambda: Participant.objects.count())() == 0
    assert await db(events_of)(room) == []


@pytest.mark.parametrize(
    "app_args,reason,in_room",
    [
        ("132,admin", "extra arguments", True),
        ("132,", "extra arguments", True),
        ("132,admin,x", "extra arguments", True),
        ("132a", "room number not digits", False),
        ("１３２", "room number not digits", False),
        ("1" * 40, "room number too long", False),
    ],
)
async def test_stasis_arguments_other_than_one_room_number_are_refused_and_logged(
    runner, sandbox, make_room, caplog, app_args, reason, in_room
):
    """Straight into Stasis(conference,<args>), no dialplan in between: conf-invalid, hang up, logged."""
    room = await make_room(132)
    log = EventLog()
    await runner.start(configure=log)
    caller = await sandbox.straight_into_app(app_args, number="666")
    await eventually(lambda: is_gone(sandbox, caller), timeout=20, message="refused caller hung up")
    assert log.stasis_args(caller.channel_id) == app_args.split(",")
    assert log.sounds(caller.channel_id) == ["sound:conf-invalid"]
    assert await db(participant)(caller.channel_id) is None
    assert f"channel {caller.channel_id} refused: {reason}" in caplog.text
    refused = await db(events_of)(room, ConferenceEvent.Kind.REFUSED)
    expected = [("invalid arguments", "666")] if in_room else []
    assert [(e["details"]["reason"], e["details"]["caller_number"]) for e in refused] == expected


async def test_an_old_unfiltered_dialplan_cannot_make_an_admin(runner, sandbox, make_room):
    """Stasis(conference,${EXTEN}) with "133,admin" dialled: refused, not admitted past the lock."""
    room = await make_room(133, locked=True)
    log = EventLog()
    await runner.start(configure=log)
    caller = await sandbox.caller("133,admin", context="test-unfiltered", name="Sneaky", number="667")
    await eventually(lambda: is_gone(sandbox, caller), timeout=20, message="refused caller hung up")
    assert log.stasis_args(caller.channel_id) == ["133", "admin"]
    assert log.sounds(caller.channel_id) == ["sound:conf-invalid"]
    assert await db(participant)(caller.channel_id) is None
    refused = await db(events_of)(room, ConferenceEvent.Kind.REFUSED)
    assert [e["details"]["reason"] for e in refused] == ["invalid arguments"]


@pytest.mark.parametrize("variable", ["__CONFERENCE_ROLE", "CONFERENCE_ROLE"])
async def test_an_admin_variable_brought_along_does_not_survive_the_ordinary_context(
    worker, sandbox, make_room, variable
):
    """A trusted leg's (inherited) CONFERENCE_ROLE=admin: [conferences] resets it; the old dialplan did not."""
    room = await make_room(134, locked=True)
    caller = await sandbox.caller(134, name="Carried", variables={variable: "admin"})
    await eventually(lambda: is_gone(sandbox, caller), timeout=20, message="locked out")
    assert await db(participant)(caller.channel_id) is None
    # The same channel variable does reach the participant's channel: through a dialplan
    # that leaves it alone (the test-only copy of the old one), it makes an admin.
    control = await sandbox.caller(134, context="test-unfiltered", name="Control", variables={variable: "admin"})
    await wait_roster(sandbox, worker, room, {control.channel_id})
    assert (await db(participant)(control.channel_id)).role == "admin"


async def test_without_channelvars_the_worker_asks_asterisk_for_the_role(runner, sandbox, make_room, moderator):
    """An ari.conf without channelvars: GET /channels/{id}/variable; admins still pass lock and full room."""
    room = await make_room(135, locked=True, max_participants=2)
    log = EventLog(channelvars=False)
    asked = []

    def configure(worker):
        log(worker)
        original = worker.ari.get_variable

        async def get_variable(channel_id, variable):
            value = await original(channel_id, variable)  # the real Asterisk answers
            asked.append((channel_id, variable, value))
            return value

        worker.ari.get_variable = get_variable

    worker = await runner.start(configure=configure)
    chair = await sandbox.caller(135, name="Chair", admin=True)
    locked_out = await sandbox.caller(135, name="Late")
    await wait_roster(sandbox, worker, room, {chair.channel_id})
    await eventually(lambda: is_gone(sandbox, locked_out), timeout=20, message="locked out")
    assert all("channelvars" not in (e.get("channel") or {}) for e in log.events)
    assert sorted(asked) == sorted(
        [(chair.channel_id, "CONFERENCE_ROLE", "admin"), (locked_out.channel_id, "CONFERENCE_ROLE", "participant")]
    )
    assert await act(worker, room, "unlock", actor=moderator) == (True, None)
    member = await sandbox.caller(135, name="Member")
    await wait_roster(sandbox, worker, room, {chair.channel_id, member.channel_id})
    second_chair = await sandbox.caller(135, name="Chair 2", admin=True)  # the room is full
    await wait_roster(sandbox, worker, room, {chair.channel_id, member.channel_id, second_chair.channel_id})
    assert await act(worker, room, "mute_all", actor=moderator) == (True, None)
    muted = await db(lambda: dict(Participant.objects.filter(conference=room).values_list("channel_id", "muted")))()
    assert muted == {chair.channel_id: False, member.channel_id: True, second_chair.channel_id: False}
    refused = await db(events_of)(room, ConferenceEvent.Kind.REFUSED)
    assert [e["details"]["reason"] for e in refused] == ["locked"]


async def test_the_role_variable_read_from_a_real_channel(worker, sandbox, make_room):
    """GET /channels/{id}/variable: a value, None when unset, AriNotFound once the channel is gone."""
    from conferences.ari.client import AriNotFound

    room = await make_room(141)
    chair = await sandbox.caller(141, name="Chair", admin=True)
    plain = await sandbox.caller(141, context="test-unfiltered", name="Plain")  # sets no CONFERENCE_ROLE
    await wait_roster(sandbox, worker, room, {chair.channel_id, plain.channel_id})
    assert await worker.ari.get_variable(chair.channel_id, "CONFERENCE_ROLE") == "admin"
    assert await worker.ari.get_variable(plain.channel_id, "CONFERENCE_ROLE") is None
    await sandbox.hangup(plain)
    await eventually(lambda: is_gone(sandbox, plain))
    with pytest.raises(AriNotFound):
        await worker.ari.get_variable(plain.channel_id, "CONFERENCE_ROLE")


async def test_resync_takes_the_role_of_callers_in_the_bridge_from_their_variable(runner, sandbox, make_room):
    room = await make_room(136)
    worker = await runner.start()
    chair = await sandbox.caller(136, name="Chair", admin=True)
    member = await sandbox.caller("136,admin", name="Member")
    await wait_roster(sandbox, worker, room, {chair.channel_id, member.channel_id})
    await runner.stop()
    # As if the worker had died between the bridge join and the database write:
    await db(lambda: Participant.objects.filter(conference=room).delete())()
    worker = await runner.start()
    await wait_roster(sandbox, worker, room, {chair.channel_id, member.channel_id})
    roles = await db(lambda: dict(Participant.objects.filter(conference=room).values_list("channel_id", "role")))()
    assert roles == {chair.channel_id: "admin", member.channel_id: "participant"}


# --- PIN: lock and capacity again after the PIN; wrong PINs across calls ---------------------


def slow_pin_prompt(worker):
    # latepin<digits> types after 6 s: the prompt waits longer than that.
    worker.app.pin_first_timeout = 10.0
    worker.app.pin_digit_timeout = 2.0


async def test_a_room_locked_during_the_pin_prompt_keeps_the_caller_out(runner, sandbox, make_room, moderator):
    room = await make_room(137, pin="4321")
    log = EventLog()

    def configure(worker):
        log(worker)
        slow_pin_prompt(worker)

    worker = await runner.start(fast_pin=False, configure=configure)
    caller = await sandbox.caller(137, far="latepin4321", name="Typist", number="701")
    await eventually(lambda: caller.channel_id in worker.app.admissions, message="at the PIN prompt")
    assert await act(worker, room, "lock", actor=moderator) == (True, None)
    await eventually(lambda: is_gone(sandbox, caller), timeout=25, message="locked out after the PIN")
    assert log.sounds(caller.channel_id) == ["sound:conf-getpin", "sound:conf-locked"]
    assert await db(participant)(caller.channel_id) is None
    refused = await db(events_of)(room, ConferenceEvent.Kind.REFUSED)
    assert [(e["details"]["reason"], e["details"]["caller_number"]) for e in refused] == [("locked", "701")]


async def test_right_pins_at_once_fill_the_last_seat_exactly_once(runner, sandbox, make_room):
    room = await make_room(138, pin="4321", max_participants=2)
    log = EventLog()
    worker = await runner.start(configure=log)
    first = await sandbox.caller(138, far="pin4321", name="First")
    await wait_roster(sandbox, worker, room, {first.channel_id}, timeout=20)
    # Three callers at once: one seat is free, so all three get the prompt, then
    # their far ends type the PIN 1.5 s after answering, within a few ms of each other.
    racers = await asyncio.gather(*(sandbox.caller(138, far="pin4321", name=f"Racer {i}") for i in range(3)))

    async def two_refused():
        return [await is_gone(sandbox, r) for r in racers].count(True) == 2

    await eventually(two_refused, timeout=25, message="two racers refused")
    [inside] = [r for r in racers if await sandbox.channel_exists(r.channel_id)]
    await wait_roster(sandbox, worker, room, {first.channel_id, inside.channel_id})
    for racer in racers:
        expected = ["sound:conf-getpin"] + ([] if racer == inside else ["sound:conf-locked"])
        assert log.sounds(racer.channel_id) == expected
    refused = await db(events_of)(room, ConferenceEvent.Kind.REFUSED)
    assert [e["details"]["reason"] for e in refused] == ["full", "full"]


@pytest.fixture
def low_pin_limits(monkeypatch):
    from conferences.ari import pin_throttle

    monkeypatch.setattr(pin_throttle, "PIN_FAILS_PER_CALLER", 2)
    monkeypatch.setattr(pin_throttle, "PIN_FAILS_PER_ROOM", 3)
    monkeypatch.setattr(pin_throttle, "PIN_PAUSE", 3.0)
    return pin_throttle


async def guess_wrong(sandbox, room, number, failures_before):
    """One call from ``number`` that types a wrong PIN; hung up once the wrong PIN is counted."""
    caller = await sandbox.caller(room.number, far="pin1111", name="Guesser", number=number)
    await eventually(
        lambda: _counted(room, number, failures_before + 1), timeout=15, message=f"wrong PIN from {number} counted"
    )
    await sandbox.hangup(caller)
    await eventually(lambda: is_gone(sandbox, caller))


async def _counted(room, number, at_least):
    from conferences.ari import pin_throttle

    return (await pin_throttle.failures(room.pk, number))[0] >= at_least


def seconds_between(first, second):
    """Seconds between two of Asterisk's event timestamps."""
    from datetime import datetime

    def parse(text):
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z")

    return (parse(second) - parse(first)).total_seconds()


async def test_wrong_pins_across_calls_bring_a_pause_and_a_prompt_never_a_lock_out(
    runner, sandbox, make_room, own_cache, low_pin_limits
):
    room = await make_room(139, pin="4321")
    log = EventLog()

    def configure(worker):
        log(worker)
        slow_pin_prompt(worker)

    worker = await runner.start(fast_pin=False, configure=configure)
    for n in range(2):  # two calls from 555, one wrong PIN each
        await guess_wrong(sandbox, room, "555", n)
    # The next call from 555: a prompt and a pause before the PIN prompt; then the right PIN gets in.
    caller = await sandbox.caller(139, far="latepin4321", name="Back again", number="555")
    await wait_roster(sandbox, worker, room, {caller.channel_id}, timeout=25)
    (paused_at, pause_sound), (asked_at, ask_sound) = log.playbacks(caller.channel_id)[:2]
    assert (pause_sound, ask_sound) == ("sound:one-moment-please", "sound:conf-getpin")
    # The pause runs from the request of the first prompt; that one starts a moment after it.
    assert seconds_between(paused_at, asked_at) >= 3.0 - 0.1
    await sandbox.hangup(caller)
    # Per room, across numbers: 555's right PIN cleared its own count, not the room's (2 of 3).
    await guess_wrong(sandbox, room, "556", 0)
    fresh = await sandbox.caller(139, far="silent", name="Fresh", number="557")
    await eventually(lambda: log.sounds(fresh.channel_id), message="first prompt")
    assert log.sounds(fresh.channel_id)[0] == "sound:one-moment-please"
    refused = await db(events_of)(room, ConferenceEvent.Kind.REFUSED)
    assert refused == []  # a pause is no refusal; the wrong-PIN callers hung up themselves


async def test_wrong_pin_counts_live_in_redis_across_worker_restarts_and_end_with_the_window(
    runner, sandbox, make_room, redis_cache, redis_url, low_pin_limits, monkeypatch
):
    import redis

    monkeypatch.setattr(low_pin_limits, "PIN_FAIL_WINDOW", 8)
    room = await make_room(140, pin="4321")
    await runner.start()
    for n in range(2):
        await guess_wrong(sandbox, room, "555", n)
    client = redis.Redis.from_url(redis_url)
    keys = client.keys(f"{redis_cache}:*")
    assert keys and all(0 < client.ttl(key) <= 16 for key in keys)  # every count expires
    client.close()
    await runner.stop()
    log = EventLog()
    worker = await runner.start(configure=log)  # a new worker: the counts are in Redis
    paused = await sandbox.caller(140, far="silent", number="555")
    await eventually(lambda: log.sounds(paused.channel_id), message="first prompt")
    assert log.sounds(paused.channel_id)[0] == "sound:one-moment-please"
    await sandbox.hangup(paused)
    # One to two windows after the last wrong PIN, nothing is held against the number.
    await eventually(lambda: _no_failures(room, "555"), timeout=20, interval=0.5, message="counts expired")
    caller = await sandbox.caller(140, far="pin4321", number="555")
    await wait_roster(sandbox, worker, room, {caller.channel_id}, timeout=20)
    assert log.sounds(caller.channel_id)[0] == "sound:conf-getpin"


async def _no_failures(room, number):
    from conferences.ari import pin_throttle

    return await pin_throttle.failures(room.pk, number) == (0, 0)
