"""Invites by number against the sandbox: the worker dials far ends that answer, are busy, congested,
never answer, and answer then hang up (deploy/asterisk/extensions.conf, [test-invitees]); every page of
the room sees the exact status sequence; a cancel while it rings; refused numbers never reach Asterisk;
the rate limits; each invite stored with its actor and outcome.
"""

import asyncio
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from conferences.models import AsteriskServer, Invite, Participant
from tests.live import EventLog, RoomWatcher, act, db, events_of, wait_roster
from tests.sandbox import eventually

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

TEMPLATE = "Local/{number}@test-invitees"


@pytest.fixture
async def moderator(transactional_db):
    return await db(User.objects.create_user)(username="mod", password="x")


@pytest.fixture
async def dialling(pbx):
    """The sandbox server set up for invites to the test far ends (7001-7006)."""
    await db(AsteriskServer.objects.filter(pk=pbx.pk).update)(dial_template=TEMPLATE, invite_pattern="7[0-9]{3}")


def statuses(watcher, invite_id=None):
    return [
        f["invite"]["status"]
        for f in watcher.of_type("invite.updated")
        if invite_id is None or f["invite"]["id"] == invite_id
    ]


async def invite(worker, room, number, moderator):
    ok, error = await act(worker, room, "invite", None, moderator, number=number)
    assert (ok, error) == (True, None)
    return await db(lambda: Invite.objects.filter(conference=room, number=number).latest("id"))()


async def ended(watcher, invite_id, timeout=20):
    final = {"answered", "busy", "no_answer", "failed", "cancelled"}
    await eventually(
        lambda: set(statuses(watcher, invite_id)) & final, timeout=timeout, message=f"invite {invite_id} ended"
    )
    return statuses(watcher, invite_id)


async def test_an_invitee_who_answers_is_in_the_room_without_pin_or_lobby(
    worker, sandbox, make_room, moderator, dialling, fresh_layer
):
    room = await make_room(170, pin="4321", lobby=True)
    host = await sandbox.caller(170, name="Host", number="500", admin=True, far="pin4321")
    await wait_roster(sandbox, worker, room, {host.channel_id}, timeout=20)
    async with RoomWatcher(fresh_layer, room.pk) as watcher:
        sent = await invite(worker, room, "7001", moderator)
        assert await ended(watcher, sent.pk) == ["dialing", "answered"]
        await wait_roster(sandbox, worker, room, {host.channel_id, sent.channel_id})
        joined = [f["participant"] for f in watcher.of_type("participant.joined")]
        answered = watcher.of_type("invite.updated")[-1]["invite"]
        watcher.assert_seq_contiguous()
    [invitee] = [p for p in joined if p["caller_number"] == "7001"]
    assert invitee["status"] == "present" and answered["participant"] == invitee["id"]
    row = await db(Participant.objects.get)(channel_id=sent.channel_id)
    assert (row.caller_number, row.caller_name) == ("7001", "")  # not the room's own caller ID
    # The invitee talks (the far end plays speech): the room hears it.
    await eventually(lambda: db(lambda: Participant.objects.get(pk=row.pk).talking)(), message="invitee talks")
    kinds = [(e["kind"], e["actor_id"], e["details"].get("status")) for e in await db(events_of)(room)]
    assert ("invited", moderator.pk, None) in kinds and ("invite_ended", moderator.pk, "answered") in kinds


@pytest.mark.parametrize(
    "number,expected",
    [
        ("7002", ["dialing", "busy"]),
        ("7003", ["dialing", "failed"]),
    ],
)
async def test_a_busy_or_congested_number_says_so(
    worker, sandbox, make_room, moderator, dialling, fresh_layer, number, expected
):
    room = await make_room(171)
    async with RoomWatcher(fresh_layer, room.pk) as watcher:
        sent = await invite(worker, room, number, moderator)
        assert await ended(watcher, sent.pk) == expected
    row = await db(Invite.objects.get)(pk=sent.pk)
    assert row.status == expected[-1] and row.ended_at is not None
    print(f"{number}: cause {row.cause}")
    assert await db(lambda: Participant.objects.filter(conference=room).count())() == 0


