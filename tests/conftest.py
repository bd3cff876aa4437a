import itertools

import pytest
from django.contrib.auth.models import Group, User
from django.utils import timezone

from conferences.models import AsteriskServer, Conference, ConferenceAccess, Participant

_numbers = itertools.count(1000)


@pytest.fixture
def make_server(db):
    def make(name=None, **fields):
        fields.setdefault("ari_url", "http://127.0.0.1:8088/ari")
        fields.setdefault("username", "conference")
        fields.setdefault("password", "s3cret-ari-password")
        return AsteriskServer.objects.create(name=name or f"pbx-{next(_numbers)}", **fields)

    return make


@pytest.fixture
def server(make_server):
    return make_server("pbx")


@pytest.fixture
def make_conference(db, server):
    def make(number=None, **fields):
        number = number or str(next(_numbers))
        fields.setdefault("server", server)
        fields.setdefault("slug", f"room-{number}")
        fields.setdefault("name", f"Room {number}")
        return Conference.objects.create(number=number, **fields)

    return make


@pytest.fixture
def conference(make_conference):
    return make_conference("100", slug="sales", name="Sales")


@pytest.fixture
def make_participant(db):
    def make(conference, channel_id=None, **fields):
        fields.setdefault("joined_at", timezone.now() - timezone.timedelta(minutes=1))
        return Participant.objects.create(
            conference=conference, channel_id=channel_id or f"chan-{next(_numbers)}", **fields
        )

    return make


@pytest.fixture
def make_user(db):
    def make(username=None, *, groups=(), **fields):
        user = User.objects.create_user(username=username or f"user{next(_numbers)}", password="pw-Tr0ub4dor", **fields)
        user.groups.set(groups)
        return user

    return make


@pytest.fixture
def grant(db):
    def grant(conference, *, user=None, group=None, role=ConferenceAccess.Role.VIEWER):
        return ConferenceAccess.objects.create(conference=conference, user=user, group=group, role=role)

    return grant


@pytest.fixture
def group(db):
    return Group.objects.create(name="helpdesk")


@pytest.fixture
def superuser(db):
    return User.objects.create_superuser(username="root", password="pw-Tr0ub4dor", email="")


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
