"""`manage.py purge_recordings`: delete recordings past their room's retention (the worker also does it daily)."""

from django.core.management.base import BaseCommand

from conferences import services


class Command(BaseCommand):
    help = "Delete the files of recordings older than their room's retention (record_retention_days)."

    def handle(self, *args, **options):
        purged = services.purge_recordings()
        self.stdout.write(f"{purged} recording(s) deleted after their retention")
