"""The history page: access rules, timeline, date filter, CSV exports and attendance per meeting.

Also the meetings behind the attendance: kept by the services as callers come
and go, and grouped for stays stored before meetings existed by the migration
``0002_meetings``, both by the rule of the pure ``meetings()``.
"""

import csv
import importlib
import io
import re
import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.urls import reverse
from django.utils import timezone
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conferences import history, services
from conferences.history import csv_safe, format_duration, meetings
from conferences.models import ConferenceAccess, ConferenceEvent, Meeting, Participant

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


backfill = importlib.import_module("conferences.migrations.0002_meetings")


def group_into_meetings():
    """Stays stored by the tests' factory (not by the services) grouped as the migration grouped old stays."""
    backfill.group_stays(Participant, Meeting, connection)


def link(content, rel):
    """The query strings of the page links with ``rel`` (``prev``: newer, ``next``: older), unescaped."""
    found = re.findall(rf'<a href="(\?[^"]*)" rel="{rel}">', content)
    return [href.replace("&amp;", "&") for href in found]


def link_named(content, text):
    """The query string of the one link that reads ``text``, unescaped."""
    [href] = re.findall(rf'<a href="([^"]*)"[^>]*>{re.escape(text)}</a>', content)
    return href.replace("&amp;", "&")


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
def test_keypad_entries_in_words(logged_in, conference, make_participant, make_user, event):
    moderator = make_user("mona")
    carol = make_participant(conference, caller_name="Carol", caller_number="203", joined_at=at(1, 10))
    event(Kind.HAND_RAISED, at(1, 10, 1), carol)
    event(Kind.HAND_LOWERED, at(1, 10, 2), carol)
    event(Kind.SELF_MUTED, at(1, 10, 3), carol)
    event(Kind.SELF_UNMUTED, at(1, 10, 4), carol)
    event(Kind.HAND_RAISED, at(1, 10, 5), carol)
    event(Kind.HAND_LOWERED, at(1, 10, 6), carol, actor=moderator)
    texts = [entry.text for entry in logged_in.get(URL).context["entries"]]
    assert texts == [
        "The hand of Carol (203) was lowered by a moderator",
        "Carol (203) raised the hand (keypad)",
        "Carol (203) unmuted themself (keypad)",
        "Carol (203) muted themself (keypad)",
        "Carol (203) lowered the hand (keypad)",
        "Carol (203) raised the hand (keypad)",
    ]


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
    event(Kind.LOCKED, at(3, 9))  # outside the filter
    response = logged_in.get(URL, {"from": "2025-03-02", "to": "2025-03-02"})
    first = response.context["entries"]
    assert len(first) == 100
    assert first[0].event.created_at == at(2, 9, 1, 44)
    content = response.content.decode()
    assert "100 events from 2025-03-02 09:01:44 to 2025-03-02 09:00:05, newest first" in content
    assert link(content, "prev") == []
    [older] = link(content, "next")
    assert older.startswith("?from=2025-03-02&to=2025-03-02&before=")
    assert "?from=2025-03-02&amp;to=2025-03-02&amp;format=csv" in content

    page2 = logged_in.get(URL + older)
    assert [entry.event.created_at for entry in page2.context["entries"]] == [
        at(2, 9, 0, sec) for sec in range(4, -1, -1)
    ]
    content = page2.content.decode()
    assert "5 events from 2025-03-02 09:00:04 to 2025-03-02 09:00:00, newest first" in content
    assert link(content, "next") == []
    [newer] = link(content, "prev")
    assert newer.startswith("?from=2025-03-02&to=2025-03-02&after=")
    assert 'href="?from=2025-03-02&amp;to=2025-03-02">Newest events</a>' in content

    back = logged_in.get(URL + newer)
    assert [entry.event.pk for entry in back.context["entries"]] == [entry.event.pk for entry in first]
    assert link(back.content.decode(), "next") == [older]
    # An old page-number link from before keyset pages gives the newest page, not an error.
    response = logged_in.get(URL, {"page": "x"})
    assert response.status_code == 200
    assert len(response.context["entries"]) == 100


