"""The Redis channel layer the project runs (conferencesite/layers.py), on a real Redis."""

import asyncio
import contextlib
import socket
import time
from urllib.parse import urlsplit

import pytest

from conferencesite import layers as conferencesite_layers

pytestmark = pytest.mark.integration

ATTEMPTS = 10


def resp(*args):
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


@contextlib.contextmanager
def counted(client):
    """The names of the commands ``client`` (a redis-py asyncio client) sends inside the block."""
    commands = []
    original = client.execute_command

    async def counting(*args, **kwargs):
        commands.append(args[0])
        return await original(*args, **kwargs)

    client.execute_command = counting
    try:
        yield commands
    finally:
        client.execute_command = original


class RawRedis:
    """Commands written on a plain socket: they reach Redis while the event loop stands still."""

    def __init__(self, url):
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port or 6379), timeout=5)
        self.command("SELECT", (parts.path or "/0").lstrip("/") or "0")

    def command(self, *args):
        self.sock.sendall(resp(*args))
        return self.sock.recv(4096)

    def close(self):
        self.sock.close()


async def test_a_receive_cancelled_while_it_reads_redis_loses_no_one_elses_message(redis_layer, redis_url):
    layer = redis_layer
    """A socket that closes while its receive is the one reading Redis for the whole process must
    not take with it a message on its way to another socket (a moderator's reply, a room event).

    channels_redis pops the message from Redis and only then backs it up; a reader cancelled in
    between lost it (the benchmark lost about one moderation reply in 400 while sockets came and
    went). Here the message reaches Redis, and Redis hands it to the reader's pending pop, while
    the event loop stands still; the reader is cancelled before it can read the answer.
    """
    raw = RawRedis(redis_url)
    received = []
    try:
        for attempt in range(ATTEMPTS):
            closing = await layer.new_channel()
            staying = await layer.new_channel()
            reader = asyncio.ensure_future(layer.receive(closing))  # first in: it reads Redis for both
            await asyncio.sleep(0.05)
            waiter = asyncio.ensure_future(layer.receive(staying))
            await asyncio.sleep(0.01)
            message = {"type": "moderation.reply", "attempt": attempt, "__asgi_channel__": staying}
            raw.command("ZADD", layer.prefix + layer.non_local_name(staying), time.time(), layer.serialize(message))
            time.sleep(0.05)  # noqa: ASYNC251 (on purpose: Redis answers the pop before the loop runs)
            reader.cancel()  # the socket closes
            try:
                got = await asyncio.wait_for(waiter, layer.brpop_timeout + 3)
            except TimeoutError:
                got = None
            received.append(got and got["attempt"])
            await asyncio.gather(reader, return_exceptions=True)
    finally:
        raw.close()
        await layer.flush()
    assert received == list(range(ATTEMPTS))


async def test_a_group_add_is_one_round_trip_and_sets_the_expiry(redis_layer, redis_url, monkeypatch):
    import redis.asyncio.client

    layer = redis_layer
    channel = await layer.new_channel()
    executed = []
    real = redis.asyncio.client.Pipeline.execute

    async def counting(self, *args, **kwargs):
        executed.append([command[0][0] for command in self.command_stack])
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(redis.asyncio.client.Pipeline, "execute", counting)
    await layer.group_add("conference.4242", channel)
    assert executed == [["ZADD", "EXPIRE"]]
    raw = RawRedis(redis_url)
    try:
        key = layer._group_key("conference.4242")
        assert channel.encode() in raw.command("ZRANGE", key, 0, -1)
        ttl = int(raw.command("TTL", key).split(b"\r\n")[0][1:])
        assert 0 < ttl <= layer.group_expiry
    finally:
        raw.close()
    await layer.group_discard("conference.4242", channel)
    await layer.flush()


async def test_many_commands_at_once_share_a_bounded_number_of_connections(redis_layer):
    from conferencesite import layers

    layer = redis_layer
    channels = [await layer.new_channel() for _ in range(400)]
    await asyncio.gather(*(layer.group_add(f"user.{n}", channel) for n, channel in enumerate(channels)))
    pool = layer.connection(0).connection_pool
    opened = len(pool._available_connections) + len(pool._in_use_connections)
    assert 1 <= opened <= layers.POOL_CONNECTIONS
    # And every one of them got through.
    members = await asyncio.gather(*(layer.connection(0).zcard(layer._group_key(f"user.{n}")) for n in range(400)))
    assert members == [1] * 400
    await layer.flush()


