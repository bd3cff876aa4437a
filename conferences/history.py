"""A room's history: the stored timeline, its CSV export and attendance per meeting.

Every request does bounded work, however long the room's history:

- the timeline and the list of meetings are read a page at a time by keyset
  (``before`` / ``after`` cursors over (time, id)): one indexed query with a
  LIMIT, no COUNT(*) and no OFFSET;
- attendance reads the materialised meetings (``models.Meeting``, kept by the
  services) and at most ``STAYS_SHOWN`` stays of each meeting shown, the most
  recent ones; the page says when a meeting has more and links to its whole
  attendance as CSV;
- the CSV exports (the timeline, and the attendance of one meeting) are read in
  keyset chunks of ``CSV_CHUNK`` rows, one short indexed query each: no database
  cursor stays open while a slow client downloads, and under ASGI each chunk is
  one hop to the database thread, which every socket of the process shares.

``meetings()`` is the pure grouping rule (plain rows in, dataclasses out) that
the services follow live and the migration ``0002_meetings`` followed for the
stays stored before meetings existed.
"""

import csv
import json
import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta

from asgiref.sync import sync_to_async
from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.handlers.asgi import ASGIRequest
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import connections
from django.db.models import F, Q
from django.http import StreamingHttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from conferences import access
from conferences.models import Conference, ConferenceEvent, Meeting, Participant

EVENTS_PER_PAGE = 100
MEETINGS_PER_PAGE = 20
# Stays read per meeting shown: a room that never empties is one meeting with
# every stay of its history.
STAYS_SHOWN = 250
CSV_CHUNK = 2000

Kind = ConferenceEvent.Kind
LeftReason = Participant.LeftReason


# --- attendance per meeting (pure) ------------------------------------------------


@dataclass
class Attendee:
    """One caller's presence in one meeting (several stays of one caller number merged)."""

    caller_name: str
    caller_number: str
    present: timedelta = timedelta(0)
    talked: timedelta = timedelta(0)  # talk detection's seconds, summed over the stays
    stays: int = 0
    kicked: bool = False
    lost: bool = False
    still_present: bool = False

    @property
    def present_display(self):
        return format_duration(self.present)

    @property
    def talked_display(self):
        return format_duration(self.talked)


@dataclass
class MeetingAttendance:
    """From the first join to the moment nobody is left; ``end`` is ``None`` while it goes on.

    Read from the database, ``pk`` is the stored meeting's and ``cut`` says that
    the attendees come from its ``STAYS_SHOWN`` most recent stays only.
    """

    start: datetime
    end: datetime | None
    duration: timedelta
    attendees: list[Attendee] = field(default_factory=list)
    pk: int | None = None
    cut: bool = False
    recordings: list = field(default_factory=list)  # [(Recording, download URL or None)]

    @property
    def ongoing(self):
        return self.end is None

    @property
    def people(self):
        return len(self.attendees)

    @property
    def duration_display(self):
        return format_duration(self.duration)


@dataclass(frozen=True)
class _Stay:
    joined_at: datetime
    end: datetime
    ongoing: bool
    left_reason: str
    caller_name: str
    caller_number: str
    talk_seconds: float = 0.0


STAY_FIELDS = ("joined_at", "left_at", "left_reason", "caller_name", "caller_number", "talk_seconds")


def _get(row, name):
    if isinstance(row, dict):
        return row.get(name)
    return getattr(row, name, None)


def _stay(row, now):
    joined_at = _get(row, "joined_at")
    left_at = _get(row, "left_at")
    return _Stay(
        joined_at=joined_at,
        end=left_at if left_at is not None else max(now, joined_at),
        ongoing=left_at is None,
        left_reason=_get(row, "left_reason") or "",
        caller_name=_get(row, "caller_name") or "",
        caller_number=_get(row, "caller_number") or "",
        talk_seconds=float(_get(row, "talk_seconds") or 0.0),
    )


def _union_length(intervals):
    """Total length covered by ``(start, end)`` intervals, overlaps counted once."""
    total = timedelta(0)
    current_start = current_end = None
    for start, end in sorted(intervals):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += current_end - current_start
    return total


