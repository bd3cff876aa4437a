"""The history page: access rules, timeline, date filter, CSV export and attendance per meeting."""

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest
from django.urls import reverse

from conferences.history import csv_safe, format_duration, meetings
from conferences.models import ConferenceAccess, ConferenceEvent

Kind = ConferenceEvent.Kind
URL = "/conferences/sales/history/"


def at(day, hour=12, minute=0, second=0):
    """An aware UTC time in March 2025."""
    return datetime(2025, 3, day, hour, minute, second, tzinfo=UTC)


@pytest.fixture
def viewer(conference, make_user, grant):
    user = make_user("vera")
    grant(conference, user=user)
    return user


@pytest.fixture
def logged_in(client, viewer):
    client.force_login(viewer)
    return client


@pytest.fixture
def event(conference):
    def make(kind, when, participant=None, actor=None, **details):
        return ConferenceEvent.objects.create(
            conference=conference, kind=kind, created_at=when, participant=participant, actor=actor, details=details
        )

    return make


def csv_rows(response):
    return list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode("utf-8"))))


# --- access -------------------------------------------------------------------------


@pytest.mark.django_db
def test_url_name():
    assert reverse("conference-history", kwargs={"slug": "sales"}) == URL


@pytest.mark.django_db
def test_anonymous_is_sent_to_login(client, conference):
    for url in (URL, URL + "?format=csv", "/conferences/nope/history/"):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/?next=")


@pytest.mark.django_db
def test_unknown_room_is_404(client, superuser):
    client.force_login(superuser)
    assert client.get("/conferences/nope/history/").status_code == 404


@pytest.mark.django_db
def test_stranger_is_403_viewer_moderator_group_and_superuser_200(
    client, conference, make_user, grant, group, superuser
):
    stranger, moderator, member = make_user(), make_user(), make_user(groups=[group])
    grant(conference, user=moderator, role=ConferenceAccess.Role.MODERATOR)
    grant(conference, group=group)
    client.force_login(stranger)
    assert client.get(URL).status_code == 403
    assert client.get(URL + "?format=csv").status_code == 403
    for user in (moderator, member, superuser):
        client.force_login(user)
        response = client.get(URL)
        assert response.status_code == 200
        assert b'href="/conferences/sales/"' in response.content


@pytest.mark.django_db
def test_viewer_sees_page(logged_in):
    response = logged_in.get(URL)
    assert response.status_code == 200
    assert "conferences/history.html" in [t.name for t in response.templates]
    assert b"Nothing has happened in this room yet." in response.content
    assert b"No meetings yet." in response.content


# --- timeline -----------------------------------------------------------------------


@pytest.mark.django_db
def test_timeline_in_words_newest_first_with_actor(logged_in, conference, make_participant, make_user, event):
    moderator = make_user("mona")
    alice = make_participant(conference, caller_name="Alice", caller_number="201", joined_at=at(1, 10))
    bob = make_participant(
        conference,
        caller_name="Bob",
        caller_number="202",
        joined_at=at(1, 10, 1),
        left_at=at(1, 10, 5),
        left_reason="kicked",
    )
    event(Kind.JOINED, at(1, 10), alice, role="participant")
    event(Kind.JOINED, at(1, 10, 1), bob)
    event(Kind.MUTED, at(1, 10, 2), bob, actor=moderator)
    event(Kind.KICKED, at(1, 10, 5), bob, actor=moderator, reason="kicked")
    event(Kind.LOCKED, at(1, 10, 6), actor=moderator)
    event(Kind.REFUSED, at(1, 10, 7), reason="wrong PIN", caller_number="555")
    event(Kind.LEFT, at(1, 10, 8), alice, reason="hangup")

    response = logged_in.get(URL)
    assert response.status_code == 200
    texts = [entry.text for entry in response.context["entries"]]
    assert texts == [
        "Alice (201) hung up",
        "Refused a caller: wrong PIN",
        "Room locked by a moderator",
        "Bob (202) was kicked by a moderator",
        "Bob (202) was muted by a moderator",
        "Bob (202) joined",
        "Alice (201) joined",
    ]
    entries = response.context["entries"]
    assert [entry.actor for entry in entries] == ["", "", "mona", "mona", "mona", "", ""]
    assert entries[1].caller_number == "555"  # a refused caller's number comes from the details
    content = response.content.decode()
    assert "Bob (202) was kicked by a moderator" in content
    assert "<td>mona</td>" in content
    assert '<time datetime="2025-03-01T10:08:00+00:00">2025-03-01 10:08:00</time>' in content


