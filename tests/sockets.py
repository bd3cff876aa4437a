"""Fixtures and helpers for tests that drive the sockets with Channels' WebsocketCommunicator.

A pytest plugin (tests/conftest.py lists it): the fixtures are shared by every
socket test module, the helpers are imported.
"""

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from conferences.models import AsteriskServer, ConferenceAccess
from conferencesite.asgi import application

db = sync_to_async


@pytest.fixture
def room(conference):
    AsteriskServer.objects.filter(pk=conference.server_id).update(connected=True)
    return conference


@pytest.fixture
def login(client):
    def login(user):
        client.force_login(user)
        return client.cookies["sessionid"].value

    return login


@pytest.fixture
async def connect(login):
    communicators = []

    async def connect(user=None, slug="sales", origin="http://127.0.0.1", extra_headers=()):
        headers = [(b"origin", origin.encode()), (b"host", b"127.0.0.1"), *extra_headers]
        if user is not None:
            session_key = await db(login)(user)
            headers.append((b"cookie", f"sessionid={session_key}".encode()))
        communicator = WebsocketCommunicator(application, f"/ws/conferences/{slug}/", headers=headers)
        communicators.append(communicator)
        connected, _ = await communicator.connect()
        return communicator, connected

    yield connect
    for communicator in communicators:
        if not communicator.future.done():
            await communicator.disconnect()


async def closed_with(communicator):
    message = await communicator.receive_output(timeout=3)
    assert message["type"] == "websocket.close"
    return message["code"]


async def ended_by_itself(communicator, timeout=3):
    """Whether the application finished on its own, without raising, within ``timeout``.

    (``communicator.wait`` cannot tell: it swallows its own timeout and cancels the application.)
    """
    try:
        await asyncio.wait_for(asyncio.shield(communicator.future), timeout)
    except TimeoutError:
        await communicator.wait(0)  # cancels it
        return False
    except Exception:  # noqa: BLE001 (the application raised: not a clean end)
        return False
    return True


async def frame(communicator, timeout=3):
    return json.loads(await communicator.receive_from(timeout=timeout))


async def send(communicator, payload):
    await communicator.send_to(text_data=payload if isinstance(payload, str) else json.dumps(payload))
    return await frame(communicator)


@pytest.fixture
def viewer(room, make_user, grant):
    user = make_user("viewer")
    grant(room, user=user)
    return user


@pytest.fixture
def moderator(room, make_user, grant):
    user = make_user("moderator")
    grant(room, user=user, role=ConferenceAccess.Role.MODERATOR)
    return user


async def list_socket(login, user, origin="http://127.0.0.1"):
    headers = [(b"origin", origin.encode()), (b"host", b"127.0.0.1")]
    if user is not None:
        headers.append((b"cookie", f"sessionid={await db(login)(user)}".encode()))
    communicator = WebsocketCommunicator(application, "/ws/conferences/", headers=headers)
    connected, _ = await communicator.connect()
    assert connected
    return communicator


@pytest.fixture(autouse=True)
def _no_socket_places_left_from_other_tests():
    """The per-user socket cap's places live in process memory without Redis: each test starts without any."""
    from conferences import socketcap

    socketcap._local.clear()
    yield
    socketcap._local.clear()


@pytest.fixture(autouse=True)
def _no_room_lookups_left_from_other_tests():
    """Rooms looked up by slug are kept for seconds per process; each test's rooms are new."""
    from conferences import consumers

    consumers._rooms_by_slug.clear()
    yield
    consumers._rooms_by_slug.clear()


def refused(request_id, error):
    """The ``reply`` an English page gets for a refused request: the protocol's text, and the same as ``error_text``."""
    return {"type": "reply", "request_id": request_id, "ok": False, "error": error, "error_text": error}


def error_frame(error):
    """The ``error`` frame an English page gets for a frame the server could not take."""
    return {"type": "error", "error": error, "error_text": error}
