"""A long stored history, written fast: stays, their meetings and their join and leave events.

For the scale test of the history page (``tests/test_history_scale.py``) and
its benchmark (``bench/history.py``): PostgreSQL only, three ``INSERT ...
SELECT generate_series`` statements, so 300,000 stays take seconds, not the
minutes the ORM would.

The layout: stay ``i`` belongs to meeting ``i // per_meeting``; meeting ``m``
begins at ``start + m * 2 h``; its stay ``j`` joins ``j`` minutes after the
meeting began and leaves 30 minutes after it joined, so the stays of a meeting
overlap and meetings are an hour and more apart. With ``ongoing`` the very last
stay has not left, so the newest meeting goes on. Caller ``i`` is "Caller i",
number ``100000 + i``.

It also writes the schema from before meetings existed (no ``Meeting`` model),
for the benchmark's "before" figures.
"""

from datetime import timedelta

from django.apps import apps
from django.db import connection

from conferences.models import ConferenceEvent, Participant

MEETING_EVERY = timedelta(hours=2)
JOIN_EVERY = timedelta(minutes=1)
STAY_LENGTH = timedelta(minutes=30)


def caller(index):
    return {"caller_name": f"Caller {index}", "caller_number": str(100000 + index)}


def stay_times(index, *, per_meeting, start):
    """``(meeting start, joined_at)`` of stay ``index``."""
    meeting_start = start + (index // per_meeting) * MEETING_EVERY
    return meeting_start, meeting_start + (index % per_meeting) * JOIN_EVERY


def store_history(conference, stays, *, per_meeting, start, ongoing=True, events=True, meetings=None):
    """Store ``stays`` stays of ``conference`` in meetings of ``per_meeting`` stays, with their events.

    Call it inside a transaction (a test's, or ``transaction.atomic()``).
    ``meetings=False`` writes no meetings, for a database not yet migrated to
    them; by default they are written when the models have them.
    """
    if connection.vendor != "postgresql":
        raise RuntimeError("store_history() writes with PostgreSQL's generate_series: run it on PostgreSQL")
    if not (per_meeting >= stays or (per_meeting - 1) * JOIN_EVERY + STAY_LENGTH < MEETING_EVERY):
        raise ValueError("meetings of that many stays would run into each other")
    meeting_count = -(-stays // per_meeting)
    params = {
        "conference": conference.pk,
        "server": conference.server_id,
        "stays": stays,
        "per_meeting": per_meeting,
        "meetings": meeting_count,
        "start": start,
        "ongoing": ongoing,
        "meeting_every": MEETING_EVERY,
        "join_every": JOIN_EVERY,
        "stay_length": STAY_LENGTH,
    }
    with_meetings = any(field.name == "meeting" for field in Participant._meta.get_fields())
    if meetings is not None:
        with_meetings = with_meetings and meetings
    meeting_table = apps.get_model("conferences", "Meeting")._meta.db_table if with_meetings else None
    participant_table = Participant._meta.db_table
    event_table = ConferenceEvent._meta.db_table
    with connection.cursor() as cursor:
        # The rows are consistent by construction: where allowed (a superuser), the foreign-key
        # triggers are off while they are written, as pg_restore --disable-triggers does. Else
        # each row queues a check that runs at commit (or at the end of a test), as long again.
        cursor.execute("SELECT current_setting('is_superuser') = 'on'")
        [[superuser]] = cursor.fetchall()
        if superuser:
            cursor.execute("SET LOCAL session_replication_role = replica")
        if with_meetings:
            cursor.execute(
                f"""
            INSERT INTO {meeting_table} (conference_id, started_at, ended_at)
            SELECT %(conference)s, %(start)s + m * %(meeting_every)s,
                   CASE WHEN %(ongoing)s AND m = %(meetings)s - 1 THEN NULL
                        ELSE %(start)s + m * %(meeting_every)s
                             + (LEAST(%(per_meeting)s, %(stays)s - m * %(per_meeting)s) - 1) * %(join_every)s
                             + %(stay_length)s END
            FROM generate_series(0, %(meetings)s - 1) AS m
            """,
                params,
            )
        meeting_column, meeting_value, meeting_join = (
            (
                "meeting_id, ",
                "meeting.id, ",
                f"JOIN {meeting_table} AS meeting "
                "ON meeting.conference_id = %(conference)s AND meeting.started_at = t.meeting_start",
            )
            if with_meetings
            else ("", "", "")
        )
        cursor.execute(
            f"""
            INSERT INTO {participant_table} (conference_id, server_id, {meeting_column}channel_id, caller_number,
                caller_name, role, joined_at, left_at, left_reason, muted, talking, moh)
            SELECT %(conference)s, %(server)s, {meeting_value}'history-' || %(conference)s || '-' || i,
                   (100000 + i)::text, 'Caller ' || i, 'participant', t.joined_at,
                   CASE WHEN t.last THEN NULL ELSE t.joined_at + %(stay_length)s END,
                   CASE WHEN t.last THEN '' ELSE 'hangup' END, false, false, false
            FROM generate_series(0, %(stays)s - 1) AS i
            CROSS JOIN LATERAL (
                SELECT %(start)s + (i / %(per_meeting)s) * %(meeting_every)s AS meeting_start,
                       %(start)s + (i / %(per_meeting)s) * %(meeting_every)s
                           + (i %% %(per_meeting)s) * %(join_every)s AS joined_at,
                       %(ongoing)s AND i = %(stays)s - 1 AS last
            ) AS t
            {meeting_join}
            """,
            params,
        )
        if events:
            cursor.execute(
                f"""
                INSERT INTO {event_table} (conference_id, participant_id, kind, created_at, details)
                SELECT conference_id, id, 'joined', joined_at, '{{"role": "participant"}}'::jsonb
                FROM {participant_table} WHERE conference_id = %(conference)s
                UNION ALL
                SELECT conference_id, id, 'left', left_at, '{{"reason": "hangup"}}'::jsonb
                FROM {participant_table} WHERE conference_id = %(conference)s AND left_at IS NOT NULL
                """,
                params,
            )
        if superuser:
            cursor.execute("SET LOCAL session_replication_role = DEFAULT")
        # Fresh statistics, as autovacuum keeps them for a table that grew: without them the
        # planner takes the room's 300,000 rows for a few hundred.
        for table in (meeting_table, participant_table, event_table):
            if table is not None:
                cursor.execute(f"ANALYZE {table}")
