"""Single sign-on with OpenID Connect, against a real provider: django-oauth-toolkit in a process of its own.

The provider (tests/oidc_provider/) is started once for the session on a free loopback port with an
RS256 key made here; a provider that cannot start fails the run. The site's side is Django's test
client; the browser's side at the provider (its login form, its consent page) is ``requests``.
"""

import html
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import requests
from asgiref.sync import sync_to_async
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.conf import settings as django_settings
from django.contrib.auth.models import Group, User
from django.core.cache import cache
from django.core.exceptions import SuspiciousOperation
from django.test import Client
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice

from conferences import access, consumers, oidc
from conferences.models import AsteriskServer, ConferenceAccess
from conferencesite import env
from conferencesite.asgi import application
from tests.sockets import closed_with, frame
from tests.stack import free_port, run_manage

ROOT = Path(__file__).resolve().parent.parent
BACKEND = "conferences.oidc.OIDCBackend"
CLIENT_ID = "conference-site"
CLIENT_SECRET = "site-secret-" + "x" * 20
SITE = "http://testserver"
CALLBACK = f"{SITE}/accounts/sso/callback/"
TIMEOUT = 2  # OIDC_TIMEOUT in these tests
MODERATOR = ConferenceAccess.Role.MODERATOR
VIEWER = ConferenceAccess.Role.VIEWER


class Provider:
    """The tests' OpenID Connect provider: a process of its own, its users set through its control URL."""

    def __init__(self, folder, port):
        self.folder, self.port = folder, port
        self.base = f"http://127.0.0.1:{port}"
        self.issuer = f"{self.base}/o"
        self.control_token = secrets.token_urlsafe(16)
        self.process = None

    def start(self):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_file = self.folder / "key.pem"
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        environ = {
            **os.environ,
            "OIDC_TEST_DATABASE": str(self.folder / "provider.sqlite3"),
            "OIDC_TEST_ISSUER": self.issuer,
            "OIDC_TEST_KEY_FILE": str(key_file),
            "OIDC_TEST_CONTROL_TOKEN": self.control_token,
            "OIDC_TEST_CLIENT_ID": CLIENT_ID,
            "OIDC_TEST_CLIENT_SECRET": CLIENT_SECRET,
            "OIDC_TEST_REDIRECT_URI": CALLBACK,
            "OIDC_TEST_LOGOUT_REDIRECT_URI": f"{SITE}/accounts/login/",
        }
        self.log = (self.folder / "provider.log").open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.oidc_provider.serve", str(self.port)],
            cwd=ROOT,
            env=environ,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if requests.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        pytest.fail(f"the OpenID Connect provider did not start:\n{(self.folder / 'provider.log').read_text()}")

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()

    def set_user(self, username, *, password=None, groups=(), **fields):
        data = {"username": username, "password": password or f"{username}-pw", "groups": list(groups), **fields}
        response = requests.post(
            f"{self.base}/control/user", data=json.dumps(data), headers={"X-Control": self.control_token}, timeout=10
        )
        response.raise_for_status()
        return response.json()["sub"]