def test_redis_py_looks_its_version_up_once_per_process(monkeypatch):
    """redis-py 7.4 read its own package metadata for every new connection (conferencesite/redis_fixes.py)."""
    from importlib import metadata

    import redis
    from redis.driver_info import DriverInfo

    lookups = []
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: lookups.append(name) or real(name))
    redis.utils.get_lib_version.cache_clear()
    infos = [DriverInfo() for _ in range(50)]
    assert lookups == ["redis"] and {info.lib_version for info in infos} == {redis.__version__}


def test_the_redis_fix_refuses_another_redis_py(monkeypatch):
    import redis

    from conferencesite import redis_fixes

    monkeypatch.setattr(redis, "__version__", "8.0.0")
    with pytest.raises(RuntimeError, match="written for redis-py 7.4.1, found 8.0.0"):
        redis_fixes.install()


async def test_a_receive_rides_out_a_short_redis_restart_and_gives_up_on_a_long_outage(monkeypatch):
    """Restarted within RECEIVE_RETRY_SECONDS: the waiting receive gets the next message; gone longer: its error."""
    from conferencesite import layers
    from tests.stack import OwnRedis, channel_layer

    monkeypatch.setattr(layers, "RECEIVE_RETRY_SECONDS", 2.0)
    redis = OwnRedis()
    redis.start()
    layer = channel_layer(redis.url)
    recoveries = []
    layer.on_recovery(recoveries.append)
    try:
        channel = await layer.new_channel()
        waiting = asyncio.create_task(layer.receive(channel))
        await asyncio.sleep(0.2)
        redis.kill()
        await asyncio.sleep(0.5)
        redis.start()  # same port, empty
        sender = channel_layer(redis.url)
        await sender.send(channel, {"type": "after the restart"})
        await sender.close_pools()
        assert (await asyncio.wait_for(waiting, 10))["type"] == "after the restart"
        assert len(recoveries) == 1 and (layer.outages, layer.recoveries) == (1, 1)

        # Gone for longer: every read gives up together (a socket's and the worker's plain channel),
        # the give-up listeners run once, and a receive begun afterwards fails at once.
        gave_up = []
        layer.on_give_up(lambda: gave_up.append(time.monotonic()))
        waiting = [asyncio.create_task(layer.receive(channel)), asyncio.create_task(layer.receive("worker.7"))]
        await asyncio.sleep(0.2)
        redis.kill()
        started = time.monotonic()
        for receive in waiting:
            with pytest.raises(layers.REDIS_DOWN):
                await asyncio.wait_for(receive, 10)
        assert 2.0 <= time.monotonic() - started < 5
        assert len(gave_up) == 1 and len(recoveries) == 1 and layer.outages == 2
        begun = time.monotonic()
        with pytest.raises(layers.REDIS_DOWN):
            await asyncio.wait_for(layer.receive(await layer.new_channel()), 10)
        assert time.monotonic() - begun < 1.5
        # Back: the next receive works, and says so once.
        redis.start()
        sender = channel_layer(redis.url)
        await sender.send(channel, {"type": "back"})
        await sender.close_pools()
        assert (await asyncio.wait_for(layer.receive(channel), 10))["type"] == "back"
        assert len(recoveries) == 2
    finally:
        await layer.close_pools()
        redis.close()


async def _send_all(layer, channel, messages):
    for message in messages:
        await layer.send(channel, message)
    await layer.close_pools()


