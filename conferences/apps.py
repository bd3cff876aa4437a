from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class ConferencesConfig(AppConfig):
    name = "conferences"
    verbose_name = _("Conferences")

    def ready(self):
        from django.db.models.signals import post_migrate

        from conferences import auth_backends, checks, signals  # noqa: F401  (register the checks and receivers)
        from conferencesite import redis_fixes

        redis_fixes.install()

        post_migrate.connect(_sync_default_server, sender=self)


def _sync_default_server(sender, using, **kwargs):
    """After ``migrate``, the ``default`` server reflects ARI_URL like at every start."""
    from conferences.models import AsteriskServer

    AsteriskServer.objects.using(using).sync_default_from_settings()