@pytest.fixture(scope="session")
def provider(tmp_path_factory):
    server = Provider(tmp_path_factory.mktemp("oidc"), free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _fresh():
    cache.clear()  # the login throttle's counts
    oidc.forget_provider()
    channel_layers.backends.clear()
    yield
    cache.clear()
    oidc.forget_provider()
    channel_layers.backends.clear()


def sso_environ(url, **variables):
    environ = {
        "OIDC_PROVIDER_URL": url,
        "OIDC_CLIENT_ID": CLIENT_ID,
        "OIDC_CLIENT_SECRET": CLIENT_SECRET,
        "OIDC_PROVIDER_NAME": "Example SSO",
        "OIDC_TIMEOUT": str(TIMEOUT),
    }
    environ.update(variables)
    return {name: value for name, value in environ.items() if value is not None}


@pytest.fixture
def use_sso(settings, provider):
    """Turn single sign-on on for this test, configured as the settings module does from OIDC_* variables."""
    local_backends = [path for path in django_settings.AUTHENTICATION_BACKENDS if path != BACKEND]

    def use(url=None, **variables):
        for name, value in env.oidc_settings(environ=sso_environ(url or provider.issuer, **variables)).items():
            setattr(settings, name, value)
        settings.OIDC_ENABLED = True
        settings.AUTHENTICATION_BACKENDS = [*local_backends, BACKEND]
        oidc.forget_provider()

    use()
    return use


@pytest.fixture
def silent_server():
    """A TCP port that accepts connections (the kernel's backlog) and never answers: a hung provider."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def _hidden_inputs(page):
    fields = {}
    for tag in re.findall(r"<input[^>]*>", page):
        name = re.search(r'name="([^"]*)"', tag)
        value = re.search(r'value="([^"]*)"', tag)
        if name and 'type="hidden"' in tag:
            fields[html.unescape(name.group(1))] = html.unescape(value.group(1)) if value else ""
    return fields


def provider_callback(client, username, password=None, *, browser=None, next_url=None):
    """Start at the site's button, log in and consent at the provider; return the callback URL it sends back."""
    response = client.get("/accounts/sso/", {"next": next_url} if next_url else {})
    assert response.status_code == 302, response
    authorize = response["Location"]
    browser = browser or requests.Session()
    response = browser.get(authorize, allow_redirects=False, timeout=10)
    if response.status_code == 302 and "/accounts/login/" in response.headers["Location"]:
        login_url = requests.compat.urljoin(authorize, response.headers["Location"])
        page = browser.get(login_url, timeout=10)
        fields = _hidden_inputs(page.text)
        fields.update(username=username, password=password or f"{username}-pw")
        response = browser.post(login_url, data=fields, allow_redirects=False, timeout=10)
        assert response.status_code == 302, response.text
        response = browser.get(requests.compat.urljoin(login_url, response.headers["Location"]), timeout=10)
    if response.status_code == 200:  # the consent page
        assert 'id="authorizationForm"' in response.text, response.text
        fields = _hidden_inputs(response.text)
        fields["allow"] = "Authorize"
        response = browser.post(response.url, data=fields, allow_redirects=False, timeout=10)
    assert response.status_code == 302, response.text
    location = response.headers["Location"]
    assert location.startswith(CALLBACK), location
    return location


def site_get(client, url):
    parts = urlsplit(url)
    return client.get(parts.path, {name: values[0] for name, values in parse_qs(parts.query).items()})


def sso_login(client, username, password=None, **kwargs):
    return site_get(client, provider_callback(client, username, password, **kwargs))


def logged_in_as(client, username):
    user_id = client.session.get("_auth_user_id")
    return user_id is not None and User.objects.get(pk=user_id).username == username


def group_names(username):
    return set(User.objects.get(username=username).groups.values_list("name", flat=True))


def login_page_text(client):
    return client.get("/accounts/login/").content.decode()


@pytest.fixture
def sales(conference):
    """The sales room: sales-managers moderate it, sales view it."""
    AsteriskServer.objects.filter(pk=conference.server_id).update(connected=True)
    managers, _ = Group.objects.get_or_create(name="sales-managers")
    viewers, _ = Group.objects.get_or_create(name="sales")
    ConferenceAccess.objects.create(conference=conference, group=managers, role=MODERATOR)
    ConferenceAccess.objects.create(conference=conference, group=viewers, role=VIEWER)
    return conference


# --- Logging in ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_sso_user_logs_in_and_gets_the_mirrored_groups(use_sso, provider):
    provider.set_user("alice", groups=["sales-managers", "sales"], email="alice@example.test", first_name="Alice")
    client = Client()
    assert "Sign in with Example SSO" in login_page_text(client)
    response = sso_login(client, "alice", next_url="/conferences/")
    assert response.status_code == 302 and response["Location"] == "/conferences/"
    assert logged_in_as(client, "alice")
    assert client.session["_auth_user_backend"] == BACKEND
    alice = User.objects.get(username="alice")
    assert group_names("alice") == {"sales-managers", "sales"}
    assert (alice.email, alice.first_name) == ("alice@example.test", "Alice")
    # An SSO account: marked, with no password that would let it in without the provider.
    assert oidc.is_sso_account(alice) and not alice.has_usable_password()
    assert client.get("/").status_code == 200
    # A wrong password at the provider never comes back to the site at all; the site's own form knows no alice.
    assert Client().post("/accounts/login/", {"username": "alice", "password": "alice-pw"}).status_code == 200


@pytest.mark.django_db
def test_an_sso_user_in_a_moderator_group_moderates_the_room(use_sso, provider, sales):
    provider.set_user("alice", groups=["sales-managers"])
    provider.set_user("bob", groups=["sales"])
    client = Client()
    assert sso_login(client, "alice").status_code == 302
    assert access.can_moderate(User.objects.get(username="alice"), sales)
    assert client.get(f"/conferences/{sales.slug}/").status_code == 200
    assert sso_login(Client(), "bob").status_code == 302
    bob = User.objects.get(username="bob")
    assert access.can_view(bob, sales) and not access.can_moderate(bob, sales)


@pytest.mark.django_db
def test_removed_from_the_group_at_the_provider_the_next_login_withdraws_it(use_sso, provider, sales):
    provider.set_user("alice", groups=["sales-managers", "sales"])
    client = Client()
    assert sso_login(client, "alice").status_code == 302
    assert access.can_moderate(User.objects.get(username="alice"), sales)
    client.post("/accounts/logout/")
    provider.set_user("alice", groups=["sales"])
    assert sso_login(client, "alice").status_code == 302
    assert group_names("alice") == {"sales"}
    alice = User.objects.get(username="alice")
    assert not access.can_moderate(alice, sales) and access.can_view(alice, sales)


@pytest.mark.django_db
def test_a_mirror_list_leaves_other_groups_alone_and_staff_flags_follow_groups(use_sso, provider):
    use_sso(OIDC_MIRROR_GROUPS="sales,conference-staff", OIDC_STAFF_GROUP="conference-staff")
    provider.set_user("carol", groups=["sales", "conference-staff", "unlisted"])
    assert sso_login(Client(), "carol").status_code == 302
    carol = User.objects.get(username="carol")
    assert group_names("carol") == {"sales", "conference-staff"} and carol.is_staff and not carol.is_superuser
    carol.groups.add(Group.objects.create(name="local-helpers"))  # staff's own group: not the provider's
    provider.set_user("carol", groups=[])
    assert sso_login(Client(), "carol").status_code == 302
    assert group_names("carol") == {"local-helpers"} and not User.objects.get(username="carol").is_staff


@pytest.mark.django_db
def test_a_local_account_with_the_same_username_is_never_taken_over(use_sso, provider, make_user):
    """The provider's "root" may not log in as the local superuser "root"; the local password still works."""
    make_user("root", is_superuser=True, is_staff=True)
    provider.set_user("root", groups=["sales-managers"])
    client = Client()
    response = sso_login(client, "root")
    assert response.status_code == 302 and response["Location"] == "/accounts/login/"
    assert "_auth_user_id" not in client.session
    assert "Single sign-on cannot log you in to this site" in login_page_text(client)
    root = User.objects.get(username="root")
    assert not oidc.is_sso_account(root) and root.groups.count() == 0
    assert Client().post("/accounts/login/", {"username": "root", "password": "pw-Tr0ub4dor"}).status_code == 302


@pytest.mark.django_db
def test_the_account_follows_the_providers_sub_not_a_name(use_sso, provider):
    """An SSO account whose sub is another's (its name given to someone else at the provider) is not theirs."""
    provider.set_user("dave", groups=[])
    assert sso_login(Client(), "dave").status_code == 302
    dave = User.objects.get(username="dave")
    # Another sub with the name "dave": the account made for the first one is refused to it.
    User.objects.filter(pk=dave.pk).update(password=oidc.account_marker(provider.issuer, "someone-else"))
    client = Client()
    assert sso_login(client, "dave")["Location"] == "/accounts/login/"
    assert "_auth_user_id" not in client.session


@pytest.mark.django_db
def test_an_sso_account_made_inactive_here_neither_logs_in_nor_keeps_its_session(use_sso, provider):
    provider.set_user("erin")
    client = Client()
    assert sso_login(client, "erin").status_code == 302
    User.objects.filter(username="erin").update(is_active=False)
    assert client.get("/").status_code == 302  # to the login page: the session is not honoured
    other = Client()
    assert sso_login(other, "erin")["Location"] == "/accounts/login/"
    assert "_auth_user_id" not in other.session


async def _room_socket(session_key, slug="sales"):
    headers = [
        (b"origin", b"http://127.0.0.1"),
        (b"host", b"127.0.0.1"),
        (b"cookie", f"sessionid={session_key}".encode()),
    ]
    communicator = WebsocketCommunicator(application, f"/ws/conferences/{slug}/", headers=headers)
    connected, _ = await communicator.connect()
    assert connected
    return communicator


def _sso_session(username):
    client = Client()
    assert sso_login(client, username).status_code == 302
    return client


@pytest.mark.django_db(transaction=True)
async def test_a_group_withdrawn_at_the_next_login_closes_the_open_room_page_at_once(use_sso, provider, sales):
    """dave moderates the room through sales-managers only; removed from it, his next login ends his open page."""
    await sync_to_async(provider.set_user)("dave", groups=["sales-managers"])
    first = await sync_to_async(_sso_session)("dave")
    communicator = await _room_socket(first.cookies["sessionid"].value)
    try:
        snapshot = await frame(communicator)
        assert snapshot["type"] == "snapshot" and snapshot["can_moderate"] is True
        await sync_to_async(provider.set_user)("dave", groups=[])
        started = time.monotonic()
        await sync_to_async(_sso_session)("dave")  # another browser, or the same one later
        # Closed by the membership change's signal, not by the sockets' periodic check.
        assert await closed_with(communicator) == consumers.CLOSE_FORBIDDEN
        assert time.monotonic() - started < 5
    finally:
        if not communicator.future.done():
            await communicator.disconnect()


# --- Logout ------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_logout_ends_the_session_closes_its_room_socket_and_the_providers_session(use_sso, provider, sales):
    await sync_to_async(provider.set_user)("alice", groups=["sales"])
    client, browser = Client(), requests.Session()
    assert (await sync_to_async(sso_login)(client, "alice", browser=browser)).status_code == 302
    communicator = await _room_socket(client.cookies["sessionid"].value)
    try:
        assert (await frame(communicator))["type"] == "snapshot"
        response = await sync_to_async(client.post)("/accounts/logout/")
        assert await closed_with(communicator) == consumers.CLOSE_NOT_LOGGED_IN
    finally:
        if not communicator.future.done():
            await communicator.disconnect()
    # Then to the provider's end_session_endpoint (RP-initiated logout), with the ID token as the hint.
    end_session = f"{provider.issuer}/logout/"
    assert response.status_code == 302 and response["Location"].startswith(end_session), response["Location"]
    query = parse_qs(urlsplit(response["Location"]).query)
    assert query["client_id"] == [CLIENT_ID] and query["post_logout_redirect_uri"] == [f"{SITE}/accounts/login/"]
    assert query["id_token_hint"][0].count(".") == 2
    assert "_auth_user_id" not in await sync_to_async(lambda: dict(client.session))()
    assert (await sync_to_async(client.get)("/")).status_code == 302
    # The provider ends its session and sends the browser back to the login page; the next "Sign in with…"
    # asks for the password again.
    ended = await sync_to_async(browser.get)(response["Location"], allow_redirects=False, timeout=10)
    assert ended.status_code == 302 and ended.headers["Location"] == f"{SITE}/accounts/login/"
    authorize = (await sync_to_async(client.get)("/accounts/sso/"))["Location"]
    again = await sync_to_async(browser.get)(authorize, allow_redirects=False, timeout=10)
    assert again.status_code == 302 and "/accounts/login/" in again.headers["Location"]


# --- Refused callbacks ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_tampered_state_or_a_replayed_callback_is_refused_cleanly(use_sso, provider):
    provider.set_user("alice")
    client = Client()
    callback = provider_callback(client, "alice")
    tampered = re.sub(r"state=[^&]+", "state=not-the-state", callback)
    response = site_get(client, tampered)
    assert response.status_code == 302 and response["Location"] == "/accounts/login/"
    assert "Single sign-on did not log you in" in login_page_text(client)
    assert "_auth_user_id" not in client.session
    # The same callback from another browser (no session that started it): refused the same way.
    stolen = Client()
    assert site_get(stolen, callback)["Location"] == "/accounts/login/" and "_auth_user_id" not in stolen.session
    # The real one, once.
    assert site_get(client, callback).status_code == 302 and logged_in_as(client, "alice")
    client.post("/accounts/logout/")
    replayed = site_get(client, callback)
    assert replayed.status_code == 302 and replayed["Location"] == "/accounts/login/"
    assert "_auth_user_id" not in client.session
    # A state this session started, with a code the provider never gave: the provider refuses it.
    start = client.get("/accounts/sso/")
    state = parse_qs(urlsplit(start["Location"]).query)["state"][0]
    response = client.get("/accounts/sso/callback/", {"code": "forged", "state": state})
    assert response.status_code == 302 and response["Location"] == "/accounts/login/"
    assert "Single sign-on did not log you in" in login_page_text(client)
    # The provider's own refusal (the user cancelled at the consent page).
    start = client.get("/accounts/sso/")
    state = parse_qs(urlsplit(start["Location"]).query)["state"][0]
    response = client.get("/accounts/sso/callback/", {"error": "access_denied", "state": state})
    assert response.status_code == 302 and response["Location"] == "/accounts/login/"
    # An ?error= link from elsewhere does not log a session out.
    assert site_get(client, provider_callback(client, "alice")).status_code == 302 and logged_in_as(client, "alice")
    assert client.get("/accounts/sso/callback/", {"error": "access_denied", "state": "x"})["Location"] == "/"
    assert logged_in_as(client, "alice")
    assert site_get(client, callback)["Location"] == "/" and logged_in_as(client, "alice")


@pytest.mark.django_db
def test_sso_callbacks_pass_the_login_throttle(use_sso, provider):
    """Forged codes count as failed logins of the address: the callback cannot be used to hammer the provider."""
    client = Client()
    statuses = []
    for _ in range(6):
        start = client.get("/accounts/sso/")
        state = parse_qs(urlsplit(start["Location"]).query)["state"][0]
        statuses.append(client.get("/accounts/sso/callback/", {"code": "forged", "state": state}).status_code)
    assert statuses == [302] * 5 + [429]
    provider.set_user("alice")
    # The address's counter for this path is full: even a good code waits for the window to end.
    assert sso_login(Client(), "alice").status_code == 429
    cache.clear()
    assert sso_login(Client(), "alice").status_code == 302


def _signed(key, **claims):
    now = int(time.time())
    payload = {"iss": "https://sso.example.test/realm", "aud": CLIENT_ID, "sub": "42", "iat": now, "exp": now + 300}
    payload.update(claims)
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, key, algorithm="RS256", headers={"kid": "k"})


