"""API tokens: how a program proves who it is, and what it may do (issue 18).

A token is ``cfp_`` + 40 random URL-safe characters (240 bits). Only its SHA-256
is stored: a token is as random as a key, so a slow password hash would add
nothing but CPU on every request; a stolen database gives no usable token.
The plain token is shown once, when it is made.

What a token may do is its owner's rights narrowed, never widened:

- its rooms: the rooms listed on the token (or every room, ``every_room``), and
  of those only the ones the owner may see (conferences/access.py); a token
  whose listed rooms are all deleted reaches none;
- its scope: ``read`` gives at most the viewer role, ``moderate`` the owner's
  role (a viewer's token with ``moderate`` still only views).

An inactive owner, a revoked token or an expired one authenticates nothing.
"""

import hashlib
import secrets
from datetime import timedelta

from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext as _

from conferences import access
from conferences.models import ApiToken

TOKEN_BYTES = 30  # 40 characters of URL-safe base64
# The longest a token may live, and what a new one gets when no expiry is given.
MAX_LIFETIME = timedelta(days=366)
DEFAULT_LIFETIME = timedelta(days=90)
# last_used_at is written at most this often per token (not a write on every request).
LAST_USED_EVERY = timedelta(seconds=60)
# The longest a plain token may be: anything longer is refused before it is hashed.
MAX_TOKEN_LENGTH = 128


def hash_key(raw):
    return hashlib.sha256(raw.encode()).hexdigest()


def new_key(token):
    """Give an unsaved token its key: sets its hash and hint, returns the plain token (shown once, kept nowhere)."""
    raw = ApiToken.PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    token.key_hash = hash_key(raw)
    token.key_hint = raw[: len(ApiToken.PREFIX) + 4]
    return raw


def expiry_problem(expires_at, now=None):
    """Why a token cannot expire then (a message for the form), or ``None``."""
    now = now or timezone.now()
    if expires_at <= now:
        return _("The expiry must be in the future.")
    if expires_at > now + MAX_LIFETIME:
        return _("A token lives at most %(days)s days.") % {"days": MAX_LIFETIME.days}
    return None


def create(*, user, name, scope=ApiToken.Scope.READ, expires_at=None, conferences=(), every_room=None):
    """Make a token: ``(ApiToken, the plain token)``. The plain token is not kept anywhere.

    ``every_room``: by default, when no rooms are given.
    """
    token = ApiToken(
        user=user,
        name=name,
        scope=scope,
        expires_at=expires_at or timezone.now() + DEFAULT_LIFETIME,
        every_room=not conferences if every_room is None else every_room,
    )
    raw = new_key(token)
    token.save()
    if conferences:
        token.conferences.set(conferences)
    return token, raw


def authenticate(raw):
    """The live token this plain token is, with its owner loaded; ``None`` for anything else.

    Notes the use (at most once a LAST_USED_EVERY per token).
    """
    if not isinstance(raw, str) or not raw.startswith(ApiToken.PREFIX) or len(raw) > MAX_TOKEN_LENGTH:
        return None
    now = timezone.now()
    token = (
        ApiToken.objects.select_related("user")
        .filter(key_hash=hash_key(raw), revoked=False, expires_at__gt=now, user__is_active=True)
        .first()
    )
    if token is None:
        return None
    from conferences import twofactor  # (it imports the login modules; this one is imported by them)

    if not twofactor.may_own_token(token.user):
        return None  # its owner was made staff since, and has no second factor yet (REQUIRE_STAFF_2FA)
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_EVERY:
        ApiToken.objects.filter(pk=token.pk).filter(
            Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - LAST_USED_EVERY)
        ).update(last_used_at=now)
        token.last_used_at = now
    return token


def bearer(header):
    """The token of an ``Authorization: Bearer <token>`` header value (str or bytes), or ``None``."""
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    if not header:
        return None
    kind, _, value = header.strip().partition(" ")
    if kind.lower() != "bearer":
        return None
    return value.strip() or None


def _room_ids(token):
    """The rooms listed on the token, or ``None`` for every room (``every_room``: none listed is none)."""
    if token.every_room:
        return None
    cached = getattr(token, "_room_ids", None)
    if cached is None:
        cached = token._room_ids = frozenset(token.conferences.values_list("pk", flat=True))
    return cached


def conference_role(token, conference):
    """``"moderator"``, ``"viewer"`` or ``None``: the owner's role in the room, narrowed by the token."""
    rooms = _room_ids(token)
    if rooms is not None and conference.pk not in rooms:
        return None
    role = access.conference_role(token.user, conference)
    if role == access.MODERATOR and token.scope != ApiToken.Scope.MODERATE:
        return access.VIEWER
    return role


def can_view(token, conference):
    return conference_role(token, conference) is not None


def can_moderate(token, conference):
    return conference_role(token, conference) == access.MODERATOR


def conferences_visible(token):
    """The rooms the token may see, as a queryset."""
    rooms = access.conferences_visible_to(token.user)
    listed = _room_ids(token)
    if listed is not None:
        rooms = rooms.filter(pk__in=listed)
    return rooms


def revoke_all_of(user_id):
    """Revoke every token of a user (a user disabled in the directory, issue 19)."""
    return ApiToken.objects.filter(user_id=user_id, revoked=False).update(revoked=True)