@pytest.mark.django_db
def test_timeline_pages_neither_skip_nor_repeat_events_of_the_same_instant(logged_in, event):
    created = {event(Kind.MUTED_ALL, at(2, 9)).pk for _ in range(230)}
    seen, url = [], URL
    for _page in range(3):
        response = logged_in.get(url)
        seen += [entry.event.pk for entry in response.context["entries"]]
        older = link(response.content.decode(), "next")
        url = URL + older[0] if older else None
    assert url is None
    assert len(seen) == 230 and set(seen) == created
    assert seen == sorted(seen, reverse=True)  # ties on the time are broken by id, newest first


@pytest.mark.django_db
def test_a_newer_page_that_reaches_the_newest_events_is_the_newest_page(logged_in, event):
    events = [event(Kind.MUTED_ALL, at(2, 9, 0, second)) for second in range(50)]
    cursor = history.encode_cursor(events[10].created_at, events[10].pk)
    response = logged_in.get(URL, {"after": cursor})
    assert len(response.context["entries"]) == 50  # not only the 39 newer than the cursor
    assert response.context["timeline"].first


@pytest.mark.django_db
@pytest.mark.parametrize(
    "params",
    [
        {"before": "x"},
        {"before": ""},
        {"after": "1.2.3"},
        {"before": "1740823200000000"},
        {"before": "99999999999999999999.1"},  # more digits than any time
        {"before": "9999999999999999999.1"},  # past the year 9999
        {"after": f"1.{2**63}"},  # beyond a bigint
        {"before": "1.1", "after": "1.1"},
        {"meetings_before": "<script>"},
        {"meetings_after": "1.-1"},
    ],
)
def test_bad_page_links_are_a_400_with_a_message(logged_in, event, params):
    event(Kind.LOCKED, at(1))
    response = logged_in.get(URL, params)
    assert response.status_code == 400
    content = response.content.decode()
    assert "This page link is not valid" in content
    assert f'<a href="{URL}">Show the newest history</a>' in content
    assert "Room locked" not in content and "<script>" not in content


@pytest.mark.django_db
def test_a_cursor_older_than_everything_gives_an_empty_page_with_a_way_back(logged_in, event):
    event(Kind.LOCKED, at(1))
    response = logged_in.get(URL, {"before": history.encode_cursor(at(1) - timedelta(days=1), 1)})
    assert response.status_code == 200
    content = response.content.decode()
    assert "No older events." in content
    assert "Newest events</a>" in content


@pytest.mark.django_db
def test_hostile_caller_names_are_escaped(logged_in, conference, make_participant, event):
    name = '<script>alert("x")</script>'
    guest = make_participant(conference, caller_name=name, caller_number="<b>1</b>")
    event(Kind.JOINED, at(1), guest)
    event(Kind.REFUSED, at(1, 13), reason="<img src=x onerror=alert(1)>", caller_number="<i>9</i>")
    group_into_meetings()
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
    assert csv_safe("Anne-Marie") == "Anne-Marie"
    assert csv_safe("   ") == "   "


@pytest.mark.parametrize(
    "hostile",
    [
        ' =HYPERLINK("http://evil","x")',
        "\t=1",
        "\r=1",
        " @SUM(A1)",
        "\u00a0=1",  # no-break space
        "\u2003+1",  # em space
        "\u3000-1",  # ideographic space
        "\n\n=1",
        "\u200b=1",  # zero-width space, invisible
        "\ufeff=1",  # byte order mark
        "\x00=1",
        "\uff1d1+1",  # full-width equals sign
        "\uff20SUM(A1)",  # full-width commercial at
    ],
)
def test_csv_safe_sees_formulas_behind_whitespace_and_invisible_characters(hostile):
    assert csv_safe(hostile) == "'" + hostile


