import itertools
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import requests
from django.contrib.auth.models import Group, User
from django.utils import timezone

from conferences.models import AsteriskServer, Conference, ConferenceAccess, Participant

pytest_plugins = ["tests.live", "tests.sockets"]

_numbers = itertools.count(1000)


@pytest.fixture
def make_server(db):
    def make(name=None, **fields):
        fields.setdefault("ari_url", "http://127.0.0.1:8088/ari")
        fields.setdefault("username", "conference")
        fields.setdefault("password", "s3cret-ari-password")
        return AsteriskServer.objects.create(name=name or f"pbx-{next(_numbers)}", **fields)

    return make


@pytest.fixture
def server(make_server):
    return make_server("pbx")


@pytest.fixture
def make_conference(db, server):
    def make(number=None, **fields):
        number = number or str(next(_numbers))
        fields.setdefault("server", server)
        fields.setdefault("slug", f"room-{number}")
        fields.setdefault("name", f"Room {number}")
        return Conference.objects.create(number=number, **fields)

    return make


@pytest.fixture
def conference(make_conference):
    return make_conference("100", slug="sales", name="Sales")


@pytest.fixture
def make_participant(db):
    def make(conference, channel_id=None, **fields):
        fields.setdefault("joined_at", timezone.now() - timezone.timedelta(minutes=1))
        return Participant.objects.create(
            conference=conference, channel_id=channel_id or f"chan-{next(_numbers)}", **fields
        )

    return make


@pytest.fixture
def make_user(db):
    def make(username=None, *, groups=(), **fields):
        user = User.objects.create_user(username=username or f"user{next(_numbers)}", password="pw-Tr0ub4dor", **fields)
        user.groups.set(groups)
        return user

    return make


@pytest.fixture
def grant(db):
    def grant(conference, *, user=None, group=None, role=ConferenceAccess.Role.VIEWER):
        return ConferenceAccess.objects.create(conference=conference, user=user, group=group, role=role)

    return grant


@pytest.fixture
def group(db):
    return Group.objects.create(name="helpdesk")


@pytest.fixture
def superuser(db):
    return User.objects.create_superuser(username="root", password="pw-Tr0ub4dor", email="")


@pytest.fixture(scope="session", autouse=True)
def _web_database_threads(django_db_setup, django_db_blocker):
    """The web's database threads keep their connections: closed before the test database is dropped."""
    yield
    from conferences import dbthreads

    with django_db_blocker.unblock():
        dbthreads.close_web()


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# The tests' webhook receivers listen on loopback, which production refuses (conferences/webhooks.py);
# the processes the tests start inherit it from the environment.
os.environ["WEBHOOK_ALLOW_LOOPBACK"] = "True"


@pytest.fixture(autouse=True)
def _webhooks_to_loopback(settings):
    settings.WEBHOOK_ALLOW_LOOPBACK = True


# --- The real services: the Asterisk sandbox and Redis. Missing ones fail the
# --- tests that need them; they are never skipped.

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class AriEndpoint:
    url: str
    username: str
    password: str

    @property
    def auth(self):
        return (self.username, self.password)


@pytest.fixture(scope="session")
def ari():
    """The ARI of the sandbox Asterisk: $ARI_TEST_URL, else started with scripts/asterisk-sandbox."""
    url = os.environ.get("ARI_TEST_URL")
    if not url:
        result = subprocess.run(
            [str(ROOT / "scripts" / "asterisk-sandbox"), "start"], capture_output=True, text=True, timeout=600
        )
        if result.returncode != 0:
            pytest.fail(f"the Asterisk sandbox did not start:\n{result.stdout}\n{result.stderr}")
        url = result.stdout.strip().splitlines()[-1]
    endpoint = AriEndpoint(
        url.rstrip("/"),
        os.environ.get("ARI_TEST_USERNAME", "conference"),
        os.environ.get("ARI_TEST_PASSWORD", "conference"),
    )
    try:
        requests.get(f"{endpoint.url}/asterisk/info", auth=endpoint.auth, timeout=5).raise_for_status()
    except requests.RequestException as exc:
        pytest.fail(f"ARI at {endpoint.url} does not answer: {exc}")
    return endpoint


@pytest.fixture(scope="session")
def redis_url():
    """A real Redis for channel-layer tests: $TEST_REDIS_URL or local database 14."""
    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/14")
    client = redis.Redis.from_url(url, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis at {url} does not answer: {exc} (scripts/ensure-redis starts one)")
    finally:
        client.close()
    return url


@pytest.fixture
def redis_layer(settings, redis_url):
    """The project's channel layer on the real Redis, for this test (CHANNEL_LAYERS switched to it)."""
    from channels.layers import channel_layers

    from conferencesite.env import channel_layers_for

    settings.CHANNEL_LAYERS = channel_layers_for(redis_url)
    channel_layers.backends.clear()
    yield channel_layers["default"]
    channel_layers.backends.clear()


@pytest.fixture(scope="session", autouse=True)
def _close_connections_of_async_tests(django_db_setup):
    """Close the database connection that async tests opened in asgiref's sync thread.

    Otherwise it stays open and PostgreSQL refuses to drop the test database.
    """
    yield
    from asgiref.sync import SyncToAsync
    from django.db import connections

    SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=10)


# Debian's Chromium, driven by Playwright (its own browser download does not work here).
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
async def browser():
    from playwright.async_api import async_playwright

    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: scripts/setup --dev installs Debian's chromium")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"],
        )
        yield browser
        await browser.close()
