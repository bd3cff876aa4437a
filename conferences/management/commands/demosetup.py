"""`make demo`'s data: the sandbox server, three rooms (one with a lobby) and a demo account (its password
printed on every run)."""

import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils.translation import gettext as _

from conferences.models import AsteriskServer, Conference, Sound

# Invites dial the sandbox's test far ends (deploy/asterisk/extensions.conf, [test-invitees]): 7001
# answers and talks, 7002 is busy, 7003 congested, 7004 rings and never answers, 7005 answers and hangs up.
DEMO_DIAL_TEMPLATE, DEMO_INVITE_PATTERN = "Local/{number}@test-invitees", "7[0-9]{3}"
SOUNDS = (("welcome", "Welcome", "conf-placeintoconf"), ("alone", "You are alone", "conf-onlyperson"))

ROOMS = (
    ("100", "daily", "Daily stand-up", {}),
    ("200", "support", "Support line", {}),
    ("300", "board", "Board meeting", {"lobby": True}),  # its callers wait for the demo user to admit them
)


class Command(BaseCommand):
    help = "Set up the demo: the ARI_URL server, rooms 100, 200 and 300 (lobby), and a 'demo' superuser."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="demo")
        parser.add_argument("--url", default="http://127.0.0.1:8000", help="where the site is served (printed)")

    @transaction.atomic
    def handle(self, *args, username, url, **options):
        server = AsteriskServer.objects.sync_default_from_settings()
        if server is None:
            raise CommandError("ARI_URL is not set: the demo needs the sandbox Asterisk (scripts/demo sets it).")
        server.dial_template, server.invite_pattern = DEMO_DIAL_TEMPLATE, DEMO_INVITE_PATTERN
        server.save(update_fields=["dial_template", "invite_pattern"])
        for name, label, sound in SOUNDS:
            Sound.objects.get_or_create(server=server, name=name, defaults={"label": label, "sound": sound})
        for number, slug, name, settings in ROOMS:
            room = Conference.objects.filter(server=server, number=number).first()
            if room is None:
                Conference.objects.create(server=server, number=number, slug=slug, name=name, **settings)
        User = get_user_model()
        password = secrets.token_urlsafe(9)
        user = User.objects.filter(username=username).first() or User(username=username)
        user.is_staff = user.is_superuser = user.is_active = True
        user.set_password(password)
        user.save()
        lines = [
            "",
            _("The demo is ready: simulated callers come, go and talk in three rooms."),
            _("In the Board meeting they wait in its lobby until you admit them."),
            _("Invite 7001 (answers), 7002 (busy), 7004 (never answers) from a room's page."),
            _("Open %(url)s/ and log in:") % {"url": url.rstrip("/")},
            f"    username: {username}",
            f"    password: {password}",
            _("(a new password on every start; Ctrl-C stops the demo)"),
            "",
        ]
        self.stdout.write(self.style.SUCCESS("\n".join(lines)))
