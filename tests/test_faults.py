"""Faults survived, each ending with the roster checked against Asterisk's own bridges."""

import asyncio
import random
import threading

import pytest
import redis as redis_py
from django.contrib.auth.models import User
from django.db import connection, connections

from conferences import socketcap
from conferences.models import AsteriskServer, Conference
from tests.live import db, present_channels, roster_matches_bridge, wait_roster
from tests.sandbox import eventually
from tests.stack import OwnRedis, Processes, Viewer, base_env, database_url, make_sessions

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


async def bridge_numbers(sandbox, conference, app_name="conference"):
    from conferences.ari.rules import room_bridge_id

    numbers = []
    for channel_id in await sandbox.bridge_members(room_bridge_id(app_name, conference.pk)):
        channel = await sandbox.call("GET", f"/channels/{channel_id}", ok=(200, 404))
        if channel:
            numbers.append(channel["caller"]["number"])
    return sorted(numbers)


async def test_redis_restart_while_viewers_watch_and_calls_come_and_go(pbx, sandbox, tmp_path):
    redis = OwnRedis()
    redis.start()
    room = await db(Conference.objects.create)(server=pbx, number="160", slug="redis-fault", name="Redis fault")
    user = await db(User.objects.create_superuser)(username="watcher", password="x", email="")
    sessions = await db(make_sessions)(user, 5)
    stack = Processes(base_env(database_url(), redis.url), pbx.name, tmp_path)
    viewers = []
    try:
        stack.start_web()
        stack.start_worker()
        await stack.web_up()
        await eventually(lambda: db(lambda: AsteriskServer.objects.get(pk=pbx.pk).connected)(), timeout=30)
        viewers = [Viewer(stack.port, room.slug, key).start() for key in sessions]
        await eventually(lambda: all(v.snapshots for v in viewers), timeout=15, message="viewers connected")

        rng = random.Random(7)
        callers = []
        for i in range(4):
            callers.append(await sandbox.caller(160, name=f"Before {i}", number=f"61{i:02d}"))
        await eventually(lambda: all(len(v.roster) == 4 for v in viewers), timeout=15, message="4 callers seen")

        # Redis dies while calls come and go.
        redis.kill()
        await sandbox.hangup(callers.pop(0))
        callers.append(await sandbox.caller(160, name="During", number="6150"))
        await asyncio.sleep(2)
        redis.start()  # same port: a restart
        restarted_at = asyncio.get_running_loop().time()
        for i in range(3):
            if rng.random() < 0.5 and callers:
                await sandbox.hangup(callers.pop(rng.randrange(len(callers))))
            callers.append(await sandbox.caller(160, name=f"After {i}", number=f"62{i:02d}"))
            await asyncio.sleep(0.2)

        truth = sorted(c.number for c in callers)

        async def everyone_right():
            return await bridge_numbers(sandbox, room) == truth and all(v.numbers == truth for v in viewers)

        await eventually(everyone_right, timeout=30, message="viewers back to the exact roster")
        recovery = asyncio.get_running_loop().time() - restarted_at
        same, in_db, _in_bridge = await roster_matches_bridge(sandbox, pbx, room)
        assert same and len(in_db) == len(truth)
        assert stack.worker.poll() is None, "the worker kept going"
        # The sockets rode the restart out (conferencesite/layers.py) and joined their groups again;
        # their places under the per-user cap are back in the empty Redis too.
        assert [v.reconnects for v in viewers] == [0] * len(viewers)
        places = redis_py.Redis.from_url(redis.url)
        try:
            assert places.zcard(f"{socketcap.KEY_PREFIX}{user.pk}") == len(viewers)
        finally:
            places.close()
        print(f"redis restart: viewers exact {recovery:.1f} s after Redis came back; "
              f"reconnects {[v.reconnects for v in viewers]}, resyncs {[v.resyncs for v in viewers]}")  # fmt: skip
    finally:
        for viewer in viewers:
            await viewer.stop()
        await asyncio.to_thread(stack.close)
        redis.close()


async def test_a_locked_database_delays_but_loses_no_event(worker, sandbox, make_room):
    """A table locked for a few seconds: the join waits, then lands; the worker never stalls its reader."""
    room = await make_room(161)
    release = threading.Event()
    locked = threading.Event()

    def hold_lock():
        # A connection of its own, outside the test's: it holds the lock for a while.
        conn = connections.create_connection("default")
        try:
            with conn.cursor() as cursor:
                if conn.vendor == "postgresql":
                    cursor.execute("BEGIN")
                    cursor.execute("LOCK TABLE conferences_participant IN ACCESS EXCLUSIVE MODE")
                else:
                    cursor.execute("BEGIN IMMEDIATE")
                locked.set()
                release.wait(15)
                cursor.execute("COMMIT")
        finally:
            conn.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        await asyncio.to_thread(locked.wait, 10)
        caller = await sandbox.caller(161, name="Waits", number="6300")
        for _ in range(30):  # 3 s of lock: the link stays up (the socket is read), the caller waits
            await asyncio.sleep(0.1)
            assert worker.connected
        assert await sandbox.channel_exists(caller.channel_id)
    finally:
        release.set()
        await asyncio.to_thread(holder.join, 20)
    await wait_roster(sandbox, worker, room, {caller.channel_id}, timeout=20)
    assert connection.vendor in ("postgresql", "sqlite")
    assert await db(present_channels)(room) == {caller.channel_id}
