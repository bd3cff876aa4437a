"""The room hub's shared snapshots (conferences/fanout.py, RoomView): pages opening at once cost one read.

Every test checks what a page ends with (the roster and seq it would show),
not only how many reads were made.
"""

import asyncio
import time

import pytest
from channels.layers import channel_layers
from django.db.models import F

from conferences import broadcast, consumers, fanout, services
from conferences.models import Conference
from tests.sockets import db, frame, list_socket, send

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def reads(monkeypatch):
    """Count the room-state reads from the database; each one takes 0.2 s (a busy database)."""
    counted = []
    real = consumers._snapshot

    def slow(conference_id):
        counted.append(time.monotonic())
        snapshot = real(conference_id)
        time.sleep(0.2)
        return snapshot

    monkeypatch.setattr(consumers, "_snapshot", slow)
    return counted


@pytest.fixture
def room_group_adds(monkeypatch):
    layer = channel_layers["default"]
    real = type(layer).group_add
    added = []

    async def counting(self, group, channel):
        if group.startswith("conference."):
            added.append(group)
        return await real(self, group, channel)

    monkeypatch.setattr(type(layer), "group_add", counting)
    return added


def roster(snapshot, frames):
    """What a page shows after a snapshot and the frames that followed it (the page's rules, by seq)."""
    people = {p["id"]: dict(p) for p in snapshot["participants"]}
    seq = snapshot["seq"]
    for event in frames:
        assert event["seq"] == seq + 1, f"a gap or a repeat: {seq} then {event['seq']}"
        seq = event["seq"]
        if event["type"] == "participant.joined":
            people[event["participant"]["id"]] = dict(event["participant"])
        elif event["type"] == "participant.left":
            people.pop(event["participant"]["id"], None)
        elif event["type"] == "participant.updated":
            people[event["participant"]["id"]].update(event["participant"])
    return seq, people


async def frames_until_quiet(communicator, timeout=0.5):
    got = []
    while not await communicator.receive_nothing(timeout=timeout):
        got.append(await frame(communicator))
    return got


async def test_sockets_opening_at_once_share_one_read_and_one_group_add(
    connect, viewer, room, make_participant, reads, room_group_adds
):
    await db(make_participant)(room, "chan-a", caller_name="Alice")
    results = await asyncio.gather(*(connect(viewer) for _ in range(15)))
    snapshots = [await frame(communicator) for communicator, _ in results]
    assert len(reads) == 1
    assert room_group_adds == [broadcast.room_group(room.pk)]
    assert {s["seq"] for s in snapshots} == {snapshots[0]["seq"]}
    assert all([p["caller_name"] for p in s["participants"]] == ["Alice"] for s in snapshots)
    assert all(s["can_moderate"] is False for s in snapshots)


async def test_moderators_and_viewers_of_one_room_each_get_their_own_controls(connect, viewer, moderator, room, reads):
    watching, _ = await connect(viewer)  # one after the other: the test client holds one login at a time
    running, _ = await connect(moderator)
    assert (await frame(watching))["can_moderate"] is False
    assert (await frame(running))["can_moderate"] is True
    assert len(reads) == 1


async def test_a_later_socket_gets_the_kept_snapshot_then_the_events_since(
    connect, viewer, room, make_participant, reads, monkeypatch
):
    alice = await db(make_participant)(room, "chan-a", caller_name="Alice")
    first, _ = await connect(viewer)
    before = await frame(first)
    await db(services.participant_update)(participant_id=alice.pk, talking=True)
    assert (await frame(first))["seq"] == before["seq"] + 1
    second, _ = await connect(viewer)
    kept = await frame(second)
    assert len(reads) == 1 and kept["seq"] == before["seq"]
    seq, people = roster(kept, await frames_until_quiet(second))
    assert seq == before["seq"] + 1 and people[alice.pk]["talking"] is True
    # Once the kept snapshot is older than SNAPSHOT_MAX_AGE, the next socket reads afresh.
    monkeypatch.setattr(fanout, "SNAPSHOT_MAX_AGE", 0.1)
    await asyncio.sleep(0.2)
    third, _ = await connect(viewer)
    fresh = await frame(third)
    assert len(reads) == 2 and fresh["seq"] == seq and fresh["participants"][0]["talking"] is True
    assert await frames_until_quiet(third) == []


