"""The channel layer: channels_redis's RedisChannelLayer, with reads of Redis that a closing socket cannot cut.

In a process, the receives of all its channels take turns reading Redis for
all of them: the one holding channels_redis's lock pops the next message of
the process's inbox and files it under the channel it is for. Redis hands the
message over when it pops it; channels_redis backs it up only afterwards. So
when the receive doing the read was cancelled in between (its socket closed),
the message, usually someone else's, was lost: the benchmark lost about one
moderator's reply in 400 while sockets came and went
(tests/test_layer.py reproduces it every time).

Here a read runs in a task of its own that the cancellation of the receive
that started it does not interrupt; the next receive to read joins it and
files its message, as channels_redis does with its own reads. Still one read
of Redis at a time per process.

Two more leftovers of channels_redis are cleared here: the empty queue of a
receive cancelled while it was reading (``receive``) and messages that reached
the process for a socket that had just closed (``sweep``).

A message that waits in a process's inbox is received in one round trip
to Redis instead of four (``_receive``; a plain channel's, the worker's, in
two): channels_redis sends a script that puts back what a cut
receive left in its backup, a BZPOPMIN, a ZADD of the message into the
backup, and after it a ZPOPMIN that takes it out again, the next receive of
the process waiting for that last one. All of a web process's channels are
read through one inbox, one message at a time, so in a burst (every
moderator at once, bench/busy.py) the replies queued behind the room events
at four round trips each, 100-200 ms on this machine.

And ``group_add`` takes one round trip to Redis instead of two (channels_redis
awaits its ZADD, then its EXPIRE): every socket joins two groups at its
handshake (its user's and its session's), so in a connect storm that was four
round trips per socket, each needing a pooled connection of its own for the
time (new connections are not free: conferencesite/redis_fixes.py).

Its pools wait for a free connection (at most POOL_CONNECTIONS per Redis),
where channels_redis's open one more for every command sent while the others
are busy: a thousand sockets connecting at once opened hundreds of
connections, each a TCP handshake and two ``CLIENT SETINFO`` round trips,
and kept them all afterwards. With Redis Sentinel (REDIS_SENTINELS) the pool
finds the master through the Sentinels (conferencesite/redis_pools.py).

A read that fails because Redis is unreachable (a restart, a Sentinel
failover) is retried for RECEIVE_RETRY_SECONDS instead of failing every
receive of the process at once, which closed every socket it served; when
Redis answers again, the listeners given to ``on_recovery`` run (the
consumers and the room hub join their groups again, as a Redis restarted
empty has forgotten them, and pages get a fresh snapshot for the events lost
meanwhile: conferences/consumers.py).
"""

import asyncio
import importlib.metadata
import logging
import time

import redis.exceptions
from channels_redis.core import RedisChannelLayer as BaseRedisChannelLayer

from conferences import metrics
from conferencesite import redis_pools

logger = logging.getLogger(__name__)

# Connections per Redis of one process's layer; more commands at once wait for one of them
# (POOL_WAIT_SECONDS at most, then the command fails like any Redis error).
POOL_CONNECTIONS = 32
POOL_WAIT_SECONDS = 10
# How long a receive keeps retrying while Redis is unreachable before its error goes up (a
# Sentinel failover takes the Sentinels' down-after-milliseconds and a few seconds more).
RECEIVE_RETRY_SECONDS = 30.0
# What "Redis is unreachable" looks like: no connection or no answer, a master demoted under a
# client (READONLY), a replica still loading (LOADING is a ConnectionError), no master known to
# Sentinel (MasterNotFoundError is one too), a blocked read ended by REPLICAOF (UNBLOCKED), a
# master that may not take writes (MASTERDOWN, NOREPLICAS).
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.ReadOnlyError, OSError)
DOWN_REPLIES = ("UNBLOCKED", "MASTERDOWN", "NOREPLICAS", "LOADING")
BUSY = "No connection available."  # the pool's own: every connection busy (Redis answers)


def redis_down(exc):
    """Whether ``exc`` means Redis cannot be used now (an outage to ride out), not a mistake or a busy pool."""
    if isinstance(exc, redis.exceptions.ConnectionError) and str(exc) == BUSY:
        return False
    if isinstance(exc, REDIS_DOWN):
        return True
    return isinstance(exc, redis.exceptions.ResponseError) and str(exc).startswith(DOWN_REPLIES)


