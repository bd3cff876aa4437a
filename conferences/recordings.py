"""Recordings for people: who may download a room's recordings, and the download itself.

Every request checks access afresh (no public or guessable URL: the file's
storage name never reaches a page). A download is streamed in chunks read
off the event loop, and answers HTTP range requests (one range) so that a
browser's audio player can seek.
"""

import asyncio
import functools
import io
import logging
import re

from django.core.exceptions import PermissionDenied
from django.core.files.storage import default_storage
from django.core.handlers.asgi import ASGIRequest
from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.utils.translation import gettext as _

from conferences import access
from conferences.models import Conference, Recording

logger = logging.getLogger(__name__)

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


def open_range(storage, name, start, length):
    """A file-like object (``read``, ``close``) over ``length`` bytes of a stored file from ``start``.

    An S3-compatible store (django-storages' S3Storage) is asked for just
    those bytes (one GET with a ``Range`` header, read as it arrives): its
    own ``open`` would download the whole file first, for every seek of a
    player. Any other storage: ``open`` and ``seek``.
    """
    if length <= 0:
        return io.BytesIO()
    bucket = getattr(storage, "bucket", None)
    if bucket is not None and hasattr(storage, "_normalize_name"):  # S3Storage (tests/test_recording_s3.py)
        from storages.utils import clean_name

        key = storage._normalize_name(clean_name(name))
        return bucket.Object(key).get(Range=f"bytes={start}-{start + length - 1}")["Body"]
    handle = storage.open(name, "rb")
    handle.seek(start)
    return handle


def _chunks(opener, length):
    handle = opener()
    try:
        left = length
        while left > 0:
            data = handle.read(min(CHUNK, left))
            if not data:
                break
            left -= len(data)
            yield data
    finally:
        handle.close()


async def _achunks(opener, length):
    handle = await asyncio.to_thread(opener)
    try:
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
    return file_response(request, conference, recording)


def file_response(request, conference, recording):
    """The stored file of ``recording`` (whole, or the one range asked for): access is the caller's to check.

    Asks the storage for the file's size (blocking: an async caller runs this in a thread); 404 when the
    file is gone, 503 when the storage does not answer (the REST API's download shares this, issue 18).
    """
    if not recording.file:
        raise Http404
    try:
        size = default_storage.size(recording.file.name)
    except FileNotFoundError:
        raise Http404 from None
    except Exception:  # the store is down or refuses us (S3: a network error, a revoked key)
        logger.exception("recording %s: its storage did not answer", recording.pk)
        return HttpResponse(_("The recordings' storage did not answer; try again later."), status=503)
    wanted = byte_range(request.headers.get("Range"), size)
    if wanted == "unsatisfiable":
        response = HttpResponse(status=416)
        response["Content-Range"] = f"bytes */{size}"
        return response
    start, end = wanted if wanted else (0, size - 1)
    length = max(0, end - start + 1)
    chunks = _achunks if isinstance(request, ASGIRequest) else _chunks
    status = 206 if wanted else 200
    opener = functools.partial(open_range, default_storage, recording.file.name, start, length)
    response = StreamingHttpResponse(chunks(opener, length), content_type="audio/wav", status=status)
    response["Content-Length"] = str(length)
    response["Accept-Ranges"] = "bytes"
    if wanted:
        response["Content-Range"] = f"bytes {start}-{end}/{size}"
    stamp = recording.started_at.strftime("%Y%m%d-%H%M%S")
    response["Content-Disposition"] = f'inline; filename="{conference.slug}-{stamp}.wav"'
    response["Cache-Control"] = "private, no-store"
    response["X-Content-Type-Options"] = "nosniff"
    return response