@pytest.mark.django_db
def test_csv_neutralises_formulas_behind_whitespace_in_both_exports(logged_in, conference, make_participant, event):
    hostile = [' =HYPERLINK("http://evil")', "\t=1", " @SUM(A1)", "\u00a0=1"]
    for index, name in enumerate(hostile):
        guest = make_participant(
            conference,
            caller_name=name,
            caller_number=" +1",
            joined_at=at(1, 10, index),
            left_at=at(1, 10, 30),
            left_reason="hangup",
        )
        event(Kind.JOINED, at(1, 10, index), guest)
    group_into_meetings()
    rows = csv_rows(logged_in.get(URL, {"format": "csv"}))
    assert [row[2] for row in rows[1:]] == ["'" + name for name in reversed(hostile)]
    assert {row[3] for row in rows[1:]} == {"' +1"}
    [meeting] = Meeting.objects.all()
    rows = csv_rows(logged_in.get(URL, {"format": "csv", "meeting": meeting.pk}))
    assert [row[3] for row in rows[1:]] == ["'" + name for name in hostile]
    assert {row[4] for row in rows[1:]} == {"' +1"}


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
    group_into_meetings()
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
    group_into_meetings()

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
    group_into_meetings()
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
    group_into_meetings()
    # Session, user, room, access, event page (participant and actor joined in), meeting page, their stays,
    # their recordings.
    with django_assert_max_num_queries(8):
        response = logged_in.get(URL)
    assert len(response.context["entries"]) == 80
    assert [m.people for m in response.context["meetings"]] == [40]
    # With dates, one more: the last meeting that began before the first day, which may reach into it.
    with django_assert_max_num_queries(9):
        response = logged_in.get(URL, {"from": "2025-03-01", "to": "2025-03-01"})
    assert len(response.context["entries"]) == 80
    # Session, user, room, access, events (one chunk).
    with django_assert_max_num_queries(5):
        rows = csv_rows(logged_in.get(URL, {"format": "csv"}))
    assert len(rows) == 81


# --- attendance: pages, the cut, the CSV of one meeting --------------------------


def short_meetings(conference, make_participant, count, *, day=1):
    """``count`` meetings of one hour each, one a day from ``day``, two callers in each."""
    for index in range(count):
        start = at(day) + timedelta(days=index)
        for number in ("201", "202"):
            make_participant(
                conference,
                caller_number=number,
                joined_at=start,
                left_at=start + timedelta(hours=1),
                left_reason="hangup",
            )
    group_into_meetings()


@pytest.mark.django_db
def test_meetings_are_paged_newest_first(logged_in, conference, make_participant, monkeypatch):
    monkeypatch.setattr(history, "MEETINGS_PER_PAGE", 3)
    short_meetings(conference, make_participant, 7)
    response = logged_in.get(URL)
    assert [m.start for m in response.context["meetings"]] == [at(7), at(6), at(5)]
    content = response.content.decode()
    older = link_named(content, "Older meetings")
    assert older.startswith("?meetings_before=")
    assert "Most recent meetings" not in content and "Newer meetings" not in content

    page2 = logged_in.get(URL + older)
    assert [m.start for m in page2.context["meetings"]] == [at(4), at(3), at(2)]
    page3 = logged_in.get(URL + link_named(page2.content.decode(), "Older meetings"))
    assert [m.start for m in page3.context["meetings"]] == [at(1)]
    content = page3.content.decode()
    assert "Older meetings" not in content
    assert link_named(content, "Most recent meetings") == "?"
    newer = logged_in.get(URL + link_named(content, "Newer meetings"))
    assert [m.start for m in newer.context["meetings"]] == [at(4), at(3), at(2)]


@pytest.mark.django_db
def test_timeline_and_meetings_page_on_their_own(logged_in, conference, make_participant, event, monkeypatch):
    monkeypatch.setattr(history, "MEETINGS_PER_PAGE", 3)
    monkeypatch.setattr(history, "EVENTS_PER_PAGE", 2)
    short_meetings(conference, make_participant, 7)
    for day in range(1, 8):
        event(Kind.LOCKED, at(day, 13))
    page2 = logged_in.get(URL + link_named(logged_in.get(URL).content.decode(), "Older meetings"))
    both = logged_in.get(URL + link_named(page2.content.decode(), "Older events"))
    assert [m.start for m in both.context["meetings"]] == [at(4), at(3), at(2)]
    assert [entry.event.created_at for entry in both.context["entries"]] == [at(5, 13), at(4, 13)]
    # "Newest events" leaves the meetings where they are, and the other way round.
    content = both.content.decode()
    timeline_reset = logged_in.get(URL + link_named(content, "Newest events"))
    assert [m.start for m in timeline_reset.context["meetings"]] == [at(4), at(3), at(2)]
    assert [entry.event.created_at for entry in timeline_reset.context["entries"]] == [at(7, 13), at(6, 13)]
    meetings_reset = logged_in.get(URL + link_named(content, "Most recent meetings"))
    assert [m.start for m in meetings_reset.context["meetings"]] == [at(7), at(6), at(5)]
    assert [entry.event.created_at for entry in meetings_reset.context["entries"]] == [at(5, 13), at(4, 13)]


