"""One login throttle for every way in, counted per normalised username and per real client address.

Each attack of issue 11 point 2 is tried as an attacker would: through the
site login, the admin login and a basic-auth view standing for "anything added
later"; with look-alike usernames; with a forged X-Forwarded-For from a direct
client and through a trusted proxy; with guesses sent at once from 20 threads;
and over real HTTP against the web process (uvicorn) started with the shipped systemd command line.
"""

import asyncio
import base64
import re
import shlex
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from django.contrib.auth import aauthenticate, authenticate
from django.contrib.auth.backends import ModelBackend
from django.core.cache import cache
from django.db import connections
from django.http import HttpResponse
from django.test import Client, RequestFactory
from django.urls import path

from conferences import auth_backends, throttle
from conferences.client_address import client_address
from conferencesite import env
from tests.stack import Processes, base_env, database_url, http_login

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "pw-Tr0ub4dor"  # tests/conftest.py make_user
LIMIT = throttle.MAX_FAILURES_PER_ACCOUNT
MESSAGE = "Too many failed attempts. Wait a few minutes and try again."


@pytest.fixture(autouse=True)
def _clean_cache():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def trusted(settings):
    """Set DJANGO_TRUSTED_PROXIES for this test, parsed as the settings module parses it."""

    def set_to(value):
        settings.TRUSTED_PROXIES = env.env_networks("DJANGO_TRUSTED_PROXIES", environ={"DJANGO_TRUSTED_PROXIES": value})

    set_to("")
    return set_to


def site_login(client, username, password, **extra):
    return client.post("/accounts/login/", {"username": username, "password": password}, **extra)


def admin_login(client, username, password, **extra):
    return client.post("/admin/login/?next=/admin/", {"username": username, "password": password}, **extra)


def logged_in(client):
    return "_auth_user_id" in client.session


# --- Every way in -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_site_login_is_throttled_after_repeated_failures(make_user):
    make_user("alice")
    client = Client()
    for _ in range(LIMIT):
        assert site_login(client, "alice", "wrong").status_code == 200
    # Now even the right password is refused for a while: guessing gets nowhere.
    response = site_login(client, "alice", PASSWORD)
    assert response.status_code == 429
    assert MESSAGE in response.content.decode()
    assert "didn&#x27;t match" not in response.content.decode()
    assert not logged_in(client)
    # Another account from the same address is not locked out by it.
    make_user("bob")
    assert site_login(client, "bob", PASSWORD).status_code == 302


@pytest.mark.django_db
def test_counts_out_of_reach_refuse_the_login_with_a_clear_503_and_let_no_guess_through(settings, make_user):
    """Redis down past the cache's retries: no attempt is let through uncounted; the page says why."""
    make_user("dora")
    working = settings.CACHES
    settings.CACHES = env.caches_for("redis://127.0.0.1:1/0")  # nothing listens on port 1
    try:
        response = site_login(Client(), "dora", PASSWORD)  # each attempt waits out the retries (3.4 s)
        assert response.status_code == 503
        assert "cannot reach its store" in response.content.decode()
        assert "didn&#x27;t match" not in response.content.decode()
        assert "sessionid" not in response.cookies
    finally:
        settings.CACHES = working  # before _clean_cache clears it


@pytest.mark.django_db
def test_successful_login_resets_the_account_counter(make_user):
    make_user("carol")
    client = Client()
    for _ in range(LIMIT - 1):
        site_login(client, "carol", "wrong")
    assert site_login(client, "carol", PASSWORD).status_code == 302
    client.post("/accounts/logout/")
    for _ in range(LIMIT - 1):
        assert site_login(client, "carol", "wrong").status_code == 200
    assert site_login(client, "carol", PASSWORD).status_code == 302


