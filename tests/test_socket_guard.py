"""Sockets that cannot be killed or leaked: hostile frames, crashes on every exit path, and what is left after."""

import asyncio
import json
import logging

import pytest
from asgiref.sync import sync_to_async
from channels.exceptions import ChannelFull
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from django.db import OperationalError

from conferences import consumers, fanout, moderation, socketcap
from conferencesite.asgi import application
from tests.sockets import closed_with, ended_by_itself, frame, list_socket, refused, send

pytestmark = pytest.mark.django_db(transaction=True)

db = sync_to_async

CHECK_TASKS = ("room-socket-check", "room-list-check", "room-socket-reply")


@pytest.fixture(autouse=True)
def fresh_layer():
    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


async def nothing_left(user):
    """No hub member, no group membership, no running check and no place under the cap is left behind."""
    await asyncio.sleep(0.05)  # cancelled tasks finish on the next rounds of the loop
    layer = channel_layers["default"]
    hub = fanout.hub_for(layer)
    running = [t.get_name() for t in asyncio.all_tasks() if t.get_name() in CHECK_TASKS and not t.done()]
    return {
        "hub members": sum(len(members) for members in hub.rooms.values()),
        "group members": sum(len(members) for members in layer.groups.values()),
        "running checks": len(running),
        "places": await socketcap.count(user.pk),
    }


EMPTY = {"hub members": 0, "group members": 0, "running checks": 0, "places": 0}


HOSTILE_FRAMES = [
    "[" * 2048 + "]" * 2048,  # the 4 KB frame that used to end the socket with 1011
    '{"a":' * 800 + "1" + "}" * 800,
    '{"action": "mute", "request_id": "\\ud800", "participant": 1}',
    '{"action": "\\udfff", "request_id": "r"}',
    '{"action": "kick", "request_id": "r", "participant": ' + "9" * 400 + "}",
    '{"action": "kick", "request_id": "r", "participant": 9223372036854775808}',
    '{"action": "kick", "request_id": "r", "participant": 1e400}',
    '{"action": "kick", "request_id": "r", "participant": NaN}',
    '{"action": "mute_all", "request_id": ' + "1" * 4000 + "}",
    '{"action": "resync", "request_id": 1' + "0" * 4200 + "}",
    "\ufeff",
    "\x00",
    '{"action": null, "request_id": "n"}',
    '{"action": ["mute"], "request_id": "l"}',
    '{"action": "hangup_all", "request_id": "dup", "request_id": "dup2"}',
    "x" * (1024 * 1024 - 100),  # daphne's own limit is 1 MiB a message
]


async def test_every_hostile_frame_gets_an_answer_and_the_socket_stays_usable(connect, moderator, room):
    communicator, _ = await connect(moderator)
    await frame(communicator)
    for payload in HOSTILE_FRAMES:
        answer = await send(communicator, payload)
        assert answer["type"] in ("error", "reply"), payload[:40]
        if answer["type"] == "reply":
            assert answer["ok"] is False
        assert "Traceback" not in json.dumps(answer)
        await asyncio.sleep(0.25)  # stay under the rate limit: this test is about content
    resync = await send(communicator, {"action": "resync", "request_id": "after"})
    assert resync["type"] == "snapshot"


async def test_a_database_error_while_handling_a_request_is_answered(connect, moderator, room, monkeypatch):
    communicator, _ = await connect(moderator)
    await frame(communicator)

    def broken(*args):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(consumers, "_moderation_check", broken)
    reply = await send(communicator, {"action": "lock", "request_id": "db"})
    assert reply == refused("db", consumers.DATABASE_DOWN)
    monkeypatch.undo()
    assert (await send(communicator, {"action": "resync", "request_id": "r"}))["type"] == "snapshot"


async def test_a_full_channel_layer_is_answered_and_the_request_forgotten(connect, moderator, room, monkeypatch):
    communicator, _ = await connect(moderator)
    await frame(communicator)

    async def full(**fields):
        raise ChannelFull()

    monkeypatch.setattr(moderation, "send_request", full)
    reply = await send(communicator, {"action": "lock", "request_id": "full"})
    assert reply == refused("full", consumers.LAYER_BUSY)
    # No reply timer is left waiting for it.
    await asyncio.sleep(0.05)
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "room-socket-reply" and not t.done()]


def _crash(exc):
    def crash(*args, **kwargs):
        raise exc

    return crash


CRASHES = {
    # Where the room socket fails while connecting, and how.
    "snapshot raises": ("_snapshot", _crash(RuntimeError("boom"))),
    "database down at connect": ("_conference", _crash(OperationalError("the database is down"))),
}


