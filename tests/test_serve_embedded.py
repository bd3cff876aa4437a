"""The embedded mode: `manage.py serve` (what `make run` starts) runs web and ARI worker in one process."""

import asyncio
import signal
import socket
import subprocess
import sys

import pytest
import requests

from conferences.models import AsteriskServer, Conference
from tests.live import db, present_channels
from tests.sandbox import eventually
from tests.stack import ROOT, database_url

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_serve_runs_the_worker_in_the_web_process(ari, sandbox):
    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": database_url(),
        "ARI_URL": ari.url,
        "ARI_USERNAME": ari.username,
        "ARI_PASSWORD": ari.password,
        "PYTHONUNBUFFERED": "1",
    }
    process = subprocess.Popen(  # noqa: ASYNC220 (returns at once)
        [sys.executable, "manage.py", "serve", "--insecure", f"127.0.0.1:{port}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def default_connected():
            server = AsteriskServer.objects.filter(name="default").first()
            return server is not None and server.connected

        await eventually(lambda: db(default_connected)(), timeout=40, message="embedded worker connected")
        server = await db(AsteriskServer.objects.get)(name="default")
        room = await db(Conference.objects.create)(server=server, number="130", slug="embedded", name="Embedded")
        caller = await sandbox.caller(130, name="Embedded caller")
        await eventually(lambda: db(lambda: caller.channel_id in present_channels(room))(), timeout=15)
        page = await asyncio.to_thread(requests.get, f"http://127.0.0.1:{port}/accounts/login/", timeout=5)
        assert page.status_code == 200
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 30)
        server = await db(AsteriskServer.objects.get)(name="default")
        assert server.connected is False and server.worker_owner == ""  # the worker stopped cleanly
        assert await sandbox.channel_exists(caller.channel_id)
    finally:
        if process.poll() is None:
            process.kill()
        output = process.stdout.read()
        process.stdout.close()
    assert "Embedded ARI worker for: default" in output
