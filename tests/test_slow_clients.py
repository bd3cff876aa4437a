"""Slow and greedy clients against real web processes (``manage.py serve``): the send limit and the per-user cap.

The short version of bench/greedy.py (which runs 50 such sockets for 10
minutes and writes docs/reliability.md's figures): here 10 non-reading
sockets spam ``resync`` in a room whose snapshot is big, and each must be
dropped by the server once 1 MiB waits for it, with the web process's memory
back near where it started and everything the sockets held given back; and
while they are stuck, a normal page of the same room gets every room event
at once (the hub never waits on one socket's send).
"""

import asyncio
import time

import pytest
import redis
from django.contrib.auth.models import User
from django.utils import timezone

from conferences import socketcap
from conferences.models import AsteriskServer, Conference, ConferenceAccess, Participant
from tests.live import db
from tests.sandbox import eventually
from tests.stack import (
    NonReadingClient,
    Processes,
    Viewer,
    base_env,
    database_url,
    make_sessions,
    rss_kib,
    send_room_events,
)

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

GREEDY = 10
PRESENT = 300  # callers in the room: a snapshot of about 60 KB
EVENTS = 50  # room events sent while the greedy sockets are stuck


def seed_room():
    server = AsteriskServer.objects.create(
        name="greedy-pbx", ari_url="http://127.0.0.1:9/ari", username="u", password="p", connected=True
    )
    room = Conference.objects.create(server=server, number="700", slug="greedy", name="Greedy")
    now = timezone.now()
    Participant.objects.bulk_create(
        Participant(
            conference=room,
            server=server,
            channel_id=f"greedy-{i}",
            caller_number=f"7{i:05d}",
            caller_name=f"Caller number {i} of a big room",
            joined_at=now,
        )
        for i in range(PRESENT)
    )
    return room


def socket_places(redis_url, user_ids):
    client = redis.Redis.from_url(redis_url)
    try:
        return sum(client.zcard(f"{socketcap.KEY_PREFIX}{user_id}") for user_id in user_ids)
    finally:
        client.close()


async def places_are(redis_url, user_ids, expected):
    return await asyncio.to_thread(socket_places, redis_url, user_ids) == expected


def web_log(tmp_path):
    return "".join(path.read_text() for path in tmp_path.glob("web-*.log"))


async def test_sockets_that_do_not_read_are_dropped_at_1_mib(tmp_path, redis_url):
    room = await db(seed_room)()
    users = [await db(User.objects.create_user)(username=f"greedy{i}", password="x") for i in range(2)]
    for user in users:
        await db(ConferenceAccess.objects.create)(conference=room, user=user)
    sessions = [key for user in users for key in await db(make_sessions)(user, GREEDY // 2)]
    stack = Processes(base_env(database_url(), redis_url), "greedy-pbx", tmp_path)
    clients = []
    watcher = None
    try:
        stack.start_web()
        await stack.web_up()
        watcher = Viewer(stack.port, room.slug, sessions[0]).start()
        await eventually(lambda: watcher.snapshots >= 1, timeout=15, message="a normal page connected")
        await asyncio.sleep(1)
        before = rss_kib(stack.web.pid)

        clients = [NonReadingClient(stack.port, f"/ws/conferences/{room.slug}/", key) for key in sessions]
        for client in clients:
            await client.connect()
        peak = before
        started = time.monotonic()
        events = None  # room events sent while the greedy sockets are stuck
        events_before = watcher.events
        delivered_while_stuck = None
        while time.monotonic() - started < 90 and any(c.dropped_after is None for c in clients):
            for client in clients:
                await client.send('{"action": "resync", "request_id": "r"}')
            peak = max(peak, rss_kib(stack.web.pid))
            if events is None and time.monotonic() - started > 2.5:
                events = asyncio.create_task(send_room_events(redis_url, room.pk, watcher.seq + 1, EVENTS))
                events_sent_at = time.monotonic()
            if delivered_while_stuck is None and watcher.events - events_before >= EVENTS:
                connected = sum(c.dropped_after is None for c in clients)
                delivered_while_stuck = (time.monotonic() - events_sent_at, connected)
            await asyncio.sleep(0.1)  # 10 frames a second each: twice the sustained rate limit
        assert all(c.dropped_after is not None for c in clients), [c.dropped_after for c in clients]
        assert web_log(tmp_path).count("does not read (limit 1048576); closing it") == GREEDY
        # The normal page had every event within a second of the last being sent, while
        # greedy sockets of its room were still connected with their buffers full.
        await events
        assert delivered_while_stuck is not None, (watcher.events - events_before, EVENTS)
        seconds, still_connected = delivered_while_stuck
        print(
            "slow clients: events delivered while stuck",
            delivered_while_stuck,
            "dropped after",
            [round(c.dropped_after, 1) for c in clients],
        )
        assert seconds < EVENTS * 0.01 + 1.0 and still_connected > 0, delivered_while_stuck
        # What the web process held for them is bounded by the limit (plus Python's own overhead).
        assert peak - before < GREEDY * 3 * 1024, (before, peak)
        # The normal page was never disturbed, and the dropped sockets gave back their places.
        assert watcher.reconnects == 0 and watcher.snapshots >= 1
        await eventually(
            lambda: places_are(redis_url, [u.pk for u in users], 1),
            timeout=10,
            message="the dropped sockets' places under the per-user cap were given back",
        )
    finally:
        for client in clients:
            client.close()
        if watcher is not None:
            await watcher.stop()
        stack.close()


async def test_the_socket_cap_holds_across_web_processes(tmp_path, redis_url, settings):
    """20 sockets of one user over two web processes; the 21st is refused with 4429 on either."""
    import websockets

    settings.REDIS_URL = redis_url
    room = await db(seed_room)()
    user = await db(User.objects.create_user)(username="tabs", password="x")
    await db(ConferenceAccess.objects.create)(conference=room, user=user)
    [session] = await db(make_sessions)(user, 1)
    env = base_env(database_url(), redis_url)
    first, second = Processes(env, "greedy-pbx", tmp_path / "a"), Processes(env, "greedy-pbx", tmp_path / "b")
    sockets = []
    try:
        first.start_web()
        second.start_web()
        await first.web_up()
        await second.web_up()

        async def open_socket(port):
            ws = await websockets.connect(
                f"ws://127.0.0.1:{port}/ws/conferences/{room.slug}/",
                additional_headers={"Cookie": f"sessionid={session}", "Origin": f"http://127.0.0.1:{port}"},
                max_size=2**24,
            )
            sockets.append(ws)
            return ws

        for i in range(20):
            ws = await open_socket(first.port if i % 2 else second.port)
            assert '"snapshot"' in await asyncio.wait_for(ws.recv(), 10)
        for port in (first.port, second.port):
            refused = await open_socket(port)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(refused.recv(), 10)
            assert closed.value.rcvd.code == 4429
        await sockets[0].close()  # a tab closed on one process frees a place on the other
        await eventually(lambda: places_are(redis_url, [user.pk], 19), timeout=10, message="a place freed")
        ws = await open_socket(first.port)
        assert '"snapshot"' in await asyncio.wait_for(ws.recv(), 10)
    finally:
        for ws in sockets:
            await ws.close()
        first.close()
        second.close()
