"""/healthz and /readyz (conferencesite/health.py): what a load balancer and monitoring see."""

import json

import pytest
from asgiref.sync import sync_to_async
from django.db import OperationalError
from django.utils import timezone

from conferencesite import health

pytestmark = pytest.mark.django_db(transaction=True)


async def get(async_client, path):
    response = await async_client.get(path)
    return response.status_code, json.loads(response.content), response


async def test_healthz_answers_without_the_database_or_the_layer(async_client, monkeypatch):
    monkeypatch.setattr(health, "_database_and_servers", None)  # never called
    status, body, response = await get(async_client, "/healthz")
    assert (status, body) == (200, {"status": "ok"})
    assert response["Cache-Control"] == "no-store" and response["Content-Type"] == "application/json"


async def test_readyz_reports_the_checks_and_every_enabled_servers_link_without_secrets(async_client, make_server):
    now = timezone.now()
    await sync_to_async(make_server)("pbx-up", connected=True, last_seen_at=now)
    await sync_to_async(make_server)("pbx-stale", connected=True, last_seen_at=now - timezone.timedelta(seconds=60))
    await sync_to_async(make_server)("pbx-down", connected=False, last_seen_at=None)
    await sync_to_async(make_server)("pbx-off", enabled=False, connected=True, last_seen_at=now)
    status, body, response = await get(async_client, "/readyz")
    assert status == 200, body
    assert body["status"] == "ready" and body["checks"] == {"database": "ok", "channel_layer": "ok"}
    servers = {s["name"]: s for s in body["servers"]}
    assert set(servers) == {"pbx-up", "pbx-stale", "pbx-down"}  # the disabled one is not reported
    assert (servers["pbx-up"]["link"], servers["pbx-up"]["fresh"]) == ("up", True)
    assert (servers["pbx-stale"]["link"], servers["pbx-stale"]["fresh"]) == ("up", False)
    assert servers["pbx-stale"]["seconds_since_heartbeat"] >= 59
    assert servers["pbx-down"] == {"name": "pbx-down", "link": "down", "fresh": False, "seconds_since_heartbeat": None}
    text = response.content.decode()
    for secret in ("s3cret-ari-password", "conference", "http://", "8088"):
        assert secret not in text
    assert response["Cache-Control"] == "no-store"


async def test_asterisk_down_everywhere_is_still_ready(async_client, make_server):
    """Pages that say "Asterisk down" must keep being served: a down link never fails /readyz."""
    await sync_to_async(make_server)("pbx", connected=False)
    status, body, _ = await get(async_client, "/readyz")
    assert status == 200 and body["servers"][0]["link"] == "down"


async def test_readyz_fails_when_the_database_fails_and_says_nothing_more(async_client, monkeypatch, caplog):
    def down():
        raise OperationalError('could not connect to server: password "hunter2" rejected')

    monkeypatch.setattr(health, "_database_and_servers", down)
    status, body, response = await get(async_client, "/readyz")
    assert status == 503
    assert body == {"status": "not ready", "checks": {"database": "error", "channel_layer": "ok"}, "servers": None}
    assert "hunter2" not in response.content.decode() and "hunter2" in caplog.text  # the log says why


async def test_readyz_gives_up_on_a_database_that_hangs(async_client, monkeypatch):
    import time

    monkeypatch.setattr(health, "CHECK_SECONDS", 0.3)
    monkeypatch.setattr(health, "_database_and_servers", lambda: time.sleep(1.0))
    started = time.monotonic()
    status, body, _ = await get(async_client, "/readyz")
    assert status == 503 and body["checks"]["database"] == "error"
    assert time.monotonic() - started < 0.9


@pytest.mark.integration
async def test_readyz_on_the_redis_layer_and_when_redis_is_gone(async_client, redis_layer, settings, monkeypatch):
    from channels.layers import channel_layers

    from conferencesite.env import channel_layers_for

    status, body, _ = await get(async_client, "/readyz")
    assert status == 200 and body["checks"]["channel_layer"] == "ok"
    assert not any(redis_layer.receive_buffer.values())  # the check's message was read back
    # A Redis that does not answer (nothing listens on this port).
    monkeypatch.setattr(health, "CHECK_SECONDS", 1.0)
    settings.CHANNEL_LAYERS = channel_layers_for("redis://127.0.0.1:1/0")
    channel_layers.backends.clear()
    status, body, _ = await get(async_client, "/readyz")
    assert status == 503 and body["checks"] == {"database": "ok", "channel_layer": "error"}


def test_a_link_is_fresh_for_three_worker_heartbeats():
    from conferences.ari.worker import HEARTBEAT_EVERY

    assert health.LINK_FRESH_SECONDS == 3 * HEARTBEAT_EVERY


def test_behind_https_the_probes_answer_plain_http_and_pages_redirect(tmp_path):
    """With DJANGO_HTTPS=True every plain-HTTP request is redirected to HTTPS, except the probes."""
    from tests.stack import run_manage

    code = (
        "from django.test import Client; c = Client(); "
        "print(c.get('/healthz').status_code, c.get('/accounts/login/').status_code, c.get('/healthz/').status_code)"
    )
    result = run_manage(
        "shell",
        "-c",
        code,
        DJANGO_HTTPS="True",
        DJANGO_ALLOWED_HOSTS="testserver",
        DJANGO_TRUSTED_PROXIES="127.0.0.1",
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-3:] == ["200", "301", "301"]