async def test_the_workers_requests_are_received_beside_its_busy_event_loop(redis_layer, redis_url):
    """conferences/ari/inbox.py: while the worker's event loop is busy (here: blocked outright), the
    requests sent to it are taken off Redis by the inbox's own thread, and handed over in order the moment
    the loop is free; stopped, the inbox takes nothing more, and what comes later waits for the next one."""
    import time
    import uuid

    import redis

    from conferences.ari import inbox

    assert inbox.needs_own_loop(redis_layer)
    channel = f"ari-worker.test-{uuid.uuid4().hex[:8]}"
    received = []
    counted = {30: asyncio.Event(), 31: asyncio.Event()}

    def deliver(message):
        received.append(message)
        if len(received) in counted:
            counted[len(received)].set()

    loop = asyncio.get_running_loop()
    receiver = inbox.CommandInbox(channel, deliver, loop)
    await asyncio.to_thread(receiver.start)
    raw = redis.Redis.from_url(redis_url)
    key = redis_layer.prefix + channel
    try:
        # Sent from another thread (another process's means) while this loop is blocked.
        import threading

        sender = inbox.channel_layers.make_backend("default")
        messages = [{"type": "moderation.request", "n": n} for n in range(30)]
        sending = threading.Thread(target=lambda: asyncio.run(_send_all(sender, channel, messages)))
        sending.start()
        before = len(received)
        time.sleep(1.5)  # noqa: ASYNC251 (the point: the worker's loop busy, nothing runs in it meanwhile)
        sending.join(5)
        assert raw.zcard(key) == 0  # all taken off Redis by the inbox's thread
        assert len(received) == before == 0  # and none handed over behind the loop's back
        await asyncio.wait_for(counted[30].wait(), 5)
        assert [message["n"] for message in received] == list(range(30))
    finally:
        await asyncio.to_thread(receiver.stop)
    assert not receiver.thread.is_alive()
    await redis_layer.send(channel, {"type": "moderation.request", "n": 30})
    await asyncio.sleep(0.3)
    assert len(received) == 30 and raw.zcard(key) == 1  # kept for the next worker
    again = inbox.CommandInbox(channel, deliver, loop)
    await asyncio.to_thread(again.start)
    try:
        await asyncio.wait_for(counted[31].wait(), 5)
        assert received[-1]["n"] == 30
    finally:
        await asyncio.to_thread(again.stop)
        raw.close()
    await redis_layer.flush()


def test_an_in_memory_layer_is_read_in_its_own_loop():
    from channels.layers import InMemoryChannelLayer

    from conferences.ari import inbox

    assert not inbox.needs_own_loop(InMemoryChannelLayer()) and not inbox.needs_own_loop(None)


async def test_group_send_takes_two_round_trips_and_keeps_channels_redis_rules(redis_layer, redis_url):
    """conferencesite/layers.py's group_send: every live member gets the message (a plain channel and a
    process's own, whose message names it), a member past group_expiry is dropped from the group and gets
    nothing, a channel at its capacity gets nothing more, a message past its expiry is dropped on the way;
    two commands reach Redis (channels_redis sends four)."""
    import redis

    layer = redis_layer
    raw = redis.Redis.from_url(redis_url)
    group = "conference.77001"
    plain = "ari-worker.test-group"
    local = await layer.new_channel()
    stale = "ari-worker.test-stale"
    try:
        for channel in (plain, local, stale):
            await layer.group_add(group, channel)
        raw.zadd(layer._group_key(group), {stale: time.time() - layer.group_expiry - 10})
        # An old message on the plain channel's key, past the layer's expiry: dropped when the next comes.
        raw.zadd(layer.prefix + plain, {b"old": time.time() - layer.expiry - 10})
        with counted(layer.connection(0)) as commands:
            await layer.group_send(group, {"type": "room.event", "n": 1})
        assert len(commands) == 2, commands
        assert raw.zscore(layer._group_key(group), stale) is None  # gone from the group
        assert raw.zcard(layer.prefix + stale) == 0
        assert raw.zcard(layer.prefix + plain) == 1  # the old message dropped, the new one in
        assert (await layer.receive(plain))["n"] == 1
        assert (await layer.receive(local))["n"] == 1
        # At capacity: no more for that channel, the others still get theirs.
        for n in range(layer.get_capacity(plain)):
            await layer.send(plain, {"type": "filler", "n": n})
        await layer.group_send(group, {"type": "room.event", "n": 2})
        assert raw.zcard(layer.prefix + plain) == layer.get_capacity(plain)
        assert (await layer.receive(local))["n"] == 2
    finally:
        raw.delete(layer._group_key(group), layer.prefix + plain, layer.prefix + stale)
        raw.close()
        await layer.flush()