@pytest.mark.django_db
def test_admin_login_is_throttled_ten_guesses_then_the_right_password_gets_nowhere(make_user):
    """The attack of issue 11: ten wrong passwords for a staff account, then the right one."""
    make_user("staffer", is_staff=True)
    client = Client()
    statuses = [admin_login(client, "staffer", f"guess-{i}").status_code for i in range(10)]
    assert statuses == [200] * LIMIT + [429] * (10 - LIMIT)
    response = admin_login(client, "staffer", PASSWORD)
    assert response.status_code == 429
    html = response.content.decode()
    assert MESSAGE in html
    assert 'name="password"' in html  # the admin's own login page, with its form
    assert not logged_in(client)


@pytest.mark.django_db
def test_failures_on_one_login_page_count_on_the_other(make_user):
    make_user("staffer", is_staff=True)
    client = Client()
    for _ in range(LIMIT - 2):
        assert admin_login(client, "staffer", "wrong").status_code == 200
    for _ in range(2):
        assert site_login(client, "staffer", "wrong").status_code == 200
    assert admin_login(client, "staffer", PASSWORD).status_code == 429
    assert site_login(client, "staffer", PASSWORD).status_code == 429


@pytest.mark.django_db
def test_a_refused_attempt_is_not_counted_as_another_failure(make_user):
    make_user("dave")
    client = Client()
    for _ in range(LIMIT):
        site_login(client, "dave", "wrong")
    account_key, address_key = throttle.keys("127.0.0.1", "dave")
    for _ in range(20):
        assert site_login(client, "dave", "wrong").status_code == 429
    assert cache.get(account_key) == LIMIT
    assert cache.get(address_key) == LIMIT


# A view that authenticates by itself, as an API with HTTP basic auth would: the way in "added later".
def basic_auth_view(request):
    scheme, _, encoded = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    username, _, password = base64.b64decode(encoded).decode().partition(":") if scheme == "Basic" else ("", "", "")
    user = authenticate(request, username=username, password=password)
    if user is None:
        return HttpResponse("no", status=401)
    return HttpResponse(user.get_username())


urlpatterns = [path("api/whoami", basic_auth_view)]


