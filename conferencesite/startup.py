"""What every web and worker process does once at start-up."""

import logging

from django.db import DatabaseError

logger = logging.getLogger(__name__)


_done = []


def on_process_start():
    """Create or update the ``default`` Asterisk server from ``ARI_*`` when ARI_URL is set.

    Runs once per process. A database that is not migrated yet is logged, not
    fatal: ``migrate`` runs the same step afterwards.
    """
    from conferences.models import AsteriskServer

    if _done:
        return None
    _done.append(True)
    try:
        server = AsteriskServer.objects.sync_default_from_settings()
    except DatabaseError as exc:
        logger.warning("could not sync the default Asterisk server from ARI_URL: %s", exc)
        return None
    if server is not None:
        logger.info("server %s: ARI settings taken from the environment (%s)", server.name, server.ari_url)
    return server
