"""What the API reads: rooms, who is in them, open invites, history, attendance and recordings.

Every view does its database work in one function run on the web's database
threads (conferences/dbthreads.py), never on the event loop. A room the
caller may not see answers 404 like a room that does not exist: a token
limited to some rooms learns nothing of the others. The shapes are the
room socket's (conferences/broadcast.py, the snapshot of
conferences/consumers.py); history, attendance and pages by keyset are
conferences/history.py's.
"""

import asyncio
import re

from django.db.models import Count
from django.http import Http404
from django.urls import reverse
from django.utils import timezone
from ninja import Query, Router

from conferences import access, broadcast, consumers, dbthreads, history, recordings
from conferences.api import errors
from conferences.api.schemas import (
    AttendanceOut,
    Error,
    HistoryOut,
    InvitesOut,
    PageQuery,
    ParticipantsOut,
    RecordingsOut,
    RoomDetailOut,
    RoomOut,
)
from conferences.models import (
    Conference,
    ConferenceEvent,
    Invite,
    Participant,
    Recording,
    present_filter,
    waiting_filter,
)

router = Router(tags=["rooms"])

PAGE_SIZE = history.EVENTS_PER_PAGE
RECORDINGS_PER_PAGE = 50
ERRORS = {401: Error, 404: Error, 429: Error}


async def db_call(func, /, *args):
    return await dbthreads.web().call(func, *args)


# What a room's slug can be (models.Conference.slug, a SlugField): anything else is no room, without a query
# (a NUL in the path made PostgreSQL's driver raise, a 500 and a logged traceback).
SLUG = re.compile(r"[-\w]{1,64}")


def room_of(caller, slug):
    """``(conference, role)`` of a room the caller may see; 404 for any other (no such room, or no access)."""
    conference = None
    if SLUG.fullmatch(slug):
        conference = Conference.objects.select_related("server").filter(slug=slug).first()
    role = caller.role(conference) if conference is not None else None
    if role is None:
        raise errors.ApiError(404, errors.NO_SUCH_ROOM)
    return conference, role


def bounds(date_from, date_to):
    """``(start, end)`` of whole days, as the history page's date filter (conferences/history.py)."""
    form = history.HistoryFilterForm(
        {"from": date_from.isoformat() if date_from else "", "to": date_to.isoformat() if date_to else ""}
    )
    if not form.is_valid():
        raise errors.ApiError(400, errors.BAD_DATES)
    return form.bounds()


def cursors(before, after):
    try:
        found = history._cursors({name: value for name, value in (("before", before), ("after", after)) if value})
    except history.BadCursor:
        raise errors.ApiError(400, errors.BAD_CURSOR) from None
    return found["before"], found["after"]


# --- rooms --------------------------------------------------------------------------


def _rooms(caller):
    rooms = list(
        caller.rooms()
        .select_related("server")
        .annotate(
            present=Count("participants", filter=present_filter("participants")),
            waiting=Count("participants", filter=waiting_filter("participants")),
        )
        .order_by("name", "pk")
    )
    return [
        {
            **broadcast.conference_state(room, room.present, room.waiting),
            "asterisk": {"connected": room.server.connected},
            "can_moderate": caller.role(room) == access.MODERATOR,
            "seq": room.seq,
        }
        for room in rooms
    ]


@router.get("/rooms", response={200: list[RoomOut], **ERRORS}, summary="The rooms the caller may see")
async def list_rooms(request):
    return await db_call(_rooms, request.auth)


def _room(caller, slug):
    conference, role = room_of(caller, slug)
    snapshot = consumers._snapshot(conference.pk)
    snapshot.pop("type", None)
    return {**snapshot, "can_moderate": role == access.MODERATOR}


@router.get(
    "/rooms/{slug}",
    response={200: RoomDetailOut, **ERRORS},
    summary="A room with its live state (the room socket's snapshot)",
)
async def room_detail(request, slug: str):
    return await db_call(_room, request.auth, slug)


