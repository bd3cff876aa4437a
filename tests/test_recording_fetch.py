"""Fetching a finished recording: retried on failure, and Asterisk's copy is deleted only once the site has its own.

With a recording fake ARI; tests/test_recording.py does the same against the sandbox.
"""

import asyncio

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


async def four_bytes(name, destination):
    """A fake ``AriClient.stored_recording_file``: Asterisk's file is four bytes."""
    destination.write(b"data")
    return 4


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

    app.ari.stored_recording_file = four_bytes

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


async def in_room(app, make_conference, number, **fields):
    from tests.test_lobby_handlers import enter, start

    room = await sync_to_async(make_conference)(number, **fields)
    await app.process_event(start("A", number))
    await enter(app, room, "A", ["A"])
    return room


async def test_the_room_is_told_it_records_only_once_it_does(server, make_conference, media):
    app = new_app(server)
    room = await in_room(app, make_conference, "333")
    app.ari.fail["record_bridge"] = AriError("HTTP 500", status=500)
    command = {"action": "record_start", "conference_id": room.pk, "participant_id": None}
    assert await app.handle_command(command) == (False, "Asterisk refused the request")
    assert app.ari.called("play_to_bridge") == []
    del app.ari.fail["record_bridge"]
    assert await app.handle_command(command) == (True, None)
    [(bridge_id, media_uri)] = app.ari.called("play_to_bridge")
    assert media_uri == "sound:conf-now-recording"


async def test_another_applications_recording_of_the_bridge_is_left_alone(server, make_conference, media):
    app = new_app(server)
    room = await in_room(app, make_conference, "334")
    bridge = f"bridge:conference-conference-{room.pk}"
    hostile = ("compliance/other-app-42", f"conference-{room.pk}-../../x", f"conference-{room.pk}-20261201-000000-zz")
    for name in hostile:
        for kind in ("RecordingStarted", "RecordingFinished"):
            await app.process_event({"type": kind, "recording": {"name": name, "target_uri": bridge}})
    assert await sync_to_async(Recording.objects.count)() == 0 and app.fetches == {}
    assert app.ari.called("delete_stored_recording") == []


async def test_a_stop_that_finds_the_recording_gone_finishes_and_fetches_it(server, make_conference, media):
    app = new_app(server)
    room = await in_room(app, make_conference, "335")
    command = {"action": "record_start", "conference_id": room.pk, "participant_id": None}
    assert await app.handle_command(command) == (True, None)
    app.ari.fail["stop_recording"] = AriNotFound("gone", status=404)  # its RecordingFinished was lost

    app.ari.stored_recording_file = four_bytes
    stop = {"action": "record_stop", "conference_id": room.pk, "participant_id": None}
    assert await app.handle_command(stop) == (True, None)
    await asyncio.gather(*app.fetches.values())
    [row] = await sync_to_async(list)(Recording.objects.all())
    assert row.state == Recording.State.STORED
    assert await app.handle_command(command) == (True, None)  # the room can be recorded again


async def test_a_stored_file_the_database_does_not_take_is_removed_again(server, make_conference, media, monkeypatch):
    from conferences.ari import store

    conference = await sync_to_async(make_conference)("336")
    recording = await finished_recording(conference)
    app = new_app(server)

    app.ari.stored_recording_file = four_bytes

    def refuse(*args, **kwargs):
        raise ValueError("value too long for type character varying(100)")

    monkeypatch.setattr(store, "recording_stored", refuse)
    assert await app.fetch_recording(recording.pk, recording.name, delays=()) is False
    assert list(media.rglob("*.wav")) == []  # no orphan copy
    assert app.ari.called("delete_stored_recording") == []
