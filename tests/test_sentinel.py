"""Redis behind Sentinel: the channel layer, the socket cap and the login throttle follow a master failover.

Real processes throughout: a master, a replica and three Sentinels
(tests/sentinel.py), the web process and the worker configured with
``REDIS_URL=redis://conference/0`` and ``REDIS_SENTINELS``, the sandbox
Asterisk, callers, viewers and a moderator. The master is killed (SIGKILL)
while calls come and go; the Sentinels promote the replica. Afterwards the
viewers' sockets are the same ones (none reconnected: the room hub's group
membership was on the replica and is on the new master), their rosters are
exact, a moderator's action is carried out, new sockets connect (the socket
cap's places are on the new master), and the login throttle still counts the
wrong passwords given before the failover.
"""

import asyncio
import json

import pytest
import websockets
from django.contrib.auth.models import User

from conferences import broadcast, socketcap, throttle
from conferences.models import AsteriskServer, Conference
from conferencesite import env
from tests.live import db, roster_matches_bridge
from tests.sandbox import eventually
from tests.sentinel import SentinelRedis
from tests.stack import Processes, Viewer, base_env, channel_layer, database_url, http_login, make_sessions

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

PASSWORD = "correct horse battery"


def group_members(client, conference_id):
    """The channels in a room's group, read on one Redis node (channels_redis: a sorted set per group)."""
    return set(client.zrange(f"asgi:group:{broadcast.room_group(conference_id)}", 0, -1))


async def moderate(port, slug, session_key, action, participant_id):
    """One moderator action from a page of its own: the ``reply``."""
    url = f"ws://127.0.0.1:{port}/ws/conferences/{slug}/"
    headers = {"Cookie": f"sessionid={session_key}", "Origin": f"http://127.0.0.1:{port}"}
    async with websockets.connect(url, additional_headers=headers, open_timeout=10) as ws:
        await ws.send(json.dumps({"action": action, "request_id": "after-failover", "participant": participant_id}))
        async with asyncio.timeout(20):
            async for raw in ws:
                frame = json.loads(raw)
                if frame.get("type") == "reply" and frame.get("request_id") == "after-failover":
                    return frame
    raise AssertionError("no reply")