def test_the_id_token_is_checked_for_signature_issuer_audience_and_times(settings, monkeypatch):
    settings.OIDC_PROVIDER_URL = "https://sso.example.test/realm"
    settings.OIDC_RP_CLIENT_ID = CLIENT_ID
    monkeypatch.setattr(oidc, "provider", lambda: {"issuer": "https://sso.example.test/realm"})
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    backend = oidc.OIDCBackend()
    backend.OIDC_RP_CLIENT_ID = CLIENT_ID
    assert backend.get_payload_data(_signed(key), key.public_key())["sub"] == "42"
    refused = [
        _signed(other),  # not the provider's key
        _signed(key, iss="https://evil.example.test"),
        _signed(key, aud="another-client"),
        _signed(key, azp="another-client"),
        _signed(key, exp=int(time.time()) - 120),
        _signed(key, iat=None),
        _signed(key, sub=None),
        jwt.encode({"iss": settings.OIDC_PROVIDER_URL, "aud": CLIENT_ID, "sub": "42"}, CLIENT_SECRET, "HS256"),
        jwt.encode({"iss": settings.OIDC_PROVIDER_URL, "aud": CLIENT_ID, "sub": "42"}, None, "none"),
    ]
    for token in refused:
        with pytest.raises(SuspiciousOperation):
            backend.get_payload_data(token, key.public_key())