def basic(username, password):
    return {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


@pytest.mark.django_db
def test_a_way_in_added_later_is_throttled_too(settings, make_user):
    settings.ROOT_URLCONF = __name__
    make_user("api-user")
    client = Client()
    for _ in range(LIMIT):
        assert client.get("/api/whoami", **basic("api-user", "wrong")).status_code == 401
    response = client.get("/api/whoami", **basic("api-user", PASSWORD))
    assert response.status_code == 429
    assert response.content.decode() == MESSAGE


@pytest.mark.django_db
def test_successful_authentication_without_a_session_login_gives_its_attempt_back(settings, make_user):
    """An API authenticates every request and never calls login(): its successes must not pile up."""
    settings.ROOT_URLCONF = __name__
    make_user("api-user")
    client = Client()
    for _ in range(3 * LIMIT):
        assert client.get("/api/whoami", **basic("api-user", PASSWORD)).status_code == 200
    account_key, address_key = throttle.keys("127.0.0.1", "api-user")
    assert cache.get(account_key) is None
    assert cache.get(address_key, 0) == 0
    for _ in range(LIMIT - 1):
        assert client.get("/api/whoami", **basic("api-user", "wrong")).status_code == 401
    assert client.get("/api/whoami", **basic("api-user", PASSWORD)).status_code == 200


@pytest.mark.django_db
def test_authenticate_without_a_request_counts_per_account(make_user):
    make_user("script-user")
    for _ in range(LIMIT):
        assert authenticate(username="script-user", password="wrong") is None
    assert authenticate(username="script-user", password=PASSWORD) is None


@pytest.mark.django_db(transaction=True)
async def test_async_authentication_is_throttled_too(make_user):
    await asyncio.to_thread(make_user, "async-user")
    factory = RequestFactory()
    for _ in range(LIMIT):
        assert await aauthenticate(factory.post("/"), username="async-user", password="wrong") is None
    request = factory.post("/")
    assert await aauthenticate(request, username="async-user", password=PASSWORD) is None
    assert auth_backends.was_throttled(request)


@pytest.mark.django_db
def test_sessions_recorded_under_the_throttle_backend_still_log_in(client, make_user):
    """The test client's force_login() records the first backend; the throttle passes the session on."""
    user = make_user("forced")
    client.force_login(user)
    assert client.session["_auth_user_backend"] == "conferences.auth_backends.LoginThrottleBackend"
    assert client.get("/").status_code == 200


# --- Usernames counted the way Django normalises them -------------------------------------------


@pytest.mark.parametrize(
    "typed,counted",
    [
        ("ｖｉｅｗｅｒ２", "viewer2"),  # fullwidth: NFKC-equal
        ("Viewer2", "viewer2"),
        ("  viewer2 ", "viewer2"),
        ("VIEWER２", "viewer2"),
        ("ﬁnance", "finance"),  # the fi ligature
        ("Straße", "strasse"),
        (None, ""),
    ],
)
def test_look_alike_usernames_are_counted_as_one(typed, counted):
    assert throttle.normalize_username(typed) == counted
    assert throttle.keys("192.0.2.1", typed) == throttle.keys("192.0.2.1", counted)


@pytest.mark.django_db
@pytest.mark.parametrize("look_alike", ["ｖｉｅｗｅｒ２", "VIEWER2", " viewer2"])
@pytest.mark.parametrize("login", [site_login, admin_login])
def test_a_look_alike_username_does_not_skip_the_throttle(make_user, login, look_alike):
    """The attack of issue 11: 5 failures for viewer2, then the right password as ｖｉｅｗｅｒ２."""
    make_user("viewer2", is_staff=True)
    client = Client()
    for _ in range(LIMIT):
        assert login(client, "viewer2", "wrong").status_code == 200
    assert login(client, look_alike, PASSWORD).status_code == 429
    assert login(client, "viewer2", PASSWORD).status_code == 429
    assert not logged_in(client)


# --- The client address comes only from trusted proxies -----------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("proxies", ["", "10.0.0.0/8"])
def test_a_direct_client_cannot_choose_its_address_with_x_forwarded_for(make_user, trusted, proxies):
    """Rotating X-Forwarded-For from a peer that is not a trusted proxy changes nothing."""
    trusted(proxies)
    make_user("erin")
    client = Client(REMOTE_ADDR="203.0.113.66")
    for i in range(LIMIT):
        forged = f"198.51.100.{i + 1}"
        assert site_login(client, "erin", "wrong", HTTP_X_FORWARDED_FOR=forged).status_code == 200
    response = site_login(client, "erin", PASSWORD, HTTP_X_FORWARDED_FOR="198.51.100.200")
    assert response.status_code == 429


@pytest.mark.django_db
def test_behind_a_trusted_proxy_each_client_is_counted_apart(make_user, trusted):
    trusted("127.0.0.1")
    make_user("frank")
    proxy = Client(REMOTE_ADDR="127.0.0.1")
    for _ in range(LIMIT):
        assert site_login(proxy, "frank", "wrong", HTTP_X_FORWARDED_FOR="203.0.113.5").status_code == 200
    assert site_login(proxy, "frank", PASSWORD, HTTP_X_FORWARDED_FOR="203.0.113.5").status_code == 429
    # Another client behind the same proxy is not that guesser.
    other = Client(REMOTE_ADDR="127.0.0.1")
    assert site_login(other, "frank", PASSWORD, HTTP_X_FORWARDED_FOR="203.0.113.6").status_code == 302


@pytest.mark.django_db
@pytest.mark.parametrize(
    "attacker_peer,attacker_header",
    [
        ("203.0.113.66", "198.51.100.7"),  # straight to the web process, claiming to be the victim
        ("127.0.0.1", "198.51.100.7, 203.0.113.66"),  # through a proxy that appends to the client's header
    ],
)
def test_failures_sent_from_a_forged_victim_address_do_not_lock_the_victim_out(
    make_user, trusted, attacker_peer, attacker_header
):
    trusted("127.0.0.1")
    make_user("grace")
    attacker = Client(REMOTE_ADDR=attacker_peer)
    for _ in range(3 * LIMIT):
        site_login(attacker, "grace", "wrong", HTTP_X_FORWARDED_FOR=attacker_header)
    assert site_login(attacker, "grace", PASSWORD, HTTP_X_FORWARDED_FOR=attacker_header).status_code == 429
    victim = Client(REMOTE_ADDR="127.0.0.1")  # through nginx, which writes X-Forwarded-For: $remote_addr
    assert site_login(victim, "grace", PASSWORD, HTTP_X_FORWARDED_FOR="198.51.100.7").status_code == 302


@pytest.mark.django_db
def test_ipv6_clients_are_counted_by_their_64(make_user):
    make_user("heidi")
    for i in range(LIMIT):
        assert site_login(Client(REMOTE_ADDR=f"2001:db8:1:2::{i + 1:x}"), "heidi", "wrong").status_code == 200
    assert site_login(Client(REMOTE_ADDR="2001:db8:1:2:ffff::1"), "heidi", PASSWORD).status_code == 429
    assert site_login(Client(REMOTE_ADDR="2001:db8:1:3::1"), "heidi", PASSWORD).status_code == 302


@pytest.mark.parametrize(
    "proxies,peer,header,expected",
    [
        ("", "203.0.113.1", "198.51.100.1", "203.0.113.1"),
        ("127.0.0.1", "203.0.113.1", "198.51.100.1", "203.0.113.1"),
        ("127.0.0.1", "127.0.0.1", "198.51.100.1", "198.51.100.1"),
        ("127.0.0.1", "127.0.0.1", "", "127.0.0.1"),
        ("127.0.0.1", "127.0.0.1", "6.6.6.6, 198.51.100.1", "198.51.100.1"),
        ("127.0.0.1,10.0.0.0/8", "127.0.0.1", "6.6.6.6, 198.51.100.1, 10.1.2.3", "198.51.100.1"),
        ("127.0.0.1,10.0.0.0/8", "127.0.0.1", "10.9.9.9, 10.1.2.3", "10.9.9.9"),
        # Garbage stops the walk at the last hop that could be checked, never at the garbage.
        ("127.0.0.1", "127.0.0.1", "not-an-ip", "127.0.0.1"),
        ("127.0.0.1,10.0.0.0/8", "127.0.0.1", "198.51.100.1, bogus, 10.1.2.3", "10.1.2.3"),
        ("127.0.0.1", "127.0.0.1", "198.51.100.1:4444", "127.0.0.1"),
        ("127.0.0.1", "127.0.0.1", "," * 500, "127.0.0.1"),
        ("127.0.0.1", "::ffff:127.0.0.1", "198.51.100.1", "198.51.100.1"),
        ("::1", "::1", "2001:db8::5", "2001:db8::5"),
        ("", "::ffff:203.0.113.9", "", "203.0.113.9"),
        ("", "", "198.51.100.1", ""),
    ],
)
def test_client_address(trusted, proxies, peer, header, expected):
    trusted(proxies)
    request = RequestFactory().get("/", REMOTE_ADDR=peer, HTTP_X_FORWARDED_FOR=header)
    assert client_address(request) == expected


# --- Counting is atomic -------------------------------------------------------------------------

_reached = []
_reached_lock = threading.Lock()


class CountingBackend(ModelBackend):
    """ModelBackend that records each password check and holds it open, widening any race."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        with _reached_lock:
            _reached.append(username)
        time.sleep(0.05)
        return super().authenticate(request, username=username, password=password, **kwargs)


@pytest.fixture(params=["redis", "locmem"])
def shared_cache(request, settings):
    """The cache of this test: the project's Redis cache on the test Redis (its own key prefix), or locmem."""
    if request.param == "locmem":
        yield request.param
        return
    url = request.getfixturevalue("redis_url")
    prefix = "test-login-throttle"
    client = redis.Redis.from_url(url)

    def delete_counts():  # not cache.clear(): that would empty the whole Redis database
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)

    delete_counts()
    settings.CACHES = {"default": {**env.caches_for(url)["default"], "KEY_PREFIX": prefix}}
    yield request.param
    settings.CACHES = env.caches_for(None)
    delete_counts()
    client.close()


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("limit", ["account", "address"])
def test_guesses_sent_at_once_reach_the_password_check_at_most_limit_times(
    settings, make_user, shared_cache, limit, monkeypatch
):
    settings.AUTHENTICATION_BACKENDS = [
        "conferences.auth_backends.LoginThrottleBackend",
        f"{__name__}.CountingBackend",
    ]
    if limit == "account":
        make_user("ivan", is_staff=True)
        usernames = ["ivan"] * 20
    else:
        monkeypatch.setattr(throttle, "MAX_FAILURES_PER_ADDRESS", LIMIT)
        usernames = [f"user-{i}" for i in range(20)]
    _reached.clear()
    start = threading.Barrier(len(usernames))
    statuses = []

    def guess(username):
        try:
            client = Client(REMOTE_ADDR="198.51.100.20")
            start.wait(timeout=10)
            response = admin_login(client, username, "wrong")
            with _reached_lock:
                statuses.append(response.status_code)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=guess, args=(name,)) for name in usernames]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(statuses) == len(usernames)
    assert len(_reached) == LIMIT, f"{len(_reached)} guesses reached the password check ({shared_cache})"
    assert sorted(statuses) == [200] * LIMIT + [429] * (len(usernames) - LIMIT)


