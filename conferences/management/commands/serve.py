"""Serve the site with uvicorn; in the embedded mode also run the ARI worker in this process.

uvicorn (its ``websockets-sansio`` implementation, httptools, uvloop) is
the product's ASGI server, chosen by measurement (docs/performance.md, "ASGI
servers": the best fan-out at 1,000 pages, the fastest connect storm and the
least CPU per frame of the servers measured). The
settings that matter for the product live here, so that ``make run``, the
systemd unit and the tests run the same server the same way:

- no proxy headers: the client address comes only from the proxies in
  ``DJANGO_TRUSTED_PROXIES`` (conferences/client_address.py);
- a browser message over 1 MiB closes its socket (1009), as daphne did; the
  consumers answer frames over ``frames.MAX_FRAME_BYTES`` (4 KiB) with an error;
- the outbound limit (1 MiB waiting for a client that does not read) is the
  consumers' own (conferences/consumers.py, ``FanOutConsumer``), not the
  server's; a dead client is found by pings (20 s, 20 s to answer); a client
  that does not read is dropped (conferencesite/uvicorn_limits.py: uvicorn
  would keep it);
- a listen backlog of 2,048, so that a thousand pages reconnecting at once
  are queued by the kernel rather than refused;
- no ``Server`` header; access logs off (the reverse proxy keeps them).

With no REDIS_URL the channel layer lives in this process's memory, so the
worker must live here too: this command runs one worker per enabled Asterisk
server on the server's event loop, following the admin live
(conferences/ari/supervisor.py), and stops them cleanly before the server.
It runs the webhook sender (conferences/webhooks.py) there as well, so the
one-process start sends webhooks with no further step, and, with LDAP_SERVER_URI
set, the directory sync (conferences/directory.py).
"""

import asyncio
import logging
import re
import warnings

import uvicorn
from django.apps import apps
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from conferences import checks, directory, webhooks
from conferences.ari.supervisor import WorkerSupervisor
from conferences.models import AsteriskServer
from conferencesite import uvicorn_limits
from conferencesite.startup import on_process_start

logger = logging.getLogger(__name__)

DEFAULT_ADDRESS = "127.0.0.1:8000"
BACKLOG = 2048
MAX_MESSAGE_BYTES = 1024 * 1024
PING_SECONDS = 20.0
GRACEFUL_SHUTDOWN_SECONDS = 10
WORKER_STOP_SECONDS = 12

# uvicorn 0.54 warns that its legacy `websockets` implementation (``--ws websockets``, kept for
# measuring) is deprecated; the product's default is the sans-I/O one.
warnings.filterwarnings("ignore", message="The `websockets` implementation is deprecated")

_ADDRESS = re.compile(r"^(?:(?P<host>\[[0-9a-fA-F:.]+\]|[^:\[\]]+):)?(?P<port>\d{1,5})$")


def parse_address(value):
    """``(host, port)`` of ``host:port``, ``[ipv6]:port`` or ``port`` (on 127.0.0.1)."""
    match = _ADDRESS.match(value or "")
    if match is None or not 0 < int(match["port"]) < 65536:
        raise CommandError(f'"{value}" is not an address and port, such as 127.0.0.1:8000 or [::1]:8000')
    host = (match["host"] or "127.0.0.1").strip("[]")
    return host, int(match["port"])


def ws_protocol(name):
    """uvicorn's WebSocket implementation by name; the sans-I/O one with the product's fix."""
    if name == "websockets-sansio":
        uvicorn_limits.check_version()
        return uvicorn_limits.WebSocketProtocol
    return name


def uvicorn_config(app, host, port, **overrides):
    """The product's uvicorn settings (see the module)."""
    options = {
        "host": host,
        "port": port,
        "ws": ws_protocol("websockets-sansio"),
        "ws_max_size": MAX_MESSAGE_BYTES,
        "ws_ping_interval": PING_SECONDS,
        "ws_ping_timeout": PING_SECONDS,
        "ws_per_message_deflate": False,
        "proxy_headers": False,
        "server_header": False,
        "access_log": False,
        "log_config": None,  # Django's LOGGING (conferencesite/settings.py) stays in force
        "lifespan": "off",
        "backlog": BACKLOG,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_SECONDS,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)


