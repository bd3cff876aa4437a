"""A room's history: the stored timeline, its CSV export and attendance per meeting.

``meetings()`` is the pure part (plain rows in, dataclasses out); the view
``conference_history`` reads the database and renders the page or the CSV.
"""

import csv
import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from django import forms
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.handlers.asgi import ASGIRequest
from django.core.paginator import Paginator
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db.models import Q
from django.http import StreamingHttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from conferences import access
from conferences.models import Conference, ConferenceEvent, Participant

EVENTS_PER_PAGE = 100
MEETINGS_SHOWN = 50
CSV_CHUNK = 2000
# How often the attendance query widens its window to take in whole meetings
# that reach over the edges of the date filter (in practice one or two rounds).
MAX_WIDENING = 20

Kind = ConferenceEvent.Kind
LeftReason = Participant.LeftReason


# --- attendance per meeting (pure) ------------------------------------------------


@dataclass
class Attendee:
    """One caller's presence in one meeting (several stays of one caller number merged)."""

    caller_name: str
    caller_number: str
    present: timedelta = timedelta(0)
    stays: int = 0
    kicked: bool = False
    lost: bool = False
    still_present: bool = False

    @property
    def present_display(self):
        return format_duration(self.present)


@dataclass
class Meeting:
    """From the first join to the moment nobody is left; ``end`` is ``None`` while it goes on."""

    start: datetime
    end: datetime | None
    duration: timedelta
    attendees: list[Attendee] = field(default_factory=list)

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


STAY_FIELDS = ("joined_at", "left_at", "left_reason", "caller_name", "caller_number")


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


def _meeting(stays, now):
    start = min(stay.joined_at for stay in stays)
    ongoing = any(stay.ongoing for stay in stays)
    end = None if ongoing else max(stay.end for stay in stays)
    people = {}
    for index, stay in enumerate(stays):
        # The same caller number is the same person; callers without a number cannot be told apart.
        key = ("number", stay.caller_number) if stay.caller_number else ("stay", index)
        person = people.get(key)
        if person is None:
            person = people[key] = (Attendee(caller_name=stay.caller_name, caller_number=stay.caller_number), [])
        attendee, intervals = person
        attendee.stays += 1
        attendee.caller_name = stay.caller_name or attendee.caller_name
        attendee.kicked |= stay.left_reason == LeftReason.KICKED
        attendee.lost |= stay.left_reason == LeftReason.LOST
        attendee.still_present |= stay.ongoing
        intervals.append((stay.joined_at, stay.end))
    attendees = []
    for attendee, intervals in people.values():
        attendee.present = _union_length(intervals)
        attendees.append(attendee)
    return Meeting(start=start, end=end, duration=max((end or now) - start, timedelta(0)), attendees=attendees)


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


def _stays_for_range(conference, start, end):
    """The stays of every meeting of ``conference`` that overlaps ``[start, end]``.

    A meeting that overlaps the range may begin before it or end after it; the
    window widens to the stays found until it takes in whole meetings.
    """
    rows = conference.participants.order_by("joined_at", "id").values(*STAY_FIELDS)
    if start is None and end is None:
        return list(rows)
    low, high = start, end
    for _round in range(MAX_WIDENING):
        query = rows
        if high is not None:
            query = query.filter(joined_at__lte=high)
        if low is not None:
            query = query.filter(Q(left_at__isnull=True) | Q(left_at__gte=low))
        found = list(query)
        if not found:
            return found
        new_low = None if low is None else min(low, min(row["joined_at"] for row in found))
        if any(row["left_at"] is None for row in found):
            new_high = None
        else:
            new_high = max(row["left_at"] for row in found)
            new_high = None if high is None else max(high, new_high)
        if (new_low, new_high) == (low, high):
            return found
        low, high = new_low, new_high
    return found


