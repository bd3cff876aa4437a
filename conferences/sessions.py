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
from django.utils.crypto import constant_time_compare


def session_user(session_key):
    """The active user logged in with ``session_key``, freshly read, or ``None``."""
    if not session_key:
        return None
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    data = store.load()  # {} when the session is gone, expired or tampered with
    user_id = data.get(SESSION_KEY)
    backend_path = data.get(BACKEND_SESSION_KEY)
    if user_id is None or backend_path not in settings.AUTHENTICATION_BACKENDS:
        return None
    try:
        user_id = get_user_model()._meta.pk.to_python(user_id)
    except Exception:  # noqa: BLE001 (a malformed id in the session: not logged in)
        return None
    user = load_backend(backend_path).get_user(user_id)  # None when missing or inactive
    if user is None or not user.is_active:
        return None
    session_hash = data.get(HASH_SESSION_KEY)
    if not session_hash:
        return None
    if constant_time_compare(session_hash, user.get_session_auth_hash()):
        return user
    if any(constant_time_compare(session_hash, fallback) for fallback in user.get_session_auth_fallback_hash()):
        return user
    return None


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
