"""Single sign-on with OpenID Connect: mozilla-django-oidc's authorization-code flow, with this site's rules.

The library sends the browser to the provider (state, nonce and PKCE kept in the session), takes
the code back at the callback, fetches the tokens and the userinfo, and checks the ID token's
RS256 signature against the provider's JWKS. Settings: conferencesite/env.py, oidc_settings
(off while OIDC_PROVIDER_URL is unset). Rules this module adds:

- The provider's endpoints come from its discovery document, read when first needed and kept an
  hour (``provider``); a provider that is down never stops start-up. A failed read is remembered
  for ``RETRY_SECONDS``: meanwhile the login page says single sign-on is unavailable without
  asking, and every call to the provider waits at most OIDC_TIMEOUT seconds. Local accounts (and
  LDAP) log in as usual.
- The ID token is checked beyond the library: issuer (the discovery's, which must be
  OIDC_PROVIDER_URL), audience and ``azp`` (this client), expiry, ``iat`` and ``sub`` required
  (mozilla-django-oidc 5.0.2 checks neither issuer nor audience: ``get_payload_data`` replaces its
  check), and the userinfo's ``sub`` must be the ID token's.
- Accounts are tied to the provider's ``sub``, not to a name: an account made by single sign-on
  has an unusable password ``!oidc$`` + SHA-256 of (issuer, sub). The next login of that ``sub``
  is that account, whatever its name became at the provider; a new ``sub`` whose
  OIDC_USERNAME_CLAIM names an existing account (local, LDAP, or another ``sub``'s) is refused:
  nobody is taken over by a provider that hands out a name.
- Groups of OIDC_GROUPS_CLAIM are mirrored at each login as LDAP's are (OIDC_MIRROR_GROUPS: all,
  a list of the groups that follow the provider, or none), and OIDC_STAFF_GROUP /
  OIDC_SUPERUSER_GROUP set the flags, through ORM m2m changes and saves, so conferences/signals.py
  tells the account's open sockets. A staff account still owes its second factor
  (conferences/twofactor.py: the middleware does not care how the session was made).
- Every callback that reaches the provider passes the login throttle first (the first
  authentication backend counts it for the address; a refused one counts as a failure). A state
  that is unknown, used already or tampered with never reaches the provider: the callback
  answers with the login page and a message, as for any failure; never a 500.
- Logout is Django's (the user_logged_out signal closes the session's sockets); when the
  provider's discovery names an ``end_session_endpoint``, the browser is then sent there to end
  the provider's session too (RP-initiated logout).
"""

import hashlib
import logging
import threading
import time

import jwt
import requests
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import REDIRECT_FIELD_NAME, get_user_model
from django.contrib.auth import views as auth_views
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.core.exceptions import SuspiciousOperation, ValidationError
from django.db import IntegrityError, transaction
from django.http import Http404
from django.shortcuts import redirect, resolve_url
from django.urls import reverse
from django.utils.http import urlencode
from django.utils.translation import gettext_lazy as _
from django.views.decorators.cache import never_cache
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from conferences import groupsync

logger = logging.getLogger(__name__)

PASSWORD_PREFIX = "!oidc$"  # Django's unusable passwords start with "!"
CALLBACK = "oidc_authentication_callback"  # (the library's default URL name)
START = "oidc-start"
DOCUMENT_SECONDS = 3600
RETRY_SECONDS = 30
LEEWAY_SECONDS = 30  # clocks apart
ENDPOINTS = ("authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri")

UNAVAILABLE_MESSAGE = _("Single sign-on is unavailable right now. Try again later, or log in with a password.")
REFUSED_MESSAGE = _("Single sign-on did not log you in. Start again from the button below.")
NO_ACCOUNT_MESSAGE = _("Single sign-on cannot log you in to this site: ask an administrator.")

_REASON = "_oidc_failure"  # on the request: why the backend refused


class ProviderUnavailable(Exception):
    """The provider's discovery document could not be read (or is unfit): single sign-on is off meanwhile."""


def enabled():
    """Whether single sign-on is configured (OIDC_PROVIDER_URL)."""
    return getattr(settings, "OIDC_ENABLED", False)


# --- The provider's discovery document

_lock = threading.Lock()
_document = {"issuer": None, "value": None, "read_at": 0.0, "failed_at": None}


def forget_provider():
    """Drop what is known of the provider (tests; a changed OIDC_PROVIDER_URL)."""
    with _lock:
        _document.update(issuer=None, value=None, read_at=0.0, failed_at=None)


