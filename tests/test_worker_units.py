"""Worker pieces without Asterisk: backoff, the lease, link status and its broadcast."""

import asyncio
import os
import random
import socket
from datetime import timedelta

import pytest
from django.utils import timezone

from conferences import services
from conferences.ari import lease
from conferences.ari.worker import AriWorker, backoff_delay
from conferences.models import AsteriskServer
from tests.live import RoomWatcher, db
from tests.sandbox import eventually


def test_backoff_grows_exponentially_with_jitter_and_a_cap():
    rng = random.Random(1)
    for attempt in range(12):
        delay = backoff_delay(attempt, rng=rng)
        full = min(30.0, 0.5 * 2**attempt)
        assert full / 2 <= delay <= full
    assert backoff_delay(1000, rng=rng) <= 30.0
    # Jitter: two workers restarting together do not retry in lockstep.
    assert len({round(backoff_delay(5), 6) for _ in range(20)}) > 1


@pytest.mark.django_db
def test_lease_one_holder_at_a_time(server):
    first, second = lease.new_owner(), lease.new_owner()
    assert lease.acquire(server.pk, first) == (True, first)
    assert lease.acquire(server.pk, second) == (False, first)
    assert lease.renew(server.pk, first)
    assert not lease.renew(server.pk, second)
    lease.release(server.pk, first)
    assert lease.acquire(server.pk, second) == (True, second)


@pytest.mark.django_db
def test_lease_of_a_dead_local_process_is_taken_over_at_once(server):
    dead = f"{socket.gethostname()}:{2**22 + 12345}:deadbeef"  # beyond pid_max: never alive
    AsteriskServer.objects.filter(pk=server.pk).update(
        worker_owner=dead, worker_lease_until=timezone.now() + timedelta(seconds=60)
    )
    mine = lease.new_owner()
    assert lease.acquire(server.pk, mine) == (True, mine)


@pytest.mark.django_db
def test_lease_of_another_host_is_respected_until_it_expires(server):
    other = "other-host:4242:cafe"
    AsteriskServer.objects.filter(pk=server.pk).update(
        worker_owner=other, worker_lease_until=timezone.now() + timedelta(seconds=60)
    )
    assert lease.acquire(server.pk, lease.new_owner()) == (False, other)
    AsteriskServer.objects.filter(pk=server.pk).update(worker_lease_until=timezone.now() - timedelta(seconds=1))
    assert lease.acquire(server.pk, lease.new_owner())[0]


@pytest.mark.django_db
def test_lease_owner_names_this_process():
    host, pid, token = lease.new_owner().rsplit(":", 2)
    assert host == socket.gethostname() and pid == str(os.getpid()) and len(token) == 8


@pytest.mark.django_db(transaction=True)
async def test_link_status_is_stored_and_pushed_to_every_room_of_the_server(server, make_conference, fresh_layer):
    rooms = [await db(make_conference)(str(n)) for n in (10, 11)]
    async with RoomWatcher(fresh_layer, rooms[0].pk) as first, RoomWatcher(fresh_layer, rooms[1].pk) as second:
        await db(services.server_set_link_status)(server_id=server.pk, connected=True)
        await db(services.server_set_link_status)(server_id=server.pk, connected=True)  # no change: no frame
        await db(services.server_set_link_status)(server_id=server.pk, connected=False, error="connection refused")
        await eventually(lambda: len(first.frames) == 2 and len(second.frames) == 2)
    assert (
        first.frames
        == second.frames
        == [
            {"type": "asterisk.status", "connected": True},
            {"type": "asterisk.status", "connected": False},
        ]
    )
    state = await db(AsteriskServer.objects.get)(pk=server.pk)
    assert (state.connected, state.last_error) == (False, "connection refused")
    assert state.status_since is not None and state.last_seen_at is not None


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "url,password,error",
    [
        ("http://127.0.0.1:1/ari", "conference", "connection refused"),
        (None, "wrong-password", "ARI refused the credentials (HTTP 401)"),
    ],
)
async def test_worker_keeps_retrying_while_it_cannot_connect(ari, make_server, fresh_layer, url, password, error):
    server = await db(make_server)("unreachable", ari_url=url or ari.url, username="conference", password=password)
    worker = AriWorker(server)
    task = asyncio.create_task(worker.run())
    try:
        await eventually(
            lambda: db(lambda: AsteriskServer.objects.get(pk=server.pk).last_error == error)(),
            timeout=10,
            message="link error recorded",
        )
        await asyncio.sleep(1.5)
        assert not task.done()  # no retry limit: it keeps trying
        state = await db(AsteriskServer.objects.get)(pk=server.pk)
        assert state.connected is False
        assert "wrong-password" not in state.last_error
    finally:
        worker.stopping.set()
        await asyncio.wait_for(task, 10)