@pytest.mark.django_db
def test_timeline_shows_site_time_zone(logged_in, event, settings):
    settings.TIME_ZONE = "Europe/Berlin"
    event(Kind.LOCKED, at(1, 23, 30))
    content = logged_in.get(URL).content.decode()
    assert '<time datetime="2025-03-02T00:30:00+01:00">2025-03-02 00:30:00</time>' in content
    assert "Europe/Berlin" in content


@pytest.mark.django_db
def test_timeline_is_paginated_and_page_links_keep_the_filter(logged_in, event):
    for minute in range(105):
        event(Kind.MUTED_ALL, at(2, 9, minute // 60, minute % 60))
    response = logged_in.get(URL, {"from": "2025-03-02", "to": "2025-03-02"})
    assert len(response.context["entries"]) == 100
    content = response.content.decode()
    assert "?from=2025-03-02&amp;to=2025-03-02&amp;page=2" in content
    assert "?from=2025-03-02&amp;to=2025-03-02&amp;format=csv" in content
    page2 = logged_in.get(URL, {"from": "2025-03-02", "to": "2025-03-02", "page": "2"})
    assert len(page2.context["entries"]) == 5
    assert "?from=2025-03-02&amp;to=2025-03-02&amp;page=1" in page2.content.decode()
    # A page number that is not one gives a page, not an error.
    assert logged_in.get(URL, {"page": "x"}).status_code == 200


@pytest.mark.django_db
def test_hostile_caller_names_are_escaped(logged_in, conference, make_participant, event):
    name = '<script>alert("x")</script>'
    guest = make_participant(conference, caller_name=name, caller_number="<b>1</b>")
    event(Kind.JOINED, at(1), guest)
    event(Kind.REFUSED, at(1, 13), reason="<img src=x onerror=alert(1)>", caller_number="<i>9</i>")
    content = logged_in.get(URL).content.decode()
    assert "<script>alert" not in content
    assert "<b>1</b>" not in content and "<i>9</i>" not in content and "<img" not in content
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; (&lt;b&gt;1&lt;/b&gt;) joined" in content
    # Also in the attendance table.
    assert content.count("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;") >= 3


# --- date filter --------------------------------------------------------------------


@pytest.mark.django_db
def test_date_filter_inclusive_days(logged_in, event):
    event(Kind.LOCKED, at(1, 0, 0))
    event(Kind.UNLOCKED, at(2, 23, 59, 59))
    event(Kind.MUTED_ALL, at(3, 0, 0))
    event(Kind.UNMUTED_ALL, at(5))

    def kinds(**params):
        response = logged_in.get(URL, params)
        assert response.status_code == 200
        return [entry.event.kind for entry in response.context["entries"]]

    assert kinds(**{"from": "2025-03-01", "to": "2025-03-02"}) == ["unlocked", "locked"]
    assert kinds(**{"from": "2025-03-03"}) == ["unmuted_all", "muted_all"]
    assert kinds(to="2025-03-01") == ["locked"]
    assert kinds(**{"from": "2025-03-04", "to": "2025-03-04"}) == []
    assert kinds(**{"from": "2025-04-01"}) == []
    response = logged_in.get(URL, {"from": "2025-04-01"})
    assert b"Nothing happened in this room on these dates." in response.content


@pytest.mark.django_db
def test_date_filter_uses_current_time_zone(logged_in, event, settings):
    settings.TIME_ZONE = "Europe/Berlin"
    event(Kind.LOCKED, at(1, 23, 30))  # 2 March, 00:30 in Berlin
    day1 = logged_in.get(URL, {"from": "2025-03-01", "to": "2025-03-01"}).context["entries"]
    day2 = logged_in.get(URL, {"from": "2025-03-02", "to": "2025-03-02"}).context["entries"]
    assert (len(day1), len(day2)) == (0, 1)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"from": "2025-13-45"}, "Enter a valid date."),
        ({"to": "yesterday"}, "Enter a valid date."),
        ({"from": "0001-01-01"}, "Ensure this value is greater than or equal to"),
        ({"to": "9999-12-31"}, "Ensure this value is less than or equal to"),
        ({"from": "2025-03-05", "to": "2025-03-01"}, "The start date is after the end date."),
    ],
)
def test_invalid_dates_give_a_form_error(logged_in, event, params, message):
    event(Kind.LOCKED, at(1))
    for extra in ({}, {"format": "csv"}):
        response = logged_in.get(URL, {**params, **extra})
        assert response.status_code == 200
        assert response["Content-Type"].startswith("text/html")
        assert response.context["form"].errors
        content = response.content.decode()
        assert message in content
        assert 'aria-invalid="true"' in content or 'role="alert"' in content
        assert "Correct the dates above" in content
        assert "Room locked" not in content


