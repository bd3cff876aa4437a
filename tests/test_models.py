"""The database itself refuses rows that break the data model."""

import importlib
from datetime import timedelta

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from conferences.models import AsteriskServer, Conference, ConferenceAccess, Meeting, Participant

pytestmark = pytest.mark.django_db


def refused(callable_, *args, **kwargs):
    with pytest.raises(IntegrityError), transaction.atomic():
        callable_(*args, **kwargs)


def test_room_number_unique_per_server(server, make_server, make_conference):
    make_conference("200")
    refused(make_conference, "200", slug="other-slug")
    # The same number on another server is fine.
    other = make_server("other")
    assert make_conference("200", server=other, slug="room-200-other").number == "200"


def test_slug_unique_across_servers(make_server, make_conference):
    make_conference("201", slug="board")
    refused(make_conference, "202", slug="board", server=make_server("second"))


def test_room_number_and_pin_must_be_digits(make_conference):
    refused(make_conference, "12a")
    refused(make_conference, "300", pin="12 4")
    assert make_conference("301", pin="0042").pin == "0042"


def test_max_participants_must_be_positive(make_conference):
    refused(make_conference, "302", max_participants=0)
    assert make_conference("303", max_participants=1).max_participants == 1


def test_access_names_exactly_one_of_user_or_group(conference, make_user, group):
    user = make_user()
    refused(ConferenceAccess.objects.create, conference=conference)
    refused(ConferenceAccess.objects.create, conference=conference, user=user, group=group)
    ConferenceAccess.objects.create(conference=conference, user=user)
    ConferenceAccess.objects.create(conference=conference, group=group)
    assert conference.access.count() == 2


def test_access_unique_per_user_and_per_group(conference, make_user, group):
    user = make_user()
    ConferenceAccess.objects.create(conference=conference, user=user)
    refused(ConferenceAccess.objects.create, conference=conference, user=user, role="moderator")
    ConferenceAccess.objects.create(conference=conference, group=group)
    refused(ConferenceAccess.objects.create, conference=conference, group=group)


def test_access_role_must_be_known(conference, make_user):
    refused(ConferenceAccess.objects.create, conference=conference, user=make_user(), role="owner")


def test_channel_id_unique_per_server(conference, make_conference, make_server, make_participant):
    make_participant(conference, "1700000000.1")
    # Not twice on one server, even in another room and after leaving.
    refused(make_participant, make_conference("400"), "1700000000.1")
    # Another server may have a channel with the same id.
    other_room = make_conference("400", server=make_server("second"), slug="second-400")
    assert make_participant(other_room, "1700000000.1").server.name == "second"


def test_at_most_one_present_participant_per_channel(conference, make_participant):
    participant = make_participant(conference, "1700000000.2")
    participant.left_at = timezone.now()
    participant.left_reason = Participant.LeftReason.HANGUP
    participant.save()
    refused(make_participant, conference, "1700000000.2")


def test_left_reason_set_exactly_when_left(conference, make_participant):
    refused(make_participant, conference, left_at=timezone.now())
    refused(make_participant, conference, left_reason="kicked")
    refused(make_participant, conference, left_at=timezone.now(), left_reason="bored")
    ok = make_participant(conference, left_at=timezone.now(), left_reason="lost")
    assert not ok.present


def test_left_not_before_joined(conference, make_participant):
    now = timezone.now()
    refused(
        make_participant, conference, joined_at=now, left_at=now - timezone.timedelta(seconds=1), left_reason="hangup"
    )


def test_participant_takes_its_conferences_server(conference, make_participant, make_server):
    participant = make_participant(conference)
    assert participant.server_id == conference.server_id
    with pytest.raises(ValueError):
        Participant.objects.create(
            conference=conference, server=make_server("elsewhere"), channel_id="x", joined_at=timezone.now()
        )


def test_present_queryset(conference, make_participant):
    here = make_participant(conference)
    make_participant(conference, left_at=timezone.now(), left_reason="hangup")
    assert list(Participant.objects.present()) == [here]


def test_server_repr_never_shows_password(server):
    assert "s3cret" not in repr(server)
    assert "s3cret" not in str(server)


def test_default_server_synced_from_settings(settings):
    settings.ARI_URL = "http://10.0.0.5:8088/ari"
    settings.ARI_USERNAME = "asterisk"
    settings.ARI_PASSWORD = "pw1"
    settings.ARI_APP = "rooms"
    server = AsteriskServer.objects.sync_default_from_settings()
    assert (server.name, server.ari_url, server.username, server.password, server.app_name) == (
        "default",
        "http://10.0.0.5:8088/ari",
        "asterisk",
        "pw1",
        "rooms",
    )
    settings.ARI_PASSWORD = "pw2"
    AsteriskServer.objects.sync_default_from_settings()
    assert AsteriskServer.objects.get(name="default").password == "pw2"
    assert AsteriskServer.objects.count() == 1


