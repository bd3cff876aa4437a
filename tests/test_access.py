"""The access rules: who may view and who may moderate which room."""

import pytest
from django.contrib.auth.models import AnonymousUser

from conferences import access
from conferences.models import ConferenceAccess

pytestmark = pytest.mark.django_db

MODERATOR = ConferenceAccess.Role.MODERATOR


def test_stranger_sees_and_moderates_nothing(conference, make_user):
    stranger = make_user()
    assert access.conference_role(stranger, conference) is None
    assert not access.can_view(stranger, conference)
    assert not access.can_moderate(stranger, conference)
    assert list(access.conferences_visible_to(stranger)) == []


def test_anonymous_gets_nothing(conference):
    anonymous = AnonymousUser()
    assert not access.can_view(anonymous, conference)
    assert not access.can_moderate(anonymous, conference)
    assert list(access.conferences_visible_to(anonymous)) == []
    assert not access.can_view(None, conference)


def test_user_viewer_views_but_does_not_moderate(conference, make_conference, make_user, grant):
    viewer = make_user()
    grant(conference, user=viewer)
    make_conference("555")  # a room without a grant stays invisible
    assert access.can_view(viewer, conference)
    assert not access.can_moderate(viewer, conference)
    assert list(access.conferences_visible_to(viewer)) == [conference]


def test_user_moderator(conference, make_user, grant):
    moderator = make_user()
    grant(conference, user=moderator, role=MODERATOR)
    assert access.conference_role(moderator, conference) == "moderator"
    assert access.can_view(moderator, conference)
    assert access.can_moderate(moderator, conference)


def test_group_grants_apply_to_members_only(conference, make_user, grant, group):
    member = make_user(groups=[group])
    outsider = make_user()
    grant(conference, group=group, role=MODERATOR)
    assert access.can_moderate(member, conference)
    assert not access.can_view(outsider, conference)
    assert list(access.conferences_visible_to(member)) == [conference]


def test_strongest_grant_wins(conference, make_user, grant, group):
    user = make_user(groups=[group])
    grant(conference, user=user)  # viewer personally
    grant(conference, group=group, role=MODERATOR)  # moderator through the group
    assert access.can_moderate(user, conference)
    # Seen once in the list even though granted twice.
    assert list(access.conferences_visible_to(user)) == [conference]


def test_superuser_moderates_every_room(conference, make_conference, superuser):
    other = make_conference("777")
    assert access.can_moderate(superuser, conference)
    assert access.can_moderate(superuser, other)
    assert set(access.conferences_visible_to(superuser)) == {conference, other}


def test_inactive_users_get_nothing(conference, make_user, grant, group, superuser):
    inactive = make_user(groups=[group])
    grant(conference, user=inactive, role=MODERATOR)
    inactive.is_active = False
    superuser.is_active = False
    for user in (inactive, superuser):
        assert not access.can_view(user, conference)
        assert not access.can_moderate(user, conference)
        assert list(access.conferences_visible_to(user)) == []


def test_removing_a_grant_takes_effect_at_once(conference, make_user, grant):
    user = make_user()
    row = grant(conference, user=user, role=MODERATOR)
    assert access.can_moderate(user, conference)
    row.delete()
    assert not access.can_view(user, conference)


def test_the_plain_statement_finds_the_same_grants_as_the_queryset(
    conference, make_conference, make_user, grant, group
):
    """access._granted_roles (one plain statement, on every handshake) against the QuerySet it replaced."""
    from django.contrib.auth.models import Group

    other_room = make_conference("556")
    other_group = Group.objects.create(name="sales")
    people = {
        "none": make_user(),
        "user grant": make_user(),
        "group grant": make_user(groups=[group]),
        "both": make_user(groups=[group, other_group]),
        "another room only": make_user(groups=[other_group]),
    }
    grant(conference, user=people["user grant"])
    grant(conference, group=group, role=MODERATOR)
    grant(conference, user=people["both"])
    grant(other_room, group=other_group, role=MODERATOR)
    grant(other_room, user=people["none"])
    for name, user in people.items():
        for room in (conference, other_room):
            expected = set(
                ConferenceAccess.objects.filter(access._grant_filter(user), conference=room).values_list(
                    "role", flat=True
                )
            )
            assert access._granted_roles(user.pk, room.pk) == expected, (name, room.number)
    assert access.conference_role(people["both"], conference) == MODERATOR
    assert access.conference_role(people["another room only"], conference) is None
    assert access.conference_role(people["another room only"], other_room) == MODERATOR
