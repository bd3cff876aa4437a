"""Fetching a finished recording: retried on failure, and Asterisk's copy is deleted only once the site has its own.

With a recording fake ARI; tests/test_recording.py does the same against the sandbox.
"""

import pytest
from asgiref.sync import sync_to_async
from django.core.files.storage import default_storage
from django.utils import timezone

from conferences.ari.client import AriError, AriNotFound
from conferences.models import Recording
from tests.test_lobby_handlers import new_app

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path)
    return tmp_path


async def finished_recording(conference):
    return await sync_to_async(Recording.objects.create)(
        conference=conference, name="conference-1-rec", started_at=timezone.now(), state=Recording.State.FINISHED
    )


async def test_a_failed_fetch_is_tried_again_and_asterisk_keeps_its_copy_until_then(server, make_conference, media):
    conference = await sync_to_async(make_conference)("330")
    recording = await finished_recording(conference)
    app = new_app(server)
    tries = []

    async def stored_recording_file(name, destination):
        tries.append(name)
        if len(tries) == 1:
            raise AriError("GET /recordings/stored/x/file: timed out", status=None)
        destination.write(b"RIFF....WAVEdata")
        return 16

    app.ari.stored_recording_file = stored_recording_file
    assert await app.fetch_recording(recording.pk, recording.name, delays=(0.01, 0.01)) is True
    assert len(tries) == 2
    row = await sync_to_async(Recording.objects.get)(pk=recording.pk)
    assert (row.state, row.size, row.error) == (Recording.State.STORED, 16, "")
    assert await sync_to_async(default_storage.open(row.file.name).read)() == b"RIFF....WAVEdata"
    assert app.ari.called("delete_stored_recording") == [(recording.name,)]


async def test_a_file_the_site_could_not_keep_stays_on_asterisk(server, make_conference, media, monkeypatch):
    conference = await sync_to_async(make_conference)("331")
    recording = await finished_recording(conference)
    app = new_app(server)

    async def stored_recording_file(name, destination):
        destination.write(b"data")
        return 4

    app.ari.stored_recording_file = stored_recording_file

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(default_storage, "save", full_disk)
    assert await app.fetch_recording(recording.pk, recording.name, delays=(0.01,)) is False
    row = await sync_to_async(Recording.objects.get)(pk=recording.pk)
    assert row.state == Recording.State.FINISHED and "No space left" in row.error
    assert app.ari.called("delete_stored_recording") == []  # Asterisk's copy is the only one: kept


async def test_a_recording_gone_from_asterisk_is_said_so(server, make_conference, media):
    conference = await sync_to_async(make_conference)("332")
    recording = await finished_recording(conference)
    app = new_app(server)
    app.ari.fail["stored_recording_file"] = AriNotFound("gone", status=404)
    assert await app.fetch_recording(recording.pk, recording.name, delays=()) is False
    row = await sync_to_async(Recording.objects.get)(pk=recording.pk)
    assert row.error == "not found on Asterisk"