# --- CSV ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_csv_export(logged_in, conference, make_participant, make_user, event, settings):
    settings.TIME_ZONE = "Europe/Berlin"
    moderator = make_user("mona")
    alice = make_participant(conference, caller_name="Alice", caller_number="201")
    event(Kind.JOINED, at(1, 10), alice, role="participant")
    event(Kind.KICKED, at(1, 10, 5), alice, actor=moderator, reason="kicked")
    event(Kind.REFUSED, at(1, 10, 7), reason="full", caller_number="555")
    event(Kind.LOCKED, at(9))  # outside the filter

    response = logged_in.get(URL, {"format": "csv", "from": "2025-03-01", "to": "2025-03-01"})
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="sales-history.csv"'
    assert csv_rows(response) == [
        ["time_utc", "kind", "caller_name", "caller_number", "actor", "details"],
        ["2025-03-01T10:07:00Z", "refused", "", "555", "", '{"caller_number": "555", "reason": "full"}'],
        ["2025-03-01T10:05:00Z", "kicked", "Alice", "201", "mona", '{"reason": "kicked"}'],
        ["2025-03-01T10:00:00Z", "joined", "Alice", "201", "", '{"role": "participant"}'],
    ]


@pytest.mark.django_db
def test_csv_neutralises_formulas(logged_in, conference, make_participant, event):
    hostile = ['=HYPERLINK("http://evil")', "+1+2", "-2+3", "@SUM(A1)", "\tx", "\rx", 'Plain, "quoted"\nname']
    for index, name in enumerate(hostile):
        event(Kind.JOINED, at(1, 10, index), make_participant(conference, caller_name=name, caller_number="=1+1"))
    rows = csv_rows(logged_in.get(URL, {"format": "csv"}))
    names = [row[2] for row in rows[1:]]
    assert names == list(reversed(["'" + name for name in hostile[:-1]] + [hostile[-1]]))
    assert {row[3] for row in rows[1:]} == {"'=1+1"}


def test_csv_safe():
    assert csv_safe("=1") == "'=1"
    assert csv_safe("Alice") == "Alice"
    assert csv_safe("") == ""
    assert csv_safe(None) == ""
    assert csv_safe("a=1") == "a=1"


@pytest.fixture
def alice_joined(conference, make_participant, event):
    event(Kind.JOINED, at(1, 10), make_participant(conference, caller_name="Alice", caller_number="201"))


@pytest.mark.django_db(transaction=True)
async def test_csv_streams_asynchronously_under_asgi(async_client, viewer, alice_joined):
    await async_client.aforce_login(viewer)
    response = await async_client.get(URL, {"format": "csv"})
    assert response.status_code == 200
    assert response.is_async  # an async iterator: daphne sends it as it is read, not collected first
    body = b"".join([chunk async for chunk in response.streaming_content]).decode()
    assert body.splitlines() == [
        "time_utc,kind,caller_name,caller_number,actor,details",
        "2025-03-01T10:00:00Z,joined,Alice,201,,",
    ]


# --- attendance (pure) --------------------------------------------------------------

NOW = at(10, 12)


def stay(joined, left=None, number="201", name="Alice", reason=""):
    return {
        "joined_at": joined,
        "left_at": left,
        "left_reason": reason or ("hangup" if left else ""),
        "caller_name": name,
        "caller_number": number,
    }


def test_no_stays_no_meetings():
    assert meetings([], NOW) == []


def test_overlapping_stays_make_one_meeting():
    [meeting] = meetings(
        [stay(at(1, 10), at(1, 11), "201"), stay(at(1, 10, 30), at(1, 11, 15), "202", "Bob")],
        NOW,
    )
    assert (meeting.start, meeting.end, meeting.ongoing) == (at(1, 10), at(1, 11, 15), False)
    assert meeting.duration == timedelta(hours=1, minutes=15)
    assert meeting.duration_display == "1:15:00"
    assert meeting.people == 2
    assert [(a.caller_name, a.caller_number, a.present) for a in meeting.attendees] == [
        ("Alice", "201", timedelta(hours=1)),
        ("Bob", "202", timedelta(minutes=45)),
    ]