def recently_failed():
    """Whether the discovery document is missing after a read that failed less than RETRY_SECONDS ago (no network)."""
    with _lock:
        if _document["issuer"] != settings.OIDC_PROVIDER_URL or _document["value"] is not None:
            return False
        failed_at = _document["failed_at"]
    return failed_at is not None and time.monotonic() - failed_at < RETRY_SECONDS


def cached_provider():
    """The discovery document if one is known (no network), else None."""
    with _lock:
        return _document["value"] if _document["issuer"] == settings.OIDC_PROVIDER_URL else None


def provider():
    """The provider's discovery document: read when first needed, kept DOCUMENT_SECONDS; ProviderUnavailable."""
    issuer = settings.OIDC_PROVIDER_URL
    now = time.monotonic()
    with _lock:
        if _document["issuer"] == issuer:
            if _document["value"] is not None and now - _document["read_at"] < DOCUMENT_SECONDS:
                return _document["value"]
            if _document["failed_at"] is not None and now - _document["failed_at"] < RETRY_SECONDS:
                if _document["value"] is not None:  # an older document still works while the provider answers
                    return _document["value"]
                raise ProviderUnavailable("its discovery document failed a moment ago")
    try:
        value = _read_document(issuer)
    except ProviderUnavailable as exc:
        logger.error("single sign-on: %s: %s; single sign-on is unavailable meanwhile", issuer, exc)
        with _lock:
            _document.update(issuer=issuer, failed_at=time.monotonic())
            if _document["value"] is not None:  # an older document still works while the provider answers
                return _document["value"]
        raise
    with _lock:
        _document.update(issuer=issuer, value=value, read_at=time.monotonic(), failed_at=None)
    return value


def _read_document(issuer):
    url = f"{issuer}/.well-known/openid-configuration"
    try:
        response = requests.get(url, timeout=settings.OIDC_TIMEOUT)
        response.raise_for_status()
        value = response.json()
    except requests.RequestException as exc:
        raise ProviderUnavailable(f"reading {url}: {exc}") from None
    except ValueError:
        raise ProviderUnavailable(f"{url} is not JSON") from None
    if not isinstance(value, dict):
        raise ProviderUnavailable(f"{url} is not a discovery document")
    if str(value.get("issuer", "")).rstrip("/") != issuer:
        # OpenID Connect Discovery 1.0, 4.3: the issuer must be the one asked, or tokens could come from another.
        raise ProviderUnavailable(f"the document's issuer is {value.get('issuer')!r}, not OIDC_PROVIDER_URL")
    missing = [name for name in ENDPOINTS if not value.get(name)]
    if missing:
        raise ProviderUnavailable(f"the document names no {', '.join(missing)}")
    algorithms = value.get("id_token_signing_alg_values_supported") or ["RS256"]
    if "RS256" not in algorithms:
        raise ProviderUnavailable(f"it does not sign ID tokens with RS256 (only {', '.join(algorithms)})")
    return value


# --- Accounts


def account_marker(issuer, sub):
    """The unusable password that ties an account to the provider's ``sub``."""
    return PASSWORD_PREFIX + hashlib.sha256(f"{issuer}\0{sub}".encode()).hexdigest()


def is_sso_account(user):
    """Whether ``user`` was made by single sign-on (and may only log in through it)."""
    return (user.password or "").startswith(PASSWORD_PREFIX)


def mirror_groups(user, names):
    """Make ``user``'s groups follow the provider's ``names`` (OIDC_MIRROR_GROUPS); return whether they changed."""
    return groupsync.mirror_groups(user, names, settings.OIDC_MIRROR_GROUPS, source="single sign-on")


def _group_names(claims):
    value = claims.get(settings.OIDC_GROUPS_CLAIM)
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise SuspiciousOperation(f"the {settings.OIDC_GROUPS_CLAIM} claim is not a list")
    # A name longer than a Django group's could never be granted anything.
    return sorted({str(name) for name in value if str(name).strip() and len(str(name)) <= groupsync.GROUP_NAME_LENGTH})


