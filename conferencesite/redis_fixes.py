"""redis-py 7.4 looks up its own version on disk for every new connection: cached here, once per process.

``redis.driver_info.DriverInfo.__post_init__`` (added by redis/redis-py#3880)
calls ``redis.utils.get_lib_version()``, which is
``importlib.metadata.version("redis")``: a search of ``sys.path`` and a parse
of the package's METADATA with the ``email`` parser, for every connection a
pool opens. In a connect storm (a thousand pages opening at once, each
socket's Redis commands needing a connection of their own for a moment)
that lookup was over a third of the web process's time (py-spy, in
docs/performance.md, "Connect storm"). The version cannot change while the
process runs, so the first answer is kept.

Checked against the pinned redis-py (another version refuses to start: look
whether it still looks the version up per connection, then update PINNED_REDIS).
"""

import functools

PINNED_REDIS = "7.4.1"


def install():
    import redis
    import redis.utils

    if redis.__version__ != PINNED_REDIS:
        raise RuntimeError(
            f"conferencesite/redis_fixes.py was written for redis-py {PINNED_REDIS}, found {redis.__version__}: "
            "check whether redis.utils.get_lib_version still reads package metadata per connection, "
            "then update PINNED_REDIS"
        )
    if getattr(redis.utils.get_lib_version, "cache_info", None) is None:
        redis.utils.get_lib_version = functools.cache(redis.utils.get_lib_version)
