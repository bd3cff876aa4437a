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