def _overlaps(meeting, start, end, now):
    if end is not None and meeting.start >= end:
        return False
    return start is None or (meeting.end or now) >= start


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
        return _("%(who)s left") % {"who": who}
    if kind == Kind.KICKED:
        return _("%(who)s was kicked by a moderator") % {"who": who}
    if kind == Kind.MUTED:
        return _("%(who)s was muted by a moderator") % {"who": who}
    if kind == Kind.UNMUTED:
        return _("%(who)s was unmuted by a moderator") % {"who": who}
    if kind == Kind.MUTED_ALL:
        return _("Everyone was muted by a moderator")
    if kind == Kind.UNMUTED_ALL:
        return _("Everyone was unmuted by a moderator")
    if kind == Kind.LOCKED:
        return _("Room locked by a moderator")
    if kind == Kind.UNLOCKED:
        return _("Room unlocked by a moderator")
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


def _entry(event):
    name, number = _caller(event)
    return TimelineEntry(
        event=event,
        text=describe(event),
        caller_name=name,
        caller_number=number,
        actor=event.actor.get_username() if event.actor is not None else "",
    )


# --- CSV export --------------------------------------------------------------------

CSV_HEADER = ["time_utc", "kind", "caller_name", "caller_number", "actor", "details"]
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value):
    """A cell a spreadsheet will not run: text starting like a formula gets a leading ``'``."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def csv_row(event):
    name, number = _caller(event)
    return [
        csv_safe(cell)
        for cell in (
            event.created_at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            event.kind,
            name,
            number,
            event.actor.get_username() if event.actor is not None else "",
            json.dumps(event.details, ensure_ascii=False, sort_keys=True) if event.details else "",
        )
    ]


class _Echo:
    """A file-like object whose ``write`` hands back the line: csv.writer without a buffer."""

    def write(self, value):
        return value


def _csv_lines(events):
    writer = csv.writer(_Echo())
    yield writer.writerow(CSV_HEADER)
    for event in events.iterator(chunk_size=CSV_CHUNK):
        yield writer.writerow(csv_row(event))


async def _acsv_lines(events):
    writer = csv.writer(_Echo())
    yield writer.writerow(CSV_HEADER)
    async for event in events.aiterator(chunk_size=CSV_CHUNK):
        yield writer.writerow(csv_row(event))


def _csv_response(request, conference, events):
    # Under ASGI (daphne) Django would collect a synchronous iterator into a list
    # before sending it; an asynchronous one is streamed as it is read.
    lines = _acsv_lines(events) if isinstance(request, ASGIRequest) else _csv_lines(events)
    response = StreamingHttpResponse(lines, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{conference.slug}-history.csv"'
    return response


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


@login_required
def conference_history(request, slug):
    """A room's timeline, attendance per meeting and CSV export: 404 when there is no such room, 403 without access."""
    conference = get_object_or_404(Conference.objects.select_related("server"), slug=slug)
    if not access.can_view(request.user, conference):
        raise PermissionDenied
    form = HistoryFilterForm(request.GET)
    context = {"conference": conference, "form": form}
    if not form.is_valid():
        return render(request, "conferences/history.html", context)
    start, end = form.bounds()

    events = conference.events.select_related("participant", "actor").order_by("-created_at", "-id")
    if start is not None:
        events = events.filter(created_at__gte=start)
    if end is not None:
        events = events.filter(created_at__lt=end)
    if request.GET.get("format") == "csv":
        return _csv_response(request, conference, events)

    page = Paginator(events, EVENTS_PER_PAGE).get_page(request.GET.get("page"))
    now = timezone.now()
    found = [
        meeting
        for meeting in meetings(_stays_for_range(conference, start, end), now)
        if _overlaps(meeting, start, end, now)
    ]
    context.update(
        {
            "filtered": start is not None or end is not None,
            "page_obj": page,
            "entries": [_entry(event) for event in page],
            "meetings": found[:MEETINGS_SHOWN],
            "meetings_total": len(found),
            "meetings_cut": len(found) > MEETINGS_SHOWN,
        }
    )
    return render(request, "conferences/history.html", context)