def _attendees(stays):
    """Attendees of ``stays`` (in join order), one per caller number."""
    people = {}
    for index, stay in enumerate(stays):
        # The same caller number is the same person; callers without a number cannot be told apart.
        key = ("number", stay.caller_number) if stay.caller_number else ("stay", index)
        person = people.get(key)
        if person is None:
            person = people[key] = (Attendee(caller_name=stay.caller_name, caller_number=stay.caller_number), [])
        attendee, intervals = person
        attendee.stays += 1
        attendee.talked += timedelta(seconds=stay.talk_seconds)
        attendee.caller_name = stay.caller_name or attendee.caller_name
        attendee.kicked |= stay.left_reason == LeftReason.KICKED
        attendee.lost |= stay.left_reason == LeftReason.LOST
        attendee.still_present |= stay.ongoing
        intervals.append((stay.joined_at, stay.end))
    attendees = []
    for attendee, intervals in people.values():
        attendee.present = _union_length(intervals)
        attendees.append(attendee)
    return attendees


def _meeting(stays, now):
    start = min(stay.joined_at for stay in stays)
    ongoing = any(stay.ongoing for stay in stays)
    end = None if ongoing else max(stay.end for stay in stays)
    return MeetingAttendance(
        start=start, end=end, duration=max((end or now) - start, timedelta(0)), attendees=_attendees(stays)
    )


def meetings(participants, now):
    """Group stays into meetings, newest first.

    ``participants``: rows (mappings or objects) with ``joined_at``, ``left_at``
    (``None`` while present), ``left_reason``, ``caller_name``, ``caller_number``.
    A stay lasts from ``joined_at`` to ``left_at`` (or ``now``); stays that
    overlap or touch form one meeting, which ends when nobody is present.
    Within a meeting, attendees are listed in order of their first join.
    """
    stays = sorted((_stay(row, now) for row in participants), key=lambda stay: stay.joined_at)
    groups = []
    current_end = None
    for stay in stays:
        if groups and stay.joined_at <= current_end:
            groups[-1].append(stay)
            current_end = max(current_end, stay.end)
        else:
            groups.append([stay])
            current_end = stay.end
    return [_meeting(group, now) for group in reversed(groups)]