@pytest.mark.django_db(transaction=True)
async def test_database_outage_holds_the_event_until_it_passes(server, make_conference, monkeypatch, caplog):
    """An unreachable or locked database neither loses the event nor kills the worker."""
    from django.db import OperationalError

    from conferences import services as services_module
    from conferences.ari import worker as worker_module
    from tests.recorded import FakeAri, load

    monkeypatch.setattr(worker_module, "DB_RETRY_FIRST", 0.01)
    room = await db(make_conference)("100")
    worker = AriWorker(server)
    worker.app.ari = FakeAri()
    assert (await worker._acquire())[0]
    real_join = services_module.participant_join
    failures = []

    def flaky_join(**kwargs):
        if len(failures) < 3:
            failures.append(1)
            raise OperationalError("could not connect to server: Connection refused")
        return real_join(**kwargs)

    monkeypatch.setattr(services_module, "participant_join", flaky_join)
    for event in load("join_and_hangup", room)[:2]:  # StasisStart, ChannelEnteredBridge
        await worker._process_item("event", event)
    assert len(failures) == 3
    participants = await db(lambda: list(room.participants.all()))()
    assert len(participants) == 1 and participants[0].left_at is None
    assert "database unavailable" in caplog.text
    await worker.ari.close()
    await asyncio.to_thread(worker.database.close)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "failure,error",
    [
        ("AriNotFound", "the caller has already left"),
        ("AriConflict", "Asterisk refused the request"),
        ("AriError500", "Asterisk refused the request"),
        ("timeout", "Asterisk refused the request"),
    ],
)
async def test_ari_errors_to_commands_give_clear_replies_and_change_nothing(
    server, make_conference, make_participant, failure, error
):
    from conferences.ari.client import AriConflict, AriError, AriNotFound
    from conferences.ari.handlers import ConferenceApp
    from tests.recorded import FakeAri

    room = await db(make_conference)("100")
    target = await db(make_participant)(room, "chan-x")
    ari = FakeAri()
    ari.fail["mute"] = {
        "AriNotFound": AriNotFound("gone", status=404),
        "AriConflict": AriConflict("not in Stasis", status=409),
        "AriError500": AriError("boom", status=500),
        "timeout": AriError("POST /channels/x/mute: timed out after 5.0 s"),
    }[failure]
    app = ConferenceApp(server_id=server.pk, app_name="conference", ari=ari, schedule=lambda d, e: None)
    ok, message = await app.handle_command(
        {"action": "mute", "conference_id": room.pk, "participant_id": target.pk, "actor_id": None}
    )
    assert (ok, message) == (False, error)
    target = await db(type(target).objects.get)(pk=target.pk)
    assert target.muted is False
    assert (await db(type(room).objects.get)(pk=room.pk)).seq == 0


async def test_messages_the_layer_refuses_wait_and_go_out_in_order(monkeypatch, fresh_layer):
    from conferences import broadcast

    sent, fail = [], [True]

    async def group_send(group, message):
        if fail[0]:
            raise ConnectionError("Redis is down")
        sent.extend(event["seq"] for event in broadcast.room_events(message))

    monkeypatch.setattr(fresh_layer, "group_send", group_send)
    frames = [broadcast.room_message({"type": "participant.updated", "seq": n}) for n in (1, 2, 3)]
    await broadcast.send_collected([("conference.1", frames[0]), ("conference.1", frames[1])])
    assert sent == [] and await broadcast.flush_backlog() == 2
    fail[0] = False
    await broadcast.send_collected([("conference.1", frames[2])])
    assert sent == [1, 2, 3]
    assert await broadcast.flush_backlog() == 0


async def test_rooms_broadcast_side_by_side_and_each_in_its_order(monkeypatch, fresh_layer):
    """One room's slow broadcasts do not hold back another room's (a queue per group)."""
    from conferences import broadcast

    sent = []

    async def group_send(group, message):
        await asyncio.sleep(0.2 if group == "conference.1" else 0)
        sent.extend((group, event["seq"]) for event in broadcast.room_events(message))

    monkeypatch.setattr(fresh_layer, "group_send", group_send)
    slow = [("conference.1", broadcast.room_message({"type": "participant.updated", "seq": n})) for n in (1, 2, 3)]
    fast = [("conference.2", broadcast.room_message({"type": "participant.updated", "seq": n})) for n in (1, 2)]
    slow_task = asyncio.create_task(broadcast.send_collected(slow))
    await asyncio.sleep(0.05)
    await asyncio.wait_for(broadcast.send_collected(fast), 0.1)  # not behind room 1's 0.6 s
    await slow_task
    assert [seq for group, seq in sent if group == "conference.1"] == [1, 2, 3]
    assert sent[:2] == [("conference.2", 1), ("conference.2", 2)]