class EmbeddedWorkerServer(uvicorn.Server):
    """A uvicorn server that runs the ARI workers of the enabled servers on its own event loop.

    The workers follow the admin live (conferences/ari/supervisor.py): a server
    added, disabled, re-enabled or edited is started, stopped or restarted
    within seconds, without restarting the site.
    """

    def __init__(self, config, *, embedded):
        super().__init__(config)
        self.embedded = embedded
        self._stopping = None
        self._supervisor = None
        self._webhooks = None
        self._directory = None

    async def startup(self, sockets=None):
        await super().startup(sockets=sockets)
        if self.embedded:
            self._stopping = asyncio.Event()
            self._supervisor = asyncio.ensure_future(WorkerSupervisor(stopping=self._stopping).run())
            # The webhook sender too (its own unit in production): its database work on a thread of its own.
            self._webhooks = asyncio.ensure_future(webhooks.Sender(stopping=self._stopping).run())
            if settings.LDAP_ENABLED:
                # The directory sync too (its own unit in production): groups and disabled accounts
                # followed every LDAP_SYNC_MINUTES (conferences/directory.py).
                self._directory = asyncio.ensure_future(
                    directory.run_sync_loop_async(minutes=settings.LDAP_SYNC_MINUTES, stopping=self._stopping)
                )

    async def shutdown(self, sockets=None):
        # The workers first: they say goodbye to Asterisk while the channel layer is still there.
        if self._stopping is not None:
            self._stopping.set()
            tasks = [task for task in (self._supervisor, self._webhooks, self._directory) if task is not None]
            done, _ = await asyncio.wait(tasks, timeout=WORKER_STOP_SECONDS + 2)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    logger.error("embedded workers ended: %r", task.exception())
        await super().shutdown(sockets=sockets)


class Command(BaseCommand):
    help = (
        "Serve the site (uvicorn). Without REDIS_URL, also runs the ARI worker of every enabled "
        "Asterisk server in this process (the embedded mode)."
    )

    def add_arguments(self, parser):
        parser.add_argument("addrport", nargs="?", default=DEFAULT_ADDRESS, help="host:port (default 127.0.0.1:8000)")
        parser.add_argument(
            "--insecure",
            action="store_true",
            dest="insecure_serving",
            help="Serve static files even if DEBUG is False (the embedded mode; behind nginx, nginx serves them).",
        )
        parser.add_argument(
            "--nostatic", action="store_false", dest="use_static_handler", help="Never serve static files."
        )
        parser.add_argument(
            "--ws",
            choices=("websockets", "websockets-sansio"),
            default="websockets-sansio",
            help="uvicorn's WebSocket implementation (bench/web.py measures both; websockets-sansio is the default).",
        )
        group = parser.add_mutually_exclusive_group()
        group.add_argument("--worker", dest="worker", action="store_true", default=None, help="Always run workers.")
        group.add_argument("--no-worker", dest="worker", action="store_false", help="Never run workers here.")

    def handle(self, *args, **options):
        host, port = parse_address(options["addrport"])
        embedded = options["worker"] if options["worker"] is not None else not settings.REDIS_URL
        checks.set_process_role("embedded" if embedded else "web")
        on_process_start()
        from conferencesite.asgi import application

        app = application
        static = options["use_static_handler"] and apps.is_installed("django.contrib.staticfiles")
        if static and (settings.DEBUG or options["insecure_serving"]):
            from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

            app = ASGIStaticFilesHandler(application)
        if embedded:
            names = ", ".join(AsteriskServer.objects.filter(enabled=True).values_list("name", flat=True))
            self.stdout.write(
                f"Embedded ARI worker for: {names or 'none configured yet'} (servers added later start too)"
            )
        shown = f"[{host}]" if ":" in host else host
        self.stdout.write(f"Serving on http://{shown}:{port}/ (uvicorn {uvicorn.__version__})")
        self.stdout.flush()
        connections.close_all()  # the event loop's thread does no ORM work; threads open their own
        EmbeddedWorkerServer(uvicorn_config(app, host, port, ws=ws_protocol(options["ws"])), embedded=embedded).run()