async def test_an_event_committed_during_the_shared_read_reaches_every_socket_once(
    connect, viewer, room, make_participant, monkeypatch
):
    alice = await db(make_participant)(room, "chan-a", caller_name="Alice")
    real = consumers._snapshot

    def read_then_event(conference_id):
        snapshot = real(conference_id)
        # Committed after the read: the hub hears it while its sockets wait for the snapshot.
        services.participant_update(participant_id=alice.pk, muted=True)
        time.sleep(0.2)
        return snapshot

    monkeypatch.setattr(consumers, "_snapshot", read_then_event)
    results = await asyncio.gather(*(connect(viewer) for _ in range(6)))
    for communicator, _ in results:
        snapshot = await frame(communicator)
        later = await frames_until_quiet(communicator)
        assert [e["type"] for e in later] == ["participant.updated"]
        seq, people = roster(snapshot, later)
        assert people[alice.pk]["muted"] is True


async def test_resyncs_after_a_lost_event_read_afresh_and_share_the_reads(
    connect, viewer, room, make_participant, reads
):
    results = await asyncio.gather(*(connect(viewer) for _ in range(10)))
    sockets = [communicator for communicator, _ in results]
    snapshot = [await frame(s) for s in sockets][0]
    assert len(reads) == 1
    # A join the database holds whose broadcast the layer lost, then an event that was delivered.
    larry = await db(make_participant)(room, "chan-lost", caller_name="Late Larry")
    await db(Conference.objects.filter(pk=room.pk).update)(seq=F("seq") + 1)
    await db(services.participant_update)(participant_id=larry.pk, talking=True)
    for s in sockets:
        event = await frame(s)
        assert event["seq"] == snapshot["seq"] + 2  # the page sees the gap and asks
    answers = await asyncio.gather(*(send(s, {"action": "resync", "request_id": "gap"}) for s in sockets))
    for answer in answers:
        assert answer["type"] == "snapshot" and answer["seq"] == snapshot["seq"] + 2
        assert [(p["caller_name"], p["talking"]) for p in answer["participants"]] == [("Late Larry", True)]
    # Ten resyncs at once: a read that began after each of them, shared (at most one more for stragglers).
    assert 2 <= len(reads) <= 3


async def test_the_hub_drops_its_snapshot_when_it_sees_a_gap(connect, viewer, room, make_participant, reads):
    first, _ = await connect(viewer)
    snapshot = await frame(first)
    larry = await db(make_participant)(room, "chan-lost", caller_name="Late Larry")
    await db(Conference.objects.filter(pk=room.pk).update)(seq=F("seq") + 1)  # its broadcast was lost
    await db(services.participant_update)(participant_id=larry.pk, talking=True)
    assert (await frame(first))["seq"] == snapshot["seq"] + 2
    # A socket opened now (well within SNAPSHOT_MAX_AGE) does not get the snapshot the hub knows to be short.
    second, _ = await connect(viewer)
    fresh = await frame(second)
    assert len(reads) == 2 and fresh["seq"] == snapshot["seq"] + 2
    assert [p["caller_name"] for p in fresh["participants"]] == ["Late Larry"]


async def test_too_many_events_since_the_snapshot_make_the_next_socket_read(
    connect, viewer, room, make_participant, reads, monkeypatch
):
    monkeypatch.setattr(fanout, "SINCE_LIMIT", 3)
    alice = await db(make_participant)(room, "chan-a", caller_name="Alice")
    first, _ = await connect(viewer)
    await frame(first)
    for talking in (True, False, True, False):
        await db(services.participant_update)(participant_id=alice.pk, talking=talking)
    assert len(await frames_until_quiet(first)) == 4
    second, _ = await connect(viewer)
    snapshot = await frame(second)
    assert len(reads) == 2 and await frames_until_quiet(second) == []
    assert snapshot["participants"][0]["talking"] is False


async def test_the_last_socket_of_a_room_takes_the_hub_out_of_its_group(connect, viewer, room, reads):
    layer = channel_layers["default"]
    sockets = [communicator for communicator, _ in await asyncio.gather(*(connect(viewer) for _ in range(3)))]
    for s in sockets:
        await frame(s)
    hub = fanout.hub_for(layer)
    group = broadcast.room_group(room.pk)
    assert hub.channel in layer.groups.get(group, {})
    for s in sockets:
        await s.disconnect()
    assert room.pk not in hub.rooms and room.pk not in hub.views
    assert hub.channel not in layer.groups.get(group, {})
    # And back: a new socket of the room joins again and gets its events.
    again, _ = await connect(viewer)
    snapshot = await frame(again)
    assert hub.channel in layer.groups[group]
    await db(broadcast.send_to_room)(room.pk, {"type": "participant.updated", "seq": snapshot["seq"] + 1})
    assert (await frame(again))["seq"] == snapshot["seq"] + 1


