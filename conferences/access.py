"""Who may view or moderate which room: the one home of these rules.

Views, the WebSocket consumer and admin actions all ask here. Inactive and
anonymous users get nothing; active superusers moderate every room; everyone
else gets the strongest role granted to them or to one of their groups.
"""

from django.db.models import Q

from conferences.models import Conference, ConferenceAccess

VIEWER = ConferenceAccess.Role.VIEWER
MODERATOR = ConferenceAccess.Role.MODERATOR


def _has_rights(user):
    return user is not None and user.is_authenticated and user.is_active


def _grant_filter(user):
    return Q(user=user) | Q(group__in=user.groups.all())


def conference_role(user, conference):
    """Return ``"moderator"``, ``"viewer"`` or ``None`` for ``user`` in ``conference``."""
    if not _has_rights(user):
        return None
    if user.is_superuser:
        return MODERATOR
    roles = set(
        ConferenceAccess.objects.filter(_grant_filter(user), conference_id=conference.pk).values_list("role", flat=True)
    )
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