# --- ?next pointing at the login page -----------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "next_url",
    [
        "/accounts/login/",
        "/accounts/login/?next=/accounts/login/",
        "/accounts/login/?foo=1",
        "http://testserver/accounts/login/",
        "/accounts/%6Cogin/",
        "https://evil.example/",
    ],
)
def test_a_logged_in_user_sent_to_the_login_page_goes_to_the_room_list(client, make_user, next_url):
    client.force_login(make_user())
    response = client.get("/accounts/login/", {"next": next_url})
    assert response.status_code == 302
    assert response["Location"] == "/"


@pytest.mark.django_db
def test_a_logged_in_user_with_a_real_next_still_goes_there(client, make_user, conference):
    client.force_login(make_user())
    response = client.get("/accounts/login/", {"next": "/conferences/sales/"})
    assert response.status_code == 302
    assert response["Location"] == "/conferences/sales/"


@pytest.mark.django_db
def test_logging_in_with_next_pointing_at_the_login_page_goes_to_the_room_list(client, make_user):
    make_user("judy")
    response = client.post("/accounts/login/?next=/accounts/login/", {"username": "judy", "password": PASSWORD})
    assert response.status_code == 302
    assert response["Location"] == "/"


# --- The shipped deployment files ---------------------------------------------------------------