@pytest.mark.parametrize("where", sorted(CRASHES))
async def test_connect_crash_cycles_leave_nothing_behind(login, viewer, room, monkeypatch, caplog, where):
    """300 sockets that fail while connecting leave no hub member, group, check or place behind."""
    name, crash = CRASHES[where]
    monkeypatch.setattr(consumers, name, crash)
    caplog.set_level(logging.ERROR)
    cookie = f"sessionid={await db(login)(viewer)}".encode()
    headers = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1"), (b"cookie", cookie)]
    cycles = 100 if where == "snapshot raises" else 60
    for _ in range(cycles):
        communicator = WebsocketCommunicator(application, "/ws/conferences/sales/", headers=headers)
        connected, _ = await communicator.connect()
        assert connected
        assert await closed_with(communicator) == consumers.CLOSE_INTERNAL_ERROR
        assert await ended_by_itself(communicator)  # without raising
    assert await nothing_left(viewer) == EMPTY
    # The failure is logged by the project (no "Exception inside application" from daphne).
    assert "socket /ws/conferences/sales/: failed; closing it" in caplog.text


async def test_a_full_layer_while_joining_groups_leaves_nothing_behind(login, viewer, room, monkeypatch):
    layer = channel_layers["default"]
    real = type(layer).group_add

    async def full_for_sessions(self, group, channel):
        await real(self, group, channel)  # the membership exists, then the layer fails
        if group.startswith("session."):
            raise ChannelFull()

    monkeypatch.setattr(type(layer), "group_add", full_for_sessions)
    cookie = f"sessionid={await db(login)(viewer)}".encode()
    headers = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1"), (b"cookie", cookie)]
    for _ in range(50):
        communicator = WebsocketCommunicator(application, "/ws/conferences/sales/", headers=headers)
        await communicator.connect()
        assert await closed_with(communicator) == consumers.CLOSE_INTERNAL_ERROR
        assert await ended_by_itself(communicator)
    assert await nothing_left(viewer) == EMPTY


async def test_a_crash_after_connect_closes_the_socket_and_releases_it(connect, viewer, room, monkeypatch):
    """A handler that fails later (a message from the layer) ends only this socket, cleanly."""
    communicator, _ = await connect(viewer)
    await frame(communicator)
    assert (await nothing_left(viewer))["hub members"] == 1
    monkeypatch.setattr(consumers, "_room_check", _crash(RuntimeError("boom")))
    layer = channel_layers["default"]
    hub = fanout.hub_for(layer)
    [consumer] = hub.rooms[room.pk]
    await layer.send(consumer.channel_name, {"type": "access.changed"})
    assert await closed_with(communicator) == consumers.CLOSE_INTERNAL_ERROR
    assert await ended_by_itself(communicator)
    assert await nothing_left(viewer) == EMPTY


async def test_closing_normally_releases_everything(connect, viewer, room, login):
    sockets = []
    for _ in range(5):
        communicator, _ = await connect(viewer)
        await frame(communicator)
        sockets.append(communicator)
    listing = await list_socket(login, viewer)
    await frame(listing)
    state = await nothing_left(viewer)
    assert state["hub members"] == 5 and state["places"] == 6 and state["running checks"] == 6
    for communicator in [*sockets, listing]:
        await communicator.disconnect()
    assert await nothing_left(viewer) == EMPTY


async def test_room_list_crash_cycles_leave_nothing_behind(login, viewer, room, monkeypatch):
    monkeypatch.setattr(consumers, "_session_rooms", _crash(RuntimeError("boom")))
    for _ in range(100):
        communicator = await list_socket(login, viewer)
        assert await closed_with(communicator) == consumers.CLOSE_INTERNAL_ERROR
        assert await ended_by_itself(communicator)
    assert await nothing_left(viewer) == EMPTY


async def test_an_unknown_websocket_path_closes_4404_without_a_traceback(login, viewer, caplog):
    caplog.set_level(logging.DEBUG)
    cookie = f"sessionid={await db(login)(viewer)}".encode()
    for path in ("/ws/nope/", "/ws/conferences/sales/extra/", "/", "/ws/conferences/%00/", "/admin/"):
        communicator = WebsocketCommunicator(
            application, path, headers=[(b"origin", b"http://127.0.0.1"), (b"cookie", cookie)]
        )
        connected, _ = await communicator.connect()
        assert connected, path
        assert await closed_with(communicator) == consumers.CLOSE_NOT_FOUND, path
        assert await ended_by_itself(communicator)
    assert "Traceback" not in caplog.text and "No route found" not in caplog.text
