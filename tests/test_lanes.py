"""Rooms side by side: the lanes themselves, and the worker that routes rooms to them.

Runs on PostgreSQL with the rest of the suite and again on SQLite (the
embedded default: scripts/test), where the database lets one writer at a
time: the rooms' work then interleaves, and must still be right.
"""

import asyncio
import time

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import OperationalError, connection

from conferences import moderation
from conferences.ari import store
from conferences.ari.lanes import Lanes
from conferences.ari.worker import AriWorker
from conferences.models import Conference, ConferenceEvent, Participant
from tests.recorded import FakeAri, load

db = sync_to_async


# --- the lanes ------------------------------------------------------------------------------


async def test_one_lanes_items_run_in_order_and_lanes_run_side_by_side():
    log = []

    async def handle(item):
        key, n, seconds = item
        log.append(("start", key, n))
        await asyncio.sleep(seconds)
        log.append(("end", key, n))

    lanes = Lanes(handle)
    started = time.monotonic()
    for n in range(3):
        lanes.submit("a", ("a", n, 0.1))
    lanes.submit("b", ("b", 0, 0.1))
    await lanes.drain()
    elapsed = time.monotonic() - started
    assert [entry for entry in log if entry[1] == "a"] == [
        ("start", "a", 0), ("end", "a", 0), ("start", "a", 1), ("end", "a", 1), ("start", "a", 2), ("end", "a", 2)
    ]  # fmt: skip
    assert log.index(("end", "b", 0)) < log.index(("end", "a", 1))  # b did not wait behind a
    assert 0.3 <= elapsed < 0.5
    await lanes.close(1)


async def test_a_failing_item_does_not_end_its_lane(caplog):
    done = []

    async def handle(item):
        if item == "bad":
            raise RuntimeError("boom")
        done.append(item)

    lanes = Lanes(handle)
    for item in ("one", "bad", "two"):
        lanes.submit("a", item)
    await lanes.drain()
    assert done == ["one", "two"] and "lane a: an item failed" in caplog.text
    await lanes.close(1)


async def test_closing_finishes_the_item_in_hand_and_drops_the_rest():
    done = []

    async def handle(item):
        await asyncio.sleep(0.2)
        done.append(item)

    lanes = Lanes(handle)
    for item in range(5):
        lanes.submit("a", item)
    lanes.submit("b", "b0")
    await asyncio.sleep(0.05)
    await lanes.close(2)
    assert sorted(done, key=str) == [0, "b0"]
    lanes.submit("a", "late")  # refused once closing
    assert lanes.pending() == 0


# --- the worker's rooms ------------------------------------------------------------------------


class SlowAri(FakeAri):
    """A REST side that takes ``seconds`` to add a channel to the bridges named."""

    def __init__(self, slow_bridges=(), seconds=1.5):
        super().__init__()
        self.slow_bridges, self.seconds = set(slow_bridges), seconds

    async def add_channel(self, bridge_id, channel_id, role=None, *, absorb_dtmf=False):
        self.calls.append(("add_channel", bridge_id, channel_id))
        if bridge_id in self.slow_bridges:
            await asyncio.sleep(self.seconds)


@pytest.fixture
async def running(server, fresh_layer):
    """An AriWorker's dispatcher and lanes, fed by the test instead of Asterisk."""
    started = []

    async def start(ari):
        worker = AriWorker(server)
        worker.app.ari = ari
        worker.connected = True
        assert (await worker._acquire())[0]  # the lease, as run() takes it: its writes are fenced
        task = asyncio.create_task(worker._processor())
        started.append((worker, task))
        return worker

    yield start
    for worker, task in started:
        worker.queue.put_nowait(("stop", None))
        await asyncio.wait_for(task, 15)
        await worker.ari.close()
        await asyncio.to_thread(worker.database.close)


def stasis_start(room, channel_id, number):
    start = next(e for e in load("join_and_hangup", room) if e["type"] == "StasisStart")
    start["channel"]["id"] = channel_id
    start["channel"]["caller"] = {"name": f"Caller {number}", "number": number}
    start["args"] = [room.number]
    return start


async def until(predicate, timeout=5):
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not met"
        await asyncio.sleep(0.01)


@pytest.mark.django_db(transaction=True)
async def test_a_moderators_click_does_not_wait_behind_another_rooms_admission(running, make_conference):
    busy = await db(make_conference)("100")
    other = await db(make_conference)("200")
    ari = SlowAri(slow_bridges={f"conference-conference-{busy.pk}"}, seconds=2.0)
    worker = await running(ari)
    worker.queue.put_nowait(("event", stasis_start(busy, "slow-1", "301")))
    await until(lambda: ari.called("add_channel"))  # room 100's lane is now stuck in Asterisk for 2 s
    layer = get_channel_layer()
    reply_channel = await layer.new_channel()
    clicked = time.monotonic()
    worker.queue.put_nowait(
        ("command", moderation.build_request(conference_id=other.pk, action="lock", reply_channel=reply_channel))
    )
    reply = await asyncio.wait_for(layer.receive(reply_channel), 5)
    waited = time.monotonic() - clicked
    assert reply["ok"] is True
    assert waited < 1.0, f"the lock of room 200 waited {waited:.2f} s behind room 100"
    assert (await db(Conference.objects.get)(pk=other.pk)).locked


