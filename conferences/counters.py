"""Counters in Django's cache that are atomic and always end with their window.

Throttles count in the cache (Redis when REDIS_URL is set, so every process
shares the counts). Django's cache API is not enough for that on Redis:
``RedisCache.incr`` asks whether the key exists, then sends INCR; a key that
expires between the two comes back from INCR as a new key *without an
expiry* — a count that never ends, so a throttle that never lifts (and
``decr`` has the same gap). ``BaseCache.aincr`` is a get and a set, not
atomic at all. Here, on Redis, one Lua script increments and gives a new key
its expiry in the same step; on the other backends (process memory: the
embedded mode, one process) ``add`` + ``incr`` is atomic under the backend's
lock and keeps the key's expiry.

This uses Django's RedisCache client (``cache._cache.get_client``, the
pinned Django 5.2), checked by tests/test_counters.py against the real Redis.
"""

from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache

_INCR = """
local count = redis.call('INCR', KEYS[1])
if redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return count
"""

_DECR = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('DECR', KEYS[1])
end
return 0
"""


def _redis(cache, key):
    """``(client, full key)`` when ``cache`` is Django's RedisCache, else None."""
    if not isinstance(cache, RedisCache):
        return None
    full_key = cache.make_and_validate_key(key)
    return cache._cache.get_client(full_key, write=True), full_key


def incr(key, window):
    """Add one to ``key`` and return the count; a new key lasts ``window`` seconds (whole), never longer."""
    cache = caches["default"]
    redis = _redis(cache, key)
    if redis is not None:
        client, full_key = redis
        return int(client.eval(_INCR, 1, full_key, int(window)))
    for _ in range(3):
        if cache.add(key, 1, window):
            return 1
        try:
            return cache.incr(key)
        except ValueError:  # expired between add() and incr(): add again
            continue
    raise RuntimeError(f"cache key {key!r} keeps vanishing")


def decr(key):
    """Take one from ``key`` if it still exists (its window has not ended)."""
    cache = caches["default"]
    redis = _redis(cache, key)
    if redis is not None:
        client, full_key = redis
        client.eval(_DECR, 1, full_key)
        return
    try:
        cache.decr(key)
    except ValueError:  # the window ended meanwhile: nothing to take back
        pass
