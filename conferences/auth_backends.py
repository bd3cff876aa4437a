"""The login throttle, enforced where authentication happens: the first authentication backend.

``django.contrib.auth.authenticate()`` asks every backend of
``AUTHENTICATION_BACKENDS`` in turn. ``LoginThrottleBackend`` comes first, so
every way in that authenticates — the site login, the admin login, and
anything added later (LDAP, HTTP basic auth for an API) — passes the throttle
before any backend looks at the password. Rules:

- the backend reserves the attempt (conferences/throttle.py) and returns None,
  so the next backends check the credentials; over a limit it raises
  ``LoginThrottled`` (a ``PermissionDenied``: Django stops at once) and marks
  the request, so LoginThrottleMiddleware answers 429;
- a reserved attempt is settled once: ``user_login_failed`` keeps it as a
  failure; ``user_logged_in``, or the end of the request when neither signal
  came (a backend accepted the credentials without a session login, or
  raised), gives it back;
- without a request (a script calling ``authenticate()``) there is no address
  and nothing to settle at the end: the account counter alone applies, a
  failure counts and a login clears it;
- when the counts cannot be reached (Redis down longer than the cache's
  retries), the attempt is refused, not let through uncounted: the backend
  raises ``LoginUnavailable`` and LoginThrottleMiddleware answers 503 with
  ``UNAVAILABLE_MESSAGE``.

django-axes was weighed and not used: it reads the failure count before the
password check and counts failures afterwards (``AxesProxyHandler.is_allowed``
then the ``user_login_failed`` handler), so N guesses sent at once all reach the
password check (jazzband/django-axes#592, closed as a known issue).
"""

import logging

from django.contrib.auth import get_backends, get_user_model
from django.contrib.auth.backends import BaseBackend
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.core.exceptions import PermissionDenied
from django.dispatch import receiver
from django.utils.translation import gettext_lazy as _
from django_redis.exceptions import ConnectionInterrupted
from redis.exceptions import RedisError

from conferences import throttle
from conferences.client_address import client_address

logger = logging.getLogger(__name__)

# The cache's Redis unreachable (conferencesite/env.py, caches_for: after its retries).
CACHE_DOWN = (RedisError, ConnectionInterrupted, OSError)

# Attributes on the request (Django's HttpRequest, also behind a wrapper such as DRF's Request).
_PENDING = "_login_attempts_pending"
_REFUSED = "_login_throttled"
_UNAVAILABLE = "_login_unavailable"

THROTTLED_MESSAGE = _("Too many failed attempts. Wait a few minutes and try again.")
UNAVAILABLE_MESSAGE = _("Signing in is not possible for a moment: the server cannot reach its store. Try again soon.")


class LoginThrottled(PermissionDenied):
    """Too many failed login attempts for this account or address."""


class LoginUnavailable(PermissionDenied):
    """The throttle's counts cannot be reached: no attempt goes uncounted, so none is allowed."""


class LoginThrottleBackend(BaseBackend):
    """Refuses attempts over the throttle's limits and counts the others; authenticates nobody."""

    def authenticate(self, request, username=None, password=None, **credentials):
        if username is None:
            username = credentials.get(get_user_model().USERNAME_FIELD)
        http_request = _http_request(request)
        address = client_address(http_request) if http_request is not None else None
        try:
            attempt = throttle.reserve(address, username)
        except CACHE_DOWN as exc:
            logger.error("login throttle: the counts cannot be reached (%s); refusing the attempt", exc)
            if http_request is not None:
                setattr(http_request, _UNAVAILABLE, True)
            raise LoginUnavailable from exc
        if http_request is not None:
            # None stands for a refused attempt: the failure signal Django sends for it settles nothing.
            _pending(http_request).append(attempt)
        if attempt is None:
            if http_request is not None:
                setattr(http_request, _REFUSED, True)
            raise LoginThrottled
        return None

    def get_user(self, user_id):
        # A session can carry this backend's name: Django's test client
        # force_login() records the first backend. Such a session's user is
        # whoever the other backends know by that id.
        for backend in get_backends():
            if not isinstance(backend, LoginThrottleBackend):
                user = backend.get_user(user_id)
                if user is not None:
                    return user
        return None


def was_throttled(request):
    """True when an attempt of this request was refused by the throttle."""
    return getattr(request, _REFUSED, False)


def was_unavailable(request):
    """True when an attempt of this request was refused because the counts could not be reached."""
    return getattr(request, _UNAVAILABLE, False)


def has_pending(request):
    """Whether ``request`` made login attempts that ``settle_request`` may have to give back."""
    return bool(getattr(request, _PENDING, None))


def settle_request(request):
    """Give back the attempts of ``request`` that no failure settled (call at the end of the request)."""
    pending = getattr(request, _PENDING, None)
    while pending:
        attempt = pending.pop()
        if attempt is not None:
            try:
                throttle.release(attempt)
            except CACHE_DOWN as exc:  # the count stays until its window ends
                logger.warning("login throttle: giving an attempt back failed (%s)", exc)


@receiver(user_login_failed)
def _keep_failure(sender, credentials, request=None, **kwargs):
    pending = getattr(_http_request(request), _PENDING, None)
    if pending:
        pending.pop()  # the attempt of this authenticate() call: its count stays


@receiver(user_logged_in)
def _give_back_on_login(sender, request, user, **kwargs):
    http_request = _http_request(request)
    if http_request is None:
        throttle.forget_account(None, user.get_username())
        return
    settle_request(http_request)
    try:
        throttle.forget_account(client_address(http_request), user.get_username())
    except CACHE_DOWN as exc:  # the failures stay until their window ends
        logger.warning("login throttle: clearing an account's failures failed (%s)", exc)


def _http_request(request):
    return getattr(request, "_request", request)


def _pending(request):
    pending = getattr(request, _PENDING, None)
    if pending is None:
        pending = []
        setattr(request, _PENDING, pending)
    return pending
