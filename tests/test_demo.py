"""`make demo` as a newcomer runs it: one command, a printed login, a room that moves, a clean stop.

The real script (scripts/demo) against the sandbox Asterisk the suite runs
(KEEP_ASTERISK: the demo leaves it running), on a free port and a database
file of its own. The newcomer's steps: read the login from the output, log
in, open the room; within two minutes of the command the room must have
callers, and callers must come and go while it is watched. Ctrl-C (SIGINT
to the process group, as a terminal sends it) must end it all and hang up
the simulated calls.
"""

import asyncio
import json
import os
import re
import signal
import subprocess
import time

import pytest
import requests
import websockets

from tests.stack import ROOT, free_port

pytestmark = [pytest.mark.integration]

WITHIN_SECONDS = 120


def login(base, username, password):
    session = requests.Session()
    page = session.get(f"{base}/accounts/login/", timeout=10)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    response = session.post(
        f"{base}/accounts/login/",
        data={"csrfmiddlewaretoken": token, "username": username, "password": password},
        allow_redirects=False,
        timeout=10,
    )
    assert response.status_code == 302, response.text[:300]
    return session


async def test_make_demo_shows_a_live_room_and_stops_cleanly(tmp_path, ari, sandbox):
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "ARI_", "DATABASE_URL", "REDIS_URL", "METRICS_"))
    }
    env.update(
        RUN_ADDRESS=f"127.0.0.1:{port}",
        DEMO_DATABASE_URL=f"sqlite:///{tmp_path / 'demo.sqlite3'}",
        KEEP_ASTERISK="1",
        PYTHONUNBUFFERED="1",
    )
    started = time.monotonic()
    output = tmp_path / "demo.log"
    with open(output, "w") as log:  # noqa: ASYNC230
        process = subprocess.Popen(  # noqa: ASYNC220 (returns at once)
            ["make", "-s", "demo"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        password = None
        while password is None:
            assert process.poll() is None, output.read_text()[-3000:]
            assert time.monotonic() - started < WITHIN_SECONDS, output.read_text()[-3000:]
            found = re.search(r"username: demo\s+password: (\S+)", output.read_text())
            password = found and found.group(1)
            await asyncio.sleep(0.5)
        while True:
            try:
                session = await asyncio.to_thread(login, base, "demo", password)
                break
            except requests.ConnectionError:
                assert time.monotonic() - started < WITHIN_SECONDS
                await asyncio.sleep(0.5)
        rooms = await asyncio.to_thread(session.get, f"{base}/", timeout=10)
        assert "Daily stand-up" in rooms.text and "Support line" in rooms.text
        cookie = session.cookies["sessionid"]
        url = f"ws://127.0.0.1:{port}/ws/conferences/daily/"
        async with websockets.connect(url, additional_headers={"Cookie": f"sessionid={cookie}", "Origin": base}) as ws:
            snapshot = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert snapshot["type"] == "snapshot" and snapshot["can_moderate"] is True
            present = {p["id"] for p in snapshot["participants"] if not p.get("left_at")}
            seen = set()
            while not (present and {"participant.joined", "participant.left"} <= seen):
                assert time.monotonic() - started < WITHIN_SECONDS + 60, (present, seen)
                frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
                seen.add(frame["type"])
                if frame["type"] == "participant.joined":
                    present.add(frame["participant"]["id"])
                elif frame["type"] == "participant.left":
                    present.discard(frame["participant"]["id"])
        first_live = time.monotonic() - started
        print(f"demo: a live room with callers coming and going {first_live:.0f} s after `make demo`")
        assert first_live < WITHIN_SECONDS + 60
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in the terminal
            try:
                await asyncio.to_thread(process.wait, 30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                raise
    channels = await sandbox.call("GET", "/channels")
    assert not [c["id"] for c in channels if c["id"].startswith("demo-")], "the demo's calls were hung up"
    assert "Traceback" not in output.read_text(), output.read_text()[-3000:]