@pytest.mark.django_db
def test_meeting_pages_keep_the_date_filter(logged_in, conference, make_participant, monkeypatch):
    monkeypatch.setattr(history, "MEETINGS_PER_PAGE", 2)
    short_meetings(conference, make_participant, 7)
    response = logged_in.get(URL, {"from": "2025-03-02", "to": "2025-03-05"})
    assert [m.start for m in response.context["meetings"]] == [at(5), at(4)]
    [older] = link(response.content.decode(), "next")
    assert older.startswith("?from=2025-03-02&to=2025-03-05&meetings_before=")
    page2 = logged_in.get(URL + older)
    assert [m.start for m in page2.context["meetings"]] == [at(3), at(2)]
    assert link(page2.content.decode(), "next") == []


@pytest.mark.django_db
def test_a_meeting_with_more_stays_than_shown_says_it_is_cut(logged_in, conference, make_participant, monkeypatch):
    monkeypatch.setattr(history, "STAYS_SHOWN", 3)
    # A host there all along and five guests after each other: one meeting of six stays.
    make_participant(
        conference, caller_name="Host", caller_number="100", joined_at=at(1, 9), left_at=at(1, 15), left_reason="lost"
    )
    for index in range(5):
        make_participant(
            conference,
            caller_name=f"Guest {index}",
            caller_number=str(200 + index),
            joined_at=at(1, 10 + index),
            left_at=at(1, 10 + index, 30),
            left_reason="hangup",
        )
    short_meetings(conference, make_participant, 1, day=20)  # another meeting, not cut
    group_into_meetings()
    response = logged_in.get(URL)
    short, cut = response.context["meetings"]
    assert not short.cut and short.people == 2
    assert cut.cut and (cut.start, cut.end) == (at(1, 9), at(1, 15))
    # The most recent three stays, in join order.
    assert [a.caller_name for a in cut.attendees] == ["Guest 2", "Guest 3", "Guest 4"]
    content = response.content.decode()
    assert "Meeting from 2025-03-01 09:00:00 to 2025-03-01 15:00:00 (6:00:00), at least 3 people" in content
    assert content.count("Attendance cut: this meeting has more than 3 stays") == 1
    whole = f'<a href="{URL}?format=csv&amp;meeting={cut.pk}">Download the whole attendance of this meeting as CSV</a>'
    assert content.count(whole) == 1  # in the notice, above the table
    assert content.index(whole) < content.index("Guest 2")
    # ... and that CSV has every stay of the meeting, in join order.
    rows = csv_rows(logged_in.get(URL, {"format": "csv", "meeting": cut.pk}))
    assert rows[0] == history.ATTENDANCE_CSV_HEADER
    assert [row[3] for row in rows[1:]] == ["Host"] + [f"Guest {index}" for index in range(5)]
    assert rows[1] == [
        "2025-03-01T09:00:00Z",
        "2025-03-01T15:00:00Z",
        "21600",
        "Host",
        "100",
        "participant",
        "lost",
        "0.0",
    ]
    assert rows[2] == [
        "2025-03-01T10:00:00Z",
        "2025-03-01T10:30:00Z",
        "1800",
        "Guest 0",
        "200",
        "participant",
        "hangup",
        "0.0",
    ]


