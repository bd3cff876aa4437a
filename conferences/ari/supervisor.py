"""One worker per enabled server, following the admin live: started, stopped or restarted within seconds.

Used by the embedded ``manage.py serve`` and by ``ari_worker --all``. Every
POLL_SECONDS (and at once when a server is saved or deleted in this process)
the supervisor reads the enabled servers and compares each with the worker
it runs:

- a server added or enabled gets a worker;
- a server disabled or deleted has its worker stopped (cleanly: the lease
  given back, the link recorded as down);
- a server whose connection settings changed (name, ARI URL, username,
  password, application) has its worker stopped and a new one started with
  the new settings.

A worker that ended on its own is not restarted in a loop: after another
worker held the lease or a failure, it is tried again after RETRY_SECONDS;
after another ARI client took the application ("replaced"), only once the
server's settings change (fighting over the application would make both
drop their events). A database that cannot be read keeps the workers as
they are until it can.
"""

import asyncio
import contextlib
import logging

from django.db.models.signals import post_delete, post_save

from conferences.dbthreads import TRANSIENT_DB_ERRORS, DatabaseThreads

logger = logging.getLogger(__name__)

POLL_SECONDS = 2.0
RETRY_SECONDS = 30.0
STOP_SECONDS = 12.0
# Saves that only record a worker's own status (link, heartbeat, lease) change nothing here.
STATUS_FIELDS = frozenset(
    {"connected", "last_seen_at", "status_since", "last_error", "worker_owner", "worker_lease_until"}
)


def settings_of(server):
    """What a worker is built from: a change means a new worker."""
    return (server.name, server.ari_url, server.username, server.password, server.app_name)


def enabled_servers():
    from conferences.models import AsteriskServer

    return {server.pk: server for server in AsteriskServer.objects.filter(enabled=True)}


class Running:
    def __init__(self, server, worker, task, stopping):
        self.server, self.worker, self.task, self.stopping = server, worker, task, stopping
        self.settings = settings_of(server)


class WorkerSupervisor:
    def __init__(self, *, stopping, worker_factory=None, read=None, poll=POLL_SECONDS, retry=RETRY_SECONDS):
        if worker_factory is None:
            from conferences.ari.worker import AriWorker

            worker_factory = AriWorker
        self.stopping = stopping
        self.worker_factory = worker_factory
        self.database = None if read else DatabaseThreads(1, name="supervisor-db")
        self.read = read or (lambda: self.database.call(enabled_servers))
        self.poll, self.retry = poll, retry
        self.running: dict[int, Running] = {}
        self.ended: dict[int, tuple] = {}  # server pk -> (settings, loop time it ended, replaced)
        self.wake = asyncio.Event()
        self.loop = None

    # --- changes made in this process (the embedded admin) ---------------------------------

    def _changed(self, sender, instance=None, update_fields=None, **kwargs):
        if update_fields is not None and set(update_fields) <= STATUS_FIELDS:
            return
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.wake.set)

    def _listen(self, on):
        from conferences.models import AsteriskServer

        uid = f"worker-supervisor-{id(self)}"
        for signal in (post_save, post_delete):
            if on:
                signal.connect(self._changed, sender=AsteriskServer, weak=False, dispatch_uid=uid)
            else:
                signal.disconnect(sender=AsteriskServer, dispatch_uid=uid)

    # --- the loop ------------------------------------------------------------------------

    async def run(self):
        self.loop = asyncio.get_running_loop()
        self._listen(True)
        try:
            while not self.stopping.is_set():
                self.wake.clear()
                try:
                    servers = await self.read()
                except TRANSIENT_DB_ERRORS as exc:
                    logger.warning("workers: cannot read the servers (%s); keeping the workers as they are", exc)
                else:
                    await self.apply(servers)
                await self._sleep()
        finally:
            self._listen(False)
            await self.stop_all()
            if self.database is not None:
                await asyncio.to_thread(self.database.close)

    async def _sleep(self):
        waits = [asyncio.ensure_future(self.stopping.wait()), asyncio.ensure_future(self.wake.wait())]
        try:
            await asyncio.wait(waits, timeout=self.poll, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def apply(self, servers):
        """Make the running workers match ``servers`` (``{pk: AsteriskServer}``, the enabled ones)."""
        for pk, running in list(self.running.items()):
            if running.task.done():
                self._reap(pk, running)
        gone = []
        for pk, running in self.running.items():
            server = servers.get(pk)
            if server is None:
                logger.info("server %s: disabled or deleted in the admin; stopping its worker", running.server.name)
                gone.append(pk)
            elif settings_of(server) != running.settings:
                logger.info("server %s: its settings changed in the admin; restarting its worker", server.name)
                gone.append(pk)
        await asyncio.gather(*(self._stop(pk) for pk in gone))
        now = asyncio.get_running_loop().time()
        for pk, server in servers.items():
            if pk in self.running:
                continue
            ended = self.ended.get(pk)
            if ended is not None:
                settings, at, replaced = ended
                if settings == settings_of(server) and (replaced or now - at < self.retry):
                    continue
            self._start(server)

    def _start(self, server):
        self.ended.pop(server.pk, None)
        stopping = asyncio.Event()
        worker = self.worker_factory(server, stopping=stopping)
        task = asyncio.ensure_future(worker.run())
        self.running[server.pk] = Running(server, worker, task, stopping)
        logger.info("server %s: worker started", server.name)

    def _reap(self, pk, running):
        """A worker that ended on its own: say why, and remember when (see the module)."""
        del self.running[pk]
        replaced = bool(getattr(running.worker, "replaced", False))
        if running.task.cancelled():
            exc = None
        else:
            exc = running.task.exception()
        if replaced:
            logger.error(
                "server %s: another client took ARI application %r; not restarting until its settings change",
                running.server.name,
                running.server.app_name,
            )
        elif exc is not None:
            logger.warning("server %s: worker ended (%s); trying again in %.0f s", running.server.name, exc, self.retry)
        else:
            logger.warning("server %s: worker ended; trying again in %.0f s", running.server.name, self.retry)
        self.ended[pk] = (running.settings, asyncio.get_running_loop().time(), replaced)

    async def _stop(self, pk):
        running = self.running.pop(pk)
        running.stopping.set()
        done, _pending = await asyncio.wait([running.task], timeout=STOP_SECONDS)
        if not done:
            logger.warning("server %s: worker did not stop in %.0f s; cancelling it", running.server.name, STOP_SECONDS)
            running.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await running.task
        elif not running.task.cancelled() and running.task.exception() is not None:
            logger.warning("server %s: worker ended with %r", running.server.name, running.task.exception())

    async def stop_all(self):
        await asyncio.gather(*(self._stop(pk) for pk in list(self.running)))
