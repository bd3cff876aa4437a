"""Bring the directory accounts in line with LDAP / Active Directory (conferences/directory.py).

Once: ``manage.py ldap_sync`` (exit 1, nothing changed, when the directory cannot be read). With
``--loop`` it syncs every LDAP_SYNC_MINUTES until SIGTERM or SIGINT: its own process in production
(deploy/systemd/conference-ldap-sync.service), beside the web processes and the worker, so that
a member removed from a group, or an account disabled in the directory, loses access within
that period even while logged in. Several may run at once: each change is an ordinary idempotent
write.
"""

import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from conferences import directory


class Command(BaseCommand):
    help = "Re-read every directory account's groups and state from LDAP; --loop repeats every LDAP_SYNC_MINUTES."

    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--loop", action="store_true", help="sync every LDAP_SYNC_MINUTES until SIGTERM")
        parser.add_argument(
            "--allow-mass-disable",
            action="store_true",
            help="disable the accounts even when most of them are gone from the directory (once, by hand)",
        )

    def handle(self, *args, loop=False, allow_mass_disable=False, **options):
        self.check(display_num_errors=False, fail_level=40)
        if not settings.LDAP_ENABLED:
            raise CommandError("LDAP_SERVER_URI is not set: there is no directory to sync with.")
        if loop and allow_mass_disable:
            raise CommandError("--allow-mass-disable is for one sync by hand, not for --loop.")
        if loop:
            self.loop()
            return
        try:
            report = directory.sync_directory(allow_mass_disable=allow_mass_disable)
        except directory.DirectoryUnavailable as exc:
            raise CommandError(f"the directory could not be read, nothing was changed: {exc}") from exc
        self.stdout.write(
            f"{report.checked} directory account(s) checked; changed: {', '.join(report.changed) or 'none'}; "
            f"disabled: {', '.join(report.disabled) or 'none'}"
        )

    def loop(self):
        stopping = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stopping.set())
        minutes = settings.LDAP_SYNC_MINUTES
        self.stdout.write(f"Syncing with the directory every {minutes} min (SIGTERM stops)")
        self.stdout.flush()
        directory.run_sync_loop(minutes=minutes, stopping=stopping)
