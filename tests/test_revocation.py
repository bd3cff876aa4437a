"""Revocation that does not depend on signals: sockets re-check logins and grants from fresh rows.

Every change here is made the way a script, a sync job or a directory import
makes it — queryset ``update()``, raw SQL, the session table — so Django's
signals (which push changes to sockets at once) never fire. The periodic
check of each socket still finds it within SESSION_CHECK_SECONDS (lowered
here), and moderator actions check the fresh rows every time.
"""

import pytest
from asgiref.sync import sync_to_async
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import User
from django.contrib.sessions.models import Session
from django.db import connection

from conferences import consumers, sessions
from conferences.models import AsteriskServer, ConferenceAccess
from conferencesite.asgi import application
from tests.sockets import closed_with, frame, refused, send

pytestmark = pytest.mark.django_db(transaction=True)

db = sync_to_async


@pytest.fixture(autouse=True)
def fresh_layer():
    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture
def quick_checks(monkeypatch):
    monkeypatch.setattr(consumers, "SESSION_CHECK_SECONDS", 0.2)


def test_the_worst_case_delay_is_at_most_30_seconds():
    """docs/reliability.md promises it: a revoked login or grant ends a socket within 30 s."""
    assert consumers.SESSION_CHECK_SECONDS <= 30


def _raw(sql, params):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


async def test_a_password_changed_without_signals_closes_room_and_list_sockets(login, viewer, room, quick_checks):
    cookie = f"sessionid={await db(login)(viewer)}".encode()
    headers = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1"), (b"cookie", cookie)]
    room_socket = WebsocketCommunicator(application, "/ws/conferences/sales/", headers=headers)
    list_sock = WebsocketCommunicator(application, "/ws/conferences/", headers=headers)
    await room_socket.connect()
    await list_sock.connect()
    await frame(room_socket)
    await frame(list_sock)
    assert await room_socket.receive_nothing(timeout=0.5)  # the checks pass while nothing changed
    await db(User.objects.filter(pk=viewer.pk).update)(password=make_password("new-Pa55word!"))
    assert await closed_with(room_socket) == consumers.CLOSE_NOT_LOGGED_IN
    assert await closed_with(list_sock) == consumers.CLOSE_NOT_LOGGED_IN


async def test_a_password_changed_in_the_admin_closes_the_socket_at_once(connect, viewer, room):
    """The signal path: no waiting for the periodic check (which runs every 30 s here)."""
    communicator, _ = await connect(viewer)
    await frame(communicator)
    user = await db(User.objects.get)(pk=viewer.pk)
    user.set_password("new-Pa55word!")
    await db(user.save)()
    assert await closed_with(communicator) == consumers.CLOSE_NOT_LOGGED_IN


async def test_a_session_deleted_from_the_table_closes_the_socket(connect, viewer, room, quick_checks, client):
    communicator, _ = await connect(viewer)
    await frame(communicator)
    await db(Session.objects.all().delete)()
    assert await closed_with(communicator) == consumers.CLOSE_NOT_LOGGED_IN


async def test_a_user_deactivated_by_update_is_closed(connect, viewer, room, quick_checks):
    communicator, _ = await connect(viewer)
    await frame(communicator)
    await db(User.objects.filter(pk=viewer.pk).update)(is_active=False)
    assert await closed_with(communicator) == consumers.CLOSE_NOT_LOGGED_IN


async def test_a_grant_deleted_with_raw_sql_closes_the_socket(connect, viewer, room, quick_checks):
    communicator, _ = await connect(viewer)
    await frame(communicator)
    table = ConferenceAccess._meta.db_table
    await db(_raw)(f"DELETE FROM {table} WHERE user_id = %s", [viewer.pk])  # noqa: S608
    assert await closed_with(communicator) == consumers.CLOSE_FORBIDDEN


async def test_a_group_membership_removed_with_raw_sql_closes_the_socket(
    connect, room, make_user, grant, group, quick_checks
):
    member = await db(make_user)("member", groups=[group])
    await db(grant)(room, group=group)
    communicator, _ = await connect(member)
    await frame(communicator)
    table = User.groups.through._meta.db_table
    await db(_raw)(f"DELETE FROM {table} WHERE user_id = %s", [member.pk])  # noqa: S608
    assert await closed_with(communicator) == consumers.CLOSE_FORBIDDEN


async def test_a_role_lowered_by_update_refuses_actions_at_once_and_refreshes_the_page(
    connect, moderator, room, monkeypatch
):
    await db(AsteriskServer.objects.filter(pk=room.server_id).update)(connected=True)
    communicator, _ = await connect(moderator)
    assert (await frame(communicator))["can_moderate"] is True
    await db(ConferenceAccess.objects.filter(user=moderator).update)(role="viewer")
    # The next action is checked against the fresh grant, before any periodic check ran.
    reply = await send(communicator, {"action": "lock", "request_id": "l"})
    assert reply == refused("l", "you may not moderate this room")
    # The periodic check sends the page a snapshot without its moderator controls.
    monkeypatch.setattr(consumers, "SESSION_CHECK_SECONDS", 0.2)
    communicator2, _ = await connect(moderator)  # a socket opened with the new role has none either
    assert (await frame(communicator2))["can_moderate"] is False


