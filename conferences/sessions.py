"""Is a socket's login session still good? The check Django makes on every request, for sockets.

An open WebSocket was authenticated once, at its handshake. Logout and
access changes are pushed to it (conferences/signals.py), but only for changes
that send Django's signals; a password set by a script, a session deleted in
the database or a user deactivated with a queryset ``update()`` send none. So
open sockets look again, periodically, the way ``django.contrib.auth.get_user``
does for a request: the session through the configured session engine (its
expiry included), the backend that logged the user in, the user row, and the
session's auth hash, which changes with the password.

Unlike ``get_user`` this has no side effects: it neither flushes a session
that fails the check nor cycles its key on a fallback secret (a socket has
no cookie to hand a new key to; the browser's next request does that).
"""

from importlib import import_module

from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model, load_backend
from django.contrib.auth.backends import ModelBackend
from django.contrib.sessions.backends import db as db_sessions
from django.db import connection
from django.utils import timezone
from django.utils.crypto import constant_time_compare


def _session_data(session_key):
    """The session's data, as ``SessionStore.load()`` gives it: ``{}`` when gone, expired or tampered with.

    With Django's plain database engine (the default) the row is read with one
    plain statement instead of a QuerySet: the same row, the same expiry test,
    the same ``decode``, at a fifth of the CPU (every socket's handshake and
    periodic check does this; in a connect storm the ORM's query building was
    the web process's largest cost).
    """
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    if type(store) is not db_sessions.SessionStore or store.session_key is None:
        return store.load()
    table = connection.ops.quote_name(store.model._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT session_data FROM {table} WHERE session_key = %s AND expire_date > %s",  # noqa: S608
            [store.session_key, timezone.now()],
        )
        row = cursor.fetchone()
    return store.decode(row[0]) if row is not None else {}


def _backend_user(backend_path, user_id):
    """``load_backend(backend_path).get_user(user_id)``; for ModelBackend, the row read with one plain statement."""
    backend = load_backend(backend_path)
    if type(backend) is not ModelBackend:
        return backend.get_user(user_id)
    model = get_user_model()
    fields = model._meta.concrete_fields
    columns = ", ".join(connection.ops.quote_name(field.column) for field in fields)
    table = connection.ops.quote_name(model._meta.db_table)
    pk_column = connection.ops.quote_name(model._meta.pk.column)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {columns} FROM {table} WHERE {pk_column} = %s", [user_id])  # noqa: S608
        row = cursor.fetchone()
    if row is None:
        return None
    converters = connection.ops.get_db_converters
    values = []
    for field, value in zip(fields, row, strict=True):
        expression = field.get_col(model._meta.db_table)
        for converter in converters(expression) + field.get_db_converters(connection):
            value = converter(value, expression, connection)
        values.append(value)
    user = model.from_db(connection.alias, [field.attname for field in fields], values)
    return user if backend.user_can_authenticate(user) else None


def session_user(session_key):
    """The active user logged in with ``session_key``, freshly read, or ``None``."""
    if not session_key:
        return None
    data = _session_data(session_key)  # {} when the session is gone, expired or tampered with
    user_id = data.get(SESSION_KEY)
    backend_path = data.get(BACKEND_SESSION_KEY)
    if user_id is None or backend_path not in settings.AUTHENTICATION_BACKENDS:
        return None
    try:
        user_id = get_user_model()._meta.pk.to_python(user_id)
    except Exception:  # noqa: BLE001 (a malformed id in the session: not logged in)
        return None
    user = _backend_user(backend_path, user_id)  # None when missing or inactive
    if user is None or not user.is_active:
        return None
    session_hash = data.get(HASH_SESSION_KEY)
    if not session_hash:
        return None
    current = constant_time_compare(session_hash, user.get_session_auth_hash())
    if not current and not any(
        constant_time_compare(session_hash, fallback) for fallback in user.get_session_auth_fallback_hash()
    ):
        return None
    from conferences import twofactor  # (its middleware imports the auth modules this one is imported by)

    if twofactor.session_is_pending(user, data):
        return None  # a staff session that still owes its second factor: not logged in, for sockets too
    return user


class SessionKeyMiddleware:
    """Put the handshake's session key into ``scope["session_key"]``: no database hop at the handshake.

    Channels' ``AuthMiddlewareStack`` loads the session and then the user at
    every handshake, each through the process's one thread-sensitive database
    thread: in a connect storm every socket of the process waited there in
    turn. The consumers check the session themselves with ``session_user``,
    from fresh rows, in their one connect hop on the web's database threads
    (conferences/dbthreads.py).
    """

    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        key = scope.get("cookies", {}).get(settings.SESSION_COOKIE_NAME) or None
        return await self.inner({**scope, "session_key": key}, receive, send)


def SessionKeyMiddlewareStack(inner):  # noqa: N802 (named like Channels' AuthMiddlewareStack)
    from channels.sessions import CookieMiddleware

    return CookieMiddleware(SessionKeyMiddleware(inner))