def format_duration(duration):
    """``H:MM:SS`` (hours unbounded), rounded down to the second."""
    seconds = max(int(duration.total_seconds()), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


# --- pages by keyset -----------------------------------------------------------------

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_ID = 2**63 - 1  # a bigint: a larger id would make PostgreSQL refuse the query
CURSOR = re.compile(r"(-?[0-9]{1,19})\.([0-9]{1,19})")
CURSOR_PARAMS = ("before", "after", "meetings_before", "meetings_after")


class BadCursor(ValueError):
    """A page link's cursor that this module did not make."""


def encode_cursor(when, pk):
    """``<microseconds since 1970>.<id>``: exact, and free of characters that need quoting."""
    return f"{(when - EPOCH) // timedelta(microseconds=1)}.{pk}"


def decode_cursor(text):
    """``(time, id)`` from ``encode_cursor()``'s text; ``BadCursor`` for anything else."""
    match = CURSOR.fullmatch(text)
    if match is None:
        raise BadCursor(text)
    micros, pk = int(match[1]), int(match[2])
    if pk > MAX_ID:
        raise BadCursor(text)
    try:
        return EPOCH + timedelta(microseconds=micros), pk
    except OverflowError:
        raise BadCursor(text) from None


def _older_than(name, when, pk):
    # The condition on the time alone is an index range; the id only breaks ties.
    return Q(**{f"{name}__lte": when}) & (Q(**{f"{name}__lt": when}) | Q(pk__lt=pk))


def _newer_than(name, when, pk):
    return Q(**{f"{name}__gte": when}) & (Q(**{f"{name}__gt": when}) | Q(pk__gt=pk))


@dataclass
class KeysetPage:
    """Rows newest first, and the cursors of the links to newer and older rows (``None``: no link)."""

    rows: list
    newer: str | None
    older: str | None
    first: bool  # the newest page


def keyset_page(queryset, name, size, *, before=None, after=None):
    """A page of ``queryset`` ordered newest first by (``name``, id).

    The newest ``size`` rows, or the ``size`` rows just older than ``before`` or
    just newer than ``after`` (each a ``(time, id)``). One query of ``size + 1``
    rows (the extra row tells that there is more), two when ``after`` reaches the
    newest rows: that page is the newest page, full.
    """

    def cursor(row):
        return encode_cursor(getattr(row, name), row.pk)

    if after is not None:
        rows = list(queryset.filter(_newer_than(name, *after)).order_by(name, "pk")[: size + 1])
        if len(rows) > size:
            rows = rows[:size][::-1]
            return KeysetPage(rows, newer=cursor(rows[0]), older=cursor(rows[-1]), first=False)
        before = None
    query = queryset if before is None else queryset.filter(_older_than(name, *before))
    rows = list(query.order_by(f"-{name}", "-pk")[: size + 1])
    older = cursor(rows[size - 1]) if len(rows) > size else None
    rows = rows[:size]
    newer = cursor(rows[0]) if before is not None and rows else None
    return KeysetPage(rows, newer=newer, older=older, first=before is None)


def _cursors(params):
    """The page cursors of the query string; ``BadCursor`` for one this module did not make."""
    found = {}
    for name in CURSOR_PARAMS:
        value = params.get(name)
        found[name] = None if value is None else decode_cursor(value)
    for prefix in ("", "meetings_"):
        if found[prefix + "before"] is not None and found[prefix + "after"] is not None:
            raise BadCursor("both before and after")
    return found


# --- attendance from the stored meetings -----------------------------------------


def _meetings_in(conference, start, end, now):
    """The room's meetings that overlap ``[start, end)``, as a queryset that stays an index range.

    Meetings of a room never overlap, so the only one that began before
    ``start`` and reaches into the range is the last one that began before it:
    bounding ``started_at`` from below by that one (not filtering on
    ``ended_at``) keeps a page of them a LIMITed index scan.
    """
    query = Meeting.objects.filter(conference=conference)
    if end is not None:
        query = query.filter(started_at__lt=end)
    if start is not None:
        earlier = (
            Meeting.objects.filter(conference=conference, started_at__lt=start)
            .order_by("-started_at", "-pk")
            .only("started_at", "ended_at")
            .first()
        )
        reaches_in = earlier is not None and (earlier.ended_at or now) >= start
        query = query.filter(started_at__gte=earlier.started_at if reaches_in else start)
    return query


def _recordings_of(meeting_ids, user, conference, role):
    """``{meeting id: [(recording, download URL or None)]}`` of the stored recordings of these meetings."""
    from conferences import recordings
    from conferences.models import Recording

    allowed = recordings.may_download(user, conference, role)
    found = {}
    rows = Recording.objects.filter(meeting_id__in=meeting_ids, state=Recording.State.STORED).select_related(
        "conference"
    )
    for recording in rows.order_by("started_at", "id"):
        url = recordings.download_url(recording) if allowed else None
        found.setdefault(recording.meeting_id, []).append((recording, url))
    return found


def _recent_stays(meeting_ids):
    """The ``STAYS_SHOWN + 1`` most recent stays of each meeting (the extra one tells that there are more).

    One query where the database takes LIMITed parts in a UNION ALL
    (PostgreSQL), else one per meeting; each part is a short backward scan of
    the (meeting, joined_at, id) index, however many stays the meeting has.
    """
    parts = [
        Participant.objects.filter(meeting_id=pk)
        .order_by("-joined_at", "-id")
        .values("meeting_id", "id", *STAY_FIELDS)[: STAYS_SHOWN + 1]
        for pk in meeting_ids
    ]
    if not parts:
        return {}
    if connections[parts[0].db].features.supports_slicing_ordering_in_compound:
        rows = list(parts[0].union(*parts[1:], all=True)) if len(parts) > 1 else list(parts[0])
    else:
        rows = [row for part in parts for row in part]
    by_meeting = defaultdict(list)
    for row in rows:
        by_meeting[row["meeting_id"]].append(row)
    return by_meeting


def _attendance(meeting, rows, now):
    """A stored meeting with the attendees of its stays read (at most ``STAYS_SHOWN + 1`` rows)."""
    cut = len(rows) > STAYS_SHOWN
    rows = sorted(rows, key=lambda row: (row["joined_at"], row["id"]))[-STAYS_SHOWN:]
    stays = [_stay(row, now) for row in rows]
    end = meeting.ended_at
    return MeetingAttendance(
        start=meeting.started_at,
        end=end,
        duration=max((end or now) - meeting.started_at, timedelta(0)),
        attendees=_attendees(stays),
        pk=meeting.pk,
        cut=cut,
    )


# --- the timeline in words ---------------------------------------------------------


def _who(name, number):
    if name and number:
        return _("%(name)s (%(number)s)") % {"name": name, "number": number}
    return name or number or _("Unknown caller")


def _refusal_reason(reason):
    return {
        "locked": _("room locked"),
        "full": _("room full"),
        "wrong PIN": _("wrong PIN"),
        "invalid arguments": _("dialled something that is not a room number"),
        "too many waiting": _("too many callers waiting"),
    }.get(reason, reason)


def describe(event):
    """What happened, in words (translated); the caller's name is plain text, to be escaped by the template."""
    participant = event.participant
    who = _who(participant.caller_name, participant.caller_number) if participant else _("Unknown caller")
    details = event.details if isinstance(event.details, dict) else {}
    reason = str(details.get("reason") or "")
    kind = event.kind
    if kind == Kind.JOINED:
        return _("%(who)s joined") % {"who": who}
    if kind == Kind.LEFT:
        if reason == LeftReason.LOST:
            return _("%(who)s was lost (gone while the link to Asterisk was down)") % {"who": who}
        if reason == LeftReason.HANGUP:
            return _("%(who)s hung up") % {"who": who}
        if reason == LeftReason.ENDED:
            return _("%(who)s was hung up: the room ended with its leader") % {"who": who}
        return _("%(who)s left") % {"who": who}
    if kind == Kind.KICKED:
        return _("%(who)s was kicked by a moderator") % {"who": who}
    if kind == Kind.MUTED:
        return _("%(who)s was muted by a moderator") % {"who": who}
    if kind == Kind.UNMUTED:
        return _("%(who)s was unmuted by a moderator") % {"who": who}
    if kind == Kind.SELF_MUTED:
        return _("%(who)s muted themself (keypad)") % {"who": who}
    if kind == Kind.SELF_UNMUTED:
        return _("%(who)s unmuted themself (keypad)") % {"who": who}
    if kind == Kind.HAND_RAISED:
        return _("%(who)s raised the hand (keypad)") % {"who": who}
    if kind == Kind.HAND_LOWERED:
        if event.actor_id is not None:
            return _("The hand of %(who)s was lowered by a moderator") % {"who": who}
        return _("%(who)s lowered the hand (keypad)") % {"who": who}
    if kind == Kind.MUTED_ALL:
        return _("Everyone was muted by a moderator")
    if kind == Kind.UNMUTED_ALL:
        return _("Everyone was unmuted by a moderator")
    if kind == Kind.LOCKED:
        return _("Room locked by a moderator")
    if kind == Kind.UNLOCKED:
        return _("Room unlocked by a moderator")
    if kind == Kind.WAITING:
        if details.get("for") == "leader":
            return _("%(who)s is waiting for the leader") % {"who": who}
        return _("%(who)s is waiting in the lobby") % {"who": who}
    if kind == Kind.ADMITTED:
        return _("%(who)s was admitted by a moderator") % {"who": who}
    if kind == Kind.DENIED:
        return _("%(who)s was turned away by a moderator") % {"who": who}
    if kind == Kind.LOBBY_ON:
        return _("Lobby turned on by a moderator")
    if kind == Kind.LOBBY_OFF:
        return _("Lobby turned off by a moderator")
    if kind == Kind.ROOM_OPENED:
        if event.actor_id is not None:
            return _("The room was opened by a moderator")
        return _("The leader is in: the room opened")
    if kind == Kind.ROOM_ENDED:
        return _("The room ended with its leader")
    if kind == Kind.ROOM_WAITING:
        return _("The leader left: the others wait for the leader")
    if kind == Kind.RECORDING_STARTED:
        if event.actor_id is not None:
            return _("Recording started by a moderator")
        return _("Recording started (the room records always)")
    if kind == Kind.RECORDING_STOPPED:
        if event.actor_id is not None:
            return _("Recording stopped by a moderator")
        return _("Recording ended (the room emptied)")
    if kind == Kind.RECORDING_FAILED:
        return _("Recording failed")
    if kind == Kind.RECORDING_PURGED:
        return _("A recording was deleted after its retention")
    if kind == Kind.REFUSED:
        if reason:
            return _("Refused a caller: %(reason)s") % {"reason": _refusal_reason(reason)}
        return _("Refused a caller")
    return event.get_kind_display()


def _caller(event):
    """``(name, number)`` of the event's caller; a refused caller's number comes from the details."""
    if event.participant is not None:
        return event.participant.caller_name, event.participant.caller_number
    details = event.details if isinstance(event.details, dict) else {}
    return "", str(details.get("caller_number") or "")


@dataclass
class TimelineEntry:
    event: ConferenceEvent
    text: str
    caller_name: str
    caller_number: str
    actor: str


def _actor(event):
    """Who did it: the user, and the API token's name when it was done with one."""
    if event.actor is None:
        return ""
    details = event.details if isinstance(event.details, dict) else {}
    token = details.get("token")
    if token:
        return _("%(user)s (API token “%(token)s”)") % {"user": event.actor.get_username(), "token": token}
    return event.actor.get_username()


def _entry(event):
    name, number = _caller(event)
    return TimelineEntry(
        event=event,
        text=describe(event),
        caller_name=name,
        caller_number=number,
        actor=_actor(event),
    )


# --- CSV export --------------------------------------------------------------------

CSV_HEADER = ["time_utc", "kind", "caller_name", "caller_number", "actor", "details"]
ATTENDANCE_CSV_HEADER = [
    "joined_at_utc",
    "left_at_utc",
    "seconds_present",
    "caller_name",
    "caller_number",
    "role",
    "left_reason",
    "seconds_talked",  # added last: readers of the earlier columns keep their places
]
FORMULA_START = ("=", "+", "-", "@")


def csv_safe(value):
    """A cell a spreadsheet will not run: text that starts like a formula gets a leading ``'``.

    Like a formula: a tab or carriage return first, or ``=``, ``+``, ``-``, ``@``
    (or their full-width forms) as the first character that is not whitespace,
    a control or an invisible format character: spreadsheets skip those before
    they look, so `` =HYPERLINK(...)`` is as live as ``=HYPERLINK(...)``.
    """
    text = "" if value is None else str(value)
    if text.startswith(("\t", "\r")):
        return "'" + text
    for char in text:
        if char.isspace() or unicodedata.category(char) in ("Cc", "Cf"):
            continue
        return "'" + text if unicodedata.normalize("NFKC", char) in FORMULA_START else text
    return text


def _utc(when):
    return "" if when is None else when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _timeline_cells(row):
    if row["participant_id"] is not None:
        name, number = row["participant__caller_name"], row["participant__caller_number"]
    else:  # a refused caller: the number is in the details
        details = row["details"] if isinstance(row["details"], dict) else {}
        name, number = "", str(details.get("caller_number") or "")
    details = row["details"]
    return [
        csv_safe(cell)
        for cell in (
            _utc(row["created_at"]),
            row["kind"],
            name,
            number,
            row["actor_name"] or "",
            json.dumps(details, ensure_ascii=False, sort_keys=True) if details else "",
        )
    ]


def _attendance_cells(row):
    left_at = row["left_at"]
    seconds = "" if left_at is None else str(int((left_at - row["joined_at"]).total_seconds()))
    return [
        csv_safe(cell)
        for cell in (
            _utc(row["joined_at"]),
            _utc(left_at),
            seconds,
            row["caller_name"],
            row["caller_number"],
            row["role"],
            row["left_reason"],
            f"{row['talk_seconds'] or 0:.1f}",
        )
    ]


class _Echo:
    """A file-like object whose ``write`` hands back the line: csv.writer without a buffer."""

    def write(self, value):
        return value


@dataclass(frozen=True)
class _Export:
    """One CSV export: value rows (with ``pk``) read in keyset chunks by (``order``, id)."""

    queryset: object
    order: str
    descending: bool
    header: list
    cells: object

    def chunk(self, last):
        """The ``CSV_CHUNK`` rows that follow the row ``last`` (``None``: the first ones); one indexed query."""
        query = self.queryset
        if last is not None:
            bound = (last[self.order], last["pk"])
            query = query.filter(
                _older_than(self.order, *bound) if self.descending else _newer_than(self.order, *bound)
            )
        ordering = (f"-{self.order}", "-pk") if self.descending else (self.order, "pk")
        return list(query.order_by(*ordering)[:CSV_CHUNK])

    def text(self, writer, rows):
        return "".join(writer.writerow(self.cells(row)) for row in rows)


def _csv_lines(export):
    writer = csv.writer(_Echo())
    yield writer.writerow(export.header)
    rows = export.chunk(None)
    while rows:
        yield export.text(writer, rows)
        rows = export.chunk(rows[-1]) if len(rows) == CSV_CHUNK else []


async def _acsv_lines(export):
    writer = csv.writer(_Echo())
    yield writer.writerow(export.header)
    # Each chunk is one hop to the database thread, which every socket of the
    # process shares, so it is never held for long; the rows become text in a
    # thread of the default pool, off both that thread and the event loop.
    fetch = sync_to_async(export.chunk)
    text = sync_to_async(export.text, thread_sensitive=False)
    rows = await fetch(None)
    while rows:
        yield await text(writer, rows)
        rows = await fetch(rows[-1]) if len(rows) == CSV_CHUNK else []


def _csv_response(request, export, filename):
    # Under ASGI (daphne) Django would collect a synchronous iterator into a list
    # before sending it; an asynchronous one is streamed as it is read.
    lines = _acsv_lines(export) if isinstance(request, ASGIRequest) else _csv_lines(export)
    response = StreamingHttpResponse(lines, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def _timeline_csv(request, conference, events):
    username = f"actor__{get_user_model().USERNAME_FIELD}"
    rows = events.annotate(actor_name=F(username)).values(
        "pk",
        "created_at",
        "kind",
        "details",
        "participant_id",
        "participant__caller_name",
        "participant__caller_number",
        "actor_name",
    )
    export = _Export(rows, "created_at", descending=True, header=CSV_HEADER, cells=_timeline_cells)
    return _csv_response(request, export, f"{conference.slug}-history.csv")


def _attendance_csv(request, conference, meeting):
    rows = Participant.objects.filter(meeting=meeting).values(
        "pk", "joined_at", "left_at", "caller_name", "caller_number", "role", "left_reason", "talk_seconds"
    )
    export = _Export(rows, "joined_at", descending=False, header=ATTENDANCE_CSV_HEADER, cells=_attendance_cells)
    return _csv_response(request, export, f"{conference.slug}-meeting-{meeting.pk}-attendance.csv")


# --- the date filter ---------------------------------------------------------------


def _date_field(label):
    return forms.DateField(
        label=label,
        required=False,
        input_formats=["%Y-%m-%d"],
        validators=[MinValueValidator(date(1970, 1, 1)), MaxValueValidator(date(9998, 12, 31))],
        widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
    )


class HistoryFilterForm(forms.Form):
    """``from`` and ``to``: whole days (inclusive) in the current time zone."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # "from" is a Python keyword, so the fields are added here, not declared.
        self.fields["from"] = _date_field(gettext_lazy("From"))
        self.fields["to"] = _date_field(gettext_lazy("To"))

    def clean(self):
        cleaned = super().clean()
        first, last = cleaned.get("from"), cleaned.get("to")
        if first and last and first > last:
            raise ValidationError(_("The start date is after the end date."), code="range")
        return cleaned

    def bounds(self):
        """``(start, end)``: aware datetimes, ``end`` exclusive; ``None`` for an open side."""
        first, last = self.cleaned_data.get("from"), self.cleaned_data.get("to")
        start = timezone.make_aware(datetime.combine(first, time.min)) if first else None
        end = timezone.make_aware(datetime.combine(last + timedelta(days=1), time.min)) if last else None
        return start, end


# --- the view ----------------------------------------------------------------------

TEMPLATE = "conferences/history.html"
MEETING_ID = re.compile(r"[0-9]{1,19}")


@login_required
def conference_history(request, slug):
    """A room's timeline, attendance per meeting and CSV exports: 404 when there is no such room, 403 without access.

    ``from`` / ``to`` filter by date; ``before`` / ``after`` page the timeline and
    ``meetings_before`` / ``meetings_after`` the meetings (cursors this page makes;
    another value is answered 400). ``format=csv`` exports the timeline of the
    dates, or with ``meeting=<id>`` every stay of that meeting of this room.
    """
    conference = get_object_or_404(Conference.objects.select_related("server"), slug=slug)
    role = access.conference_role(request.user, conference)
    if role is None:
        raise PermissionDenied
    form = HistoryFilterForm(request.GET)
    context = {"conference": conference, "form": form}
    if not form.is_valid():
        return render(request, TEMPLATE, context)
    start, end = form.bounds()

    csv_wanted = request.GET.get("format") == "csv"
    if csv_wanted and "meeting" in request.GET:
        meeting_id = request.GET["meeting"]
        if MEETING_ID.fullmatch(meeting_id) is None or int(meeting_id) > MAX_ID:
            return render(request, TEMPLATE, {**context, "bad_link": True}, status=400)
        meeting = get_object_or_404(Meeting.objects.filter(conference=conference), pk=int(meeting_id))
        return _attendance_csv(request, conference, meeting)

    events = conference.events.all()
    if start is not None:
        events = events.filter(created_at__gte=start)
    if end is not None:
        events = events.filter(created_at__lt=end)
    if csv_wanted:
        return _timeline_csv(request, conference, events)

    try:
        cursors = _cursors(request.GET)
    except BadCursor:
        return render(request, TEMPLATE, {**context, "bad_link": True}, status=400)
    now = timezone.now()
    timeline = keyset_page(
        events.select_related("participant", "actor"),
        "created_at",
        EVENTS_PER_PAGE,
        before=cursors["before"],
        after=cursors["after"],
    )
    meeting_page = keyset_page(
        _meetings_in(conference, start, end, now),
        "started_at",
        MEETINGS_PER_PAGE,
        before=cursors["meetings_before"],
        after=cursors["meetings_after"],
    )
    stays = _recent_stays([meeting.pk for meeting in meeting_page.rows])
    recorded = _recordings_of([meeting.pk for meeting in meeting_page.rows], request.user, conference, role)
    context.update(
        {
            "filtered": start is not None or end is not None,
            "timeline": timeline,
            "entries": [_entry(event) for event in timeline.rows],
            "newest_event_at": timeline.rows[0].created_at if timeline.rows else None,
            "oldest_event_at": timeline.rows[-1].created_at if timeline.rows else None,
            "meeting_page": meeting_page,
            "meetings": [
                replace(_attendance(meeting, stays.get(meeting.pk, []), now), recordings=recorded.get(meeting.pk, []))
                for meeting in meeting_page.rows
            ],
            "stays_shown": STAYS_SHOWN,
        }
    )
    return render(request, TEMPLATE, context)
