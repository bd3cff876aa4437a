"""Web security: headers, CSRF, session expiry, secrets and hostile caller data."""

import asyncio
import json
import logging
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from django.contrib.sessions.models import Session
from django.core.cache import cache
from django.test import Client
from django.utils import timezone

from conferences import consumers
from conferences.models import ConferenceAccess
from conferencesite.asgi import application

db = sync_to_async
HOSTILE = '<img src=x onerror="alert(1)">=HYPERLINK("http://evil")'


@pytest.fixture(autouse=True)
def _clean_cache():
    cache.clear()
    yield
    cache.clear()


@pytest.mark.django_db
def test_strict_security_headers_on_pages_and_admin(client, superuser, conference):
    client.force_login(superuser)
    for url in ("/", "/conferences/sales/", "/conferences/sales/history/", "/admin/", "/accounts/login/"):
        response = client.get(url)
        csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp, url
        assert "frame-ancestors 'none'" in csp
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "same-origin"
        assert "microphone=()" in response.headers["Permissions-Policy"]


@pytest.mark.django_db
def test_pages_have_no_inline_scripts_or_styles(client, superuser, conference, make_participant):
    """The CSP forbids inline code; nothing on our pages needs it (json_script data is not code)."""
    make_participant(conference, caller_name="Alice")
    client.force_login(superuser)
    for url in ("/", "/conferences/sales/", "/conferences/sales/history/", "/accounts/login/"):
        html = client.get(url).content.decode()
        assert " onclick=" not in html and " onchange=" not in html and " style=" not in html, url
        for chunk in html.split("<script")[1:]:
            head = chunk.split(">", 1)[0]
            assert "src=" in head or 'type="application/json"' in head, (url, head)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url,data",
    [
        ("/accounts/login/", {"username": "a", "password": "b"}),
        ("/accounts/logout/", {}),
        ("/i18n/setlang/", {"language": "ru"}),
        ("/admin/conferences/conference/add/", {"name": "x"}),
    ],
)
def test_every_form_needs_a_csrf_token(superuser, url, data):
    client = Client(enforce_csrf_checks=True)
    client.force_login(superuser)
    assert client.post(url, data).status_code == 403


@pytest.mark.django_db
def test_forms_carry_a_csrf_token(client, superuser, conference):
    client.force_login(superuser)
    for url in ("/", "/conferences/sales/", "/admin/conferences/conference/add/"):
        assert "csrfmiddlewaretoken" in client.get(url).content.decode(), url
    assert "csrfmiddlewaretoken" in Client().get("/accounts/login/").content.decode()


@pytest.mark.django_db
def test_hostile_caller_data_is_inert_in_the_admin(client, superuser, conference, make_participant):
    make_participant(conference, caller_name=HOSTILE, caller_number="<script>1</script>")
    client.force_login(superuser)
    for url in ("/admin/conferences/participant/", "/admin/conferences/conferenceevent/"):
        html = client.get(url).content.decode()
        assert "<img src=x" not in html and "<script>1</script>" not in html
    html = client.get("/admin/conferences/participant/").content.decode()
    assert "&lt;img src=x" in html


@pytest.mark.django_db
def test_hostile_caller_data_is_inert_in_the_history_and_its_csv(client, superuser, conference, make_participant):
    from conferences import services

    participant = make_participant(conference, caller_name=HOSTILE, caller_number="=1+2")
    services.participant_leave(participant_id=participant.pk, reason="hangup")
    client.force_login(superuser)
    html = client.get("/conferences/sales/history/").content.decode()
    assert "<img src=x" not in html
    csv_text = b"".join(client.get("/conferences/sales/history/?format=csv").streaming_content).decode()
    assert "'=1+2" in csv_text and "\n=1+2" not in csv_text and ",=1+2" not in csv_text


@pytest.mark.django_db
def test_the_ari_password_is_not_in_pages_or_logs(client, superuser, server, caplog):
    caplog.set_level(logging.DEBUG)
    client.force_login(superuser)
    for url in (
        "/",
        "/admin/",
        "/admin/conferences/asteriskserver/",
        f"/admin/conferences/asteriskserver/{server.pk}/change/",
    ):
        assert "s3cret-ari-password" not in client.get(url).content.decode()
    assert "s3cret-ari-password" not in caplog.text


@pytest.mark.django_db(transaction=True)
async def test_an_expired_session_closes_the_socket(client, conference, make_user, grant, monkeypatch):
    monkeypatch.setattr(consumers, "SESSION_CHECK_SECONDS", 0.2)
    channel_layers.backends.clear()
    user = await db(make_user)("expiring")
    await db(grant)(conference, user=user, role=ConferenceAccess.Role.VIEWER)
    await db(client.force_login)(user)
    key = client.cookies["sessionid"].value
    communicator = WebsocketCommunicator(
        application,
        "/ws/conferences/sales/",
        headers=[(b"origin", b"http://127.0.0.1"), (b"cookie", f"sessionid={key}".encode())],
    )
    await communicator.connect()
    assert json.loads(await communicator.receive_from())["type"] == "snapshot"
    await asyncio.sleep(0.5)
    assert await communicator.receive_nothing(timeout=0.1)  # still open while the session lives
    await db(Session.objects.filter(session_key=key).update)(expire_date=timezone.now() - timedelta(seconds=1))
    message = await communicator.receive_output(timeout=3)
    assert message == {"type": "websocket.close", "code": 4401}
    channel_layers.backends.clear()
