"""The history page does bounded work per request, however long the room's history.

A room with 300,000 stored stays (100,000 meetings) and their 600,000 join and
leave events, no date filter: the page, page 2 of the timeline, an old page of
it, page 2 of the meetings, a dated page and the first chunk of the CSV each
make as many queries as for a room with 300 stays, every query that reads the
stays, events or meetings has a LIMIT, and EXPLAIN ANALYZE of each query the
request made shows that it read a page's worth of rows, not the history. And a
room that never empties: 300,000 stays in ONE meeting, whose attendance is cut
and whose CSV streams in chunks.

PostgreSQL only (the history is written with generate_series); the stays of
one room take about two seconds to write, their events four.
"""

import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from conferences import history
from conferences.models import ConferenceEvent, Meeting, Participant
from tests.history_data import caller, stay_times, store_history

pytestmark = pytest.mark.django_db

START = datetime(2020, 1, 1, tzinfo=UTC)
BIG, SMALL = 300_000, 300
TABLES = {Participant._meta.db_table, ConferenceEvent._meta.db_table, Meeting._meta.db_table}
# Rows a request may read from those tables: a few pages' worth (a CSV chunk of
# 2,000 events reads their 2,000 stays too), against the 900,000 stored.
ROWS_READ_AT_MOST = 10_000
# The room of 300 stays has 999 rows in all (stays, events, meetings).
QUIET_ROOM_ROWS = 3_000


@pytest.fixture(autouse=True)
def _postgresql(settings):
    if connection.vendor != "postgresql":
        pytest.fail("the scale tests write their history with PostgreSQL's generate_series: set DATABASE_URL")
    settings.TIME_ZONE = "UTC"


@pytest.fixture
def room(make_conference, make_user, grant, client):
    user = make_user("reader")
    client.force_login(user)

    def make(slug, stays, *, per_meeting, events=True):
        conference = make_conference(slug=slug)
        grant(conference, user=user)
        store_history(conference, stays, per_meeting=per_meeting, start=START, events=events)
        return conference

    return make


def url(conference):
    return f"/conferences/{conference.slug}/history/"


def scanned(plan):
    """Rows the scans of ``TABLES`` in an EXPLAIN ANALYZE plan read: returned plus filtered out, times loops."""
    rows = 0
    if plan.get("Relation Name") in TABLES:
        per_loop = plan.get("Actual Rows", 0) + plan.get("Rows Removed by Filter", 0)
        rows += (per_loop + plan.get("Rows Removed by Index Recheck", 0)) * plan.get("Actual Loops", 1)
    return rows + sum(scanned(child) for child in plan.get("Plans", []))


def rows_read(sql):
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql)
        [[explained]] = cursor.fetchall()
    explained = json.loads(explained) if isinstance(explained, str) else explained
    return scanned(explained[0]["Plan"])


def reads_history(sql):
    return any(re.search(rf'\b(FROM|JOIN) "{table}"', sql) for table in TABLES)


class Request:
    """One request of the page: its response and the queries it made (a CSV: while its first chunk was read)."""

    def __init__(self, client, path, params=None, *, chunks=0):
        with CaptureQueriesContext(connection) as captured:
            self.response = client.get(path, params or {})
            assert self.response.status_code == 200, self.response.content[:500]
            if chunks:
                content = self.response.streaming_content
                # The rest is never read. The response is not closed here: its request_finished
                # signal would close the database connection, and with it the test's transaction;
                # the test client's wrapper closes it safely when the response is dropped.
                self.chunks = [next(content).decode() for _ in range(chunks)]
        self.queries = [query["sql"] for query in captured.captured_queries]

    @property
    def context(self):
        return self.response.context

    def check_bounded(self, at_most=ROWS_READ_AT_MOST):
        """Every query of the stays, events or meetings has a LIMIT, and together they read ``at_most`` rows."""
        history_queries = [sql for sql in self.queries if reads_history(sql)]
        assert history_queries
        for sql in history_queries:
            assert " LIMIT " in sql, sql
        read = sum(rows_read(sql) for sql in history_queries)
        assert read <= at_most, read
        return read


def link_named(content, text):
    [href] = re.findall(rf'<a href="([^"]*)"[^>]*>{re.escape(text)}</a>', content)
    return href.replace("&amp;", "&")


def reader_requests(client, conference):
    """What a reader of the history asks for, with no date filter (except the dated page)."""
    path = url(conference)
    page = Request(client, path)
    content = page.response.content.decode()
    old_event = ConferenceEvent.objects.filter(conference=conference).order_by("created_at", "id")[250]
    return {
        "page": page,
        "timeline page 2": Request(client, path + link_named(content, "Older events")),
        "old timeline page": Request(
            client, path, {"before": history.encode_cursor(old_event.created_at, old_event.pk)}
        ),
        "meetings page 2": Request(client, path + link_named(content, "Older meetings")),
        "dated page": Request(client, path, {"from": "2020-01-03", "to": "2020-01-03"}),
        "csv": Request(client, path, {"format": "csv"}, chunks=2),
    }