# --- The provider down -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_provider_that_hangs_login_page_says_so_local_login_works_nothing_hangs(use_sso, silent_server, make_user):
    use_sso(url=f"{silent_server}/o")
    make_user("local")
    client = Client()
    started = time.monotonic()
    response = client.get("/accounts/sso/")
    seconds = time.monotonic() - started
    assert response.status_code == 302 and response["Location"] == "/accounts/login/"
    assert seconds < TIMEOUT + 1.5, seconds
    print(f"provider hanging: the SSO button answered in {seconds:.3f} s (OIDC_TIMEOUT={TIMEOUT})")
    started = time.monotonic()
    page = login_page_text(client)
    assert page.count("Single sign-on is unavailable right now") == 1
    # The failure is remembered: the page and the next click do not wait for the provider again.
    assert (
        client.get("/accounts/sso/", {"next": "/conferences/"})["Location"] == "/accounts/login/?next=%2Fconferences%2F"
    )
    assert time.monotonic() - started < 0.5
    assert Client().post("/accounts/login/", {"username": "local", "password": "pw-Tr0ub4dor"}).status_code == 302


@pytest.mark.django_db
def test_a_provider_that_is_down_is_unavailable_at_once(use_sso, make_user):
    closed = free_port()
    use_sso(url=f"http://127.0.0.1:{closed}/o")
    client = Client()
    started = time.monotonic()
    assert client.get("/accounts/sso/")["Location"] == "/accounts/login/"
    seconds = time.monotonic() - started
    assert seconds < 1, seconds
    print(f"provider down (port closed): the SSO button answered in {seconds:.3f} s")
    assert "Single sign-on is unavailable right now" in login_page_text(client)


