"""Soak: call churn, talking and moderation with viewers coming and going, for SOAK_SECONDS (default 60,
the short version CI runs).

Checks at the end: every viewer's roster equals the database and Asterisk's
bridges, group membership in Redis falls back to nothing once the viewers
are gone, and worker and web memory stayed flat. The figures are written to
var/soak-<seconds>s.json; docs/reliability.md quotes them. The hour-long run:
SOAK_SECONDS=3600 scripts/test tests/test_soak.py -s
"""

import asyncio
import json
import os
import random
import time

import pytest
import redis
import websockets
from django.contrib.auth.models import User

from conferences.models import AsteriskServer, Conference
from tests.live import db, roster_matches_bridge
from tests.sandbox import eventually
from tests.stack import ROOT, OwnRedis, Processes, Viewer, base_env, database_url, make_sessions, rss_kib

pytestmark = [pytest.mark.integration, pytest.mark.soak, pytest.mark.django_db(transaction=True)]

SOAK_SECONDS = int(os.environ.get("SOAK_SECONDS", "60"))
ROOMS = 3
MAX_CALLERS_PER_ROOM = 6
MAX_VIEWERS = 24


def group_members(url):
    client = redis.Redis.from_url(url)
    try:
        return sum(client.zcard(key) for key in client.scan_iter("asgi:group:*"))
    finally:
        client.close()


async def moderate(port, slug, session_key, action, participant=None):
    """One moderator action over a short-lived socket, like a click on the page; returns the reply."""
    url = f"ws://127.0.0.1:{port}/ws/conferences/{slug}/"
    headers = {"Cookie": f"sessionid={session_key}", "Origin": f"http://127.0.0.1:{port}"}
    async with websockets.connect(url, additional_headers=headers, open_timeout=5) as ws:
        async with asyncio.timeout(15):
            while json.loads(await ws.recv())["type"] != "snapshot":
                pass
            await ws.send(json.dumps({"action": action, "request_id": "soak", "participant": participant}))
            while True:
                frame = json.loads(await ws.recv())
                if frame["type"] == "reply":
                    return frame