async def test_the_periodic_check_notices_a_lower_role(connect, moderator, room, quick_checks):
    communicator, _ = await connect(moderator)
    assert (await frame(communicator))["can_moderate"] is True
    await db(ConferenceAccess.objects.filter(user=moderator).update)(role="viewer")
    snapshot = await frame(communicator, timeout=3)
    assert snapshot["type"] == "snapshot" and snapshot["can_moderate"] is False


async def test_a_superuser_demoted_by_update_can_no_longer_moderate(connect, room, make_user, quick_checks):
    boss = await db(make_user)("boss", is_superuser=True, is_staff=True)
    await db(AsteriskServer.objects.filter(pk=room.server_id).update)(connected=True)
    communicator, _ = await connect(boss)
    assert (await frame(communicator))["can_moderate"] is True
    await db(User.objects.filter(pk=boss.pk).update)(is_superuser=False)
    reply = await send(communicator, {"action": "unlock", "request_id": "u"})
    assert reply["ok"] is False and reply["error"] == "you may not moderate this room"
    assert await closed_with(communicator) == consumers.CLOSE_FORBIDDEN  # no grant of its own


async def test_moderation_checks_the_session_too(connect, moderator, room):
    """Between a password change and the next check, the socket may not act any more."""
    await db(AsteriskServer.objects.filter(pk=room.server_id).update)(connected=True)
    communicator, _ = await connect(moderator)
    await frame(communicator)
    await db(User.objects.filter(pk=moderator.pk).update)(password=make_password("new-Pa55word!"))
    reply = await send(communicator, {"action": "lock", "request_id": "l"})
    assert reply == refused("l", "you are not logged in")


# --- the session check itself, for every session engine ---------------------------------------


@pytest.mark.parametrize(
    "engine",
    [
        "django.contrib.sessions.backends.db",
        "django.contrib.sessions.backends.cache",
        "django.contrib.sessions.backends.cached_db",
        "django.contrib.sessions.backends.signed_cookies",
    ],
)
def test_session_user_follows_the_configured_engine(settings, client, make_user, engine):
    settings.SESSION_ENGINE = engine
    user = make_user("alice")
    client.force_login(user)
    key = client.cookies["sessionid"].value
    assert sessions.session_user(key) == user
    User.objects.filter(pk=user.pk).update(password=make_password("new-Pa55word!"))
    assert sessions.session_user(key) is None
    assert sessions.session_user("") is None
    assert sessions.session_user("no-such-session") is None
    assert sessions.session_user(key[:-1] + ("x" if key[-1] != "x" else "y")) is None


def test_session_user_honours_secret_key_fallbacks(settings, client, make_user):
    user = make_user("bob")
    client.force_login(user)
    key = client.cookies["sessionid"].value
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
    settings.SECRET_KEY = "a-rotated-secret-key-" + "x" * 40
    assert sessions.session_user(key) == user  # still valid through the fallback, as for requests
    assert Session.objects.filter(session_key=key).exists()  # and nothing was flushed or cycled


@pytest.mark.django_db
def test_the_plain_statements_read_what_the_session_engine_and_the_backend_read(make_user, client, settings):
    """sessions._session_data and _backend_user (plain statements) against SessionStore.load and ModelBackend."""
    from django.contrib.auth.backends import ModelBackend
    from django.contrib.sessions.backends.db import SessionStore
    from django.contrib.sessions.models import Session
    from django.utils import timezone

    from conferences import sessions

    user = make_user("plain", first_name="Ada", last_login=timezone.now())
    client.force_login(user)
    key = client.cookies["sessionid"].value
    assert sessions._session_data(key) == SessionStore(key).load() != {}
    backend = "django.contrib.auth.backends.ModelBackend"
    fast, slow = sessions._backend_user(backend, user.pk), ModelBackend().get_user(user.pk)
    assert fast == slow and fast.get_session_auth_hash() == slow.get_session_auth_hash()
    assert {f.attname: getattr(fast, f.attname) for f in fast._meta.concrete_fields} == {
        f.attname: getattr(slow, f.attname) for f in slow._meta.concrete_fields
    }
    assert sessions._backend_user(backend, 10**9) is None
    # Expired, unknown, malformed and tampered keys: nothing, as the engine says.
    Session.objects.filter(session_key=key).update(expire_date=timezone.now() - timezone.timedelta(seconds=1))
    assert sessions._session_data(key) == {} == SessionStore(key).load()
    for bad in ("nope", "x" * 40, "' OR 1=1 --"):
        assert sessions._session_data(bad) == {} == SessionStore(bad).load()
    # Inactive users are refused by the fast path too.
    type(user).objects.filter(pk=user.pk).update(is_active=False)
    assert sessions._backend_user(backend, user.pk) is None
