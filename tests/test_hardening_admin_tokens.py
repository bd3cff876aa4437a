"""The API token admin: a staff member trusted with tokens cannot mint one for another user (it would act as
them, a superuser included), and a revoked token stays revoked (found by an attacker's review)."""

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from conferences import tokens
from conferences.models import ApiToken

pytestmark = pytest.mark.django_db

TOKEN = re.compile(r"cfp_[A-Za-z0-9_-]{40}")


def _token_clerk(make_user):
    """A staff member trusted with API tokens only: not a superuser, no room grants."""
    clerk = make_user("clerk", is_staff=True)
    clerk.user_permissions.set(
        Permission.objects.filter(content_type__app_label="conferences", codename__in=["add_apitoken", "view_apitoken"])
    )
    client = Client()
    client.force_login(clerk)
    return client


def _fields(user, **extra):
    soon = (timezone.now() + timedelta(days=10)).strftime("%Y-%m-%d")
    return {
        "user": user.pk,
        "name": "mine now",
        "scope": "moderate",
        "expires_at_0": soon,
        "expires_at_1": "12:00:00",
        **extra,
    }


def test_a_token_clerk_cannot_mint_a_token_for_a_superuser_and_moderate_every_room(make_user, superuser, conference):
    client = _token_clerk(make_user)
    response = client.post(reverse("admin:conferences_apitoken_add"), _fields(superuser))
    raw = TOKEN.findall(response.content.decode())
    # Before the fix: the superuser's plain token on the page, and the clerk moderated a room it had no grant in.
    if raw:
        assert not tokens.can_moderate(tokens.authenticate(raw[0]), conference)
    assert not ApiToken.objects.filter(user=superuser).exists()


def test_a_revoked_token_cannot_be_unrevoked_in_the_admin(admin_client, make_user):
    alice = make_user("alice")
    token, raw = tokens.create(user=alice, name="leaked")
    ApiToken.objects.filter(pk=token.pk).update(revoked=True)
    change = reverse("admin:conferences_apitoken_change", args=[token.pk])
    expires = timezone.localtime(token.expires_at)
    admin_client.post(
        change,
        {
            "name": "leaked",
            "scope": "read",
            "expires_at_0": expires.strftime("%Y-%m-%d"),
            "expires_at_1": expires.strftime("%H:%M:%S"),
            # "revoked" left unticked
        },
    )
    assert tokens.authenticate(raw) is None  # a leaked token, once revoked, must stay dead


def test_a_user_id_that_is_not_a_number_is_a_form_error_not_a_500(admin_client):
    soon = (timezone.now() + timedelta(days=10)).strftime("%Y-%m-%d")
    fields = {"name": "x", "scope": "read", "every_room": "on", "expires_at_0": soon, "expires_at_1": "12:00:00"}
    for user in ("1 objects imported\n\n1", "<script>", "-1", "99999999999999999999"):
        response = admin_client.post(reverse("admin:conferences_apitoken_add"), {**fields, "user": user})
        assert response.status_code == 200, user
    assert not ApiToken.objects.exists()


def test_a_grant_whose_user_id_is_not_a_number_is_a_form_error_not_a_500(admin_client, conference):
    """The room's access inline (autocomplete of users and groups)."""
    change = reverse("admin:conferences_conference_change", args=[conference.pk])
    page = admin_client.get(change)
    assert page.status_code == 200
    form = page.context["adminform"].form
    data = {name: value for name, value in form.initial.items() if value is not None and not isinstance(value, list)}
    data.update(
        {
            "access-TOTAL_FORMS": "1",
            "access-INITIAL_FORMS": "0",
            "access-0-user": "nope",
            "access-0-group": "1 objects\n\n2",
            "access-0-role": "viewer",
        }
    )
    response = admin_client.post(change, data)
    assert response.status_code == 200