@pytest.mark.django_db
def test_a_provider_that_hangs_during_the_callback_costs_at_most_its_timeout(
    use_sso, provider, silent_server, make_user
):
    provider.set_user("alice")
    client = Client()
    callback = provider_callback(client, "alice")
    # Discovery read before; then the token endpoint stops answering.
    document = {**oidc.provider(), "token_endpoint": f"{silent_server}/o/token/"}
    oidc._document["value"] = document
    started = time.monotonic()
    response = site_get(client, callback)
    seconds = time.monotonic() - started
    assert response.status_code == 302 and response["Location"] == "/accounts/login/"
    assert seconds < TIMEOUT + 1.5, seconds
    print(f"provider hanging at the token endpoint: callback answered in {seconds:.3f} s (OIDC_TIMEOUT={TIMEOUT})")
    assert "Single sign-on is unavailable right now" in login_page_text(client)
    make_user("local")
    assert Client().post("/accounts/login/", {"username": "local", "password": "pw-Tr0ub4dor"}).status_code == 302


# --- The second factor -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_staff_through_sso_still_owe_the_totp_step(use_sso, provider, settings):
    settings.REQUIRE_STAFF_2FA = True
    use_sso(OIDC_STAFF_GROUP="conference-staff")
    provider.set_user("carol", groups=["conference-staff"])
    client = Client()
    assert sso_login(client, "carol").status_code == 302
    carol = User.objects.get(username="carol")
    assert carol.is_staff
    assert client.get("/")["Location"].startswith("/accounts/two-factor/enrol/")
    assert client.get("/admin/")["Location"].startswith("/accounts/two-factor/enrol/")
    # With a device: every SSO login asks for its code before any page.
    device = TOTPDevice.objects.create(user=carol, name="phone", confirmed=True)
    client = Client()
    assert sso_login(client, "carol").status_code == 302
    assert client.get("/admin/")["Location"].startswith("/accounts/two-factor/?")
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    response = client.post("/accounts/two-factor/", {"code": f"{totp.token():06d}", "next": "/admin/"})
    assert response.status_code == 302 and response["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200


# --- Configuration -----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_sso_is_off_without_oidc_provider_url(client):
    assert env.oidc_settings(environ={}) is None
    assert not django_settings.OIDC_ENABLED
    assert BACKEND not in django_settings.AUTHENTICATION_BACKENDS
    assert client.get("/accounts/sso/").status_code == 404
    assert client.get("/accounts/sso/callback/", {"code": "x", "state": "y"}).status_code == 404
    assert "/accounts/sso/" not in login_page_text(client)


def test_sso_settings_come_after_the_throttle_and_the_local_accounts():
    result = run_manage(
        "shell",
        "-c",
        "from django.conf import settings as s; print(s.OIDC_ENABLED, s.AUTHENTICATION_BACKENDS[-1], "
        "s.OIDC_RP_SIGN_ALGO, s.OIDC_RP_SCOPES, s.OIDC_MIRROR_GROUPS)",
        **sso_environ("http://127.0.0.1:1/o", OIDC_MIRROR_GROUPS="a, b"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == f"True {BACKEND} RS256 openid email profile ['a', 'b']"


def test_every_oidc_variable_is_documented():
    example = (ROOT / ".env.example").read_text()
    readme = (ROOT / "README.md").read_text()
    for name in env.OIDC_VARIABLES:
        assert f"# {name}=" in example, name
        assert f"`{name}`" in readme, name


@pytest.mark.parametrize(
    "variables,message",
    [
        ({"OIDC_PROVIDER_URL": "sso.example.com"}, "OIDC_PROVIDER_URL must be the provider's issuer"),
        ({"OIDC_PROVIDER_URL": "https://sso.example.com:https/realm"}, "OIDC_PROVIDER_URL: the port is not a number"),
        ({"OIDC_PROVIDER_URL": None}, "OIDC_CLIENT_ID is set but OIDC_PROVIDER_URL is not"),
        ({"OIDC_CLIENT_SECRET": None}, "OIDC_CLIENT_ID and OIDC_CLIENT_SECRET must be set"),
        ({"OIDC_SCOPES": "email profile"}, "OIDC_SCOPES must include openid"),
        ({"OIDC_TIMEOUT": "0"}, "OIDC_TIMEOUT must be at least 1"),
        ({"OIDC_TIMEOUT": "soon"}, "OIDC_TIMEOUT must be a whole number"),
        ({"OIDC_MIRROR_GROUPS": "a,,b"}, "OIDC_MIRROR_GROUPS must be a comma-separated list"),
        ({"OIDC_USERNAME_CLAIM": "preferred username"}, "OIDC_USERNAME_CLAIM must be a claim name"),
        ({"OIDC_GROUPS_CLAIM": "groups?"}, "OIDC_GROUPS_CLAIM must be a claim name"),
    ],
)
def test_malformed_oidc_settings_stop_start_up_naming_the_variable(variables, message):
    environ = {**sso_environ("https://sso.example.com/realms/company"), **variables}
    result = run_manage("check", **{name: value for name, value in environ.items() if value is not None})
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr and CLIENT_SECRET not in result.stderr
