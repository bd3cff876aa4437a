import asyncio
import signal
import sys
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS, connections
from django.utils import timezone

from conferences import checks
from conferences.ari import lease
from conferences.ari.worker import AriWorker, WorkerConflict
from conferences.models import AsteriskServer
from conferencesite.startup import on_process_start

# How old the last confirmation of the link may be for --check to call it healthy.
FRESH_SECONDS = 30
# Exit status when another ARI client took the application: a supervisor should
# not restart into a fight (systemd: RestartPreventExitStatus=3).
EXIT_REPLACED = 3


def keep_database_connection():
    """Keep the worker's database connection open between calls (health-checked before reuse).

    All of the worker's database calls run in one thread of its own, so one
    persistent connection serves them; with Django's default (a new connection
    for every call) each event paid for a connection set-up before its
    broadcast. Web processes keep the default: under ASGI their threads come
    and go.
    """
    settings = connections.settings[DEFAULT_DB_ALIAS]
    settings["CONN_MAX_AGE"] = None
    settings["CONN_HEALTH_CHECKS"] = True
    if settings["ENGINE"].endswith("postgresql"):
        # A worker frozen inside a transaction must not hold its locks (and the standby) for ever:
        # PostgreSQL ends such a session (conferences/ari/lease.py).
        options = settings.setdefault("OPTIONS", {})
        extra = f"-c idle_in_transaction_session_timeout={lease.IDLE_IN_TRANSACTION_MS}"
        options["options"] = f"{options.get('options', '')} {extra}".strip()


class Command(BaseCommand):
    help = "Keep the ARI link to Asterisk and run the conference rooms (one worker per server)."

    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--server", default="default", help="Asterisk server name (default: %(default)s)")
        parser.add_argument(
            "--all",
            action="store_true",
            help="Run every enabled server in this process, following the admin: servers added, disabled or "
            "edited later are started, stopped or restarted within seconds.",
        )
        parser.add_argument(
            "--check",
            action="store_true",
            help=f"Report whether the link is up and confirmed in the last {FRESH_SECONDS} s; exit 0 if so.",
        )
        parser.add_argument(
            "--standby",
            action="store_true",
            help="Wait while another worker holds the server's lease, and take over when it lapses "
            "(at once when that worker's process on this host is gone; else within the lease's 20 s).",
        )
        parser.add_argument(
            "--metrics",
            metavar="ADDRESS",
            help="Serve Prometheus metrics over plain HTTP at host:port (loopback or a monitoring network only).",
        )

    def handle(self, *args, server, all, check, metrics=None, standby=False, **options):
        if check:
            return self.health(server, all)
        if metrics:
            self.serve_metrics(metrics)
        checks.set_process_role("worker")
        self.check(display_num_errors=False, fail_level=40)  # errors (e.g. E003) stop the worker here
        keep_database_connection()
        on_process_start()
        if all:
            asyncio.run(self.run_supervisor())
            return
        servers = self.servers(server)
        code = asyncio.run(self.run_workers(servers, standby=standby))
        if code:
            sys.exit(code)

    def serve_metrics(self, address):
        """prometheus_client's own listener, in a thread of its own (the event loop never serves a scrape)."""
        from prometheus_client import start_http_server

        from conferences.management.commands.serve import parse_address

        host, port = parse_address(address)
        try:
            start_http_server(port, addr=host)
        except OSError as exc:
            raise CommandError(f"cannot serve metrics on {address}: {exc.strerror or exc}") from exc
        self.stdout.write(f"Metrics on http://{host}:{port}/metrics")

    def servers(self, name):
        server = AsteriskServer.objects.filter(name=name).first()
        if server is None:
            raise CommandError(f"No Asterisk server named {name!r}: add it in the admin or set ARI_URL.")
        if not server.enabled:
            raise CommandError(f"Asterisk server {name!r} is disabled in the admin.")
        return [server]

    async def run_supervisor(self):
        """``--all``: a worker for every enabled server, following the admin live (conferences/ari/supervisor.py)."""
        from conferences.ari.supervisor import WorkerSupervisor

        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        names = await asyncio.to_thread(
            lambda: list(AsteriskServer.objects.filter(enabled=True).values_list("name", flat=True))
        )
        self.stdout.write(f"Workers for: {', '.join(names) or 'no enabled server yet'} (servers added later start too)")
        self.stdout.flush()
        await WorkerSupervisor(stopping=stopping).run()

    async def run_workers(self, servers, *, standby=False):
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        workers = [AriWorker(server, stopping=stopping, standby=standby) for server in servers]
        results = await asyncio.gather(*(worker.run() for worker in workers), return_exceptions=True)
        code = 0
        for worker, result in zip(workers, results, strict=True):
            if isinstance(result, WorkerConflict):
                self.stderr.write(f"Refusing to start: {result}")
                code = code or 2
            elif isinstance(result, BaseException):
                self.stderr.write(f"Worker for {worker.server.name} failed: {result!r}")
                code = code or 1
            elif worker.lost_lease:
                code = code or 2  # a standby took over: restarted, this one becomes the standby
            elif worker.replaced:
                self.stderr.write(
                    f"Stopped: another client took ARI application {worker.server.app_name!r} "
                    f"on server {worker.server.name!r}."
                )
                code = EXIT_REPLACED
            stopping.set()
        return code

    def health(self, name, all_servers):
        servers = AsteriskServer.objects.filter(enabled=True)
        servers = list(servers if all_servers else servers.filter(name=name))
        if not servers:
            raise CommandError(f"No Asterisk server named {name!r}.")
        fresh_after = timezone.now() - timedelta(seconds=FRESH_SECONDS)
        healthy = True
        for server in servers:
            fresh = server.last_seen_at is not None and server.last_seen_at >= fresh_after
            ok = server.connected and fresh
            healthy &= ok
            state = "ok" if ok else "DOWN"
            detail = (
                f"connected since {server.status_since:%Y-%m-%d %H:%M:%S}"
                if ok
                else (server.last_error or ("link not confirmed lately" if server.connected else "not connected"))
            )
            self.stdout.write(f"{server.name}: {state} ({detail})")
        if not healthy:
            sys.exit(1)