def _participants(caller, slug, status):
    conference, _role = room_of(caller, slug)
    query = Participant.objects.in_room().filter(conference=conference)
    if status == Participant.Status.PRESENT:
        query = Participant.objects.present().filter(conference=conference)
    elif status == Participant.Status.WAITING:
        query = Participant.objects.waiting().filter(conference=conference)
    return {"participants": [broadcast.participant_state(p) for p in query.order_by("joined_at", "id")]}


@router.get(
    "/rooms/{slug}/participants",
    response={200: ParticipantsOut, **ERRORS},
    summary="Callers present and waiting (status=present or waiting for one kind)",
)
async def room_participants(request, slug: str, status: Participant.Status | None = None):
    return await db_call(_participants, request.auth, slug, status)


def _invites(caller, slug):
    conference, _role = room_of(caller, slug)
    invites = Invite.objects.filter(conference=conference, status__in=Invite.OPEN).order_by("id")
    return {"invites": [broadcast.invite_state(invite) for invite in invites]}


@router.get("/rooms/{slug}/invites", response={200: InvitesOut, **ERRORS}, summary="Open invitations")
async def room_invites(request, slug: str):
    return await db_call(_invites, request.auth, slug)


# --- history and attendance ---------------------------------------------------------


def _event(event):
    participant = event.participant
    return {
        "id": event.pk,
        "kind": event.kind,
        "time": event.created_at,
        "participant": (
            {"id": participant.pk, "caller_name": participant.caller_name, "caller_number": participant.caller_number}
            if participant is not None
            else None
        ),
        "actor": event.actor.get_username() if event.actor is not None else None,
        "details": event.details if isinstance(event.details, dict) else {},
        "text": str(history.describe(event)),
    }


def _dated_page(rows, field, query, page_size):
    """One page of ``rows`` newest first by ``field``, within the query's dates, from its cursor."""
    start, end = bounds(query.date_from, query.date_to)
    before, after = cursors(query.before, query.after)
    if start is not None:
        rows = rows.filter(**{f"{field}__gte": start})
    if end is not None:
        rows = rows.filter(**{f"{field}__lt": end})
    limit = min(query.limit or page_size, page_size)
    return history.keyset_page(rows, field, limit, before=before, after=after)


def _history(caller, slug, query, page_size):
    conference, _role = room_of(caller, slug)
    events = ConferenceEvent.objects.filter(conference=conference).select_related("participant", "actor")
    page = _dated_page(events, "created_at", query, page_size)
    return {"events": [_event(event) for event in page.rows], "older": page.older, "newer": page.newer}


@router.get(
    "/rooms/{slug}/history",
    response={200: HistoryOut, 400: Error, **ERRORS},
    summary="The room's timeline, newest first, a page at a time",
    description="`from` / `to`: whole days (inclusive, the site's time zone). "
    "`before` / `after`: the `older` / `newer` cursor of a page.",
)
async def room_history(
    request,
    slug: str,
    query: Query[PageQuery],
):
    return await db_call(_history, request.auth, slug, query, PAGE_SIZE)


def _attendee(attendee):
    return {
        "caller_name": attendee.caller_name,
        "caller_number": attendee.caller_number,
        "present_seconds": attendee.present.total_seconds(),
        "talked_seconds": attendee.talked.total_seconds(),
        "stays": attendee.stays,
        "kicked": attendee.kicked,
        "lost": attendee.lost,
        "still_present": attendee.still_present,
    }