def _config_lines(path):
    return [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]


def test_shipped_nginx_overwrites_x_forwarded_for_in_every_proxied_location():
    text = "\n".join(_config_lines(ROOT / "deploy/nginx/conference.conf"))
    locations = re.findall(r"location\s+[^{]+\{([^}]*)\}", text)
    proxied = [body for body in locations if "proxy_pass" in body]
    assert len(proxied) >= 2
    for body in proxied:
        values = re.findall(r"proxy_set_header\s+X-Forwarded-For\s+([^;]+);", body, flags=re.IGNORECASE)
        assert values == ["$remote_addr"], body
    assert "$proxy_add_x_forwarded_for" not in text


def shipped_web_command():
    """The ExecStart of the shipped web unit, as words (``%i`` still in it)."""
    lines = _config_lines(ROOT / "deploy/systemd/conference-web@.service")
    (exec_start,) = [line.split("=", 1)[1] for line in lines if line.startswith("ExecStart=")]
    return shlex.split(exec_start)


def test_shipped_web_command_lines_do_not_believe_proxy_headers():
    units = sorted((ROOT / "deploy/systemd").glob("*.service"))
    assert units
    for unit in units:
        for line in _config_lines(unit):
            if line.startswith("ExecStart="):
                assert "--proxy-headers" not in line and "--forwarded-allow-ips" not in line, unit.name
    # The product's command, whose uvicorn settings turn proxy headers off (tests/test_serve.py).
    assert shipped_web_command()[1:3] == ["manage.py", "serve"]
    for script in [ROOT / "Makefile", *sorted((ROOT / "scripts").iterdir())]:
        if script.is_file():
            assert "--proxy-headers" not in "\n".join(_config_lines(script)), script.name


