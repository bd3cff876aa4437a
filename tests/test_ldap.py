"""Logins from a company directory, against a real OpenLDAP server (issue 19 points 1, 4 and 5).

A throwaway slapd of the tests' own (scripts/ensure-slapd: Debian's package, on loopback, a free
port, its own configuration and database in a temporary folder), seeded from tests/ldap/seed.ldif
and reset to it before every test. A slapd that cannot be brought up fails the run: nothing here
is ever skipped. Changes to the directory are made as its administrator would (ldapmodify's
operations through python-ldap); logins go through the site's login page.
"""

import asyncio
import io
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import ldap
import ldap.modlist
import ldif
import pytest
from asgiref.sync import sync_to_async
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.contrib.auth.models import Group, User
from django.contrib.sessions.models import Session
from django.core.cache import cache
from django.core.management import CommandError, call_command
from django.test import Client

from conferences import access, consumers, directory, throttle, tokens
from conferences.models import ApiToken, AsteriskServer, ConferenceAccess
from conferencesite import env
from conferencesite.asgi import application
from tests.sockets import closed_with, frame
from tests.stack import base_env, database_url, free_port, run_manage

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "tests" / "ldap" / "seed.ldif"
BASE = "dc=example,dc=test"
ADMIN = (f"cn=admin,{BASE}", "admin-secret")
BACKEND = "conferences.directory.DirectoryBackend"
WRONG = "Your username and password didn't match"  # the page's message for any wrong password
TIMEOUT = 2  # LDAP_TIMEOUT in these tests

MODERATOR = ConferenceAccess.Role.MODERATOR
VIEWER = ConferenceAccess.Role.VIEWER


def person(uid):
    return f"uid={uid},ou=people,{BASE}"


def group_dn(cn):
    return f"cn={cn},ou=groups,{BASE}"