@pytest.mark.timeout(SOAK_SECONDS + 300)
async def test_soak(pbx, sandbox, tmp_path):
    rng = random.Random(2026)
    own_redis = OwnRedis()
    own_redis.start()
    rooms = [
        await db(Conference.objects.create)(server=pbx, number=str(170 + i), slug=f"soak-{i}", name=f"Soak {i}")
        for i in range(ROOMS)
    ]
    # Viewers of four accounts, as a team watches: one account may hold 20 sockets (MAX_SOCKETS_PER_USER).
    sessions = []
    for n in range(4):
        user = await db(User.objects.create_superuser)(username=f"soaker{n}", password="x", email="")
        sessions.append(await db(make_sessions)(user, MAX_VIEWERS))
    sessions = [key for keys in zip(*sessions, strict=True) for key in keys]
    stack = Processes(base_env(database_url(), own_redis.url), pbx.name, tmp_path)
    viewers, callers = [], {room.number: [] for room in rooms}
    counts = {
        "joins": 0,
        "hangups": 0,
        "moderation": 0,
        "moderation_ok": 0,
        "moderation_handshake_failures": 0,
        "viewers_opened": 0,
        "viewers_closed": 0,
    }
    samples = []
    try:
        stack.start_web()
        stack.start_worker()
        await stack.web_up()
        await eventually(lambda: db(lambda: AsteriskServer.objects.get(pk=pbx.pk).connected)(), timeout=30)
        loop = asyncio.get_running_loop()
        started = loop.time()
        next_sample = started
        serial = 0
        while loop.time() - started < SOAK_SECONDS:
            now = loop.time()
            if now >= next_sample:
                samples.append(
                    {
                        "t": round(now - started),
                        "web_rss_kib": rss_kib(stack.web.pid),
                        "worker_rss_kib": rss_kib(stack.worker.pid),
                        "group_members": await asyncio.to_thread(group_members, own_redis.url),
                        "viewers": len(viewers),
                    }
                )
                next_sample = now + max(5, SOAK_SECONDS / 20)
            room = rng.choice(rooms)
            present = callers[room.number]
            roll = rng.random()
            if roll < 0.35 and len(present) < MAX_CALLERS_PER_ROOM:
                serial += 1
                far = rng.choice(["talk", "silent", "silent"])
                present.append(
                    await sandbox.caller(room.number, far=far, name=f"Soak {serial}", number=f"7{serial:05d}")
                )
                counts["joins"] += 1
            elif roll < 0.6 and present:
                await sandbox.hangup(present.pop(rng.randrange(len(present))))
                counts["hangups"] += 1
            elif roll < 0.75 and len(viewers) < MAX_VIEWERS:
                viewers.append(
                    (room, Viewer(stack.port, room.slug, sessions[counts["viewers_opened"] % len(sessions)]).start())
                )
                counts["viewers_opened"] += 1
            elif roll < 0.85 and viewers:
                _room, viewer = viewers.pop(rng.randrange(len(viewers)))
                await viewer.stop()
                counts["viewers_closed"] += 1
            elif present:
                watching = [v for r, v in viewers if r.pk == room.pk and v.roster]
                if watching:
                    target = rng.choice(list(watching[0].roster))
                    action = rng.choice(["mute", "unmute", "mute", "kick", "lock", "unlock"])
                    try:
                        reply = await moderate(stack.port, room.slug, sessions[0], action, target)
                    except (OSError, websockets.WebSocketException):
                        # Like a page, a click whose socket did not open is tried again later;
                        # counted so that the figures show it.
                        counts["moderation_handshake_failures"] += 1
                        continue
                    counts["moderation"] += 1
                    counts["moderation_ok"] += bool(reply["ok"])
                    if action == "lock":  # do not leave rooms locked: joins would be refused
                        await moderate(stack.port, room.slug, sessions[0], "unlock")
            await asyncio.sleep(rng.uniform(0.05, 0.4))

        # Settle: every room's roster, as viewers, the database and Asterisk see it.
        async def settled():
            for room in rooms:
                same, in_db, _ = await roster_matches_bridge(sandbox, pbx, room)
                if not same:
                    return False
                numbers = []
                for channel_id in in_db:
                    channel = await sandbox.call("GET", f"/channels/{channel_id}", ok=(200, 404))
                    numbers.append(channel["caller"]["number"] if channel else "?")
                truth = sorted(numbers)
                if any(v.numbers != truth for r, v in viewers if r.pk == room.pk):
                    return False
            return True

        await eventually(settled, timeout=60, message="rosters exact at the end")
        end_sample = {
            "t": round(loop.time() - started),
            "web_rss_kib": rss_kib(stack.web.pid),
            "worker_rss_kib": rss_kib(stack.worker.pid),
            "group_members": await asyncio.to_thread(group_members, own_redis.url),
            "viewers": len(viewers),
        }
        samples.append(end_sample)
        for _room, viewer in viewers:
            await viewer.stop()
        viewers = []
        await eventually(
            lambda: asyncio.to_thread(lambda: group_members(own_redis.url) == 0),
            timeout=20,
            message="group membership back to zero once every viewer left",
        )
        assert stack.worker.poll() is None and stack.web.poll() is None
    finally:
        for _room, viewer in viewers:
            await viewer.stop()
        await asyncio.to_thread(stack.close)
        own_redis.close()

    # Memory flat: from the first third of the run to the end.
    third = samples[len(samples) // 3]
    growth = {
        f"{name}_mib": round((end_sample[f"{name}_rss_kib"] - third[f"{name}_rss_kib"]) / 1024, 1)
        for name in ("web", "worker")
    }
    result = {
        "seconds": SOAK_SECONDS,
        "counts": counts,
        "samples": samples,
        "rss_growth_mib_from_first_third": growth,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out = ROOT / "var" / f"soak-{SOAK_SECONDS}s.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}))
    assert counts["joins"] > 0 and counts["viewers_opened"] > 0
    assert growth["web_mib"] < 40 and growth["worker_mib"] < 40, growth
