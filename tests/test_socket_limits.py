"""Greedy clients inside one process: the per-user socket cap, resync without rebuilding, the rate limit first.

Clients that do not read are dropped by the web server itself
(tests/test_slow_clients.py, against real daphne processes).
"""

import asyncio
import time

import pytest
from asgiref.sync import sync_to_async
from channels.layers import channel_layers

from conferences import consumers, services, socketcap
from conferencesite import daphne_limits
from tests.sockets import closed_with, frame, list_socket, send

pytestmark = pytest.mark.django_db(transaction=True)

db = sync_to_async


@pytest.fixture(autouse=True)
def fresh_layer():
    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


async def test_a_user_may_hold_max_sockets_open_and_no_more(connect, login, viewer, room, settings):
    settings.MAX_SOCKETS_PER_USER = 5
    sockets = []
    for _ in range(4):
        communicator, _ = await connect(viewer)
        assert (await frame(communicator))["type"] == "snapshot"
        sockets.append(communicator)
    listing = await list_socket(login, viewer)  # room lists count too
    assert (await frame(listing))["type"] == "rooms"
    refused, _ = await connect(viewer)
    assert await closed_with(refused) == consumers.CLOSE_TOO_MANY_SOCKETS
    refused_list = await list_socket(login, viewer)
    assert await closed_with(refused_list) == consumers.CLOSE_TOO_MANY_SOCKETS
    await sockets[0].disconnect()  # a tab closed gives its place back
    again, _ = await connect(viewer)
    assert (await frame(again))["type"] == "snapshot"
    await listing.disconnect()


async def test_the_cap_is_per_user(connect, viewer, room, make_user, grant, settings):
    settings.MAX_SOCKETS_PER_USER = 1
    other = await db(make_user)("other")
    await db(grant)(room, user=other)
    mine, _ = await connect(viewer)
    await frame(mine)
    theirs, _ = await connect(other)
    assert (await frame(theirs))["type"] == "snapshot"


async def test_a_resync_with_nothing_new_reuses_the_last_snapshot(connect, viewer, room, make_participant, monkeypatch):
    reads = []
    real = consumers._snapshot

    def counting(conference_id):
        reads.append(conference_id)
        return real(conference_id)

    monkeypatch.setattr(consumers, "_snapshot", counting)
    alice = await db(make_participant)(room, "chan-a", caller_name="Alice")
    communicator, _ = await connect(viewer)
    first = await frame(communicator)
    for i in range(15):
        again = await send(communicator, {"action": "resync", "request_id": f"r{i}"})
        assert again == first
        assert await frame(communicator) == {"type": "reply", "request_id": f"r{i}", "ok": True}
    assert len(reads) == 1
    # An event since: the next resync reads afresh, and shows it.
    await db(services.participant_update)(participant_id=alice.pk, talking=True)
    assert (await frame(communicator))["type"] == "participant.updated"
    fresh = await send(communicator, {"action": "resync", "request_id": "after"})
    assert fresh["seq"] == first["seq"] + 1 and fresh["participants"][0]["talking"] is True
    assert len(reads) == 2


async def test_a_reused_snapshot_expires(connect, viewer, room, monkeypatch):
    monkeypatch.setattr(consumers, "SNAPSHOT_REUSE_SECONDS", 0.2)
    reads = []
    real = consumers._snapshot
    monkeypatch.setattr(consumers, "_snapshot", lambda *args: reads.append(1) or real(*args))
    communicator, _ = await connect(viewer)
    await frame(communicator)
    await asyncio.sleep(0.3)
    await send(communicator, {"action": "resync", "request_id": "late"})
    assert len(reads) == 2


async def test_a_flood_is_refused_before_any_database_hop(connect, moderator, room, monkeypatch):
    checks = []
    real = consumers._moderation_check
    monkeypatch.setattr(consumers, "_moderation_check", lambda *args: checks.append(1) or real(*args))
    communicator, _ = await connect(moderator)
    await frame(communicator)
    for i in range(200):
        await communicator.send_to(text_data=f'{{"action": "frobnicate", "request_id": "f{i}"}}')
    for i in range(100):
        await communicator.send_to(text_data=f'{{"action": "lock", "request_id": "l{i}"}}')
    answers = []
    while True:
        try:
            answers.append(await frame(communicator, timeout=0.5))
        except TimeoutError:
            break
    limited = [a for a in answers if a.get("error") == "too many messages; slow down"]
    assert len(limited) >= 300 - consumers.RATE_BURST - 5
    # The few lock requests that got through were checked; the rest never reached the database thread.
    assert len(checks) <= 5


# --- the per-user cap across processes (Redis) ------------------------------------------------


@pytest.mark.integration
async def test_claims_on_redis_are_atomic(settings, redis_url):
    settings.REDIS_URL = redis_url
    settings.MAX_SOCKETS_PER_USER = 20
    user_id = 10**9 + int(time.time() * 1000) % 10**6
    results = await asyncio.gather(*(socketcap.claim(user_id, f"chan-{i}") for i in range(60)))
    assert sum(results) == 20
    assert await socketcap.count(user_id) == 20
    holder = next(f"chan-{i}" for i, claimed in enumerate(results) if claimed)
    assert await socketcap.claim(user_id, holder) is True  # a socket that has its place keeps it
    for i in range(60):
        await socketcap.release(user_id, f"chan-{i}")
    assert await socketcap.count(user_id) == 0


@pytest.mark.integration
async def test_places_of_a_dead_process_stop_counting(settings, redis_url, monkeypatch):
    settings.REDIS_URL = redis_url
    settings.MAX_SOCKETS_PER_USER = 2
    monkeypatch.setattr(socketcap, "STALE_SECONDS", 0.5)
    user_id = 2 * 10**9 + int(time.time() * 1000) % 10**6
    assert await socketcap.claim(user_id, "dead-1") and await socketcap.claim(user_id, "alive")
    assert not await socketcap.claim(user_id, "new")
    await asyncio.sleep(0.3)
    await socketcap.confirm(user_id, "alive")  # the periodic check of a live socket
    await asyncio.sleep(0.3)
    assert await socketcap.claim(user_id, "new")  # dead-1 went stale, alive did not
    assert await socketcap.count(user_id) == 2
    for name in ("alive", "new"):
        await socketcap.release(user_id, name)


# --- the send limit's guard ---------------------------------------------------------------------


def test_the_send_limit_is_installed_for_the_pinned_daphne(settings):
    import daphne
    from daphne.ws_protocol import WebSocketProtocol

    assert daphne.__version__ == daphne_limits.PINNED_DAPHNE
    assert daphne_limits.installed_limit() == settings.WEBSOCKET_MAX_QUEUED_BYTES == 1024 * 1024
    assert WebSocketProtocol.serverSend.__module__ == "conferencesite.daphne_limits"


def test_another_daphne_version_refuses_to_start(monkeypatch):
    import daphne

    monkeypatch.setattr(daphne, "__version__", "9.9.9")
    with pytest.raises(RuntimeError, match="written for daphne 4.2.3, found 9.9.9"):
        daphne_limits.install(1024)


def test_queued_bytes_reads_twisted_transports():
    from twisted.internet import abstract

    transport = abstract.FileDescriptor()
    transport.dataBuffer, transport.offset = b"x" * 100, 40
    transport._tempDataBuffer, transport._tempDataLen = [b"y" * 7], 7
    assert daphne_limits.queued_bytes(transport) == 67
    assert daphne_limits.queued_bytes(object()) is None