@pytest.mark.django_db
def test_meeting_csv_is_read_in_chunks_without_losing_or_repeating_a_stay(
    logged_in, conference, make_participant, monkeypatch
):
    monkeypatch.setattr(history, "CSV_CHUNK", 7)
    for index in range(30):  # many stays of the same instant: ties broken by id
        make_participant(conference, caller_number=str(index), joined_at=at(1, 10, index // 10))
    group_into_meetings()
    [meeting] = Meeting.objects.all()
    rows = csv_rows(logged_in.get(URL, {"format": "csv", "meeting": meeting.pk}))
    assert sorted(int(row[4]) for row in rows[1:]) == list(range(30))
    assert len(rows) == 31


@pytest.mark.django_db
def test_meeting_csv_of_another_room_or_a_bad_id(logged_in, conference, make_conference, make_participant, make_user):
    other = make_conference("555", slug="other")
    make_participant(other, caller_name="Secret", joined_at=at(1, 10))
    make_participant(conference, caller_name="Mine", joined_at=at(1, 10))
    group_into_meetings()
    theirs = Meeting.objects.get(conference=other)
    mine = Meeting.objects.get(conference=conference)
    assert logged_in.get(URL, {"format": "csv", "meeting": theirs.pk}).status_code == 404
    for bad in ("x", "", "-1", "1.5", str(2**63), "9" * 40):
        response = logged_in.get(URL, {"format": "csv", "meeting": bad})
        assert response.status_code == 400
        assert "This page link is not valid" in response.content.decode()
    assert logged_in.get(URL, {"format": "csv", "meeting": mine.pk}).status_code == 200
    logged_in.force_login(make_user("stranger"))
    assert logged_in.get(URL, {"format": "csv", "meeting": mine.pk}).status_code == 403


@pytest.mark.django_db(transaction=True)
async def test_meeting_csv_streams_asynchronously_under_asgi(async_client, viewer, conference, make_participant):
    await database(make_participant, conference, caller_name="Alice", caller_number="201", joined_at=at(1, 10))
    await database(group_into_meetings)
    meeting = await Meeting.objects.aget()
    await async_client.aforce_login(viewer)
    response = await async_client.get(URL, {"format": "csv", "meeting": meeting.pk})
    assert response.is_async
    body = b"".join([chunk async for chunk in response.streaming_content]).decode()
    assert body.splitlines() == [
        ",".join(history.ATTENDANCE_CSV_HEADER),
        "2025-03-01T10:00:00Z,,,Alice,201,participant,,0.0",
    ]


async def database(function, *args, **kwargs):
    from asgiref.sync import sync_to_async

    return await sync_to_async(function)(*args, **kwargs)


# --- meetings kept by the services -------------------------------------------------


class Clock:
    """``timezone.now`` under the test's control."""

    def __init__(self, start):
        self.now = start

    def __call__(self):
        return self.now

    def tick(self, **delta):
        self.now += timedelta(**delta)


@pytest.fixture
def clock(monkeypatch):
    clock = Clock(at(1, 10))
    monkeypatch.setattr(timezone, "now", clock)
    return clock


def join(conference, number):
    participant, _created = services.participant_join(
        conference_id=conference.pk, channel_id=f"chan-{number}-{timezone.now().timestamp()}", caller_number=number
    )
    return participant


def leave(participant):
    services.participant_leave(participant_id=participant.pk, reason=Participant.LeftReason.HANGUP)


def stored_meetings(conference):
    return list(
        Meeting.objects.filter(conference=conference).order_by("started_at").values_list("started_at", "ended_at")
    )


@pytest.mark.django_db
def test_a_join_opens_a_meeting_and_the_last_leave_ends_it(conference, clock):
    alice = join(conference, "201")
    assert stored_meetings(conference) == [(at(1, 10), None)]
    clock.tick(minutes=5)
    bob = join(conference, "202")
    clock.tick(minutes=5)
    leave(alice)
    assert stored_meetings(conference) == [(at(1, 10), None)]  # Bob is still there
    clock.tick(minutes=5)
    leave(bob)
    assert stored_meetings(conference) == [(at(1, 10), at(1, 10, 15))]
    clock.tick(minutes=1)
    carol = join(conference, "203")
    assert stored_meetings(conference) == [(at(1, 10), at(1, 10, 15)), (at(1, 10, 16), None)]
    alice.refresh_from_db(), bob.refresh_from_db(), carol.refresh_from_db()
    first, second = Meeting.objects.filter(conference=conference).order_by("started_at")
    assert (alice.meeting, bob.meeting, carol.meeting) == (first, first, second)
    # A leave of someone who had left already changes nothing.
    leave(bob)
    assert stored_meetings(conference)[1] == (at(1, 10, 16), None)


@pytest.mark.django_db
def test_a_join_at_the_instant_the_room_emptied_continues_the_meeting(conference, clock):
    alice = join(conference, "201")
    clock.tick(minutes=10)
    leave(alice)
    bob = join(conference, "202")  # the same instant: stays that touch are one meeting
    assert stored_meetings(conference) == [(at(1, 10), None)]
    clock.tick(minutes=10)
    leave(bob)
    assert stored_meetings(conference) == [(at(1, 10), at(1, 10, 20))]


@pytest.mark.django_db
def test_a_clock_stepping_back_never_ends_a_meeting_before_it_began(conference, clock):
    alice = join(conference, "201")
    clock.tick(hours=-1)
    leave(alice)  # the stay's own rule keeps left_at >= joined_at; the meeting's end follows
    assert stored_meetings(conference) == [(at(1, 10), at(1, 10))]
    join(conference, "202")  # before the meeting ended by this clock: the same meeting, open again
    assert stored_meetings(conference) == [(at(1, 10), None)]


@pytest.mark.django_db
def test_rooms_have_their_own_meetings(conference, make_conference, clock):
    other = make_conference("300")
    alice = join(conference, "201")
    bob = join(other, "202")
    leave(alice)
    assert stored_meetings(conference) == [(at(1, 10), at(1, 10))]
    assert stored_meetings(other) == [(at(1, 10), None)]
    assert bob.meeting_id != alice.meeting_id


@st.composite
def room_activity(draw):
    """A sequence of joins and leaves a few minutes (or no time at all) apart."""
    steps = []
    for _ in range(draw(st.integers(1, 25))):
        steps.append((draw(st.sampled_from(["join", "leave"])), draw(st.integers(0, 3)), draw(st.integers(0, 5))))
    return steps


@pytest.mark.django_db
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=room_activity())
def test_the_services_group_stays_like_meetings(conference, clock, steps):
    Participant.objects.filter(conference=conference).delete()
    Meeting.objects.filter(conference=conference).delete()
    present = []
    for action, pick, minutes in steps:
        clock.tick(minutes=minutes)
        if action == "join" or not present:
            present.append(join(conference, str(200 + pick)))
        else:
            leave(present.pop(pick % len(present)))
    stays = list(Participant.objects.filter(conference=conference).values(*history.STAY_FIELDS, "meeting_id"))
    expected = sorted((m.start, m.end, sum(a.stays for a in m.attendees)) for m in meetings(stays, clock.now))
    stored = Meeting.objects.filter(conference=conference).order_by("started_at")
    assert [(m.started_at, m.ended_at, m.stays.count()) for m in stored] == expected
    assert all(stay["meeting_id"] is not None for stay in stays)


def in_threads(count, target):
    """Run ``target(index)`` in ``count`` threads that start together; their own database connections."""
    barrier = threading.Barrier(count)
    errors = []

    def run(index):
        try:
            barrier.wait(timeout=10)
            target(index)
        except Exception as exc:  # reported below, in the test's thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []


@pytest.mark.django_db(transaction=True)
def test_concurrent_joins_and_last_leaves_keep_one_meeting(conference):
    """Callers entering an empty room together open one meeting; the last ones leaving together end it."""
    for round_ in range(15):
        callers = [None] * 4

        def enter(index, round_=round_, callers=callers):
            callers[index], _ = services.participant_join(
                conference_id=conference.pk, channel_id=f"chan-{round_}-{index}", caller_number=str(index)
            )

        in_threads(4, enter)
        assert Meeting.objects.filter(conference=conference).count() == round_ + 1
        [open_meeting] = Meeting.objects.filter(conference=conference, ended_at__isnull=True)
        assert {caller.meeting_id for caller in callers} == {open_meeting.pk}
        in_threads(4, lambda index, callers=callers: leave(callers[index]))
        open_meeting.refresh_from_db()
        assert open_meeting.ended_at == max(
            Participant.objects.filter(meeting=open_meeting).values_list("left_at", flat=True)
        )


# --- meetings grouped by the migration for stays stored before meetings existed ------


@st.composite
def stored_stays(draw):
    """Stays of up to three rooms: join minute, length in minutes (``None``: still there), room."""
    return draw(
        st.lists(
            # Short spans of whole minutes: stays that overlap, touch and leave gaps all come up often.
            st.tuples(st.integers(0, 90), st.one_of(st.none(), st.integers(0, 20)), st.integers(0, 2)),
            max_size=40,
        )
    )


@pytest.mark.django_db
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stays=stored_stays(), chunk=st.sampled_from([1, 2, 3, 7, 2000]))
@example(stays=[(0, 10, 0), (10, 5, 0), (16, 1, 0)], chunk=1)  # touching stays, then a gap
@example(stays=[(0, None, 0), (50, 1, 0), (1, 2, 1)], chunk=2)  # an open meeting takes in every later stay
def test_the_backfill_groups_stays_like_meetings(make_conference, stays, chunk, monkeypatch):
    """Any stays, in any order, any chunk size (meetings cut across chunks): the rule of meetings(),
    with no more than a chunk of stays held in memory at a time."""
    Participant.objects.all().delete()
    Meeting.objects.all().delete()
    rooms = [make_conference() for _ in range(3)]
    for index, (minute, length, room) in enumerate(stays):
        joined = at(1, 10) + timedelta(minutes=minute)
        Participant.objects.create(
            conference=rooms[room],
            channel_id=f"backfill-{index}",
            caller_number=str(index % 4),
            joined_at=joined,
            left_at=None if length is None else joined + timedelta(minutes=length),
            left_reason="" if length is None else "hangup",
        )
    monkeypatch.setattr(backfill, "CHUNK", chunk)
    written = []
    assign = backfill._Writer._assign
    monkeypatch.setattr(
        backfill._Writer, "_assign", lambda self, pairs: (written.append(len(pairs)), assign(self, pairs))
    )
    group_into_meetings()
    assert sum(written) == len(stays) and max(written, default=0) <= chunk
    for room in rooms:
        rows = list(Participant.objects.filter(conference=room).values(*history.STAY_FIELDS))
        expected = sorted((m.start, m.end, sum(a.stays for a in m.attendees)) for m in meetings(rows, NOW))
        stored = Meeting.objects.filter(conference=room).order_by("started_at")
        assert [(m.started_at, m.ended_at, m.stays.count()) for m in stored] == expected
    assert not Participant.objects.filter(meeting__isnull=True).exists()