# group_send's scripts (RedisChannelLayer.group_send): the group's live members, expired ones dropped; then,
# per channel key, its expired messages dropped and the message added unless the key is at its capacity
# (channels_redis 4.3's steps, the same commands).
_GROUP_MEMBERS = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, ARGV[1])
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""
_GROUP_DELIVER = """
local n = #KEYS
local expired_before = ARGV[2 * n + 1]
local current_time = ARGV[2 * n + 2]
local expiry = ARGV[2 * n + 3]
local over_capacity = 0
for i = 1, n do
    redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, expired_before)
    if redis.call('ZCOUNT', KEYS[i], '-inf', '+inf') < tonumber(ARGV[n + i]) then
        redis.call('ZADD', KEYS[i], current_time, ARGV[i])
        redis.call('EXPIRE', KEYS[i], expiry)
    else
        over_capacity = over_capacity + 1
    end
end
return over_capacity
"""


# channels_redis's receive (receive_single, _brpop_with_clean, _clean_receive_backup of 4.3.0) in one
# script: the backup's message the last receive was given is taken out (ARGV[3] = "1": that clean-up,
# which channels_redis does after each receive with a ZPOPMIN of its own), whatever else the backup holds
# (a receive cut short) goes back into the queue in front, then the oldest message is popped and kept
# in the backup until the next receive. Returns it, or nothing when the queue is empty.
_RECEIVE = """
local queue, backup = ARGV[1], ARGV[2]
if ARGV[3] == '1' then
    redis.call('ZPOPMIN', backup)
end
local backed_up = redis.call('ZRANGE', backup, 0, -1, 'WITHSCORES')
for i = #backed_up, 1, -2 do
    redis.call('ZADD', queue, backed_up[i], backed_up[i - 1])
end
redis.call('DEL', backup)
local popped = redis.call('ZPOPMIN', queue)
if popped[1] == nil then
    return false
end
redis.call('ZADD', backup, popped[2], popped[1])
return popped[1]
"""
# The channels_redis whose receive ``_receive`` replaces (its backup queue's name and rules, its
# serialisation, its round robin over the shards of a plain channel).
PINNED_CHANNELS_REDIS = "4.3.0"


def check_channels_redis():
    """Refuse a channels_redis other than the one ``_receive`` was written for."""
    found = importlib.metadata.version("channels-redis")
    if found != PINNED_CHANNELS_REDIS:
        raise RuntimeError(
            f"conferencesite/layers.py replaces the receive of channels_redis {PINNED_CHANNELS_REDIS}, found {found}: "
            "compare RedisChannelLayer.receive_single and _brpop_with_clean with _receive, then update "
            "PINNED_CHANNELS_REDIS"
        )


