"""Async Redis connection pools that wait for a free connection, for a URL or a master found through Sentinel.

The channel layer (conferencesite/layers.py) and the socket cap
(conferences/socketcap.py) open their connections here, so both follow the
same Redis: ``REDIS_URL`` alone, or, with ``REDIS_SENTINELS``, the master the
Sentinels name for ``REDIS_URL``'s service name. Through Sentinel every new
connection asks the Sentinels where the master is (redis-py's
``SentinelManagedConnection``); a connection to a master that has been
demoted fails with ConnectionError instead of READONLY, and one to a master
that died or froze fails (reset, or the socket timeout), so after a failover
new connections go to the new master. Until then a connection still open to
the old master is used: with ``SENTINEL FAILOVER`` (a planned switch) the old
master takes writes for the moment before the Sentinels demote it, and what
is written to it then is lost. The Sentinels are reached without TLS.

redis-py's ``SentinelConnectionPool`` opens one more connection for every
command sent while the others are busy (the plain ``ConnectionPool``'s
behaviour, conferencesite/layers.py says what that cost in a connect storm);
``BlockingSentinelConnectionPool`` waits for one of at most
``max_connections`` instead, as ``BlockingConnectionPool`` does for a URL.
"""

import redis.asyncio
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

# How long a Sentinel may take to answer where the master is.
SENTINEL_TIMEOUT = 2


class BlockingSentinelConnectionPool(SentinelConnectionPool, redis.asyncio.BlockingConnectionPool):
    """redis-py's Sentinel pool with the blocking pool's bound: at most ``max_connections``, then wait."""

    async def disconnect(self, inuse_connections=True):
        await super().disconnect(inuse_connections)
        if inuse_connections:  # the pool is closed (not just a master change): the Sentinels' connections too
            for sentinel in self.sentinel_manager.sentinels:
                await sentinel.aclose()


def master_kwargs(master_url):
    """``(service name, connection keywords)`` of a ``redis[s]://[:password@]<service name>/<db>`` URL."""
    kwargs = parse_url(master_url)
    service_name = kwargs.pop("host")
    kwargs.pop("port", None)
    if kwargs.pop("connection_class", None) is SSLConnection:
        kwargs["ssl"] = True
    return service_name, kwargs


def sentinel_pool(sentinels, master_url, *, sentinel_kwargs=None, max_connections, timeout, **connection_kwargs):
    """A pool of connections to the master the ``sentinels`` name for ``master_url``'s service name."""
    service_name, kwargs = master_kwargs(master_url)
    sentinel_kwargs = {
        "socket_connect_timeout": SENTINEL_TIMEOUT,
        "socket_timeout": SENTINEL_TIMEOUT,
        **(sentinel_kwargs or {}),
    }
    manager = Sentinel(list(sentinels), sentinel_kwargs=sentinel_kwargs)
    return BlockingSentinelConnectionPool(
        service_name,
        manager,
        max_connections=max_connections,
        timeout=timeout,
        **{**kwargs, **connection_kwargs},
    )


def pool_for(host, *, max_connections, timeout):
    """The pool of a channels_redis-style host entry: ``{"address": url, ...}`` or ``{"sentinels": ..., ...}``."""
    host = dict(host)
    if "sentinels" in host:
        return sentinel_pool(
            host.pop("sentinels"),
            host.pop("master_url"),
            sentinel_kwargs=host.pop("sentinel_kwargs", None),
            max_connections=max_connections,
            timeout=timeout,
            **host,
        )
    return redis.asyncio.BlockingConnectionPool.from_url(
        host.pop("address"), max_connections=max_connections, timeout=timeout, **host
    )


def settings_pool(*, max_connections, timeout, **connection_kwargs):
    """A pool on the Redis of the settings (``REDIS_URL``, through ``REDIS_SENTINELS`` when set)."""
    from django.conf import settings

    from conferencesite import env

    if settings.REDIS_SENTINELS:
        host = env.sentinel_host(settings.REDIS_URL, settings.REDIS_SENTINELS, settings.REDIS_SENTINEL_PASSWORD)
    else:
        host = {"address": settings.REDIS_URL}
    return pool_for({**host, **connection_kwargs}, max_connections=max_connections, timeout=timeout)