@pytest.mark.django_db(transaction=True)
def test_the_migration_groups_the_stays_stored_before_it(conference):
    """Migrating from 0001 with stays stored: meetings are made, the page shows them; then back to the latest."""
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes("conferences")
    executor.migrate([("conferences", "0001_initial")])
    try:
        old = executor.loader.project_state([("conferences", "0001_initial")]).apps
        OldParticipant = old.get_model("conferences", "Participant")
        for index, (joined, left) in enumerate([(at(1, 10), at(1, 11)), (at(1, 10, 30), at(1, 12)), (at(2, 9), None)]):
            OldParticipant.objects.create(
                conference_id=conference.pk,
                server_id=conference.server_id,
                channel_id=f"old-{index}",
                caller_number=str(200 + index),
                joined_at=joined,
                left_at=left,
                left_reason="hangup" if left else "",
            )
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(latest)
    assert list(Meeting.objects.order_by("started_at").values_list("started_at", "ended_at")) == [
        (at(1, 10), at(1, 12)),
        (at(2, 9), None),
    ]
    first, second = Meeting.objects.order_by("started_at")
    assert list(first.stays.values_list("caller_number", flat=True).order_by("joined_at")) == ["200", "201"]
    assert list(second.stays.values_list("caller_number", flat=True)) == ["202"]
    # A join into the room now goes into the meeting the migration left open.
    alice, _ = services.participant_join(conference_id=conference.pk, channel_id="new", caller_number="203")
    assert alice.meeting_id == second.pk
