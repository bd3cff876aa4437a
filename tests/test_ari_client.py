"""The ARI client: errors come out as the project's own types, never as requests' types."""

import asyncio
import base64
import http.server
import json
import threading
import time

import pytest
import websockets

from conferences.ari.client import AriClient, AriConflict, AriError, AriNotFound
from tests.sandbox import Sandbox

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(ari):
    client = AriClient(ari.url, ari.username, ari.password, timeout=3)
    yield client
    await client.close()


async def test_real_asterisk_info(client):
    info = await client.asterisk_info()
    assert "startup_time" in info["status"]


async def test_404_is_not_found(client):
    with pytest.raises(AriNotFound) as info:
        await client.answer("no-such-channel")
    assert info.value.status == 404


async def test_409_is_conflict(client, ari):
    sandbox = Sandbox(ari)
    await sandbox.cleanup()
    url = ari.url.replace("http", "ws", 1) + "/events?app=conference&subscribeAll=false"
    token = base64.b64encode(f"{ari.username}:{ari.password}".encode()).decode()
    async with websockets.connect(url, additional_headers={"Authorization": f"Basic {token}"}) as socket:
        caller = await sandbox.caller(100)
        try:
            async with asyncio.timeout(10):
                while json.loads(await socket.recv())["type"] != "StasisStart":
                    pass
            # The far end runs dialplan, not Stasis: ARI refuses to control it.
            with pytest.raises(AriConflict) as info:
                await client.play(caller.far_id, "sound:beep")
            assert info.value.status == 409
        finally:
            await sandbox.cleanup()


async def test_wrong_credentials(ari):
    client = AriClient(ari.url, ari.username, "wrong")
    try:
        with pytest.raises(AriError) as info:
            await client.asterisk_info()
        assert info.value.status == 401
    finally:
        await client.close()


async def test_connection_refused_is_an_ari_error():
    client = AriClient("http://127.0.0.1:1/ari", "u", "p", timeout=2)
    try:
        with pytest.raises(AriError, match="cannot connect"):
            await client.bridges()
    finally:
        await client.close()


class _Stub(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        if self.path.startswith("/ari/slow"):
            time.sleep(2)
        if self.path.startswith("/ari/boom"):
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"message": "Internal Server Error"}')
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"not json")

    def log_message(self, *args):
        pass


@pytest.fixture
async def stub():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = AriClient(f"http://127.0.0.1:{server.server_port}/ari", "u", "p", timeout=0.5)
    yield client
    await client.close()
    server.shutdown()


async def test_500_keeps_status_and_message(stub):
    with pytest.raises(AriError) as info:
        await stub.request("GET", "/boom")
    assert info.value.status == 500 and "Internal Server Error" in str(info.value)
    assert not isinstance(info.value, AriNotFound)


async def test_timeout(stub):
    with pytest.raises(AriError, match="timed out"):
        await stub.request("GET", "/slow")


async def test_answer_that_is_not_json(stub):
    with pytest.raises(AriError, match="not JSON"):
        await stub.request("GET", "/plain")


async def test_event_url_carries_no_credentials():
    client = AriClient("https://pbx.example:8089/ari", "conference", "s3cret")
    try:
        url = client.events_url("conf room")
        assert url == "wss://pbx.example:8089/ari/events?app=conf%20room&subscribeAll=false"
        assert "s3cret" not in url and "s3cret" not in repr(client)
        assert client.auth_header() == {"Authorization": "Basic Y29uZmVyZW5jZTpzM2NyZXQ="}
    finally:
        await client.close()
