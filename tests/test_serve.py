"""`manage.py serve`: the product's uvicorn, with the settings the product relies on.

The embedded mode (web and worker in one process) is tests/test_serve_embedded.py;
the shipped systemd command line against forged proxy headers is tests/test_login_throttle.py.
"""

import asyncio
import signal
import time

import pytest
import requests
import websockets
from django.contrib.auth.models import User
from django.core.management.base import CommandError

from conferences.management.commands import serve
from conferences.models import AsteriskServer, Conference, ConferenceAccess
from conferencesite import uvicorn_limits
from tests.live import db
from tests.stack import Processes, base_env, database_url, make_sessions


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:8000", ("127.0.0.1", 8000)),
        ("8001", ("127.0.0.1", 8001)),
        ("[::1]:8002", ("::1", 8002)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),  # noqa: S104 (a value parsed, nothing bound)
        ("localhost:65535", ("localhost", 65535)),
    ],
)
def test_addresses(value, expected):
    assert serve.parse_address(value) == expected


@pytest.mark.parametrize("value", ["", "8000x", "host:", ":", "1.2.3.4:0", "1.2.3.4:65536", "a:b:8000", "[::1:8000"])
def test_bad_addresses_are_a_clear_error(value):
    with pytest.raises(CommandError, match="is not an address and port"):
        serve.parse_address(value)


def test_the_products_uvicorn_settings():
    config = serve.uvicorn_config(object(), "127.0.0.1", 8001)
    assert config.proxy_headers is False  # the client address only from DJANGO_TRUSTED_PROXIES
    assert config.ws is uvicorn_limits.WebSocketProtocol and config.ws_max_size == 1024 * 1024
    assert config.ws_ping_interval == config.ws_ping_timeout == 20.0
    assert config.server_header is False and config.access_log is False
    assert config.backlog == 2048 and config.lifespan == "off"


def test_another_uvicorn_version_refuses_to_start(monkeypatch):
    import uvicorn

    monkeypatch.setattr(uvicorn, "__version__", "9.9.9")
    with pytest.raises(RuntimeError, match="written for uvicorn 0.54.0, found 9.9.9"):
        serve.ws_protocol("websockets-sansio")
    assert serve.ws_protocol("websockets") == "websockets"  # the legacy one, for measuring, is uvicorn's own


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
async def test_the_web_process_answers_limits_and_stops_cleanly(tmp_path, redis_url):
    server = await db(AsteriskServer.objects.create)(
        name="serve-pbx", ari_url="http://127.0.0.1:9/ari", username="u", password="p"
    )
    room = await db(Conference.objects.create)(server=server, number="710", slug="serve", name="Serve")
    user = await db(User.objects.create_user)(username="serve-viewer", password="x")
    await db(ConferenceAccess.objects.create)(conference=room, user=user)
    (session_key,) = await db(make_sessions)(user, 1)
    stack = Processes(base_env(database_url(), redis_url), "serve-pbx", tmp_path)
    try:
        stack.start_web()
        await stack.web_up()
        base = f"http://127.0.0.1:{stack.port}"
        response = await asyncio.to_thread(requests.get, f"{base}/healthz", timeout=5)
        assert response.status_code == 200 and "server" not in response.headers  # no "Server: uvicorn"
        url = f"ws://127.0.0.1:{stack.port}/ws/conferences/{room.slug}/"
        headers = {"Cookie": f"sessionid={session_key}", "Origin": base}
        async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
            snapshot = await asyncio.wait_for(ws.recv(), 10)
            assert '"type":"snapshot"' in snapshot.replace(" ", "")
            with pytest.raises(websockets.ConnectionClosed):
                # Over the server's message limit. The server may refuse it from the frame's header and
                # close while the rest is still being written: then the send itself sees the close.
                await ws.send("x" * (1024 * 1024 + 1))
                await asyncio.wait_for(ws.recv(), 10)
            assert ws.close_code == 1009
        # A page that stays open does not hold the process at SIGTERM; the page is told to reconnect.
        ws = await websockets.connect(url, additional_headers=headers)
        await asyncio.wait_for(ws.recv(), 10)
        started = time.monotonic()
        stack.web.send_signal(signal.SIGTERM)
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 15)
        assert ws.close_code == 1012  # service restart: the page reconnects
        await asyncio.to_thread(stack.web.wait, 15)
        assert time.monotonic() - started < 12
    finally:
        stack.close()
