"""Database threads that do not serialise a whole process: the worker's rooms and the web's sockets.

A worker (conferences/ari/worker.py) and every web process (conferences/consumers.py,
``web()``) each have one pool. Functions run in a pool thread as they are;
whatever they broadcast is sent by their caller.
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import sync_to_async
from django.db import InterfaceError, OperationalError, connections

TRANSIENT_DB_ERRORS = (OperationalError, InterfaceError)
# Threads of one pool on PostgreSQL: rooms whose events are handled at the same time
# (conferences/ari/lanes.py), or sockets connecting at the same time, do their
# database work at the same time too.
DB_THREADS = 4
# A connection idle for longer is checked before use (a database restart, or a
# server-side idle timeout, may have closed it meanwhile), as Django's
# CONN_HEALTH_CHECKS does for requests.
IDLE_CHECK_SECONDS = 30.0

_used = threading.local()


def _check_idle_connection():
    connection = connections["default"]
    last = getattr(_used, "at", None)
    if connection.connection is None or last is None or time.monotonic() - last < IDLE_CHECK_SECONDS:
        return
    if not connection.is_usable():
        connection.close()


class DatabaseThreads:
    """A pool of database threads, each keeping its connection open between hops.

    Channels' ``database_sync_to_async`` runs every call in one thread per
    process (thread-sensitive) and closes the connection after each call when
    ``CONN_MAX_AGE`` is 0, the default: every socket of a web process, or
    every room of a worker, would wait for the others' database work, and
    each hop would open a new PostgreSQL connection. Here each of the
    ``threads`` keeps its connection; one that broke (the database restarted)
    is closed after the error, and the next hop in that thread connects
    afresh (the caller sees the error: the worker retries the event, a socket
    answers "try again").
    """

    def __init__(self, threads=None, name="db"):
        # SQLite (the embedded default) takes one writer at a time: more threads would only
        # wait for each other's locks. Correct either way; one thread there.
        sqlite = connections["default"].vendor == "sqlite"
        self.threads = 1 if sqlite else (threads or DB_THREADS)
        self.executor = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix=name)

    async def run(self, func):
        def call():
            _check_idle_connection()
            try:
                return func()
            except TRANSIENT_DB_ERRORS:
                connections["default"].close()  # the next hop in this thread connects afresh
                raise
            finally:
                _used.at = time.monotonic()

        return await sync_to_async(call, thread_sensitive=False, executor=self.executor)()

    async def call(self, func, /, *args, **kwargs):
        """``func(*args, **kwargs)`` in a pool thread."""
        return await self.run(lambda: func(*args, **kwargs))

    def close(self):
        """Close every thread's connection, then the threads (a test database can then be dropped)."""
        barrier = threading.Barrier(self.threads, timeout=10)

        def close_here():
            connections.close_all()
            try:
                barrier.wait()  # one call per thread: each waits until all threads took one
            except threading.BrokenBarrierError:
                pass

        for future in [self.executor.submit(close_here) for _ in range(self.threads)]:
            future.result(timeout=15)
        self.executor.shutdown(wait=True)


# The web process's pools: "sockets" for each socket's own hops (its handshake check, its
# periodic checks, moderator actions), "snapshots" for the room hub's reads of room state,
# which many sockets wait for: they do not queue behind a storm of handshake checks.
# "health": /readyz's check (a database that hangs holds that thread, not a socket's). "actions": the checks
# of moderators' clicks, which a reconnect storm's handshake checks must not hold up, and which come in
# bursts of their own (every moderator of a busy PBX at once; bench/busy.py).
WEB_POOLS = {"sockets": 2, "snapshots": 1, "health": 1, "actions": 4}
_web = {}
_web_lock = threading.Lock()


def web(purpose="sockets"):
    """A pool of the web process (created on first use): ``"sockets"``, ``"snapshots"``, ``"health"`` or
    ``"actions"``."""
    pool = _web.get(purpose)
    if pool is None:
        with _web_lock:
            pool = _web.get(purpose)
            if pool is None:
                pool = _web[purpose] = DatabaseThreads(WEB_POOLS[purpose], name=f"web-db-{purpose}")
    return pool


def close_web():
    """Close the web pools' connections and threads (tests, before their database is dropped)."""
    with _web_lock:
        pools = list(_web.values())
        _web.clear()
    for pool in pools:
        pool.close()
