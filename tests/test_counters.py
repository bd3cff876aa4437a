"""Cache counters that are atomic and always end with their window, on the real Redis and in memory."""

import threading
import time

import pytest
import redis
from django.core.cache import caches
from django_redis.cache import RedisCache

from conferences import counters
from conferencesite.env import caches_for


@pytest.fixture
def redis_cache(settings, redis_url):
    settings.CACHES = caches_for(redis_url)  # pytest-django's setting_changed resets the cache handlers
    cache = caches["default"]
    assert isinstance(cache, RedisCache)
    cache.clear()
    yield cache
    cache.clear()


@pytest.fixture(params=["redis", "locmem"])
def any_cache(request, settings):
    if request.param == "redis":
        yield request.getfixturevalue("redis_cache")
        return
    settings.CACHES = caches_for(None)
    caches["default"].clear()
    yield caches["default"]


def test_counts_are_atomic_under_concurrency(any_cache):
    results = []

    def count():
        for _ in range(50):
            results.append(counters.incr("c:atomic", 60))

    threads = [threading.Thread(target=count) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == list(range(1, 401))


def test_a_count_ends_with_its_window_and_starts_again(any_cache):
    assert counters.incr("c:window", 1) == 1
    assert counters.incr("c:window", 1) == 2
    time.sleep(1.2)
    assert counters.incr("c:window", 1) == 1
    counters.decr("c:window")
    time.sleep(1.2)
    counters.decr("c:window")  # an ended window: nothing to take back, no key made
    assert counters.incr("c:window", 1) == 1


def test_a_redis_key_that_lost_its_expiry_gets_it_back(redis_cache, redis_url):
    """What Django's own RedisCache.incr could leave behind: INCR on a key that expired after its EXISTS."""
    full_key = redis_cache.make_and_validate_key("c:persistent")
    client = redis.Redis.from_url(redis_url)
    try:
        client.set(full_key, 3)  # no expiry
        assert counters.incr("c:persistent", 60) == 4
        assert 0 < client.ttl(full_key) <= 60
        client.delete(full_key)
        counters.decr("c:persistent")
        assert not client.exists(full_key)  # decr never re-creates an ended count
    finally:
        client.close()