def test_a_stay_inside_a_long_one_and_touching_stays_stay_in_the_meeting():
    [meeting] = meetings(
        [
            stay(at(1, 10), at(1, 12), "201"),
            stay(at(1, 10, 30), at(1, 10, 40), "202"),
            stay(at(1, 12), at(1, 12, 30), "203"),  # joins the moment the last one leaves
        ],
        NOW,
    )
    assert (meeting.start, meeting.end, meeting.people) == (at(1, 10), at(1, 12, 30), 3)


def test_a_gap_makes_two_meetings_newest_first():
    later, earlier = meetings(
        # Unordered input is fine.
        [stay(at(1, 14), at(1, 14, 30), "202"), stay(at(1, 10), at(1, 11), "201")],
        NOW,
    )
    assert (earlier.start, earlier.end, earlier.people) == (at(1, 10), at(1, 11), 1)
    assert (later.start, later.end, later.people) == (at(1, 14), at(1, 14, 30), 1)


def test_ongoing_meeting():
    previous_and_current = meetings(
        [stay(at(10, 11), None, "201"), stay(at(10, 11, 30), at(10, 11, 40), "202"), stay(at(9, 9), at(9, 10))],
        NOW,
    )
    current = previous_and_current[0]
    assert current.ongoing and current.end is None
    assert current.duration == timedelta(hours=1)  # until now
    assert current.duration_display == "1:00:00"
    alice, bob = current.attendees
    assert (alice.still_present, alice.present) == (True, timedelta(hours=1))
    assert (bob.still_present, bob.present) == (False, timedelta(minutes=10))
    assert not previous_and_current[1].ongoing


def test_same_caller_rejoining_is_merged():
    [meeting] = meetings(
        [
            stay(at(1, 10), at(1, 10, 10), "201", "Alice", reason="lost"),
            stay(at(1, 10, 0), at(1, 11), "300", "Bob"),
            stay(at(1, 10, 20), at(1, 10, 30), "201", "Alice", reason="kicked"),
            stay(at(1, 10, 25), at(1, 10, 40), "201", "Alice (mobile)"),  # overlaps her previous stay
            stay(at(1, 10, 50), at(1, 10, 55), "", ""),
            stay(at(1, 10, 51), at(1, 10, 52), "", "Anonymous"),
        ],
        NOW,
    )
    assert meeting.people == 4  # Alice, Bob and two callers without a number, who cannot be told apart
    alice = meeting.attendees[0]
    assert (alice.caller_number, alice.caller_name, alice.stays) == ("201", "Alice (mobile)", 3)
    assert alice.present == timedelta(minutes=30)  # 10 + 20 (10:20-10:40), overlap counted once
    assert alice.present_display == "0:30:00"
    assert (alice.kicked, alice.lost, alice.still_present) == (True, True, False)
    bob = meeting.attendees[1]
    assert (bob.present, bob.kicked, bob.lost) == (timedelta(hours=1), False, False)


def test_same_caller_in_two_meetings_is_not_merged_across_them():
    second, first = meetings([stay(at(1, 10), at(1, 11)), stay(at(2, 10), at(2, 10, 30))], NOW)
    assert first.attendees[0].present == timedelta(hours=1)
    assert second.attendees[0].present == timedelta(minutes=30)


def test_meetings_accepts_objects_and_long_durations():
    class Row:
        def __init__(self, **fields):
            self.__dict__.update(fields)

    [meeting] = meetings([Row(**stay(at(1, 10), at(2, 12, 0, 5)))], NOW)
    assert meeting.duration_display == "26:00:05"
    assert format_duration(timedelta(seconds=59.9)) == "0:00:59"


# --- attendance on the page ---------------------------------------------------------