def test_no_default_server_without_ari_url(settings):
    settings.ARI_URL = None
    assert AsteriskServer.objects.sync_default_from_settings() is None
    assert not AsteriskServer.objects.exists()


def test_conference_url(conference):
    assert conference.get_absolute_url() == "/conferences/sales/"
    assert isinstance(conference, Conference)


def test_at_most_one_open_meeting_per_room(conference, make_conference):
    now = timezone.now()
    Meeting.objects.create(
        conference=conference, started_at=now - timedelta(hours=2), ended_at=now - timedelta(hours=1)
    )
    Meeting.objects.create(conference=conference, started_at=now)
    refused(Meeting.objects.create, conference=conference, started_at=now + timedelta(minutes=1))
    # Another room's meeting may be open at the same time.
    assert Meeting.objects.create(conference=make_conference(), started_at=now).ongoing


def test_meeting_does_not_end_before_it_began(conference):
    now = timezone.now()
    refused(Meeting.objects.create, conference=conference, started_at=now, ended_at=now - timedelta(seconds=1))
    assert not Meeting.objects.create(conference=conference, started_at=now, ended_at=now).ongoing


def test_deleting_a_meeting_keeps_its_stays(conference, make_participant):
    meeting = Meeting.objects.create(conference=conference, started_at=timezone.now())
    stay = make_participant(conference, meeting=meeting)
    meeting.delete()
    stay.refresh_from_db()
    assert stay.meeting is None


def test_deleting_a_room_deletes_its_meetings(conference, make_participant):
    meeting = Meeting.objects.create(conference=conference, started_at=timezone.now())
    make_participant(conference, meeting=meeting)
    conference.delete()
    assert not Meeting.objects.exists() and not Participant.objects.exists()


def test_the_migrations_backfill_writes_meetings_this_database_accepts(conference, make_conference, make_participant):
    """The grouping of stays stored before meetings existed, on this database's own write path."""
    backfill = importlib.import_module("conferences.migrations.0002_meetings")
    start = timezone.now() - timedelta(days=1)
    other = make_conference()
    for index in range(5):  # two meetings with a gap between them; then one still going on
        joined = start + timedelta(minutes=10 * index + (60 if index >= 3 else 0))
        make_participant(conference, joined_at=joined, left_at=joined + timedelta(minutes=15), left_reason="hangup")
    make_participant(conference, joined_at=start + timedelta(hours=3))
    make_participant(other, joined_at=start)
    backfill.group_stays(Participant, Meeting, connection)
    assert list(
        Meeting.objects.filter(conference=conference).order_by("started_at").values_list("ended_at", flat=True)
    )[:2] == [start + timedelta(minutes=35), start + timedelta(minutes=115)]
    assert [m.stays.count() for m in Meeting.objects.filter(conference=conference).order_by("started_at")] == [3, 2, 1]
    assert Meeting.objects.get(conference=other).ongoing
    assert not Participant.objects.filter(meeting__isnull=True).exists()


@pytest.mark.parametrize(
    "value,ok",
    [
        ("", True),  # no invites
        ("PJSIP/{number}@trunk", True),
        ("Local/{number}@from-internal", True),
        ("SIP/{number}", True),
        ("PJSIP/trunk", False),  # no {number}
        ("PJSIP/{number}@{number}", False),
        ("PJSIP/{number}@trunk {x}", False),
        ("{number}", False),  # no technology
        ("PJSIP/{num}@trunk", False),
        ("PJSIP/{number}@trunk&PJSIP/0900123@trunk", False),  # a second destination
        ("PJSIP/{number}@trunk,,tT", False),  # Dial options
        ("PJSIP/{number}@trunk\n", False),
    ],
)
def test_dial_templates(value, ok):
    from django.core.exceptions import ValidationError

    from conferences.models import validate_dial_template

    if ok:
        validate_dial_template(value)
    else:
        with pytest.raises(ValidationError):
            validate_dial_template(value)


@pytest.mark.parametrize(
    "value,ok",
    [
        ("[0-9]{2,6}", True),
        (r"\+49[0-9]{6,12}|[0-9]{3,4}", True),
        ("(unclosed", False),
        (r"(\d+)+", True),  # RE2 matches it in linear time
        (r"(?!112)[0-9]+", False),  # look-arounds: not RE2
        (r"(7)\1", False),  # back-references: not RE2
        (r"(7|8){3}", True),
    ],
)
def test_invite_patterns(value, ok):
    from django.core.exceptions import ValidationError

    from conferences.models import validate_invite_pattern

    if ok:
        validate_invite_pattern(value)
    else:
        with pytest.raises(ValidationError):
            validate_invite_pattern(value)