# --- Over real HTTP, against the web process started as the systemd unit starts it ---------------


class ShippedWeb(Processes):
    """The suite's processes, with the web process started by the shipped unit's command line."""

    def start_web(self):
        words = shipped_web_command()
        words[0] = sys.executable
        self.web = self._spawn("web", *(word.replace("%i", str(self.port)) for word in words))


@pytest.fixture
def shipped_web(redis_url, tmp_path, settings):
    """Start the shipped web process with extra environment; its cache (the throttle's counts) on the test Redis."""
    # Users made from here on get passwords the web process's default hashers can check.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    started = []
    client = redis.Redis.from_url(redis_url)

    def clear_counts():
        for key in client.scan_iter("conferences:*login-attempts*"):
            client.delete(key)

    def start(**environ):
        clear_counts()
        stack = ShippedWeb({**base_env(database_url(), redis_url), **environ}, "unused", tmp_path / "logs")
        started.append(stack)
        stack.start_web()
        asyncio.run(stack.web_up())
        return f"http://127.0.0.1:{stack.port}"

    yield start
    for stack in started:
        stack.close()
    clear_counts()
    client.close()


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_real_web_process_rotating_x_forwarded_for_does_not_defeat_the_admin_login_throttle(make_user, shipped_web):
    base = shipped_web()
    make_user("staffer", is_staff=True)
    make_user("control", is_staff=True)
    # The right password works from this client when no guessing came first.
    assert http_login(base, "/admin/login/", "control", PASSWORD, "198.51.100.1").status_code == 302
    for i in range(LIMIT):
        response = http_login(base, "/admin/login/", "staffer", "wrong", f"198.51.100.{i + 1}")
        assert response.status_code == 200, response.text[:300]
    response = http_login(base, "/admin/login/", "staffer", PASSWORD, "198.51.100.99")
    assert response.status_code == 429
    assert MESSAGE in response.text
    assert "sessionid" not in response.cookies
    # One throttle for every way in: the site login refuses the account too.
    assert http_login(base, "/accounts/login/", "staffer", PASSWORD, "198.51.100.100").status_code == 429


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_real_web_process_behind_a_declared_proxy_counts_each_forwarded_client(make_user, shipped_web):
    """With DJANGO_TRUSTED_PROXIES=127.0.0.1 (the shipped nginx), the header nginx writes is believed."""
    base = shipped_web(DJANGO_TRUSTED_PROXIES="127.0.0.1")
    make_user("staffer", is_staff=True)
    for _ in range(LIMIT):
        assert http_login(base, "/admin/login/", "staffer", "wrong", "203.0.113.5").status_code == 200
    assert http_login(base, "/admin/login/", "staffer", PASSWORD, "203.0.113.5").status_code == 429
    response = http_login(base, "/admin/login/", "staffer", PASSWORD, "203.0.113.6")
    assert response.status_code == 302
    assert "sessionid" in response.cookies