@pytest.mark.django_db
def test_attendance_on_the_page(logged_in, conference, make_participant):
    make_participant(
        conference,
        caller_name="Alice",
        caller_number="201",
        joined_at=at(1, 10),
        left_at=at(1, 11),
        left_reason="kicked",
    )
    make_participant(
        conference,
        caller_name="Bob",
        caller_number="202",
        joined_at=at(1, 10, 30),
        left_at=at(1, 10, 45),
        left_reason="lost",
    )
    make_participant(conference, caller_name="Carol", caller_number="203", joined_at=at(2, 9))
    response = logged_in.get(URL)
    found = response.context["meetings"]
    assert [(m.start, m.end, m.people) for m in found] == [(at(2, 9), None, 1), (at(1, 10), at(1, 11), 2)]
    content = response.content.decode()
    assert "Meeting from 2025-03-01 10:00:00 to 2025-03-01 11:00:00 (1:00:00), 2 people" in content
    assert "Meeting since 2025-03-02 09:00:00, ongoing" in content
    assert "still here" in content and "kicked" in content and "lost" in content


@pytest.mark.django_db
def test_attendance_filter_keeps_whole_meetings_that_overlap_the_dates(logged_in, conference, make_participant):
    def present(number, joined, left):
        make_participant(conference, caller_number=number, joined_at=joined, left_at=left, left_reason="hangup")

    # Meeting 1, 28 Feb only.
    present("100", at(1, 10) - timedelta(days=1), at(1, 11) - timedelta(days=1))
    # Meeting 2, crossing midnight into 1 March: a chain of stays that starts on 28 Feb.
    present("201", at(1, 20) - timedelta(days=1), at(1, 22) - timedelta(days=1))
    present("202", at(1, 21) - timedelta(days=1), at(1, 23, 30) - timedelta(days=1))
    present("203", at(1, 23) - timedelta(days=1), at(1, 0, 30))
    # ... going on past 1 March into 2 March.
    present("204", at(1, 0, 15), at(2, 0, 10))
    present("205", at(2, 0, 5), at(2, 1))
    # Meeting 3, 3 March only.
    present("300", at(3, 10), at(3, 11))

    response = logged_in.get(URL, {"from": "2025-03-01", "to": "2025-03-01"})
    [meeting] = response.context["meetings"]
    assert (meeting.start, meeting.end, meeting.people) == (at(1, 20) - timedelta(days=1), at(2, 1), 5)
    response = logged_in.get(URL, {"from": "2025-02-28", "to": "2025-02-28"})
    assert [m.people for m in response.context["meetings"]] == [5, 1]
    response = logged_in.get(URL, {"from": "2025-03-04"})
    assert response.context["meetings"] == []
    assert b"No meetings on these dates." in response.content


@pytest.mark.django_db
def test_attendance_filter_takes_in_an_ongoing_meeting(logged_in, conference, make_participant):
    make_participant(conference, caller_number="201", joined_at=at(1, 10))
    make_participant(conference, caller_number="202", joined_at=at(5, 10), left_at=at(5, 11), left_reason="hangup")
    [meeting] = logged_in.get(URL, {"from": "2025-03-03", "to": "2025-03-03"}).context["meetings"]
    assert meeting.ongoing and meeting.start == at(1, 10) and meeting.people == 2
    assert logged_in.get(URL, {"to": "2025-02-28"}).context["meetings"] == []


# --- queries ------------------------------------------------------------------------


@pytest.mark.django_db
def test_query_count_does_not_grow_with_the_history(
    logged_in, conference, make_participant, make_user, event, django_assert_max_num_queries
):
    moderators = [make_user(f"mod{index}") for index in range(5)]
    for index in range(40):
        guest = make_participant(
            conference,
            caller_number=str(300 + index),
            joined_at=at(1, 10, index),
            left_at=at(1, 11, index),
            left_reason="hangup",
        )
        event(Kind.JOINED, at(1, 10, index), guest)
        event(Kind.MUTED, at(1, 10, index, 30), guest, actor=moderators[index % 5])
    # Session, user, room, access, event count, event page (participant and actor joined in), stays.
    with django_assert_max_num_queries(7):
        response = logged_in.get(URL)
    assert len(response.context["entries"]) == 80
    # With dates, the stays take a second round (the window widens to whole meetings).
    with django_assert_max_num_queries(8):
        response = logged_in.get(URL, {"from": "2025-03-01", "to": "2025-03-01"})
    assert len(response.context["entries"]) == 80
    # Session, user, room, access, events.
    with django_assert_max_num_queries(5):
        rows = csv_rows(logged_in.get(URL, {"format": "csv"}))
    assert len(rows) == 81