async def test_no_answer_after_the_ring_time_and_a_cancel_while_it_rings(
    worker, sandbox, make_room, moderator, dialling, fresh_layer
):
    from conferences.consumers import _snapshot

    room = await make_room(172, invite_ring_seconds=5)
    async with RoomWatcher(fresh_layer, room.pk) as watcher:
        started = asyncio.get_running_loop().time()
        unanswered = await invite(worker, room, "7004", moderator)
        assert await ended(watcher, unanswered.pk, timeout=25) == ["dialing", "ringing", "no_answer"]
        took = asyncio.get_running_loop().time() - started
        print(f"no answer after {took:.1f} s (ring time 5 s)")
        assert 4.0 <= took <= 9.0

        ringing = await invite(worker, room, "7004", moderator)
        await eventually(lambda: statuses(watcher, ringing.pk) == ["dialing", "ringing"], message="ringing")
        snapshot = await db(_snapshot)(room.pk)
        assert [(i["id"], i["status"]) for i in snapshot["invites"]] == [(ringing.pk, "ringing")]
        assert await act(worker, room, "cancel_invite", None, moderator, invite=ringing.pk) == (True, None)
        assert await ended(watcher, ringing.pk) == ["dialing", "ringing", "cancelled"]
        assert await act(worker, room, "cancel_invite", None, moderator, invite=ringing.pk) == (
            False,
            "no such invite ringing in this room",
        )
        watcher.assert_seq_contiguous()
    assert (await db(_snapshot)(room.pk))["invites"] == []

    async def no_channels():
        return not await sandbox.call("GET", "/channels")

    await eventually(no_channels, message="the cancelled call is gone from Asterisk")


async def test_an_invitee_who_answers_then_hangs_up_joins_and_leaves(
    worker, sandbox, make_room, moderator, dialling, fresh_layer
):
    room = await make_room(173)
    async with RoomWatcher(fresh_layer, room.pk) as watcher:
        sent = await invite(worker, room, "7005", moderator)
        assert await ended(watcher, sent.pk) == ["dialing", "answered"]
        await eventually(lambda: watcher.of_type("participant.left"), timeout=10, message="left")
    [left] = [f["participant"] for f in watcher.of_type("participant.left")]
    assert left["caller_number"] == "7005" and left["left_reason"] == "hangup"
    assert statuses(watcher, sent.pk) == ["dialing", "answered"]  # the hang-up is a leave, not an outcome


async def test_refused_numbers_never_reach_asterisk(runner, sandbox, make_room, moderator, dialling):
    log = EventLog()
    worker = await runner.start(configure=log)
    room = await make_room(174, max_open_invites=1)
    await make_room(7010)  # through the PBX's dialplan, an invite of it would join the two rooms
    for number, error in [
        ("7001,admin", "a number holds only 0-9 * # + (at most 32)"),
        ("7001@other-context", "a number holds only 0-9 * # + (at most 32)"),
        ("7001&app=evil", "a number holds only 0-9 * # + (at most 32)"),
        ("PJSIP/7001", "a number holds only 0-9 * # + (at most 32)"),
        ("", "a number holds only 0-9 * # + (at most 32)"),
        (None, "a number holds only 0-9 * # + (at most 32)"),
        ("+4930123456", "this number may not be invited"),
        ("9001", "this number may not be invited"),
        ("7001\n", "a number holds only 0-9 * # + (at most 32)"),
        ("7010", "this number may not be invited"),  # a room of the server (made below)
    ]:
        assert await act(worker, room, "invite", None, moderator, number=number) == (False, error), number
    assert await db(lambda: Invite.objects.count())() == 0
    assert await sandbox.call("GET", "/channels") == []
    assert not [e for e in log.events if e.get("type") in ("Dial", "ChannelStateChange", "ChannelDestroyed")]

    # At most max_open_invites ringing in the room.
    ringing = await invite(worker, room, "7004", moderator)
    assert await act(worker, room, "invite", None, moderator, number="7004") == (
        False,
        "too many invites are ringing in this room",
    )
    assert await act(worker, room, "cancel_invite", None, moderator, invite=ringing.pk) == (True, None)

    # A full room: an invite holds a seat.
    full = await make_room(179, max_participants=1)
    caller = await sandbox.caller(179, name="Alone", number="880")
    await wait_roster(sandbox, worker, full, {caller.channel_id})
    assert await act(worker, full, "invite", None, moderator, number="7001") == (False, "the room is full")

    # A server without a dial template has no invites.
    await db(AsteriskServer.objects.filter(pk=worker.server.pk).update)(dial_template="")
    assert await act(worker, room, "invite", None, moderator, number="7001") == (
        False,
        "invites are not set up for this room's server",
    )


