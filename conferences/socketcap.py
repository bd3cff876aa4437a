"""At most ``settings.MAX_SOCKETS_PER_USER`` open sockets per user, across every web process.

A logged-in user who opens sockets in a loop (a script, a runaway page)
would otherwise hold a consumer, a hub membership and a periodic check each.
Each socket claims a place when it connects and gives it back when it
closes; a socket over the cap is closed with 4429.

With Redis (``REDIS_URL``), a user's places are one sorted set shared by all
web processes: member = the socket's channel name, score = when it last
confirmed it is alive (at connect and at every periodic check of the socket).
A web process that dies cannot give its places back, so places not confirmed
for ``STALE_SECONDS`` no longer count. Claiming is one Lua script, so two
sockets connecting at once cannot both take the last place. Without Redis
(the embedded mode: one process), a dict in memory does the same.
"""

import asyncio
import logging
import time
import weakref

from django.conf import settings

logger = logging.getLogger(__name__)

# A place not confirmed for this long belongs to a socket of a process that died.
# Sockets confirm at every periodic check (consumers.SESSION_CHECK_SECONDS).
STALE_SECONDS = 100.0
KEY_PREFIX = "conferences:sockets:user:"

_CLAIM = """
local key, member, now, stale, cap = KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - stale)
if redis.call('ZSCORE', key, member) == false and redis.call('ZCARD', key) >= cap then
  return 0
end
redis.call('ZADD', key, now, member)
redis.call('EXPIRE', key, math.ceil(stale * 2))
return 1
"""

_local = {}  # user id -> set of channel names (no Redis)
_clients = weakref.WeakKeyDictionary()  # event loop -> redis.asyncio client


def _redis():
    """The Redis client of the running event loop (connections belong to one loop)."""
    import redis.asyncio

    from conferencesite import redis_pools

    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        # A pool that waits for a free connection: sockets connecting at once share a few
        # connections instead of opening one each (conferencesite/layers.py says why);
        # through Sentinel when REDIS_SENTINELS is set.
        pool = redis_pools.settings_pool(max_connections=8, timeout=3, socket_connect_timeout=3, socket_timeout=3)
        client = _clients[loop] = redis.asyncio.Redis(connection_pool=pool)
    return client


def _key(user_id):
    return f"{KEY_PREFIX}{user_id}"


async def claim(user_id, channel_name):
    """Take a place for a new socket; False when the user has ``MAX_SOCKETS_PER_USER`` open already."""
    cap = settings.MAX_SOCKETS_PER_USER
    if not settings.REDIS_URL:
        places = _local.setdefault(user_id, set())
        if channel_name not in places and len(places) >= cap:
            return False
        places.add(channel_name)
        return True
    claimed = await _redis().eval(_CLAIM, 1, _key(user_id), channel_name, time.time(), STALE_SECONDS, cap)
    return bool(claimed)


async def confirm(user_id, channel_name, *, recreate=False):
    """Note that a socket is still open (keeps its place from looking stale).

    ``recreate``: also put the place back if Redis lost it (restarted empty),
    without checking the cap: the socket is open already.
    """
    if not settings.REDIS_URL:
        return
    key = _key(user_id)
    if recreate:
        client = _redis()
        await client.zadd(key, {channel_name: time.time()})
        await client.expire(key, int(STALE_SECONDS * 2))
        return
    await _redis().zadd(key, {channel_name: time.time()}, xx=True)


async def release(user_id, channel_name):
    """Give a closing socket's place back."""
    if not settings.REDIS_URL:
        places = _local.get(user_id)
        if places is not None:
            places.discard(channel_name)
            if not places:
                del _local[user_id]
        return
    await _redis().zrem(_key(user_id), channel_name)


async def count(user_id):
    """How many places the user holds now (tests and diagnostics)."""
    if not settings.REDIS_URL:
        return len(_local.get(user_id, ()))
    client = _redis()
    await client.zremrangebyscore(_key(user_id), "-inf", time.time() - STALE_SECONDS)
    return await client.zcard(_key(user_id))