async def test_a_failed_shared_read_fails_every_waiting_socket_cleanly(connect, viewer, room, monkeypatch):
    from django.db import OperationalError

    def down(conference_id):
        time.sleep(0.1)
        raise OperationalError("the database is down")

    monkeypatch.setattr(consumers, "_snapshot", down)
    results = await asyncio.gather(*(connect(viewer) for _ in range(5)))
    for communicator, _ in results:
        message = await communicator.receive_output(timeout=3)
        assert message == {"type": "websocket.close", "code": consumers.CLOSE_INTERNAL_ERROR}
    hub = fanout.hub_for(channel_layers["default"])
    await asyncio.sleep(0.1)
    assert room.pk not in hub.rooms and room.pk not in hub.views


async def test_logging_in_again_does_not_make_the_users_open_sockets_resend_snapshots(connect, viewer, room, reads):
    """A login saves only ``last_login``: not an access change (it made every open socket of the user re-check)."""
    first, _ = await connect(viewer)
    await frame(first)
    await connect(viewer)  # logs the same user in again
    assert await frames_until_quiet(first) == []
    # A real change of the user still reaches the socket.
    viewer.is_active = False
    await db(viewer.save)()
    message = await first.receive_output(timeout=3)
    assert message == {"type": "websocket.close", "code": consumers.CLOSE_NOT_LOGGED_IN}


async def test_a_room_deleted_after_its_lookup_was_kept_closes_new_sockets_cleanly(connect, viewer, room, login):
    first, _ = await connect(viewer)
    await frame(first)
    await first.disconnect()
    await db(Conference.objects.filter(pk=room.pk).delete)()
    # Within ROOM_LOOKUP_SECONDS the slug still names the room: the snapshot read finds nothing.
    late, _ = await connect(viewer)
    message = await late.receive_output(timeout=3)
    assert message["type"] == "websocket.close" and message["code"] in (
        consumers.CLOSE_INTERNAL_ERROR,
        consumers.CLOSE_NOT_FOUND,
        consumers.CLOSE_FORBIDDEN,
    )


async def test_a_change_sent_as_one_message_reaches_pages_and_the_room_list_as_separate_frames(
    connect, login, viewer, room, make_participant
):
    """The worker sends what one hop broadcast as one ``room.events`` message (broadcast.ROOM_EVENTS): every
    page and the room list still get each frame, in seq order, and the hub's kept snapshot follows them."""
    people = [await db(make_participant)(room, f"chan-{n}", caller_name=f"C{n}") for n in range(3)]
    page, _ = await connect(viewer)
    snapshot = await frame(page)
    rooms = await list_socket(login, viewer)
    assert (await frame(rooms))["type"] == "rooms"

    def mute_everyone():
        with broadcast.collecting() as outbox:
            for person in people:
                services.participant_update(participant_id=person.pk, muted=True)
            return list(outbox)

    sent = []
    layer = channel_layers["default"]
    real = type(layer).group_send

    async def counting(self, group, message):
        sent.append(message["type"])
        return await real(self, group, message)

    type(layer).group_send = counting
    try:
        await broadcast.send_collected(await db(mute_everyone)())
    finally:
        type(layer).group_send = real
    assert sent == [broadcast.ROOM_EVENTS]
    seq, shown = roster(snapshot, await frames_until_quiet(page))
    assert seq == snapshot["seq"] + 3 and all(shown[p.pk]["muted"] for p in people)
    listed = await frames_until_quiet(rooms)  # each one, and no whole list again (that would mean a gap)
    assert [(f["type"], f["conference"], f["participant"]["id"]) for f in listed] == [
        ("participant.updated", room.slug, p.pk) for p in people
    ]
    later, _ = await connect(viewer)  # the kept snapshot, then the three it heard since
    kept = await frame(later)
    assert roster(kept, await frames_until_quiet(later)) == (seq, shown)
