"""Prometheus metrics (conferences/metrics.py): guarded, bounded, and moving with what really happens.

The stack test runs a real worker (``ari_worker --metrics``) against the
sandbox Asterisk and a real web process with ``METRICS_TOKEN``; a caller
joins, a page watches and its moderator mutes the caller; then both
processes are scraped. The dashboard test keeps deploy/grafana's queries on
metric names that exist.
"""

import asyncio
import json
import re
from pathlib import Path

import pytest
import requests
from django.contrib.auth.models import User
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from conferences import metrics
from conferences.models import AsteriskServer, Conference, Participant
from tests.live import db
from tests.sandbox import eventually
from tests.stack import Processes, base_env, database_url, free_port, make_sessions

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "metrics-token-for-the-tests-0123456789"


def samples(text):
    """``{(sample name, frozenset(labels)): value}`` of a Prometheus text exposition."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found, name, **labels):
    return found.get((name, frozenset(labels.items())))


@pytest.fixture
def token(settings):
    settings.METRICS_TOKEN = TOKEN
    return TOKEN


def test_no_token_configured_means_no_metrics_path(client, settings):
    settings.METRICS_TOKEN = ""
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 404


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}"]
)
def test_a_scraper_without_the_token_is_refused(client, token, header):
    extra = {} if header is None else {"HTTP_AUTHORIZATION": header}
    response = client.get("/metrics", **extra)
    assert response.status_code == 401 and b"conference_" not in response.content
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.django_db
def test_the_metrics_name_no_secret(client, token):
    AsteriskServer.objects.create(
        name="pbx-secret-test", ari_url="http://10.9.8.7:8088/ari", username="ariuser", password="s3cret-pw"
    )
    metrics.ARI_LINK_UP.labels("pbx-secret-test").set(1)
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"bearer {TOKEN}")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain")
    assert response["Cache-Control"] == "no-store"
    text = response.content.decode()
    found = samples(text)
    assert value(found, "conference_ari_link_up", server="pbx-secret-test") == 1
    for secret in ("s3cret-pw", "ariuser", "10.9.8.7", TOKEN):
        assert secret not in text
    for name in ("conference_frames_sent_total", "conference_frames_dropped_total", "process_resident_memory_bytes"):
        assert any(key[0] == name for key in found), name
    for where in metrics.LAYER_WHERE:  # present from the start, so that rate() has a first sample
        assert value(found, "conference_channel_layer_failures_total", where=where) is not None


def test_unknown_actions_do_not_make_new_series():
    assert metrics.action_label("mute") == "mute"
    assert metrics.action_label("x" * 500) == metrics.action_label("'; DROP") == "other"


def dashboard_metric_names():
    names = set()
    for path in sorted((ROOT / "deploy" / "grafana").glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                names |= set(re.findall(r"\b(?:conference|process)_[a-z_]+", target["expr"]))
    return names


def test_the_grafana_dashboard_asks_for_metrics_that_exist():
    names = dashboard_metric_names()
    assert len(names) >= 8
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    exposed = set()
    for family in text_string_to_metric_families(generate_latest(REGISTRY).decode()):
        exposed |= {family.name + suffix for suffix in suffixes.get(family.type, ("",))}
    assert not names - exposed, names - exposed


def scrape(url, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = requests.get(url, headers=headers, timeout=5)
    response.raise_for_status()
    return samples(response.text)


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
async def test_worker_and_web_metrics_follow_a_call_a_page_and_a_mute(pbx, sandbox, tmp_path, redis_url):
    import websockets

    room = await db(Conference.objects.create)(server=pbx, number="171", slug="metrics", name="Metrics")
    user = await db(User.objects.create_superuser)(username="metrics-mod", password="x", email="")
    (session_key,) = await db(make_sessions)(user, 1)
    metrics_port = free_port()
    stack = Processes({**base_env(database_url(), redis_url), "METRICS_TOKEN": TOKEN}, pbx.name, tmp_path)
    caller = None
    try:
        stack.start_web()
        stack.start_worker("--metrics", f"127.0.0.1:{metrics_port}")
        await stack.web_up()
        await eventually(lambda: db(lambda: AsteriskServer.objects.get(pk=pbx.pk).connected)(), timeout=30)
        worker_url = f"http://127.0.0.1:{metrics_port}/metrics"
        web_url = f"http://127.0.0.1:{stack.port}/metrics"
        before = await asyncio.to_thread(scrape, worker_url)
        assert value(before, "conference_ari_link_up", server=pbx.name) == 1
        assert (await asyncio.to_thread(requests.get, web_url, timeout=5)).status_code == 401

        headers = {"Cookie": f"sessionid={session_key}", "Origin": f"http://127.0.0.1:{stack.port}"}
        url = f"ws://127.0.0.1:{stack.port}/ws/conferences/{room.slug}/"
        async with websockets.connect(url, additional_headers=headers) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "snapshot"
            caller = await sandbox.caller(171, name="Metered", number="7101")
            joined = None
            while joined is None:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 15))
                if frame["type"] == "participant.joined":
                    joined = frame["participant"]["id"]
            await ws.send(json.dumps({"action": "mute", "participant": joined, "request_id": "m1"}))
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 15))
                if frame["type"] == "reply" and frame["request_id"] == "m1":
                    assert frame["ok"] is True, frame
                    break
            web = await asyncio.to_thread(scrape, web_url, TOKEN)
            assert value(web, "conference_open_sockets", kind="room") == 1
            assert value(web, "conference_frames_sent_total") >= 3  # snapshot, join, reply
            assert value(web, "conference_moderation_reply_seconds_count", action="mute", outcome="ok") == 1

        async def socket_gone():
            found = await asyncio.to_thread(scrape, web_url, TOKEN)
            return value(found, "conference_open_sockets", kind="room") == 0

        await eventually(socket_gone, timeout=10, message="the closed page is no longer counted")
        worker = await asyncio.to_thread(scrape, worker_url)
        assert worker[("conference_ari_events_received_total", frozenset({("server", pbx.name)}))] > before.get(
            ("conference_ari_events_received_total", frozenset({("server", pbx.name)})), 0
        )
        assert value(worker, "conference_ari_events_handled_total", server=pbx.name) >= 2  # StasisStart, bridge
        assert value(worker, "conference_worker_queue_wait_seconds_count", server=pbx.name) >= 2
        assert value(worker, "conference_worker_command_seconds_count", server=pbx.name, action="mute") == 1
        assert await db(Participant.objects.filter(conference=room, muted=True).count)() == 1
    finally:
        if caller is not None:
            await sandbox.hangup(caller)
        await asyncio.to_thread(stack.close)
