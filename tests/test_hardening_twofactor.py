"""A superuser that is not staff (LDAP_SUPERUSER_GROUP without LDAP_STAFF_GROUP) needs the second factor too:
it moderates every room and could get API tokens (an attacker's review)."""

import pytest
from django.test import Client
from django.urls import reverse

from conferences import twofactor
from conferences.models import ApiToken

pytestmark = pytest.mark.django_db

PASSWORD = "pw-Tr0ub4dor"  # tests/conftest.py make_user


def test_required_2fa_also_holds_for_a_superuser_who_is_not_staff(settings, make_user, conference):
    settings.REQUIRE_STAFF_2FA = True
    boss = make_user("boss", is_superuser=True, is_staff=False)
    client = Client()
    assert client.post("/accounts/login/", {"username": "boss", "password": PASSWORD}).status_code == 302
    page = client.get(f"/conferences/{conference.slug}/")
    made = client.post(reverse("api-tokens"), {"name": "x", "scope": "moderate", "days": "30", "every_room": "on"})
    assert twofactor.pending_step(boss) is not None
    assert page.status_code == 302 and "/accounts/two-factor/" in page["Location"]
    assert made.status_code == 302 and not ApiToken.objects.filter(user=boss).exists()


def test_a_token_of_an_owner_made_staff_since_stops_until_they_have_a_second_factor(settings, make_user):
    from django_otp.plugins.otp_totp.models import TOTPDevice

    from conferences import tokens

    settings.REQUIRE_STAFF_2FA = True
    alice = make_user("alice")
    _token, raw = tokens.create(user=alice, name="crm")
    assert tokens.authenticate(raw) is not None
    alice.is_staff = True
    alice.save()
    assert tokens.authenticate(raw) is None  # staff now: the token waits for the second factor
    TOTPDevice.objects.create(user=alice, name="phone", confirmed=True)
    assert tokens.authenticate(raw) is not None