class Slapd:
    """The tests' slapd: started and stopped with scripts/ensure-slapd, reset to the seed through LDAP."""

    def __init__(self, folder, port):
        self.folder, self.port = folder, port
        self.uri = f"ldap://127.0.0.1:{port}"

    def start(self):
        result = subprocess.run(
            [str(ROOT / "scripts" / "ensure-slapd"), "start", str(self.folder), str(self.port)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0 or result.stdout.strip().splitlines()[-1:] != [self.uri]:
            pytest.fail(f"slapd did not start (scripts/ensure-slapd):\n{result.stdout}\n{result.stderr}")

    def stop(self):
        subprocess.run([str(ROOT / "scripts" / "ensure-slapd"), "stop", str(self.folder)], check=True, timeout=30)

    def admin(self):
        connection = ldap.initialize(self.uri)
        connection.simple_bind_s(*ADMIN)
        return connection

    def reset(self):
        """Delete everything below the base and add the seed again: each test starts from seed.ldif."""
        connection = self.admin()
        try:
            entries = connection.search_s(BASE, ldap.SCOPE_SUBTREE, "(objectClass=*)", ["1.1"])
            for dn, _ in sorted(entries, key=lambda entry: -entry[0].count(",")):
                if dn != BASE:
                    connection.delete_s(dn)
            with SEED.open("rb") as seed:
                records = ldif.LDIFRecordList(seed)
                records.parse()
            for dn, entry in records.all_records:
                if dn != BASE:
                    connection.add_s(dn, ldap.modlist.addModlist(entry))
        finally:
            connection.unbind_s()

    def modify(self, dn, *changes):
        connection = self.admin()
        try:
            connection.modify_s(dn, [(op, attr, [v.encode() for v in values]) for op, attr, values in changes])
        finally:
            connection.unbind_s()

    def remove_member(self, cn, uid):
        self.modify(group_dn(cn), (ldap.MOD_DELETE, "member", [person(uid)]))

    def delete(self, dn):
        connection = self.admin()
        try:
            connection.delete_s(dn)
        finally:
            connection.unbind_s()


@pytest.fixture(scope="session")
def slapd(tmp_path_factory):
    server = Slapd(tmp_path_factory.mktemp("slapd"), free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _fresh(slapd):
    slapd.reset()
    cache.clear()  # the login throttle's counts
    channel_layers.backends.clear()
    yield
    cache.clear()
    channel_layers.backends.clear()


def directory_environ(uri, **variables):
    environ = {
        "LDAP_SERVER_URI": uri,
        "LDAP_BIND_DN": f"cn=conference-sync,{BASE}",
        "LDAP_BIND_PASSWORD": "sync-pw",
        "LDAP_USER_SEARCH_BASE": f"ou=people,{BASE}",
        "LDAP_GROUP_SEARCH_BASE": f"ou=groups,{BASE}",
        "LDAP_TIMEOUT": str(TIMEOUT),
    }
    environ.update(variables)
    return {name: value for name, value in environ.items() if value is not None}


@pytest.fixture
def use_directory(settings, slapd):
    """Turn the directory on for this test, configured as the settings module does from LDAP_* variables."""
    local_backends = [path for path in django_settings.AUTHENTICATION_BACKENDS if path != BACKEND]

    def use(uri=None, **variables):
        for name, value in env.ldap_settings(environ=directory_environ(uri or slapd.uri, **variables)).items():
            setattr(settings, name, value)
        settings.LDAP_ENABLED = True
        settings.AUTHENTICATION_BACKENDS = [*local_backends, BACKEND]

    use()
    return use


def site_login(client, username, password):
    return client.post("/accounts/login/", {"username": username, "password": password})


def logged_in_as(client, username):
    user_id = client.session.get("_auth_user_id")
    return user_id is not None and User.objects.get(pk=user_id).username == username


def group_names(username):
    return set(User.objects.get(username=username).groups.values_list("name", flat=True))


@pytest.fixture
def sales(conference):
    """The sales room: sales-managers moderate it, sales view it."""
    AsteriskServer.objects.filter(pk=conference.server_id).update(connected=True)
    managers, _ = Group.objects.get_or_create(name="sales-managers")
    viewers, _ = Group.objects.get_or_create(name="sales")
    ConferenceAccess.objects.create(conference=conference, group=managers, role=MODERATOR)
    ConferenceAccess.objects.create(conference=conference, group=viewers, role=VIEWER)
    return conference


# --- Logging in -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_directory_user_logs_in_and_gets_the_mirrored_groups(use_directory):
    client = Client()
    response = site_login(client, "alice", "alice-pw")
    assert response.status_code == 302
    assert logged_in_as(client, "alice")
    assert client.session["_auth_user_backend"] == BACKEND
    alice = User.objects.get(username="alice")
    assert group_names("alice") == {"sales-managers", "sales"}
    assert (alice.first_name, alice.last_name, alice.email) == ("Alice", "Archer", "alice@example.test")
    # A directory account: marked, with no password that would let it in without the directory.
    assert directory.is_directory_account(alice) and not alice.has_usable_password()
    assert client.get("/").status_code == 200
    # A wrong directory password is a wrong password, like any other.
    response = site_login(Client(), "alice", "not-her-password")
    assert response.status_code == 200 and WRONG in response.content.decode()


@pytest.mark.django_db
def test_a_directory_user_in_a_moderator_group_moderates_the_room(use_directory, sales):
    client = Client()
    assert site_login(client, "alice", "alice-pw").status_code == 302
    alice = User.objects.get(username="alice")
    assert access.can_moderate(alice, sales)
    assert site_login(Client(), "bob", "bob-pw").status_code == 302
    bob = User.objects.get(username="bob")
    assert access.can_view(bob, sales) and not access.can_moderate(bob, sales)
    assert access.conference_role(User.objects.get(username="alice"), sales) == MODERATOR
    assert client.get(f"/conferences/{sales.slug}/").status_code == 200


@pytest.mark.django_db(transaction=True)
async def test_a_directory_user_s_pages_under_asgi(use_directory, sales):
    """The ASGI handler asks the session's backend for the user asynchronously (request.auser()): django-auth-ldap
    has no aget_user of its own, and every page of a directory user was a 500 under the real server."""
    from asgiref.sync import sync_to_async
    from django.test import AsyncClient

    login = await sync_to_async(site_login)(Client(), "alice", "alice-pw")  # makes the directory account
    assert login.status_code == 302
    alice = await User.objects.aget(username="alice")
    client = AsyncClient()
    await client.aforce_login(alice, backend=BACKEND)
    assert (await client.get(f"/conferences/{sales.slug}/")).status_code == 200
    assert (await client.get("/")).status_code == 200


@pytest.mark.django_db
def test_removed_from_the_group_between_two_logins_loses_it_at_the_next(use_directory, slapd, sales):
    client = Client()
    assert site_login(client, "alice", "alice-pw").status_code == 302
    assert access.can_moderate(User.objects.get(username="alice"), sales)
    client.post("/accounts/logout/")
    slapd.remove_member("sales-managers", "alice")
    assert site_login(client, "alice", "alice-pw").status_code == 302
    alice = User.objects.get(username="alice")
    assert group_names("alice") == {"sales"}
    assert not access.can_moderate(alice, sales)
    assert access.can_view(alice, sales)


@pytest.mark.django_db
def test_a_local_account_is_never_taken_over_by_the_directory(use_directory, make_user):
    """The directory's "root" may not log in as the local superuser "root"; the local password still works."""
    make_user("root", is_superuser=True, is_staff=True)
    response = site_login(Client(), "root", "root-pw")
    assert response.status_code == 200 and WRONG in response.content.decode()
    root = User.objects.get(username="root")
    assert not directory.is_directory_account(root) and root.groups.count() == 0
    assert site_login(Client(), "root", "pw-Tr0ub4dor").status_code == 302


@pytest.mark.django_db
def test_an_account_made_inactive_here_neither_logs_in_nor_keeps_its_session(use_directory):
    client = Client()
    assert site_login(client, "alice", "alice-pw").status_code == 302
    User.objects.filter(username="alice").update(is_active=False)
    assert client.get("/").status_code == 302  # to the login page: the session is not honoured
    assert WRONG in site_login(Client(), "alice", "alice-pw").content.decode()


@pytest.mark.django_db
def test_staff_and_superuser_flags_follow_directory_groups(use_directory, slapd):
    use_directory(LDAP_STAFF_GROUP=group_dn("conference-staff"), LDAP_SUPERUSER_GROUP=group_dn("nobody"))
    assert site_login(Client(), "carol", "carol-pw").status_code == 302
    carol = User.objects.get(username="carol")
    assert carol.is_staff and not carol.is_superuser
    slapd.remove_member("conference-staff", "carol")
    call_command("ldap_sync", stdout=io.StringIO())
    assert not User.objects.get(username="carol").is_staff


@pytest.mark.django_db
def test_nested_groups_and_a_mirror_list_leave_other_groups_alone(use_directory, slapd):
    """Active Directory's nested groups (here on groupOfNames); only the listed groups follow the directory."""
    use_directory(
        LDAP_GROUP_TYPE="activedirectory",
        LDAP_GROUP_FILTER="(objectClass=groupOfNames)",
        LDAP_MIRROR_GROUPS="everyone,sales-managers",
    )
    helpers = Group.objects.create(name="local-helpers")
    assert site_login(Client(), "bob", "bob-pw").status_code == 302
    bob = User.objects.get(username="bob")
    assert group_names("bob") == {"everyone"}  # through sales, which is in everyone; sales itself is not listed
    bob.groups.add(helpers)  # staff's own group: not the directory's to manage
    slapd.remove_member("sales", "bob")
    call_command("ldap_sync", stdout=io.StringIO())
    assert group_names("bob") == {"local-helpers"}


# --- The sync ------------------------------------------------------------------------------------


def _login_cookie(username, password):
    client = Client()
    assert site_login(client, username, password).status_code == 302
    return client.cookies["sessionid"].value


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


@pytest.mark.django_db(transaction=True)
async def test_removed_from_the_group_while_logged_in_the_sync_withdraws_it_and_closes_the_socket(
    use_directory, slapd, sales
):
    """dave moderates the room through sales-managers only: removed from it, the sync ends his open page at once."""
    session_key = await sync_to_async(_login_cookie)("dave", "dave-pw")
    communicator = await _room_socket(session_key)
    try:
        snapshot = await frame(communicator)
        assert snapshot["type"] == "snapshot" and snapshot["can_moderate"] is True
        await sync_to_async(slapd.remove_member)("sales-managers", "dave")
        started = time.monotonic()
        await sync_to_async(call_command)("ldap_sync", stdout=io.StringIO())
        # Closed by the membership change's signal, not by the sockets' periodic 30 s check.
        assert await closed_with(communicator) == consumers.CLOSE_FORBIDDEN
        assert time.monotonic() - started < 5
    finally:
        if not communicator.future.done():
            await communicator.disconnect()
    assert await sync_to_async(group_names)("dave") == set()
    dave = await sync_to_async(User.objects.get)(username="dave")
    assert dave.is_active  # only the group went: he still logs in, and sees what else he is granted


@pytest.mark.django_db
def test_the_sync_changes_nothing_that_did_not_change(use_directory, django_capture_on_commit_callbacks):
    assert site_login(Client(), "alice", "alice-pw").status_code == 302
    with django_capture_on_commit_callbacks() as callbacks:
        report = directory.sync_directory()
    assert (report.checked, report.changed, report.disabled) == (1, [], [])
    assert callbacks == []  # no save, no m2m change: no socket is told to re-check


@pytest.mark.parametrize("how", ["disabled filter", "active directory bit", "deleted"])
@pytest.mark.django_db(transaction=True)
async def test_disabled_in_the_directory_the_sync_deactivates_ends_sessions_and_revokes_tokens(
    use_directory, slapd, sales, make_user, how
):
    await sync_to_async(use_directory)(LDAP_DISABLED_FILTER="(employeeType=disabled)")
    # A local account with no password (an API client, say) is not the directory's: left alone.
    robot = await sync_to_async(make_user)("robot")
    await sync_to_async(robot.set_unusable_password)()
    await sync_to_async(robot.save)()
    session_key = await sync_to_async(_login_cookie)("alice", "alice-pw")
    other_session = await sync_to_async(_login_cookie)("alice", "alice-pw")
    alice = await sync_to_async(User.objects.get)(username="alice")
    _token, raw = await sync_to_async(tokens.create)(user=alice, name="script")
    communicator = await _room_socket(session_key)
    try:
        assert (await frame(communicator))["type"] == "snapshot"
        if how == "disabled filter":
            await sync_to_async(slapd.modify)(person("alice"), (ldap.MOD_ADD, "employeeType", ["disabled"]))
        elif how == "active directory bit":
            await sync_to_async(slapd.modify)(person("alice"), (ldap.MOD_REPLACE, "userAccountControl", ["514"]))
        else:
            await sync_to_async(slapd.remove_member)("sales", "alice")
            await sync_to_async(slapd.remove_member)("sales-managers", "alice")
            await sync_to_async(slapd.delete)(person("alice"))
        report = await sync_to_async(directory.sync_directory)()
        assert report.disabled == ["alice"]
        assert await closed_with(communicator) == consumers.CLOSE_NOT_LOGGED_IN
    finally:
        if not communicator.future.done():
            await communicator.disconnect()

    def check():
        alice = User.objects.get(username="alice")
        assert not alice.is_active
        assert not Session.objects.filter(session_key__in=[session_key, other_session]).exists()
        assert not ApiToken.objects.filter(user=alice, revoked=False).exists()
        assert tokens.authenticate(raw) is None
        assert User.objects.get(username="robot").is_active
        assert WRONG in site_login(Client(), "alice", "alice-pw").content.decode()

    await sync_to_async(check)()


@pytest.mark.django_db
def test_a_sync_that_would_disable_most_accounts_is_refused_until_allowed_by_hand(use_directory):
    names = ["alice", "bob", "carol", "dave", "root"]
    for name in names:
        assert site_login(Client(), name, f"{name}-pw").status_code == 302
    use_directory(LDAP_USER_FILTER="(&(uid=%(user)s)(employeeType=contractor))")  # a filter changed by mistake
    with pytest.raises(CommandError, match="5 of 5 accounts would be disabled"):
        call_command("ldap_sync")
    assert User.objects.filter(username__in=names, is_active=True).count() == 5
    with pytest.raises(CommandError, match="not for --loop"):
        call_command("ldap_sync", "--loop", "--allow-mass-disable")
    call_command("ldap_sync", "--allow-mass-disable", stdout=io.StringIO())
    assert User.objects.filter(username__in=names, is_active=True).count() == 0


@pytest.mark.django_db
def test_an_account_the_search_finds_twice_is_left_alone(use_directory):
    assert site_login(Client(), "alice", "alice-pw").status_code == 302
    use_directory(LDAP_USER_FILTER="(|(uid=%(user)s)(uid=bob))")
    assert directory.sync_directory().disabled == []
    assert User.objects.get(username="alice").is_active


# --- A directory that is down or hangs ------------------------------------------------------------


@pytest.mark.django_db
def test_a_directory_that_is_down_local_accounts_log_in_and_directory_logins_fail_cleanly(
    use_directory, slapd, make_user, caplog
):
    make_user("local")
    assert site_login(Client(), "alice", "alice-pw").status_code == 302
    slapd.stop()
    try:
        started = time.monotonic()
        assert site_login(Client(), "local", "pw-Tr0ub4dor").status_code == 302
        local_seconds = time.monotonic() - started
        started = time.monotonic()
        response = site_login(Client(), "alice", "alice-pw")
        directory_seconds = time.monotonic() - started
        assert response.status_code == 200 and WRONG in response.content.decode()
        assert "directory: looking up an account failed at ldap://" in caplog.text
        assert "Can't contact LDAP server" in caplog.text
        assert local_seconds < 1 and directory_seconds < TIMEOUT + 1
        print(
            f"directory down: local login {local_seconds:.3f} s, directory login refused in {directory_seconds:.3f} s"
        )
        # The sync changes nothing when it cannot read the directory, and says so.
        with pytest.raises(CommandError, match="the directory could not be read, nothing was changed"):
            call_command("ldap_sync")
        alice = User.objects.get(username="alice")
        assert alice.is_active and group_names("alice") == {"sales-managers", "sales"}
    finally:
        slapd.start()
    assert site_login(Client(), "alice", "alice-pw").status_code == 302


@pytest.fixture
def silent_server():
    """A TCP port that accepts connections (the kernel's backlog) and never answers: a hung directory."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    yield f"ldap://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


@pytest.mark.django_db
def test_a_directory_that_hangs_costs_a_login_at_most_its_timeout(use_directory, silent_server, make_user):
    use_directory(uri=silent_server)
    make_user("local")
    started = time.monotonic()
    response = site_login(Client(), "alice", "alice-pw")
    seconds = time.monotonic() - started
    assert response.status_code == 200 and WRONG in response.content.decode()
    assert TIMEOUT - 0.5 < seconds < TIMEOUT + 1.5, seconds
    print(f"directory hanging: directory login refused in {seconds:.3f} s (LDAP_TIMEOUT={TIMEOUT})")
    assert site_login(Client(), "local", "pw-Tr0ub4dor").status_code == 302
    started = time.monotonic()
    with pytest.raises(directory.DirectoryUnavailable):
        directory.sync_directory()
    assert time.monotonic() - started < TIMEOUT + 1.5


# --- Throttling --------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_directory_logins_pass_the_same_login_throttle(use_directory):
    client = Client()
    for _ in range(throttle.MAX_FAILURES_PER_ACCOUNT):
        assert site_login(client, "alice", "wrong").status_code == 200
    response = site_login(client, "alice", "alice-pw")
    assert response.status_code == 429  # even the right directory password, for a while
    assert "_auth_user_id" not in client.session
    assert not User.objects.filter(username="alice").exists()  # the directory was not even asked
    # Another directory account from the same address is not locked out by it.
    assert site_login(client, "bob", "bob-pw").status_code == 302


@pytest.mark.django_db
def test_directory_guesses_count_against_the_address_too(use_directory):
    """Guesses spread over many directory names from one address: the address's limit stops them."""
    guesser = Client(REMOTE_ADDR="203.0.113.7")
    names = ["alice", "bob", "carol", "dave", "erin", "root", "nobody", "x1", "x2", "x3"]
    per_name = throttle.MAX_FAILURES_PER_ADDRESS // len(names)
    for name in names:
        for _ in range(per_name):
            assert site_login(guesser, name, "guess").status_code == 200
    assert site_login(guesser, "carol", "carol-pw").status_code == 429
    assert site_login(Client(REMOTE_ADDR="198.51.100.9"), "carol", "carol-pw").status_code == 302


@pytest.mark.django_db
def test_a_directory_login_clears_the_accounts_failures(use_directory):
    client = Client()
    for _ in range(throttle.MAX_FAILURES_PER_ACCOUNT - 1):
        site_login(client, "alice", "wrong")
    assert site_login(client, "alice", "alice-pw").status_code == 302
    client.post("/accounts/logout/")
    for _ in range(throttle.MAX_FAILURES_PER_ACCOUNT - 1):
        assert site_login(client, "alice", "wrong").status_code == 200
    assert site_login(client, "alice", "alice-pw").status_code == 302


# --- The periodic sync ---------------------------------------------------------------------------------


def test_the_sync_loop_goes_on_after_a_failure_and_stops_when_told(caplog):
    stopping = threading.Event()
    calls = []

    def step():
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise directory.DirectoryUnavailable("ldap://dc.example.test: Can't contact LDAP server")
        stopping.set()
        return directory.SyncReport(checked=3)

    directory.run_sync_loop(minutes=0.001, stopping=stopping, step=step)
    assert len(calls) == 2
    assert "sync failed, nothing changed (ldap://dc.example.test: Can't contact LDAP server)" in caplog.text
    assert "3 account(s) checked" in caplog.text


async def test_the_embedded_sync_loop_runs_on_the_event_loop_until_told_to_stop(caplog):
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    calls = []

    def step():
        calls.append(threading.current_thread())
        if len(calls) == 2:
            loop.call_soon_threadsafe(stopping.set)
        return directory.SyncReport(checked=1)

    await asyncio.wait_for(directory.run_sync_loop_async(minutes=0.001, stopping=stopping, step=step), timeout=5)
    assert len(calls) == 2 and threading.main_thread() not in calls


@pytest.mark.django_db(transaction=True)
def test_ldap_sync_loop_runs_as_a_process_of_its_own_and_stops_on_sigterm(use_directory, slapd, redis_url):
    """The shipped unit's command (deploy/systemd/conference-ldap-sync.service): syncs at once, then every period."""
    assert site_login(Client(), "alice", "alice-pw").status_code == 302
    slapd.remove_member("sales-managers", "alice")
    environ = {**base_env(database_url(), redis_url), **directory_environ(slapd.uri), "LDAP_SYNC_MINUTES": "1"}
    process = subprocess.Popen(
        [sys.executable, "manage.py", "ldap_sync", "--loop"],
        cwd=ROOT,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while group_names("alice") != {"sales"}:
            assert process.poll() is None and time.monotonic() < deadline, "the sync did not withdraw the group"
            time.sleep(0.1)
        time.sleep(0.3)  # (its log line after the change)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
        out, err = process.communicate()
    assert "Syncing with the directory every 1 min" in out
    assert "1 account(s) checked, 1 changed, 0 disabled" in err


@pytest.mark.django_db
def test_ldap_sync_without_a_directory_says_so(settings):
    settings.LDAP_ENABLED = False
    with pytest.raises(CommandError, match="LDAP_SERVER_URI is not set"):
        call_command("ldap_sync")


# --- Configuration --------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_directory", [False, True])
def test_the_directory_comes_after_the_throttle_and_the_local_accounts_and_only_when_set(with_directory):
    """Unset LDAP_SERVER_URI: nothing changes."""
    assert env.ldap_settings(environ={}) is None
    result = run_manage(
        "shell",
        "-c",
        "from django.conf import settings; print(settings.LDAP_ENABLED, settings.AUTHENTICATION_BACKENDS)",
        **(directory_environ("ldap://127.0.0.1:1") if with_directory else {}),
    )
    assert result.returncode == 0, result.stderr
    local = ["conferences.auth_backends.LoginThrottleBackend", "django.contrib.auth.backends.ModelBackend"]
    expected = [*local, BACKEND] if with_directory else local
    assert result.stdout.strip().splitlines()[-1] == f"{with_directory} {expected!r}"


def test_settings_are_django_auth_ldaps():
    values = env.ldap_settings(
        environ=directory_environ(
            "ldaps://dc1.example.com, ldaps://dc2.example.com:636",
            LDAP_USER_FILTER="(sAMAccountName=%(user)s)",
            LDAP_DISABLED_FILTER="(userAccountControl:1.2.840.113556.1.4.803:=2)",
            LDAP_GROUP_TYPE="activeDirectory",
            LDAP_MIRROR_GROUPS="Sales managers, Helpdesk",
            LDAP_STAFF_GROUP=group_dn("conference-staff"),
            LDAP_START_TLS="False",
            LDAP_TIMEOUT="3",
        )
    )
    assert values["AUTH_LDAP_SERVER_URI"] == "ldaps://dc1.example.com ldaps://dc2.example.com:636"
    assert values["AUTH_LDAP_USER_SEARCH"].filterstr == (
        "(&(sAMAccountName=%(user)s)(!(userAccountControl:1.2.840.113556.1.4.803:=2)))"
    )
    assert type(values["AUTH_LDAP_GROUP_TYPE"]).__name__ == "NestedActiveDirectoryGroupType"
    assert values["AUTH_LDAP_GROUP_SEARCH"].filterstr == "(objectClass=group)"
    assert values["AUTH_LDAP_MIRROR_GROUPS"] == ["Sales managers", "Helpdesk"]
    assert values["AUTH_LDAP_USER_FLAGS_BY_GROUP"] == {"is_staff": group_dn("conference-staff")}
    options = values["AUTH_LDAP_CONNECTION_OPTIONS"]
    assert options[ldap.OPT_NETWORK_TIMEOUT] == 3 and options[ldap.OPT_TIMEOUT] == 3
    assert options[ldap.OPT_REFERRALS] == 0
    assert values["LDAP_SYNC_MINUTES"] == 5
    # Active Directory also binds with a user principal name.
    upn = env.ldap_settings(environ=directory_environ("ldap://dc1", LDAP_BIND_DN="conference-sync@example.com"))
    assert upn["AUTH_LDAP_BIND_DN"] == "conference-sync@example.com"


def test_every_ldap_variable_is_documented():
    example = (ROOT / ".env.example").read_text()
    readme = (ROOT / "README.md").read_text()
    for name in env.LDAP_VARIABLES:
        assert f"# {name}=" in example, name
        assert f"`{name}`" in readme, name


@pytest.mark.parametrize(
    "variables,message",
    [
        ({"LDAP_SERVER_URI": "dc1.example.com"}, "LDAP_SERVER_URI must be ldap://host"),
        ({"LDAP_SERVER_URI": "ldap://dc1.example.com:ldap"}, "LDAP_SERVER_URI: the port is not a number"),
        ({"LDAP_USER_SEARCH_BASE": None}, "LDAP_USER_SEARCH_BASE must be set"),
        ({"LDAP_USER_SEARCH_BASE": "people"}, "LDAP_USER_SEARCH_BASE must be a distinguished name"),
        ({"LDAP_BIND_PASSWORD": None}, "LDAP_BIND_DN and LDAP_BIND_PASSWORD go together"),
        ({"LDAP_USER_FILTER": "(uid=%s)"}, "LDAP_USER_FILTER must hold %(user)s"),
        ({"LDAP_USER_FILTER": "uid=%(user)s"}, "LDAP_USER_FILTER must be an LDAP filter"),
        ({"LDAP_DISABLED_FILTER": "(employeeType=disabled"}, "LDAP_DISABLED_FILTER must be an LDAP filter"),
        ({"LDAP_GROUP_TYPE": "nis"}, "LDAP_GROUP_TYPE must be one of"),
        ({"LDAP_GROUP_SEARCH_BASE": None, "LDAP_MIRROR_GROUPS": "a"}, "LDAP_MIRROR_GROUPS needs LDAP_GROUP_SEARCH"),
        ({"LDAP_MIRROR_GROUPS": "a,,b"}, "LDAP_MIRROR_GROUPS must be a comma-separated list"),
        ({"LDAP_BIND_DN": "conference sync"}, "LDAP_BIND_DN must be a distinguished name"),
        ({"LDAP_STAFF_GROUP": "staff"}, "LDAP_STAFF_GROUP must be a distinguished name"),
        ({"LDAP_START_TLS": "perhaps"}, "LDAP_START_TLS must be True or False"),
        ({"LDAP_TIMEOUT": "0"}, "LDAP_TIMEOUT must be at least 1"),
        ({"LDAP_SYNC_MINUTES": "often"}, "LDAP_SYNC_MINUTES must be a whole number"),
        ({"LDAP_CA_FILE": "/nonexistent/ca.pem"}, "LDAP_CA_FILE must be a readable file"),
        ({"LDAP_SERVER_URI": None}, "LDAP_BIND_DN is set but LDAP_SERVER_URI is not"),
    ],
)
def test_malformed_ldap_settings_stop_start_up_naming_the_variable(variables, message):
    environ = {**directory_environ("ldap://127.0.0.1:3389"), **variables}
    result = run_manage("check", **{name: value for name, value in environ.items() if value is not None})
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr and "sync-pw" not in result.stderr
