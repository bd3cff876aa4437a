"""Recordings for people: who may download a room's recordings, and the download itself.

Every request checks access afresh (no public or guessable URL: the file's
storage name never reaches a page). A download is streamed in chunks read
off the event loop, and answers HTTP range requests (one range) so that a
browser's audio player can seek.
"""

import asyncio
import re

from django.core.exceptions import PermissionDenied
from django.core.files.storage import default_storage
from django.core.handlers.asgi import ASGIRequest
from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404
from django.urls import reverse

from conferences import access
from conferences.models import Conference, Recording

CHUNK = 64 * 1024
RANGE = re.compile(r"^bytes=(\d{0,19})-(\d{0,19})$")


def may_download(user, conference, role=None):
    """Moderators always; viewers when the room says so (``record_download``)."""
    role = role if role is not None else access.conference_role(user, conference)
    if role is None:
        return False
    return role == access.MODERATOR or conference.record_download == Conference.RecordDownload.VIEWERS


def download_url(recording):
    return reverse("recording-download", kwargs={"slug": recording.conference.slug, "pk": recording.pk})


def byte_range(header, size):
    """``(start, end)`` (inclusive) of a ``Range: bytes=…`` header; None: the whole file; "unsatisfiable".

    One range only: several, or anything malformed, get the whole file (what
    RFC 9110 allows a server to do).
    """
    match = RANGE.match(header or "")
    if match is None:
        return None
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":  # the last N bytes
        length = int(last)
        if length == 0:
            return "unsatisfiable"
        return max(0, size - length), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        return "unsatisfiable"
    return start, end


def _chunks(handle, start, length):
    handle.seek(start)
    left = length
    while left > 0:
        data = handle.read(min(CHUNK, left))
        if not data:
            break
        left -= len(data)
        yield data
    handle.close()


async def _achunks(handle, start, length):
    try:
        await asyncio.to_thread(handle.seek, start)
        left = length
        while left > 0:
            data = await asyncio.to_thread(handle.read, min(CHUNK, left))
            if not data:
                break
            left -= len(data)
            yield data
    finally:
        await asyncio.to_thread(handle.close)


def recording_download(request, slug, pk):
    """One stored recording of a room: 404 for no such room or recording, 403 without the right to download."""
    if not request.user.is_authenticated:
        raise PermissionDenied
    conference = get_object_or_404(Conference, slug=slug)
    if not may_download(request.user, conference):
        raise PermissionDenied
    recording = get_object_or_404(Recording, pk=pk, conference=conference, state=Recording.State.STORED)
    if not recording.file:
        raise Http404
    try:
        size = default_storage.size(recording.file.name)
        handle = default_storage.open(recording.file.name, "rb")
    except OSError:
        raise Http404 from None
    wanted = byte_range(request.headers.get("Range"), size)
    if wanted == "unsatisfiable":
        handle.close()
        response = HttpResponse(status=416)
        response["Content-Range"] = f"bytes */{size}"
        return response
    start, end = wanted if wanted else (0, size - 1)
    length = max(0, end - start + 1)
    chunks = _achunks if isinstance(request, ASGIRequest) else _chunks
    status = 206 if wanted else 200
    response = StreamingHttpResponse(chunks(handle, start, length), content_type="audio/wav", status=status)
    response["Content-Length"] = str(length)
    response["Accept-Ranges"] = "bytes"
    if wanted:
        response["Content-Range"] = f"bytes {start}-{end}/{size}"
    stamp = recording.started_at.strftime("%Y%m%d-%H%M%S")
    response["Content-Disposition"] = f'inline; filename="{conference.slug}-{stamp}.wav"'
    response["Cache-Control"] = "private, no-store"
    response["X-Content-Type-Options"] = "nosniff"
    return response