async def test_a_waiting_message_is_received_in_one_round_trip_once_and_a_cut_receive_loses_nothing(
    redis_layer, redis_url
):
    """conferencesite/layers.py's receive of a process's inbox: one command to Redis per message that waits
    (channels_redis sends four, and its next receive waits for the fourth), in the order sent, none given
    twice; the backup keeps only the message given last, and what a receive cut short took out of the queue
    comes again with the next one. A plain channel's: two commands, nothing left in the backup."""
    import redis

    layer = redis_layer
    raw = redis.Redis.from_url(redis_url)
    first, second = await layer.new_channel(), await layer.new_channel()
    inbox = layer.non_local_name(first)
    queue_key = layer.prefix + inbox
    backup_key = layer._backup_channel_name(queue_key)
    try:
        for n in range(3):
            await layer.send(first if n != 1 else second, {"type": "test.message", "n": n})
        client = layer.connection(layer.consistent_hash(inbox))
        with counted(client) as commands:
            assert (await layer.receive(first))["n"] == 0
            assert (await layer.receive(second))["n"] == 1
            assert (await layer.receive(first))["n"] == 2
        assert commands == ["EVAL"] * 3, commands
        assert raw.zcard(queue_key) == 0 and raw.zcard(backup_key) == 1  # the last one given, until the next receive

        # A receive waiting on an empty queue gets the next message sent as soon as Redis hands it over (no
        # backup round trip after the BZPOPMIN), and the one before is not given again.
        with counted(client) as commands:
            waiting = asyncio.create_task(layer.receive(first))
            await asyncio.sleep(0.2)
            await layer.send(first, {"type": "test.message", "n": 3})
            assert (await asyncio.wait_for(waiting, 5))["n"] == 3
        # The receive's script and BZPOPMIN, then the send's own four (channels_redis's send): no ZADD of a backup.
        assert commands == ["EVAL", "BZPOPMIN", "ZREMRANGEBYSCORE", "ZCOUNT", "ZADD", "EXPIRE"], commands
        assert raw.zcard(backup_key) == 0 and queue_key not in layer._given

        # A receive cut short after Redis popped its message (the script ran, its answer never read): the
        # message is in the backup, and the next receive gets it; the message given before it does not come again.
        await layer.send(first, {"type": "test.message", "n": 4})
        layer._given.discard(queue_key)  # as the script cut short has forgotten it
        given = raw.zrange(backup_key, 0, -1)
        raw.eval(conferencesite_layers._RECEIVE, 0, queue_key, backup_key, "1")  # the cut receive's script: n=4 popped
        assert raw.zcard(queue_key) == 0 and raw.zrange(backup_key, 0, -1) != given
        assert (await layer.receive(first))["n"] == 4
        await layer.send(first, {"type": "test.message", "n": 5})
        assert (await layer.receive(first))["n"] == 5
        assert raw.zcard(queue_key) == 0 and raw.zcard(backup_key) == 1

        # A plain channel (another process may read it too): its clean-up at once, in a second command.
        plain = "ari-worker.test-plain"
        for n in (6, 7):
            await layer.send(plain, {"type": "test.message", "n": n})
        with counted(client) as commands:
            assert [(await layer.receive(plain))["n"] for _ in range(2)] == [6, 7]
        assert commands == ["EVAL", "ZPOPMIN"] * 2, commands
        assert raw.zcard(layer.prefix + plain) == 0
        assert raw.zcard(layer._backup_channel_name(layer.prefix + plain)) == 0
    finally:
        raw.delete(queue_key, backup_key, layer.prefix + "ari-worker.test-plain")
        raw.close()
        await layer.flush()


def test_the_receive_refuses_another_channels_redis(monkeypatch):
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "version", lambda name: "4.4.0")
    with pytest.raises(RuntimeError, match="channels_redis 4.3.0, found 4.4.0"):
        conferencesite_layers.check_channels_redis()