async def test_the_rate_limits_per_moderator_and_per_room(worker, sandbox, make_room, moderator, dialling):
    room = await make_room(175, max_open_invites=50)
    other_room = await make_room(176, max_open_invites=50)
    for _ in range(3):  # real calls count
        sent = await invite(worker, room, "7002", moderator)
        await eventually(lambda sent=sent: db(lambda: Invite.objects.get(pk=sent.pk).status == "busy")())
    now = timezone.now()

    def earlier(conference, actor, count, minutes_ago):
        Invite.objects.bulk_create(
            Invite(
                conference=conference,
                number="7002",
                status="busy",
                actor=actor,
                channel_id=f"seeded-{conference.pk}-{actor.pk if actor else 0}-{minutes_ago}-{i}",
                created_at=now - timedelta(minutes=minutes_ago),
            )
            for i in range(count)
        )

    await db(earlier)(room, moderator, 20, 6)  # more than five minutes ago: they no longer count
    await db(earlier)(other_room, moderator, 6, 1)  # the moderator's own, in another room: 9 with the 3
    assert (await invite(worker, room, "7002", moderator)).number == "7002"  # the 10th
    assert await act(worker, room, "invite", None, moderator, number="7002") == (
        False,
        "too many invites lately; try again in a few minutes",
    )
    # Another moderator may still invite into the room, up to the room's own limit (20 in 5 minutes).
    colleague = await db(User.objects.create_user)(username="colleague", password="x")
    await db(earlier)(room, None, 15, 1)  # 4 + 15 = 19 into the room lately
    assert (await invite(worker, room, "7002", colleague)).actor_id == colleague.pk  # the 20th
    assert await act(worker, room, "invite", None, colleague, number="7002") == (
        False,
        "too many invites lately; try again in a few minutes",
    )


async def test_invites_across_a_worker_restart(runner, sandbox, make_room, moderator, dialling):
    """The worker restarts while one invite rings and another is in the room: the new worker follows the
    ringing one to its end at the ring time (counted from when it was placed), and the answered one stays."""
    room = await make_room(180, invite_ring_seconds=6)
    worker = await runner.start()
    answered = await invite(worker, room, "7006", moderator)  # answers (silent)
    await eventually(lambda: db(lambda: Invite.objects.get(pk=answered.pk).status == "answered")(), timeout=15)
    ringing = await invite(worker, room, "7004", moderator)
    await eventually(lambda: db(lambda: Invite.objects.get(pk=ringing.pk).status == "ringing")(), timeout=10)
    await runner.stop()  # the worker goes while it rings
    worker = await runner.start()
    await eventually(lambda: db(lambda: Invite.objects.get(pk=ringing.pk).status == "no_answer")(), timeout=30)
    assert not await sandbox.channel_exists(ringing.channel_id)
    row = await db(Participant.objects.get)(channel_id=answered.channel_id)
    assert row.caller_number == "7006" and row.left_at is None
    assert (await db(Invite.objects.get)(pk=answered.pk)).participant_id == row.pk