def test_every_part_of_the_history_page_is_bounded_with_300000_stays(client, room):
    small = room("small", SMALL, per_meeting=3)
    big = room("big", BIG, per_meeting=3)
    assert Participant.objects.filter(conference=big).count() == BIG
    assert ConferenceEvent.objects.filter(conference=big).count() == 2 * BIG - 1

    few, many = reader_requests(client, small), reader_requests(client, big)
    for name, request in many.items():
        assert len(request.queries) == len(few[name].queries), name
        request.check_bounded()
        # A quiet room beside the busy one reads its own rows, not the busy room's (an index on
        # the time alone, filtered by room, would wade through the busy room's events).
        few[name].check_bounded(at_most=QUIET_ROOM_ROWS)

    # The newest meeting first: it goes on, with the last three callers in join order.
    newest, *older = many["page"].context["meetings"]
    last_start, _ = stay_times(BIG - 1, per_meeting=3, start=START)
    assert (newest.start, newest.end, newest.cut) == (last_start, None, False)
    assert [(a.caller_name, a.caller_number) for a in newest.attendees] == [
        (caller(index)["caller_name"], caller(index)["caller_number"]) for index in range(BIG - 3, BIG)
    ]
    assert [a.still_present for a in newest.attendees] == [False, False, True]
    assert [m.start for m in older] == [last_start - index * timedelta(hours=2) for index in range(1, 20)]
    assert all(m.end - m.start == timedelta(minutes=32) and m.people == 3 for m in older)
    assert [m.start for m in many["meetings page 2"].context["meetings"]] == [
        last_start - index * timedelta(hours=2) for index in range(20, 40)
    ]

    # The timeline: page 2 holds the 101st to 200th newest events, the old page the 100 before the 251st oldest.
    newest_first = ConferenceEvent.objects.filter(conference=big).order_by("-created_at", "-id")
    pages = {name: [entry.event.pk for entry in many[name].context["entries"]] for name in many if name != "csv"}
    assert pages["page"] == list(newest_first.values_list("pk", flat=True)[:100])
    assert pages["timeline page 2"] == list(newest_first.values_list("pk", flat=True)[100:200])
    oldest_first = ConferenceEvent.objects.filter(conference=big).order_by("created_at", "id")
    assert pages["old timeline page"] == list(oldest_first.values_list("pk", flat=True)[150:250])[::-1]
    # 3 January: twelve meetings of three callers, all their joins and leaves.
    assert len(many["dated page"].context["meetings"]) == 12
    assert len(pages["dated page"]) == 72

    # The CSV's first chunk: the 2,000 newest events, in order.
    header, chunk = many["csv"].chunks
    assert header.strip() == ",".join(history.CSV_HEADER)
    lines = chunk.splitlines()
    assert len(lines) == history.CSV_CHUNK
    expected = list(newest_first.select_related("participant")[: history.CSV_CHUNK])
    for line, event in ((lines[0], expected[0]), (lines[-1], expected[-1])):
        time_utc, kind, name, number, _rest = line.split(",", 4)
        assert (time_utc, kind, name, number) == (
            history._utc(event.created_at),
            event.kind,
            event.participant.caller_name,
            event.participant.caller_number,
        )


def test_a_room_that_never_empties_one_meeting_of_300000_stays(client, room):
    small = room("small", SMALL, per_meeting=SMALL, events=False)
    big = room("big", BIG, per_meeting=BIG, events=False)
    assert Meeting.objects.filter(conference=big).count() == 1

    def requests(conference):
        page = Request(client, url(conference))
        [meeting] = page.context["meetings"]
        return {
            "page": page,
            "csv": Request(client, url(conference), {"format": "csv", "meeting": meeting.pk}, chunks=2),
        }

    few, many = requests(small), requests(big)
    for name, request in many.items():
        assert len(request.queries) == len(few[name].queries), name
        request.check_bounded()

    # The page: the meeting goes on since the first join, cut to its most recent stays, and says so.
    [meeting] = many["page"].context["meetings"]
    assert (meeting.start, meeting.end, meeting.cut) == (START, None, True)
    assert [a.caller_number for a in meeting.attendees] == [
        caller(index)["caller_number"] for index in range(BIG - history.STAYS_SHOWN, BIG)
    ]
    content = many["page"].response.content.decode()
    assert f"at least {history.STAYS_SHOWN} people" in content
    assert f"Attendance cut: this meeting has more than {history.STAYS_SHOWN} stays" in content
    assert f"?format=csv&amp;meeting={meeting.pk}" in content

    # Its CSV begins with the first 2,000 stays in join order (and goes on in chunks).
    header, chunk = many["csv"].chunks
    assert header.strip() == ",".join(history.ATTENDANCE_CSV_HEADER)
    lines = chunk.splitlines()
    assert len(lines) == history.CSV_CHUNK
    for index in (0, history.CSV_CHUNK - 1):
        _meeting_start, joined_at = stay_times(index, per_meeting=BIG, start=START)
        assert lines[index].split(",")[:5] == [
            history._utc(joined_at),
            history._utc(joined_at + timedelta(minutes=30)),
            "1800",
            caller(index)["caller_name"],
            caller(index)["caller_number"],
        ]
