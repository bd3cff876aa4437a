"""Who is calling the API, and how often: a token or a logged-in browser, each throttled.

Two ways in, tried in this order:

- ``Authorization: Bearer <token>`` (conferences/tokens.py): a token that is
  unknown, expired, revoked or whose owner is inactive is a 401, never a
  fall-back to the session. A program cannot be made to send a header by
  another site, so token requests need no CSRF token.
- the Django session cookie of a logged-in browser, checked as every request
  of the site is (conferences/sessions.py, from fresh rows), with Django's
  CSRF check for every unsafe method (POST): a cookie is sent by the browser
  whatever page made the request. Ninja's own views are CSRF-exempt, so the
  check is made here, before any database hop.

Both answer a ``Caller``: the user, the token (or None) and what the token
narrows (conferences/tokens.py: the rooms, read-only or moderate).

The throttle counts requests per token (per user for session requests) in
Django's cache (Redis when REDIS_URL is set: every web process shares the
counts), ``API_RATE_LIMIT`` requests per ``API_RATE_WINDOW`` seconds, in
windows aligned to the clock (conferences/counters.py: atomic, and a count
ends with its window); over it, 429 with ``Retry-After``, the seconds until
the window ends. Authentication and the count are one hop on the web's
database threads: nothing here blocks the event loop.
"""

import math
import time

from django.conf import settings
from ninja.security import APIKeyCookie, HttpBearer
from ninja.utils import check_csrf

from conferences import access, counters, dbthreads, tokens
from conferences.api import errors
from conferences.sessions import session_user

SAFE_METHODS = ("GET", "HEAD", "OPTIONS", "TRACE")


class Caller:
    """Who an API request acts for: ``user`` and, for token requests, ``token``."""

    __slots__ = ("user", "token")

    def __init__(self, user, token=None):
        self.user, self.token = user, token

    @property
    def via(self):
        """The token's name, kept in the history beside the actor (None for a session)."""
        return self.token.name if self.token is not None else None

    @property
    def throttle_key(self):
        if self.token is not None:
            return f"api-rate:token:{self.token.pk}"
        return f"api-rate:user:{self.user.pk}"

    def role(self, conference):
        """``"moderator"``, ``"viewer"`` or None: the user's role, narrowed by the token."""
        if self.token is not None:
            return tokens.conference_role(self.token, conference)
        return access.conference_role(self.user, conference)

    def rooms(self):
        """The rooms this caller may see, as a queryset."""
        if self.token is not None:
            return tokens.conferences_visible(self.token)
        return access.conferences_visible_to(self.user)


def take(key, now=None):
    """Count one request of ``key``: None when allowed, else the seconds to wait (``Retry-After``)."""
    limit, window = settings.API_RATE_LIMIT, settings.API_RATE_WINDOW
    now = time.time() if now is None else now
    slot = int(now // window)
    if counters.incr(f"{key}:{slot}", window) <= limit:
        return None
    return max(1, math.ceil((slot + 1) * window - now))


def _throttled(caller):
    wait = take(caller.throttle_key)
    if wait is None:
        return caller
    raise errors.ApiError(429, errors.THROTTLED, headers={"Retry-After": str(wait)}, retry_after=wait)


def _token_caller(raw):
    token = tokens.authenticate(raw)
    if token is None:
        raise errors.ApiError(401, errors.BAD_TOKEN, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    return _throttled(Caller(token.user, token))


def _session_caller(session_key):
    user = session_user(session_key)
    if user is None:
        return None
    return _throttled(Caller(user))


async def _call(func, *args):
    return await dbthreads.web().call(func, *args)


class TokenAuth(HttpBearer):
    """``Authorization: Bearer <token>``: a token present but not valid is a 401 at once."""

    async def __call__(self, request):
        header = request.headers.get("Authorization")
        if header is None:
            return None
        raw = tokens.bearer(header)
        if raw is None:
            raise errors.ApiError(401, errors.BAD_AUTHORIZATION, headers={"WWW-Authenticate": "Bearer"})
        return await _call(_token_caller, raw)

    def authenticate(self, request, token):  # pragma: no cover (ninja's abstract method; __call__ does it)
        raise NotImplementedError


class SessionAuth(APIKeyCookie):
    """The site's login session, with Django's CSRF check for unsafe methods."""

    def __init__(self):
        self.param_name = settings.SESSION_COOKIE_NAME
        super().__init__(csrf=True)

    async def __call__(self, request):
        if "Authorization" in request.headers:
            return None  # a token request: TokenAuth answered it
        session_key = request.COOKIES.get(settings.SESSION_COOKIE_NAME)
        if not session_key:
            return None
        if request.method not in SAFE_METHODS and check_csrf(request) is not None:
            raise errors.ApiError(403, errors.CSRF_FAILED)
        return await _call(_session_caller, session_key)

    def authenticate(self, request, key):  # pragma: no cover (ninja's abstract method; __call__ does it)
        raise NotImplementedError