class RedisChannelLayer(BaseRedisChannelLayer):
    def __init__(self, *args, **kwargs):
        check_channels_redis()
        super().__init__(*args, **kwargs)
        self._given = set()  # channel keys whose backup holds the message the last receive was given
        self._reads = {}  # the process's inbox -> the read under way (a task of the loop that started it)
        self._unread = {}  # channel -> its queue in the receive buffer, holding messages at the last sweep
        self._listeners = []  # called when Redis answers again after an outage (on_recovery)
        self._give_up_listeners = []  # called when the reads give up (on_give_up)
        self._down_since = None  # when the outage under way began (monotonic), or None
        self._gave_up = False
        self.outages = self.recoveries = 0

    async def receive(self, channel):
        try:
            return await super().receive(channel)
        except asyncio.CancelledError:
            # channels_redis deletes the channel's queue when a receive is cancelled while it
            # waits, not while it is the one reading Redis: then the empty queue stayed for ever
            # (the soak: one every 50 sockets closed or so).
            queue = self.receive_buffer.get(channel)
            if queue is not None and queue.empty():
                del self.receive_buffer[channel]
            raise

    async def receive_single(self, channel):
        if "!" not in channel:  # a plain channel (the worker's): one reader, nothing shared
            return await self._read(channel)
        loop = asyncio.get_running_loop()
        read = self._reads.get(channel)
        if read is None or read.get_loop() is not loop or (read.done() and (read.cancelled() or read.exception())):
            # (A read that failed while nobody waited for it is not this receive's answer.)
            read = self._reads[channel] = loop.create_task(self._read(channel))
        try:
            result = await asyncio.shield(read)
        except asyncio.CancelledError:
            if read.cancelled():  # the read itself was stopped (close_pools)
                self._forget(channel, read)
            # Otherwise the read goes on, or has finished unclaimed: the next receive to read
            # takes its message.
            raise
        except BaseException:
            self._forget(channel, read)  # its error went to this receive
            raise
        self._forget(channel, read)  # its message went to this receive
        return result

    async def _read(self, channel):
        """channels_redis's read of ``channel``, retried while Redis is unreachable.

        The outage is the layer's, not one read's: it began with the first
        failed read, and RECEIVE_RETRY_SECONDS after that the reads give up
        (every read under way, and each new one at once while Redis still does
        not answer) and the give-up listeners run (the sockets close, and pages
        reconnect with backoff). When Redis answers again, the recovery
        listeners run before the read goes on.

        What a retry can cost: channels_redis backs a popped message up only
        after the pop returned, so one popped just before Redis died is lost;
        a backed-up message whose clean-up failed comes again (``seq`` makes
        pages ignore a repeated room event; a repeated moderation request does
        the same again: mute and lock are idempotent, a second kick finds the
        caller gone).
        """
        failed = False
        delay = 0.05
        while True:
            try:
                if failed or self._down_since is not None:
                    await self.connection(self.consistent_hash(channel)).ping()
                    self._back()
                    failed = False
                return await self._receive(channel)
            except Exception as exc:
                if not redis_down(exc):
                    raise
                failed = True
                now = time.monotonic()
                if self._down_since is None:
                    self._down_since = now
                    self.outages += 1
                    metrics.LAYER_FAILURES.labels("receive").inc()
                    logger.warning(
                        "channel layer: Redis unreachable (%s: %s); retrying for up to %.0f s",
                        exc.__class__.__name__,
                        exc,
                        RECEIVE_RETRY_SECONDS,
                    )
                elif now - self._down_since > RECEIVE_RETRY_SECONDS:
                    self._give_up()
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _receive(self, channel):
        """channels_redis's ``receive_single`` in one round trip when a message of a process's inbox waits
        (two when it has to wait for one: the script, then a BZPOPMIN whose message is given at once).

        Only this process reads its inbox, so the clean-up of the message given last can wait for the next
        receive. A plain channel (the worker's) may have more than one reader for a moment (two workers at
        a lease's hand-over): there a message the script took is cleaned up at once, as channels_redis
        does, in a second round trip (channels_redis: four).
        """
        assert self.require_valid_channel_name(channel, receive=True), "Channel name invalid"
        inbox = "!" in channel
        if inbox:
            assert channel.endswith("!")
            index = self.consistent_hash(channel)
        else:
            index = next(self._receive_index_generator)
        channel_key = self.prefix + channel
        backup = self._backup_channel_name(channel_key)
        connection = self.connection(index)
        content = None
        backed_up = True
        while content is None:
            # Forgotten before the script is sent: a script cut short may leave the message given last in
            # the backup, to come again (channels_redis: "Duplicate messages will be received eventually if
            # any of these cleaners are cancelled"), never take the next one out unread.
            given = channel_key in self._given
            self._given.discard(channel_key)
            content = await connection.eval(_RECEIVE, 0, channel_key, backup, "1" if given else "0")
            if content is None:
                popped = await connection.bzpopmin(channel_key, timeout=self.brpop_timeout)
                if popped is not None:
                    # Given at once, one round trip sooner (every room event of a quiet room comes this way),
                    # not backed up: the read is a task that no receive's cancellation cuts (receive_single),
                    # and a backup channels_redis adds here it takes out again right after.
                    content, backed_up = popped[1], False
        if backed_up and inbox:
            self._given.add(channel_key)
        elif backed_up:
            await connection.zpopmin(backup)
        message = self.deserialize(content)
        if "__asgi_channel__" in message:
            channel = message.pop("__asgi_channel__")
        return channel, message

    def on_recovery(self, listener):
        """Call ``listener(seconds down)`` each time Redis answers again after a read failed."""
        if listener not in self._listeners:
            self._listeners.append(listener)

    def on_give_up(self, listener):
        """Call ``listener()`` when the reads give up (Redis unreachable for RECEIVE_RETRY_SECONDS)."""
        if listener not in self._give_up_listeners:
            self._give_up_listeners.append(listener)

    def _back(self):
        if self._down_since is None:
            return  # another read saw Redis answer first
        seconds = time.monotonic() - self._down_since
        self._down_since, self._gave_up = None, False
        self.recoveries += 1
        logger.warning("channel layer: Redis answers again after %.1f s", seconds)
        self._tell(self._listeners, seconds)

    def _give_up(self):
        if self._gave_up:
            return
        self._gave_up = True
        logger.error("channel layer: Redis unreachable for %.0f s; giving up the reads", RECEIVE_RETRY_SECONDS)
        self._tell(self._give_up_listeners)

    @staticmethod
    def _tell(listeners, *args):
        for listener in list(listeners):
            try:
                listener(*args)
            except Exception:
                logger.exception("channel layer: a listener failed")

    def _forget(self, channel, read):
        if self._reads.get(channel) is read:
            del self._reads[channel]

    def sweep(self):
        """Drop messages that waited a whole round for a channel whose reader has gone.

        A message can reach the process for a socket that has just closed (a
        moderator's reply, an access change racing the socket's goodbye); it
        waits for a reader that never comes (django/channels_redis#384). A live
        channel's queue is emptied as soon as a message arrives, so one still
        holding messages a round later belongs to no one. The room hub calls
        this every hour.
        """
        for channel, queue in self._unread.items():
            if self.receive_buffer.get(channel) is queue and not queue.empty():
                del self.receive_buffer[channel]
        self._unread = {channel: queue for channel, queue in self.receive_buffer.items() if not queue.empty()}

    def create_pool(self, index):
        host = self.hosts[index]
        if "address" not in host and "sentinels" not in host:  # keyword hosts: channels_redis's own pools
            return super().create_pool(index)
        return redis_pools.pool_for(host, max_connections=POOL_CONNECTIONS, timeout=POOL_WAIT_SECONDS)

    async def group_add(self, group, channel):
        assert self.require_valid_group_name(group), "Group name not valid"
        assert self.require_valid_channel_name(channel), "Channel name not valid"
        group_key = self._group_key(group)
        connection = self.connection(self.consistent_hash(group))
        async with connection.pipeline(transaction=False) as pipe:
            pipe.zadd(group_key, {channel: time.time()})
            pipe.expire(group_key, self.group_expiry)
            await pipe.execute()

    async def group_send(self, group, message):
        """channels_redis's group_send in two round trips instead of four.

        channels_redis sends a ZREMRANGEBYSCORE for the group's expired
        members, a ZRANGE for the others, a pipeline that drops their expired
        messages, then the script that adds the message. Every event of every
        room goes through here (the worker's broadcasts), so the first two go
        in one script and the third into the last one; what is sent, to whom,
        with which expiry and capacity is channels_redis's own (its message
        per channel key, its ``__asgi_channel__``). With more than one Redis
        (sharding), channels_redis's own.
        """
        if len(self.hosts) != 1:
            return await super().group_send(group, message)
        assert self.require_valid_group_name(group), "Group name not valid"
        connection = self.connection(0)
        now = time.time()
        names = await connection.eval(_GROUP_MEMBERS, 1, self._group_key(group), int(now) - self.group_expiry)
        channel_names = [name.decode("utf8") for name in names]
        if not channel_names:
            return
        _by_connection, messages, capacities = self._map_channel_keys_to_connection(channel_names, message)
        keys = list(messages)
        over = await connection.eval(
            _GROUP_DELIVER,
            len(keys),
            *keys,
            *(messages[key] for key in keys),
            *(capacities[key] for key in keys),
            int(now) - int(self.expiry),
            now,
            self.expiry,
        )
        if over:
            logger.info("%s of %s channels over capacity in group %s", over, len(channel_names), group)

    async def close_pools(self):
        loop = asyncio.get_running_loop()
        for channel, read in list(self._reads.items()):
            if read.get_loop() is loop:
                read.cancel()
                del self._reads[channel]
        await super().close_pools()
