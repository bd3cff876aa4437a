"""`manage.py ari_worker` as a real process: signals, a second worker, SIGKILL, health, a rival client."""

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import websockets

from conferences.models import AsteriskServer, Participant
from tests.live import db, present_channels, roster_matches_bridge
from tests.sandbox import eventually
from tests.stack import database_url

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def worker_env(redis_url):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "ARI_", "DATABASE_URL", "REDIS_URL"))}
    env.update(DATABASE_URL=database_url(), REDIS_URL=redis_url, PYTHONUNBUFFERED="1")
    return env


class Proc:
    def __init__(self, process):
        self.process = process

    async def wait(self, timeout=20):
        return await asyncio.to_thread(self.process.wait, timeout)

    def output(self):
        return self.process.stdout.read() if self.process.stdout else ""


@pytest.fixture
def spawn(worker_env):
    processes = []

    def spawn(*args, env=None):
        process = subprocess.Popen(
            [sys.executable, "manage.py", "ari_worker", *args],
            cwd=ROOT,
            env=env or worker_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        processes.append(process)
        return Proc(process)

    yield spawn
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        if process.stdout:
            process.stdout.close()


def server_state(server):
    return AsteriskServer.objects.get(pk=server.pk)


async def connected(server):
    return (await db(server_state)(server)).connected


async def test_sigterm_finishes_cleanly_and_callers_stay(pbx, sandbox, make_room, spawn):
    room = await make_room(200)
    worker = spawn("--server", "sandbox")
    await eventually(lambda: connected(pbx), timeout=30, message="worker connected")
    callers = [await sandbox.caller(200, name=f"Stay {i}") for i in range(2)]
    await eventually(lambda: db(present_channels)(room), timeout=15)
    await eventually(lambda: db(lambda: len(present_channels(room)) == 2)(), timeout=15)

    worker.process.send_signal(signal.SIGTERM)
    assert await worker.wait() == 0, worker.output()
    for caller in callers:  # the worker going away does not end anybody's call
        assert await sandbox.channel_exists(caller.channel_id)
    state = await db(server_state)(pbx)
    assert state.connected is False and state.worker_owner == ""
    assert await db(present_channels)(room) == {c.channel_id for c in callers}


async def test_second_worker_for_the_same_server_refuses_to_start(pbx, sandbox, make_room, spawn):
    room = await make_room(201)
    first = spawn("--server", "sandbox")
    await eventually(lambda: connected(pbx), timeout=30, message="first worker connected")
    second = spawn("--server", "sandbox")
    assert await second.wait() == 2
    assert "another worker" in second.output()
    # The first one never noticed: it still runs the rooms.
    caller = await sandbox.caller(201, name="Still served")
    await eventually(lambda: db(lambda: caller.channel_id in present_channels(room))(), timeout=15)
    assert first.process.poll() is None


async def test_sigkill_mid_burst_then_restart_gives_the_exact_roster(pbx, sandbox, make_room, spawn):
    room = await make_room(202)
    first = spawn("--server", "sandbox")
    await eventually(lambda: connected(pbx), timeout=30, message="worker connected")

    async def burst_of(count, spacing):
        callers = []
        for i in range(count):
            callers.append(await sandbox.caller(202, name=f"Burst {i}", number=f"5{i:02d}"))
            await asyncio.sleep(spacing)
        return callers

    burst = asyncio.create_task(burst_of(20, 0.05))
    await eventually(lambda: db(lambda: len(present_channels(room)) >= 4)(), timeout=15, interval=0.02)
    first.process.kill()  # SIGKILL: no goodbye, lease and link status left behind
    await first.wait()
    await burst
    second = spawn("--server", "sandbox")  # the dead holder's lease does not block the restart
    await eventually(lambda: db(lambda: server_state(pbx).worker_owner.split(":")[1] == str(second.process.pid))())

    async def roster_settled():
        same, in_db, _in_bridge = await roster_matches_bridge(sandbox, pbx, room)
        return same and len(in_db) >= 4

    await eventually(roster_settled, timeout=30, message="roster equals the bridge after the restart")
    # Each channel has exactly one participant row (no duplicates), and callers that
    # Stasis() refused while no worker was connected are not in the room.
    rows = await db(lambda: list(Participant.objects.filter(conference=room).values_list("channel_id", flat=True)))()
    assert len(rows) == len(set(rows))
    assert second.process.poll() is None
    assert len(rows) < 20, "the kill should have come in the middle of the burst"


async def test_check_tells_whether_the_link_is_up(pbx, sandbox, spawn, worker_env):
    def check():
        return subprocess.run(
            [sys.executable, "manage.py", "ari_worker", "--check", "--server", "sandbox"],
            cwd=ROOT,
            env=worker_env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    before = await asyncio.to_thread(check)
    assert before.returncode == 1 and "sandbox: DOWN" in before.stdout
    worker = spawn("--server", "sandbox")
    await eventually(lambda: connected(pbx), timeout=30)
    during = await asyncio.to_thread(check)
    assert during.returncode == 0 and "sandbox: ok" in during.stdout
    worker.process.send_signal(signal.SIGTERM)
    await worker.wait()
    after = await asyncio.to_thread(check)
    assert after.returncode == 1


async def test_a_rival_client_on_the_same_app_stops_the_worker_loudly(pbx, sandbox, spawn, ari):
    worker = spawn("--server", "sandbox")
    await eventually(lambda: connected(pbx), timeout=30)
    url = ari.url.replace("http", "ws", 1) + "/events?app=conference&subscribeAll=false"
    import base64

    token = base64.b64encode(f"{ari.username}:{ari.password}".encode()).decode()
    async with websockets.connect(url, additional_headers={"Authorization": f"Basic {token}"}):
        assert await worker.wait() == 3
    assert "another client took ARI application 'conference'" in worker.output()


async def test_separate_worker_on_the_in_memory_layer_is_refused(pbx, spawn, worker_env):
    env = dict(worker_env)
    del env["REDIS_URL"]
    worker = spawn("--server", "sandbox", env=env)
    assert await worker.wait() != 0
    assert "conferences.E003" in worker.output()


async def test_unknown_server_is_a_clear_error(pbx, spawn):
    worker = spawn("--server", "nope")
    assert await worker.wait() == 1
    assert "No Asterisk server named 'nope'" in worker.output()