def _attendance(caller, slug, query, page_size):
    conference, _role = room_of(caller, slug)
    start, end = bounds(query.date_from, query.date_to)
    before, after = cursors(query.before, query.after)
    limit = min(query.limit or page_size, page_size)
    now = timezone.now()
    page = history.keyset_page(
        history._meetings_in(conference, start, end, now), "started_at", limit, before=before, after=after
    )
    stays = history._recent_stays([meeting.pk for meeting in page.rows])
    meetings = []
    for meeting in page.rows:
        attendance = history._attendance(meeting, stays.get(meeting.pk, []), now)
        meetings.append(
            {
                "id": attendance.pk,
                "start": attendance.start,
                "end": attendance.end,
                "duration_seconds": attendance.duration.total_seconds(),
                "ongoing": attendance.ongoing,
                "cut": attendance.cut,
                "attendees": [_attendee(attendee) for attendee in attendance.attendees],
            }
        )
    return {"meetings": meetings, "older": page.older, "newer": page.newer}


@router.get(
    "/rooms/{slug}/attendance",
    response={200: AttendanceOut, 400: Error, **ERRORS},
    summary="Who attended each meeting of the room, newest meeting first, a page at a time",
    description="A meeting lasts from its first join until nobody is left. Parameters as for history.",
)
async def room_attendance(
    request,
    slug: str,
    query: Query[PageQuery],
):
    return await db_call(_attendance, request.auth, slug, query, history.MEETINGS_PER_PAGE)


# --- recordings ---------------------------------------------------------------------


def _recording(recording, conference, allowed):
    stored = recording.state == Recording.State.STORED and bool(recording.file)
    url = (
        reverse("api-v1:recording_download", kwargs={"slug": conference.slug, "pk": recording.pk})
        if allowed and stored
        else None
    )
    return {
        "id": recording.pk,
        "state": recording.state,
        "started_at": recording.started_at,
        "stopped_at": recording.stopped_at,
        "duration": recording.duration,
        "size": recording.size,
        "meeting": recording.meeting_id,
        "download_url": url,
    }


def _recordings(caller, slug, query, page_size):
    conference, role = room_of(caller, slug)
    page = _dated_page(Recording.objects.filter(conference=conference), "started_at", query, page_size)
    allowed = recordings.may_download(caller.user, conference, role)
    return {
        "recordings": [_recording(recording, conference, allowed) for recording in page.rows],
        "older": page.older,
        "newer": page.newer,
    }


@router.get(
    "/rooms/{slug}/recordings",
    response={200: RecordingsOut, 400: Error, **ERRORS},
    summary="The room's recordings, newest first, a page at a time",
)
async def room_recordings(
    request,
    slug: str,
    query: Query[PageQuery],
):
    return await db_call(_recordings, request.auth, slug, query, RECORDINGS_PER_PAGE)


def _downloadable(caller, slug, pk):
    conference, role = room_of(caller, slug)
    if not recordings.may_download(caller.user, conference, role):
        raise errors.ApiError(403, errors.MAY_NOT_DOWNLOAD)
    recording = Recording.objects.filter(pk=pk, conference=conference, state=Recording.State.STORED).first()
    if recording is None or not recording.file:
        raise errors.ApiError(404, errors.NO_SUCH_RECORDING)
    return conference, recording


@router.get(
    "/rooms/{slug}/recordings/{pk}/download",
    response={200: None, 206: None, 403: Error, 416: None, 503: Error, **ERRORS},
    url_name="recording_download",
    summary="A stored recording (audio/wav); one HTTP range (Range: bytes=…) is answered with 206",
)
async def recording_download(request, slug: str, pk: int):
    if not 1 <= pk <= history.MAX_ID:
        raise errors.ApiError(404, errors.NO_SUCH_RECORDING)
    conference, recording = await db_call(_downloadable, request.auth, slug, pk)
    try:
        # The storage is asked for the file's size: a network call on S3, so in a thread.
        answer = await asyncio.to_thread(recordings.file_response, request, conference, recording)
    except Http404:
        raise errors.ApiError(404, errors.NO_SUCH_RECORDING) from None
    if answer.status_code == 503:
        raise errors.ApiError(503, errors.STORAGE_DOWN)
    return answer