async def test_staff_invite_a_number_from_the_admin_through_the_same_path(worker, sandbox, make_room, dialling, client):
    from asgiref.sync import sync_to_async

    room = await make_room(182)
    staff = await db(User.objects.create_superuser)(username="boss", password="x", email="")
    await sync_to_async(client.force_login)(staff)
    url = "/admin/conferences/conference/"
    form = await sync_to_async(client.post)(url, {"action": "invite", "_selected_action": [room.pk]})
    assert form.status_code == 200 and b'name="number"' in form.content  # asks for the number first
    for number, message in [("9001", "this number may not be invited"), ("7001", "done")]:
        response = await sync_to_async(client.post)(
            url, {"action": "invite", "apply": "1", "number": number, "_selected_action": [room.pk]}, follow=True
        )
        shown = [str(m) for m in response.context["messages"]]
        assert any(message in text for text in shown), shown
    sent = await db(Invite.objects.get)(conference=room)
    assert (sent.number, sent.actor_id) == ("7001", staff.pk)
    await eventually(lambda: db(lambda: Invite.objects.get(pk=sent.pk).status == "answered")(), timeout=15)


# --- a real SIP phone at the far end ------------------------------------------------------------


@pytest.mark.parametrize(
    "answer,expected,cause",
    [
        ("busy", ["dialing", "ringing", "busy"], 17),  # 486 Busy Here
        ("decline", ["dialing", "ringing", "busy"], 21),  # 603 Decline: the phone's "reject" key
        ("answer", ["dialing", "ringing", "answered"], None),  # 180, then 200 OK
        ("ring", ["dialing", "ringing", "no_answer"], None),  # 180 and nothing more: the ring time runs out
    ],
)
async def test_a_sip_phone_that_rings_then_is_busy_declines_or_answers(
    worker,
    sandbox,
    make_room,
    moderator,
    pbx,
    fresh_layer,
    phones_ari,
    answer,
    expected,
    cause,  # noqa: F811
):
    """The invite goes out over PJSIP to the test phones (a second Asterisk on loopback), whose phone rings
    (180 Ringing) and then refuses (486, 603) or answers (200 OK): the statuses come from real SIP."""
    from tests.sip import AppSocket, rest

    access = phones_ari
    await db(AsteriskServer.objects.filter(pk=pbx.pk).update)(
        dial_template="PJSIP/{number}@test-invitee-phones", invite_pattern="7[0-9]{3}"
    )
    room = await make_room(183, invite_ring_seconds=5)
    async with AppSocket(access, "phones-incoming") as phone_app, RoomWatcher(fresh_layer, room.pk) as watcher:
        sent = await invite(worker, room, "7101", moderator)
        start = await phone_app.wait_for(lambda: phone_app.of("StasisStart"), message="the phone is called")
        phone = start[0]["channel"]
        assert start[0]["args"] == ["7101"] and phone["caller"]["number"] == "183"  # the room's number
        await rest(access, "POST", f"/channels/{phone['id']}/ring")
        await eventually(lambda: statuses(watcher, sent.pk) == ["dialing", "ringing"], message="ringing")
        if answer == "answer":
            await rest(access, "POST", f"/channels/{phone['id']}/answer")
        elif answer != "ring":
            reason = {"busy": "busy", "decline": "rejected"}[answer]
            await rest(access, "DELETE", f"/channels/{phone['id']}", params={"reason": reason})
        assert await ended(watcher, sent.pk) == expected
        if answer == "ring":  # the phone hears the call end (a CANCEL)
            await phone_app.wait_for(lambda: phone_app.of("StasisEnd"), message="the phone stops ringing")
        if answer == "answer":
            await wait_roster(sandbox, worker, room, {sent.channel_id})
            await rest(access, "DELETE", f"/channels/{phone['id']}", ok=(204, 404))
    row = await db(Invite.objects.get)(pk=sent.pk)
    print(f"{answer}: status {row.status}, cause {row.cause}")
    if cause is not None:
        assert row.cause == cause