async def test_room_events_sent_at_once_go_in_one_message_in_order(monkeypatch, fresh_layer):
    """A change's frames (mute all: one per caller) cost one group_send; other messages are not folded in."""
    from conferences import broadcast

    sent = []

    async def group_send(group, message):
        sent.append(message)

    monkeypatch.setattr(fresh_layer, "group_send", group_send)
    monkeypatch.setattr(broadcast, "BATCH_LIMIT", 3)
    frames = [broadcast.room_message({"type": "participant.updated", "seq": n}, 1) for n in range(1, 7)]
    access = {"type": "access.changed", "conference": 1}
    await broadcast.send_collected(
        [("conference.1", frames[0]), ("conference.1", frames[1]), ("conference.1", access)]
        + [("conference.1", frame) for frame in frames[2:]]
    )
    # 1, 2 | access | 3, 4, 5 (the limit) | 6 alone
    assert [message["type"] for message in sent] == ["room.events", "access.changed", "room.events", "room.event"]
    assert sent[0]["conference"] == 1 and [e["seq"] for e in sent[0]["events"]] == [1, 2]
    assert [e["seq"] for e in sent[2]["events"]] == [3, 4, 5] and sent[3]["seq"] == 6
    every = [event["seq"] for message in sent for event in broadcast.room_events(message)]
    assert every == [1, 2, 3, 4, 5, 6]
    assert broadcast.room_events(access) == []


def test_the_backlog_is_bounded_by_dropping_the_oldest_of_the_longest_queue(monkeypatch):
    from conferences import broadcast

    monkeypatch.setattr(broadcast, "BACKLOG_LIMIT", 4)
    monkeypatch.setattr(broadcast, "_backlogs", {})
    for n in range(1, 5):
        broadcast._keep("conference.1", {"seq": n})
    broadcast._keep("conference.2", {"seq": 1})
    assert [m["seq"] for m in broadcast._backlogs["conference.1"]] == [2, 3, 4]
    assert broadcast.backlog_size() == 4


async def test_concurrent_flushes_send_each_message_once_in_order(monkeypatch, fresh_layer):
    """The worker's events and its heartbeat flush at the same time: nothing twice, nothing lost."""
    from conferences import broadcast

    sent = []

    async def group_send(group, message):
        await asyncio.sleep(0.01)  # a round trip to Redis: the other flush runs meanwhile
        sent.extend(event["seq"] for event in broadcast.room_events(message))

    monkeypatch.setattr(fresh_layer, "group_send", group_send)
    frames = [("conference.1", broadcast.room_message({"type": "participant.updated", "seq": n})) for n in range(1, 6)]
    for group, message in frames[:3]:
        broadcast._keep(group, message)
    results = await asyncio.gather(
        broadcast.flush_backlog(), broadcast.send_collected(frames[3:]), broadcast.flush_backlog()
    )
    assert sent == [1, 2, 3, 4, 5]
    assert results[0] == 0 and results[2] == 0


# --- wrong PINs across calls (conferences.ari.pin_throttle) ------------------------------


@pytest.mark.parametrize(
    "caller_failures,room_failures,pause",
    [
        (0, 0, 0.0),
        (4, 19, 0.0),  # just under both limits
        (5, 0, 30.0),  # this number's limit
        (5, 19, 30.0),
        (0, 20, 30.0),  # the room's limit: every number pauses
        (50, 500, 30.0),  # never more than the pause: no lock-out
    ],
)
def test_pin_pause_rule(caller_failures, room_failures, pause):
    from conferences.ari import pin_throttle

    assert pin_throttle.pause_for(caller_failures, room_failures) == pause


def test_pin_pause_rule_follows_the_module_limits(monkeypatch):
    from conferences.ari import pin_throttle

    monkeypatch.setattr(pin_throttle, "PIN_FAILS_PER_CALLER", 2)
    monkeypatch.setattr(pin_throttle, "PIN_PAUSE", 4)
    assert pin_throttle.pause_for(1, 0) == 0.0
    assert pin_throttle.pause_for(2, 0) == 4.0


@pytest.fixture
def pin_cache(settings):
    import uuid

    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": f"u{uuid.uuid4().hex}"}
    }


@pytest.mark.parametrize("number", ["555", "", "x" * 5000, "\ud800", "'; DROP", "\x00\n"])
async def test_any_caller_number_is_counted_under_a_key_of_its_own(pin_cache, number):
    from conferences.ari import pin_throttle

    await pin_throttle.record_failure(7, number)
    await pin_throttle.record_failure(7, number)
    await pin_throttle.record_failure(7, "other")
    assert await pin_throttle.failures(7, number) == (2, 3)
    assert await pin_throttle.failures(8, number) == (0, 0)  # another room
    assert len(pin_throttle.caller_key(7, number, 1)) < 100
    await pin_throttle.forget_caller(7, number)
    assert await pin_throttle.failures(7, number) == (0, 3)