class OIDCBackend(OIDCAuthenticationBackend):
    """mozilla-django-oidc's backend with the rules above; after the throttle and the local accounts."""

    def __init__(self, *args, **kwargs):
        # Not the library's __init__: it reads the endpoints from settings, and Django makes a backend for
        # every authenticate() (password logins too). They are set from discovery, for a callback only.
        self.UserModel = get_user_model()
        self.OIDC_OP_TOKEN_ENDPOINT = self.OIDC_OP_USER_ENDPOINT = self.OIDC_OP_JWKS_ENDPOINT = None
        self.OIDC_RP_IDP_SIGN_KEY = None
        self.OIDC_RP_SIGN_ALGO = "RS256"

    def authenticate(self, request, **kwargs):
        # Only the callback passes a nonce; a password login never reaches the provider.
        if request is None or "nonce" not in kwargs or not enabled():
            return None
        self.OIDC_RP_CLIENT_ID = settings.OIDC_RP_CLIENT_ID
        self.OIDC_RP_CLIENT_SECRET = settings.OIDC_RP_CLIENT_SECRET
        try:
            document = provider()
            self.OIDC_OP_TOKEN_ENDPOINT = document["token_endpoint"]
            self.OIDC_OP_USER_ENDPOINT = document["userinfo_endpoint"]
            self.OIDC_OP_JWKS_ENDPOINT = document["jwks_uri"]
            return super().authenticate(request, **kwargs)
        except ProviderUnavailable:
            setattr(request, _REASON, UNAVAILABLE_MESSAGE)
        except requests.HTTPError as exc:  # the provider refused the code (used already, expired, not ours)
            status = exc.response.status_code if exc.response is not None else None
            if status is not None and status < 500:
                logger.warning("single sign-on: the provider refused the callback's code (HTTP %s)", status)
                setattr(request, _REASON, REFUSED_MESSAGE)
            else:
                logger.error("single sign-on: the provider failed (%s)", exc)
                setattr(request, _REASON, UNAVAILABLE_MESSAGE)
        except requests.RequestException as exc:  # down, or no answer within OIDC_TIMEOUT
            logger.error("single sign-on: %s cannot be reached: %s", settings.OIDC_PROVIDER_URL, exc)
            setattr(request, _REASON, UNAVAILABLE_MESSAGE)
        except (SuspiciousOperation, jwt.PyJWTError, ValueError, KeyError, TypeError) as exc:
            logger.warning("single sign-on: login refused: %s", exc)
            setattr(request, _REASON, REFUSED_MESSAGE)
        return None

    def get_payload_data(self, token, key):
        """The token's claims, once its signature (RS256, ``key`` from the JWKS), issuer, audience and times hold."""
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") != "RS256":
                raise SuspiciousOperation(f"the token is signed with {header.get('alg')!r}, not RS256")
            claims = jwt.decode(
                token,
                key,
                algorithms=["RS256"],
                audience=self.OIDC_RP_CLIENT_ID,
                issuer=provider()["issuer"],
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise SuspiciousOperation(f"the ID token does not hold: {exc}") from None
        if claims.get("azp", self.OIDC_RP_CLIENT_ID) != self.OIDC_RP_CLIENT_ID:
            raise SuspiciousOperation("the ID token was issued to another client (azp)")
        return claims

    def get_or_create_user(self, access_token, id_token, payload):
        userinfo = self.get_userinfo(access_token, id_token, payload)
        if not isinstance(userinfo, dict) or str(userinfo.get("sub")) != str(payload["sub"]):
            raise SuspiciousOperation("the userinfo's sub is not the ID token's")
        claims = {**payload, **userinfo}
        return self._account(claims)

    def _account(self, claims):
        marker = account_marker(provider()["issuer"], claims["sub"])
        username = claims.get(settings.OIDC_USERNAME_CLAIM)
        with transaction.atomic():
            user = self.UserModel.objects.select_for_update().filter(password=marker).first()
            if user is None:
                user = self._new_account(username, marker, claims)
                if user is None:
                    return None
            elif not user.is_active:
                logger.info("single sign-on: %s is inactive here; login refused", user.get_username())
                return None
            self._update(user, claims)
        return user

    def _new_account(self, username, marker, claims):
        if not isinstance(username, str) or not username:
            raise SuspiciousOperation(f"the {settings.OIDC_USERNAME_CLAIM} claim is missing")
        try:
            UnicodeUsernameValidator()(username)
        except ValidationError:
            raise SuspiciousOperation(
                f"the {settings.OIDC_USERNAME_CLAIM} claim {username!r} is no user name"
            ) from None
        if len(username) > 150:
            raise SuspiciousOperation(f"the {settings.OIDC_USERNAME_CLAIM} claim is too long")
        if self.UserModel.objects.filter(username=username).exists():
            logger.warning(
                "single sign-on: %s is taken by another account here (local, LDAP or another sub); login refused",
                username,
            )
            setattr(self.request, _REASON, NO_ACCOUNT_MESSAGE)
            return None
        user = self.UserModel(username=username, password=marker)
        try:
            with transaction.atomic():
                user.save()
        except IntegrityError:  # the same first login twice at once: the other one made it
            return self.UserModel.objects.filter(password=marker, is_active=True).first()
        logger.info("single sign-on: account %s made", username)
        return user

    def _update(self, user, claims):
        fields = []
        for field, claim in (("email", "email"), ("first_name", "given_name"), ("last_name", "family_name")):
            value = claims.get(claim)
            if isinstance(value, str) and value != getattr(user, field):
                setattr(user, field, value[: user._meta.get_field(field).max_length])
                fields.append(field)
        names = _group_names(claims)
        for flag, group in settings.OIDC_USER_FLAGS_BY_GROUP.items():
            if getattr(user, flag) != (group in names):
                setattr(user, flag, group in names)
                fields.append(flag)
        if fields:
            user.save(update_fields=fields)
        mirror_groups(user, names)

    def get_user(self, user_id):
        user = super().get_user(user_id)
        return user if user is not None and user.is_active else None


# --- Views


def _login_page(request, message):
    if request.user.is_authenticated:  # (a stale callback of a session that is logged in: nothing to say)
        return redirect(settings.LOGIN_REDIRECT_URL)
    messages.error(request, message)
    return redirect(settings.LOGIN_URL)


class _RequestView(OIDCAuthenticationRequestView):
    document = None

    def __init__(self, **kwargs):
        super(OIDCAuthenticationRequestView, self).__init__(**kwargs)  # (View's: not its settings-reading __init__)
        self.OIDC_OP_AUTH_ENDPOINT = self.document["authorization_endpoint"]
        self.OIDC_RP_CLIENT_ID = settings.OIDC_RP_CLIENT_ID


@never_cache
def start(request):
    """Send the browser to the provider (the login page's "Sign in with …")."""
    if not enabled():
        raise Http404
    try:
        document = provider()
    except ProviderUnavailable:
        # No message: the login page says so itself while the failure is remembered (login_context).
        url = resolve_url(settings.LOGIN_URL)
        next_url = request.GET.get(REDIRECT_FIELD_NAME)
        return redirect(f"{url}?{urlencode({REDIRECT_FIELD_NAME: next_url})}" if next_url else url)
    return _RequestView.as_view(document=document)(request)


class _CallbackView(OIDCAuthenticationCallbackView):
    def login_failure(self):
        return _login_page(self.request, getattr(self.request, _REASON, REFUSED_MESSAGE))


@never_cache
def callback(request):
    """The provider's redirect back with a code: a login, or the login page with a message."""
    if not enabled():
        raise Http404
    if "error" in request.GET and request.GET.get("state") not in request.session.get("oidc_states", {}):
        # The library logs a session out on any ?error=; only a login this session started may end so.
        return _login_page(request, REFUSED_MESSAGE)
    try:
        return _CallbackView.as_view()(request)
    except SuspiciousOperation as exc:  # a state this session did not start, or used already
        logger.warning("single sign-on: callback refused: %s", exc)
        return _login_page(request, REFUSED_MESSAGE)


class LogoutView(auth_views.LogoutView):
    """Django's logout (it ends the session and its sockets); then the provider's, when it offers one."""

    def post(self, request, *args, **kwargs):
        id_token = request.session.get("oidc_id_token") if enabled() else None
        response = super().post(request, *args, **kwargs)
        document = cached_provider() if id_token else None
        end_session = (document or {}).get("end_session_endpoint")
        if not end_session:
            return response
        query = urlencode(
            {
                "id_token_hint": id_token,
                "client_id": settings.OIDC_RP_CLIENT_ID,
                "post_logout_redirect_uri": request.build_absolute_uri(resolve_url(settings.LOGOUT_REDIRECT_URL)),
            }
        )
        return redirect(f"{end_session}{'&' if '?' in end_session else '?'}{query}")


def login_context(request):
    """The login page's "Sign in with …" button (a context processor: no network, settings and a flag)."""
    if not enabled():
        return {}
    return {
        "sso": {
            "name": settings.OIDC_PROVIDER_NAME,
            "url": reverse(START),
            "unavailable": recently_failed(),
        }
    }
