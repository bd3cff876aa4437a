"""Serve the site with daphne; in the embedded mode also run the ARI worker in this process.

With no REDIS_URL the channel layer lives in this process's memory, so the
worker must live here too: this command starts one worker per enabled Asterisk
server on daphne's event loop and stops them cleanly with the server.
"""

import asyncio
import logging

from daphne.management.commands.runserver import Command as DaphneRunserver
from daphne.server import Server
from django.conf import settings

from conferences import checks
from conferences.ari.worker import AriWorker
from conferences.models import AsteriskServer
from conferencesite.startup import on_process_start

logger = logging.getLogger(__name__)


class EmbeddedWorkerServer(Server):
    """A daphne server that runs ARI workers on its own event loop."""

    servers = ()

    def run(self):
        from twisted.internet import defer, reactor

        self._stopping = None
        self._tasks = []
        reactor.callWhenRunning(self._start_workers)
        reactor.addSystemEventTrigger(
            "before", "shutdown", lambda: defer.Deferred.fromFuture(asyncio.ensure_future(self._stop_workers()))
        )
        super().run()

    def _start_workers(self):
        self._stopping = asyncio.Event()
        for server in self.servers:
            worker = AriWorker(server, stopping=self._stopping)
            task = asyncio.ensure_future(worker.run())
            task.add_done_callback(lambda t, name=server.name: _report(name, t))
            self._tasks.append(task)

    async def _stop_workers(self):
        if self._stopping is not None:
            self._stopping.set()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=12)


def _report(name, task):
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        logger.error("server %s: embedded worker ended: %s", name, exc)


class Command(DaphneRunserver):
    help = (
        "Serve the site (daphne). Without REDIS_URL, also runs the ARI worker of every enabled "
        "Asterisk server in this process (the embedded mode)."
    )

    def add_arguments(self, parser):
        super().add_arguments(parser)
        group = parser.add_mutually_exclusive_group()
        group.add_argument("--worker", dest="worker", action="store_true", default=None, help="Always run workers.")
        group.add_argument("--no-worker", dest="worker", action="store_false", help="Never run workers here.")

    def handle(self, *args, **options):
        options["use_reloader"] = False  # one process: the workers must not run twice
        embedded = options["worker"] if options["worker"] is not None else not settings.REDIS_URL
        checks.set_process_role("embedded" if embedded else "web")
        on_process_start()
        EmbeddedWorkerServer.servers = list(AsteriskServer.objects.filter(enabled=True)) if embedded else []
        if embedded:
            names = ", ".join(server.name for server in EmbeddedWorkerServer.servers) or "none configured yet"
            self.stdout.write(f"Embedded ARI worker for: {names}")
        self.server_cls = EmbeddedWorkerServer
        super().handle(*args, **options)
