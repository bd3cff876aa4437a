"""``/healthz`` and ``/readyz``: for nginx, systemd, load balancers and monitoring. Small JSON, no secrets.

``/healthz`` says the process answers (no database, no Redis): restart it
when this fails. ``/readyz`` says whether this web process can serve: its
database and its channel layer each answer within CHECK_SECONDS (503
otherwise: take it out of the pool, do not restart it). It also reports each
enabled Asterisk server's link as its worker last wrote it (up or down, and
whether that word is fresh: a heartbeat within LINK_FRESH_SECONDS) without
failing on it: with Asterisk down the pages still load and say so, which is
what they must do.

Both answer anonymous requests and are exempt from the HTTPS redirect (a
load balancer probes the backend over plain HTTP); the Host header must
still be one of ``DJANGO_ALLOWED_HOSTS``.
"""

import asyncio
import logging
import time

from channels.layers import get_channel_layer
from django.db import connection
from django.http import JsonResponse
from django.utils import timezone

from conferences import dbthreads

logger = logging.getLogger(__name__)

CHECK_SECONDS = 3.0
# A link whose worker wrote no heartbeat for this long is reported as not fresh: three of the
# worker's heartbeats (conferences/ari/worker.py, HEARTBEAT_EVERY; a test keeps them in step).
LINK_FRESH_SECONDS = 15.0


def _no_store(response):
    response["Cache-Control"] = "no-store"
    return response


async def healthz(request):
    return _no_store(JsonResponse({"status": "ok"}))


def _database_and_servers():
    """One short hop: the database answers, and the enabled servers' links as their workers wrote them."""
    from conferences.models import AsteriskServer

    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    now = timezone.now()
    servers = []
    for name, connected, last_seen in (
        AsteriskServer.objects.filter(enabled=True).order_by("name").values_list("name", "connected", "last_seen_at")
    ):
        age = (now - last_seen).total_seconds() if last_seen else None
        servers.append(
            {
                "name": name,
                "link": "up" if connected else "down",
                "fresh": age is not None and age <= LINK_FRESH_SECONDS,
                "seconds_since_heartbeat": round(age, 1) if age is not None else None,
            }
        )
    return servers


async def _channel_layer_answers():
    """A message sent to a channel of this process's own and read back."""
    layer = get_channel_layer()
    if layer is None:
        return
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "health.check", "at": time.time()})
    await layer.receive(channel)


async def _check(name, coroutine):
    try:
        return "ok", await asyncio.wait_for(coroutine, CHECK_SECONDS)
    except Exception as exc:  # noqa: BLE001 (any failure is "not ready"; the details go to the log only)
        logger.warning("readyz: %s: %s: %s", name, exc.__class__.__name__, exc)
        return "error", None


async def readyz(request):
    (database, servers), (layer, _) = await asyncio.gather(
        _check("database", dbthreads.web("health").call(_database_and_servers)),
        _check("channel layer", _channel_layer_answers()),
    )
    ready = database == "ok" and layer == "ok"
    body = {
        "status": "ready" if ready else "not ready",
        "checks": {"database": database, "channel_layer": layer},
        "servers": servers,
    }
    return _no_store(JsonResponse(body, status=200 if ready else 503))


async def metrics(request):
    """This process's Prometheus metrics (conferences/metrics.py), for a scraper holding ``METRICS_TOKEN``.

    Without a token configured the path does not exist (404); a request
    without the right ``Authorization: Bearer`` header gets 401.
    """
    from django.conf import settings
    from django.http import Http404, HttpResponse
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    from conferences import metrics as product_metrics

    token = settings.METRICS_TOKEN
    if not token:
        raise Http404
    if not product_metrics.token_matches(request.headers.get("Authorization"), token):
        response = HttpResponse("a bearer token is needed\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return _no_store(response)
    return _no_store(HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST))