async def test_concurrent_wrong_pins_are_all_counted(pin_cache):
    from conferences.ari import pin_throttle

    await asyncio.gather(*(pin_throttle.record_failure(7, "555") for _ in range(40)))
    assert await pin_throttle.failures(7, "555") == (40, 40)


async def test_a_slow_cache_does_not_hold_the_event_loop(pin_cache, monkeypatch):
    """The counts are read in a pool thread: the loop keeps serving (e.g. Asterisk's socket)."""
    import time

    from django.core.cache import caches

    from conferences.ari import pin_throttle

    backend = type(caches["default"])
    real_get_many = backend.get_many

    def slow_get_many(self, keys, version=None):
        time.sleep(0.5)  # a Redis round trip gone bad
        return real_get_many(self, keys, version=version)

    monkeypatch.setattr(backend, "get_many", slow_get_many)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        assert await pin_throttle.failures(7, "555") == (0, 0)
    finally:
        task.cancel()
    assert ticks >= 25  # ~50 possible in 0.5 s; a blocked loop would manage 0


async def test_an_unreachable_cache_means_no_pause_and_a_warning(settings, caplog):
    """Redis down: callers are neither paused nor locked out; the per-call limit still holds."""
    from conferences.ari import pin_throttle

    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": "redis://127.0.0.1:1/0"}
    }
    await pin_throttle.record_failure(7, "555")
    assert await pin_throttle.failures(7, "555") == (0, 0)
    await pin_throttle.forget_caller(7, "555")
    assert "could not count a wrong PIN" in caplog.text and "counts unavailable" in caplog.text


async def test_counts_are_shared_through_redis(redis_cache, redis_url):
    """With REDIS_URL every worker (and a restarted one) sees the same counts; each key expires."""
    import redis

    from conferences.ari import pin_throttle

    await asyncio.gather(*(pin_throttle.record_failure(7, "555") for _ in range(10)))
    client = redis.Redis.from_url(redis_url)
    try:
        keys = client.keys(f"{redis_cache}:*")
        assert sum(int(client.get(key)) for key in keys) == 20  # caller and room, every count kept
        assert all(0 < client.ttl(key) <= 2 * pin_throttle.PIN_FAIL_WINDOW for key in keys)
    finally:
        client.delete(*keys)
        client.close()


def test_the_event_filter_takes_dial_for_invites_but_not_every_channels_state_changes():
    """Invites follow their calls through Dial (RINGING, BUSY…) and ChannelDestroyed; ChannelStateChange
    would say "Ringing" too, but it comes for every channel of a busy PBX: it stays out of the filter."""
    from conferences.ari.handlers import ConferenceApp

    types = ConferenceApp.event_types()
    assert {"Dial", "ChannelDestroyed", "StasisStart", "PlaybackFinished"} <= types
    assert "ChannelStateChange" not in types and "ChannelVarset" not in types


@pytest.mark.django_db(transaction=True)
async def test_mute_all_checks_its_room_in_its_own_hop(server, make_server, make_conference, make_participant):
    """Mute all reads its targets and checks the room in one hop: another server's room, or an id that is
    no room, is refused before anything reaches Asterisk; the right room's callers are muted."""
    from conferences.ari.handlers import ConferenceApp
    from conferences.models import Participant
    from tests.recorded import FakeAri

    other = await db(make_server)("other-pbx")
    theirs = await db(make_conference)("200", server=other)
    ours = await db(make_conference)("100")
    await db(make_participant)(theirs, "chan-theirs", server_id=other.pk)
    mine = await db(make_participant)(ours, "chan-ours", server_id=server.pk)
    ari = FakeAri()
    app = ConferenceApp(server_id=server.pk, app_name="conference", ari=ari, schedule=lambda d, e: None)
    for action in ("mute_all", "unmute_all"):
        for conference_id in (theirs.pk, "1", None, True, 10**9):
            command = {"action": action, "conference_id": conference_id, "actor_id": None}
            assert await app.handle_command(command) == (False, "no such room"), (action, conference_id)
    assert ari.calls == []
    assert await app.handle_command({"action": "mute_all", "conference_id": ours.pk, "actor_id": None}) == (True, None)
    assert ari.called("mute") == [("chan-ours", "in")]
    muted = await db(lambda: dict(Participant.objects.values_list("channel_id", "muted")))()
    assert muted == {"chan-ours": True, "chan-theirs": False}
    assert (await db(type(ours).objects.get)(pk=ours.pk)).seq == 1 and mine.pk
