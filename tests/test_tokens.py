"""API tokens (issue 18): stored hashed, shown once, expiring, narrowing their owner's rights, made and revoked
by staff in the admin and by users on their own page."""

import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from conferences import tokens
from conferences.models import ApiToken, ConferenceAccess

pytestmark = pytest.mark.django_db

MODERATOR, VIEWER = ConferenceAccess.Role.MODERATOR, ConferenceAccess.Role.VIEWER
TOKEN = re.compile(r"cfp_[A-Za-z0-9_-]{40}")


def test_only_the_hash_is_stored_and_the_plain_token_authenticates(make_user):
    alice = make_user("alice")
    token, raw = tokens.create(user=alice, name="crm")
    assert TOKEN.fullmatch(raw)
    row = ApiToken.objects.get(pk=token.pk)
    stored = [str(value) for value in row.__dict__.values()]
    assert raw not in stored and all(raw[len(ApiToken.PREFIX) + 4 :] not in value for value in stored)
    assert row.key_hint == raw[:8]
    assert tokens.authenticate(raw).pk == token.pk
    assert ApiToken.objects.get(pk=token.pk).last_used_at is not None


@pytest.mark.parametrize(
    "change",
    [
        {"revoked": True},
        {"expires_at": timezone.now() - timedelta(seconds=1)},
    ],
)
def test_a_revoked_or_expired_token_authenticates_nothing(make_user, change):
    token, raw = tokens.create(user=make_user("alice"), name="crm")
    ApiToken.objects.filter(pk=token.pk).update(**change)
    assert tokens.authenticate(raw) is None


def test_an_inactive_owner_s_token_and_garbage_authenticate_nothing(make_user):
    alice = make_user("alice")
    _token, raw = tokens.create(user=alice, name="crm")
    for garbage in (None, "", "Bearer", raw[:-1], raw + "x", "cfp_" + "x" * 500, raw.upper(), 42, b"cfp_"):
        assert tokens.authenticate(garbage) is None
    alice.is_active = False
    alice.save()
    assert tokens.authenticate(raw) is None


def test_last_use_is_written_at_most_once_a_minute(make_user, django_assert_num_queries):
    _token, raw = tokens.create(user=make_user("alice"), name="crm")
    tokens.authenticate(raw)
    with django_assert_num_queries(1):  # the lookup only
        tokens.authenticate(raw)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer cfp_abc", "cfp_abc"),
        ("bearer   cfp_abc  ", "cfp_abc"),
        (b"Bearer cfp_abc", "cfp_abc"),
        ("Basic dXNlcjpwYXNz", None),
        ("Bearer", None),
        ("", None),
        (None, None),
    ],
)
def test_the_bearer_header(header, expected):
    assert tokens.bearer(header) == expected


def test_a_token_narrows_its_owner_and_never_widens(make_user, make_conference, grant, superuser):
    a, b, c = make_conference("501"), make_conference("502"), make_conference("503")
    alice = make_user("alice")
    grant(a, user=alice, role=MODERATOR)
    grant(b, user=alice, role=VIEWER)
    everything, _ = tokens.create(user=alice, name="all", scope=ApiToken.Scope.MODERATE)
    reader, _ = tokens.create(user=alice, name="read")
    only_a, _ = tokens.create(user=alice, name="a", scope=ApiToken.Scope.MODERATE, conferences=[a, c])

    assert [tokens.conference_role(everything, room) for room in (a, b, c)] == [MODERATOR, VIEWER, None]
    assert [tokens.conference_role(reader, room) for room in (a, b, c)] == [VIEWER, VIEWER, None]
    # Room c is on the token but not the owner's: still nothing.
    assert [tokens.conference_role(only_a, room) for room in (a, b, c)] == [MODERATOR, None, None]
    assert set(tokens.conferences_visible(only_a)) == {a}
    assert set(tokens.conferences_visible(everything)) == {a, b}
    # A superuser's read-only token only reads.
    root, _ = tokens.create(user=superuser, name="root")
    assert tokens.conference_role(root, c) == VIEWER and not tokens.can_moderate(root, c)


def test_a_user_makes_a_token_sees_it_once_and_revokes_it(client, make_user, make_conference, grant):
    alice, mallory = make_user("alice"), make_user("mallory")
    mine, theirs = make_conference("511"), make_conference("512")
    grant(mine, user=alice)
    client.force_login(alice)
    page = client.get(reverse("api-tokens"))
    assert page.status_code == 200 and "512" not in page.content.decode()  # rooms offered: only hers

    made = client.post(
        reverse("api-tokens"), {"name": "wallboard", "scope": "read", "days": "30", "conferences": [mine.pk]}
    )
    assert made.status_code == 200 and "no-store" in made.headers.get("Cache-Control", "")
    [raw] = TOKEN.findall(made.content.decode())
    token = tokens.authenticate(raw)
    assert token.user == alice and list(token.conferences.all()) == [mine]
    assert timedelta(days=29) < token.expires_at - timezone.now() <= timedelta(days=30)
    assert raw not in client.get(reverse("api-tokens")).content.decode()  # shown once

    # A room she may not see cannot be put on her token.
    refused = client.post(
        reverse("api-tokens"), {"name": "x", "scope": "read", "days": "30", "conferences": [theirs.pk]}
    )
    assert refused.status_code == 200 and ApiToken.objects.count() == 1 and not TOKEN.findall(refused.content.decode())

    # Someone else cannot revoke it, she can.
    client.force_login(mallory)
    assert client.post(reverse("api-token-revoke", args=[token.pk])).status_code == 404
    client.force_login(alice)
    assert client.post(reverse("api-token-revoke", args=[token.pk])).status_code == 302
    assert tokens.authenticate(raw) is None


def test_the_token_page_needs_a_login_and_a_csrf_token(client, make_user):
    assert client.get(reverse("api-tokens")).status_code == 302
    csrf = type(client)(enforce_csrf_checks=True)
    csrf.force_login(make_user("alice"))
    assert csrf.post(reverse("api-tokens"), {"name": "x", "scope": "read", "days": "30"}).status_code == 403
    assert ApiToken.objects.count() == 0


def test_staff_make_a_token_in_the_admin_shown_once_and_the_expiry_bounded(admin_client, make_user):
    alice = make_user("alice")
    add = reverse("admin:conferences_apitoken_add")
    too_long = (timezone.now() + timedelta(days=400)).strftime("%Y-%m-%d")
    fields = {
        "user": alice.pk,
        "name": "ticket-bot",
        "scope": "moderate",
        "every_room": "on",
        "expires_at_1": "12:00:00",
    }
    refused = admin_client.post(add, {**fields, "expires_at_0": too_long})
    assert refused.status_code == 200 and ApiToken.objects.count() == 0 and "366" in refused.content.decode()

    soon = (timezone.now() + timedelta(days=10)).strftime("%Y-%m-%d")
    made = admin_client.post(add, {**fields, "expires_at_0": soon})
    assert made.status_code == 200 and "no-store" in made.headers["Cache-Control"]
    [raw] = TOKEN.findall(made.content.decode())
    token = tokens.authenticate(raw)
    assert token.user == alice and token.scope == "moderate"
    change = admin_client.get(reverse("admin:conferences_apitoken_change", args=[token.pk])).content.decode()
    assert raw not in change and token.key_hint in change

    admin_client.post(
        reverse("admin:conferences_apitoken_changelist"),
        {"action": "revoke", "_selected_action": [token.pk]},
    )
    assert tokens.authenticate(raw) is None
