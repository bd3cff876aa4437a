"""Who may view or moderate which room: the one home of these rules.

Views, the WebSocket consumer and admin actions all ask here. Inactive and
anonymous users get nothing; active superusers moderate every room; everyone
else gets the strongest role granted to them or to one of their groups.
"""

from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Q

from conferences.models import Conference, ConferenceAccess

VIEWER = ConferenceAccess.Role.VIEWER
MODERATOR = ConferenceAccess.Role.MODERATOR


def _has_rights(user):
    return user is not None and user.is_authenticated and user.is_active


def _grant_filter(user):
    return Q(user=user) | Q(group__in=user.groups.all())


def _granted_roles(user_id, conference_id):
    """The roles granted in one room to the user or one of their groups, in one plain statement.

    The same rows as ``ConferenceAccess.objects.filter(_grant_filter(user), conference=...)``
    (tests/test_access.py checks both agree), at a fraction of the QuerySet's CPU: this runs at
    every socket's handshake and periodic check.
    """
    quote = connection.ops.quote_name
    access = ConferenceAccess._meta
    grants = quote(access.db_table)
    role, room, grantee, group = (
        quote(access.get_field(name).column) for name in ("role", "conference", "user", "group")
    )
    memberships = get_user_model()._meta.get_field("groups").remote_field.through._meta
    member_table, member_user, member_group = (
        quote(memberships.db_table),
        quote(memberships.get_field("user").column),
        quote(memberships.get_field("group").column),
    )
    sql = (
        f"SELECT DISTINCT {role} FROM {grants} WHERE {room} = %s AND ({grantee} = %s OR {group} IN "  # noqa: S608
        f"(SELECT {member_group} FROM {member_table} WHERE {member_user} = %s))"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [conference_id, user_id, user_id])
        return {row[0] for row in cursor.fetchall()}


def conference_role(user, conference):
    """Return ``"moderator"``, ``"viewer"`` or ``None`` for ``user`` in ``conference``."""
    if not _has_rights(user):
        return None
    if user.is_superuser:
        return MODERATOR
    roles = _granted_roles(user.pk, conference.pk)
    if MODERATOR in roles:
        return MODERATOR
    if VIEWER in roles:
        return VIEWER
    return None


def can_view(user, conference):
    """Whether ``user`` may watch ``conference``."""
    return conference_role(user, conference) is not None


def can_moderate(user, conference):
    """Whether ``user`` may act on ``conference`` (mute, kick, lock, ...)."""
    return conference_role(user, conference) == MODERATOR


def conferences_visible_to(user):
    """The rooms ``user`` may view, as a queryset."""
    if not _has_rights(user):
        return Conference.objects.none()
    if user.is_superuser:
        return Conference.objects.all()
    granted = ConferenceAccess.objects.filter(_grant_filter(user)).values("conference_id")
    return Conference.objects.filter(pk__in=granted)
