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

This uses django-redis's client (``cache.client.get_client``, the pinned
django-redis 7.0: conferencesite/env.py says why django-redis), checked by
tests/test_counters.py against the real Redis and tests/test_sentinel.py
through Sentinel.
"""

from django.core.cache import caches
from django_redis.cache import RedisCache

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
    """``(client, full key)`` when ``cache`` is django-redis's RedisCache, else None."""
    if not isinstance(cache, RedisCache):
        return None
    return cache.client.get_client(write=True), cache.client.make_key(key)


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