async def test_a_master_failover_under_viewers_keeps_sockets_rosters_and_throttle_counts(
    pbx, sandbox, tmp_path, settings
):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]  # the web process's
    rig = await asyncio.to_thread(SentinelRedis().start)
    room = await db(Conference.objects.create)(server=pbx, number="161", slug="sentinel", name="Sentinel")
    watcher = await db(User.objects.create_superuser)(username="watcher", password="x", email="")
    await db(User.objects.create_user)(username="guessed", password=PASSWORD)
    sessions = await db(make_sessions)(watcher, 8)
    stack = Processes({**base_env(database_url(), rig.environ["REDIS_URL"]), **rig.environ}, pbx.name, tmp_path)
    base = f"http://127.0.0.1:{stack.port}"

    def login(password):
        return asyncio.to_thread(http_login, base, "/accounts/login/", "guessed", password)

    viewers = []
    loop = asyncio.get_running_loop()
    try:
        stack.start_web()
        stack.start_worker()
        await stack.web_up()
        await eventually(lambda: db(lambda: AsteriskServer.objects.get(pk=pbx.pk).connected)(), timeout=30)
        viewers = [Viewer(stack.port, room.slug, key).start() for key in sessions[:6]]
        await eventually(lambda: all(v.snapshots for v in viewers), timeout=15, message="viewers connected")
        callers = [await sandbox.caller(161, name=f"Before {i}", number=f"63{i:02d}") for i in range(3)]
        await eventually(lambda: all(len(v.roster) == 3 for v in viewers), timeout=15, message="3 callers seen")

        # Before: three wrong passwords (of five allowed), and what the replica holds.
        for _ in range(3):
            assert (await login("wrong")).status_code == 200
        replica = rig.client(rig.replica_port())
        hub_channels = group_members(rig.master(), room.pk)
        assert len(hub_channels) == 1, "one member per web process: its room hub"
        await eventually(
            lambda: asyncio.to_thread(lambda: group_members(replica, room.pk) == hub_channels),
            timeout=5,
            message="the hub's membership replicated",
        )
        places_key = f"{socketcap.KEY_PREFIX}{watcher.pk}"
        assert replica.zcard(places_key) == 6, "the sockets' places under the cap, replicated"

        # The master dies while calls come and go.
        old_port = await asyncio.to_thread(rig.kill_master)
        killed_at = loop.time()
        await sandbox.hangup(callers.pop(0))
        callers.append(await sandbox.caller(161, name="During", number="6350"))
        promoted = await asyncio.to_thread(rig.wait_promoted, old_port)
        for i in range(2):
            callers.append(await sandbox.caller(161, name=f"After {i}", number=f"64{i:02d}"))
        truth = sorted(c.number for c in callers)
        await eventually(
            lambda: all(v.numbers == truth for v in viewers), timeout=30, message="viewers exact after the failover"
        )
        exact_after = loop.time() - killed_at

        # The same sockets: none closed or reconnected.
        assert [v.reconnects for v in viewers] == [0] * len(viewers), [v.closed_codes for v in viewers]
        new_master = rig.master()
        assert group_members(new_master, room.pk) == hub_channels, "the same hub, still the group's member"

        # The web process acts through the new master: a moderator's action, new sockets under the cap.
        target = next(p for p in viewers[0].roster.values() if p["caller_number"] == truth[0])
        reply = await moderate(stack.port, room.slug, sessions[6], "mute", target["id"])
        assert reply["ok"] is True, reply
        await eventually(lambda: all(v.roster[target["id"]]["muted"] for v in viewers), timeout=10, message="mute seen")
        late = Viewer(stack.port, room.slug, sessions[7]).start()
        viewers.append(late)
        await eventually(lambda: late.numbers == truth, timeout=15, message="a new viewer after the failover")
        assert new_master.zcard(places_key) == 7

        # The login throttle kept its counts: two more wrong passwords, then even the right one waits.
        for _ in range(throttle.MAX_FAILURES_PER_ACCOUNT - 3):
            assert (await login("wrong")).status_code == 200
        assert (await login(PASSWORD)).status_code == 429

        same, in_db, _in_bridge = await roster_matches_bridge(sandbox, pbx, room)
        assert same and len(in_db) == len(truth)
        assert stack.worker.poll() is None and stack.web.poll() is None
        print(
            f"sentinel failover: new master {promoted:.1f} s after the SIGKILL, viewers exact {exact_after:.1f} s "
            f"after it; reconnects {[v.reconnects for v in viewers]}, resyncs {[v.resyncs for v in viewers]}"
        )
    finally:
        for viewer in viewers:
            await viewer.stop()
        await asyncio.to_thread(stack.close)
        await asyncio.to_thread(rig.close)


async def test_a_receive_waiting_on_a_master_that_freezes_gets_the_next_message_from_the_new_one():
    """The layer alone, the master frozen (SIGSTOP: connections open, no reset, no answer, as a hung host).

    The waiting read ends at the layer's socket timeout (conferencesite/env.py,
    LAYER_SOCKET), retries, and through the Sentinels finds the new master.
    """
    rig = await asyncio.to_thread(SentinelRedis().start)
    layer = channel_layer(rig.environ["REDIS_URL"], rig.sentinels)
    recoveries = []
    layer.on_recovery(recoveries.append)
    try:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "before"})
        assert (await layer.receive(channel))["type"] == "before"
        waiting = asyncio.create_task(layer.receive(channel))
        await asyncio.sleep(0.2)
        frozen_port = await asyncio.to_thread(rig.freeze_master)
        frozen_at = asyncio.get_running_loop().time()
        await asyncio.to_thread(rig.wait_promoted, frozen_port)
        sender = channel_layer(rig.environ["REDIS_URL"], rig.sentinels)
        await sender.send(channel, {"type": "after"})
        assert (await asyncio.wait_for(waiting, 30))["type"] == "after"
        waited = asyncio.get_running_loop().time() - frozen_at
        assert waited < env.LAYER_SOCKET["socket_timeout"] + 10, waited
        assert len(recoveries) == 1 and layer.outages == layer.recoveries == 1
        await sender.close_pools()
        print(f"frozen master: the waiting receive had the next message {waited:.1f} s after the freeze")
    finally:
        await layer.close_pools()
        await asyncio.to_thread(rig.close)