@pytest.mark.django_db(transaction=True)
async def test_one_rooms_database_work_does_not_hold_back_another_rooms(running, make_conference, monkeypatch):
    """On PostgreSQL the rooms' database work runs side by side; on SQLite (one writer) one after the other."""
    slow = await db(make_conference)("100")
    fast = await db(make_conference)("200")
    real = store.admission_facts

    def slow_for_room_100(server_id, channel_id, number):
        if number == "100":
            time.sleep(1.5)  # a slow query, in the database thread
        return real(server_id, channel_id, number)

    monkeypatch.setattr(store, "admission_facts", slow_for_room_100)
    ari = FakeAri()
    worker = await running(ari)
    worker.queue.put_nowait(("event", stasis_start(slow, "slow-1", "301")))
    await asyncio.sleep(0.1)
    sent = time.monotonic()
    worker.queue.put_nowait(("event", stasis_start(fast, "fast-1", "302")))
    added = lambda channel_id: any(call[1] == channel_id for call in ari.called("add_channel"))  # noqa: E731
    if connection.vendor == "sqlite":
        assert worker.database.threads == 1
        await until(lambda: added("fast-1") and added("slow-1"), timeout=5)  # both admitted, room 100 first
        assert [call[1] for call in ari.called("add_channel")] == ["slow-1", "fast-1"]
        return
    await until(lambda: added("fast-1"))
    assert time.monotonic() - sent < 1.0
    assert not added("slow-1")  # room 100 is still reading
    await until(lambda: added("slow-1"), timeout=5)


@pytest.mark.django_db(transaction=True)
async def test_rooms_handled_at_once_keep_their_own_order_and_seq(running, make_conference):
    rooms = [await db(make_conference)(str(300 + i)) for i in range(4)]
    worker = await running(FakeAri())
    for room in rooms:
        for event in load("join_and_hangup", room):  # a channel of its own in each room
            event = dict(event)
            if "channel" in event:
                event["channel"] = {**event["channel"], "id": f"{event['channel']['id']}-{room.pk}"}
            if event["type"] == "StasisStart":
                event["args"] = [room.number]
            if "bridge" in event and event["bridge"]:
                bridge = event["bridge"]
                event["bridge"] = {**bridge, "channels": [f"{cid}-{room.pk}" for cid in bridge.get("channels", [])]}
            worker.queue.put_nowait(("event", event))

    def all_left():
        try:
            return Participant.objects.filter(conference__in=rooms, left_at__isnull=False).count() == len(rooms)
        except OperationalError:  # SQLite's in-memory test database: a table locked by the worker's write
            return False

    end = time.monotonic() + 15
    while not await db(all_left)():
        assert time.monotonic() < end, "the rooms' calls did not all end"
        await asyncio.sleep(0.05)
    await until(lambda: worker.queue.empty() and worker.lanes.pending() == 0)
    for room in rooms:
        room = await db(Conference.objects.get)(pk=room.pk)
        assert room.seq == 5  # the same five events as when the room is handled alone
        [stay] = await db(lambda room=room: list(Participant.objects.filter(conference=room)))()
        assert stay.left_reason == "hangup"
        kinds = await db(
            lambda room=room: list(
                ConferenceEvent.objects.filter(conference=room)
                .order_by("created_at", "id")
                .values_list("kind", flat=True)
            )
        )()
        assert kinds == ["joined", "left"]


@pytest.mark.django_db(transaction=True)
async def test_nothing_overtakes_a_resync(running, make_conference):
    room = await db(make_conference)("100")
    order = []

    class SlowResyncAri(FakeAri):
        async def channels(self):
            order.append("resync starts")
            await asyncio.sleep(0.5)
            order.append("resync reads")
            return []

        async def add_channel(self, bridge_id, channel_id, role=None, *, absorb_dtmf=False):
            order.append(f"add {channel_id}")

    worker = await running(SlowResyncAri())

    async def info():
        return {"status": {"startup_time": "x"}}

    worker.ari.asterisk_info = info  # the worker asks Asterisk's start time first
    worker.queue.put_nowait(("event", stasis_start(room, "before", "301")))
    worker.queue.put_nowait(("resync", None))
    worker.queue.put_nowait(("event", stasis_start(room, "after", "302")))
    await until(lambda: "add after" in order, 10)
    assert order.index("add before") < order.index("resync starts")
    assert order.index("resync reads") < order.index("add after")


@pytest.mark.django_db(transaction=True)
async def test_a_room_made_after_the_worker_started_gets_its_first_caller_in_its_lane(running, make_conference):
    first = await db(make_conference)("100")
    worker = await running(FakeAri())
    assert await worker._lane_of("event", stasis_start(first, "a", "301")) == first.pk
    later = await db(make_conference)("200")  # created in the admin while the worker runs
    assert await worker._lane_of("event", stasis_start(later, "b", "302")) == later.pk
    # The channel's later events follow it into that lane.
    assert await worker._lane_of("event", {"type": "ChannelDtmfReceived", "channel": {"id": "b"}}) == later.pk


@pytest.mark.django_db(transaction=True)
async def test_numbers_that_are_no_room_are_not_looked_up_over_and_over(running, make_conference, monkeypatch):
    room = await db(make_conference)("100")
    worker = await running(FakeAri())
    reads = []
    real = worker._read_directory

    async def counting():
        reads.append(1)
        await real()

    monkeypatch.setattr(worker, "_read_directory", counting)
    stranger = stasis_start(room, "x", "303")
    stranger["args"] = ["999"]
    for _ in range(20):
        assert await worker._lane_of("event", stranger) == "server"
    assert len(reads) == 1
