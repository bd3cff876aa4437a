"""Post the queued webhook deliveries (conferences/webhooks.py) until SIGTERM or SIGINT.

Its own process in production (deploy/systemd/conference-webhooks.service),
beside the web processes and the worker; in the embedded mode ``manage.py
serve`` runs the same sender in its process. Several senders may run at once
(PostgreSQL): each claims its rows with ``SKIP LOCKED``.
"""

import asyncio
import signal

from django.core.management.base import BaseCommand

from conferences import webhooks


class Command(BaseCommand):
    help = "Send the queued webhook deliveries: signed, retried with backoff, at least once (stops on SIGTERM)."

    requires_system_checks = []

    def handle(self, *args, **options):
        self.check(display_num_errors=False, fail_level=40)
        asyncio.run(self.run())

    async def run(self):
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        self.stdout.write("Sending webhooks (SIGTERM stops)")
        self.stdout.flush()
        await webhooks.Sender(stopping=stopping).run()
