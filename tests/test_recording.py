"""Recording against the sandbox: started and stopped by a moderator, announced, fetched through ARI, stored.

The stored file is read back and measured (duration, and the level of its
audio: a talker was in the room), and Asterisk's own copy is gone after
the fetch.
"""

import array
import asyncio
import wave

import pytest
from django.contrib.auth.models import User
from django.core.files.storage import default_storage
from django.test import Client

from conferences.models import Conference, ConferenceAccess, Recording
from tests.live import EventLog, act, db, events_of, wait_roster
from tests.sandbox import eventually

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")
    return tmp_path / "media"


@pytest.fixture
async def moderator(transactional_db):
    return await db(User.objects.create_user)(username="mod", password="x")


def recordings(room):
    return list(Recording.objects.filter(conference=room).order_by("id"))


async def stored(room, count=1, timeout=30):
    async def check():
        rows = await db(recordings)(room)
        return len(rows) == count and all(r.state == Recording.State.STORED for r in rows) and rows

    return await eventually(check, timeout=timeout, message=f"{count} stored recording(s) of room {room.number}")


def measure(name):
    """``(seconds, RMS level 0..32767)`` of a stored 16-bit mono WAV."""
    with default_storage.open(name) as handle, wave.open(handle) as audio:
        assert (audio.getsampwidth(), audio.getnchannels()) == (2, 1)
        frames = audio.readframes(audio.getnframes())
        samples = array.array("h", frames)
        rms = (sum(s * s for s in samples) / max(1, len(samples))) ** 0.5
        return audio.getnframes() / audio.getframerate(), rms


async def test_a_moderator_records_a_room_and_the_file_is_stored_with_its_audio(
    runner, sandbox, make_room, moderator, media
):
    room = await make_room(190)
    log = EventLog()
    worker = await runner.start(configure=log)
    talker = await sandbox.caller(190, far="talk", name="Talker", number="601")
    listener = await sandbox.caller(190, name="Listener", number="602")
    await wait_roster(sandbox, worker, room, {talker.channel_id, listener.channel_id})

    assert await act(worker, room, "record_start", None, moderator) == (True, None)
    assert await act(worker, room, "record_start", None, moderator) == (False, "the room is being recorded already")
    assert (await db(Conference.objects.get)(pk=room.pk)).recording is True
    late = await sandbox.caller(190, name="Late", number="603")  # joins while it records: hears so
    await wait_roster(sandbox, worker, room, {talker.channel_id, listener.channel_id, late.channel_id})
    await eventually(lambda: log.sounds(late.channel_id) == ["sound:conf-now-recording"], message="told it records")
    await asyncio.sleep(5)
    assert await act(worker, room, "record_stop", None, moderator) == (True, None)
    [recording] = await stored(room)
    seconds, level = await db(measure)(recording.file.name)
    print(f"recording: {seconds:.1f} s, RMS {level:.0f}, {recording.size} bytes")
    assert 4.0 <= seconds <= 8.0 and recording.duration == pytest.approx(seconds, abs=1.5)
    assert level > 100  # the talker, not silence
    assert recording.size == (media / recording.file.name).stat().st_size and recording.started_by_id == moderator.pk
    assert (await db(Conference.objects.get)(pk=room.pk)).recording is False
    # Asterisk's own copy went once the site had its own.
    await sandbox.call("GET", f"/recordings/stored/{recording.name}", ok=(404,))
    # The room heard the announcement when it started (a playback to the bridge, not to one caller).
    bridge_plays = [
        e["playback"]["media_uri"]
        for e in log.events
        if e.get("type") == "PlaybackStarted" and e["playback"]["target_uri"].startswith("bridge:")
    ]
    assert bridge_plays == ["sound:conf-now-recording"]
    kinds = [(e["kind"], e["actor_id"]) for e in await db(events_of)(room) if e["kind"].startswith("recording_")]
    assert kinds == [("recording_started", moderator.pk), ("recording_stopped", moderator.pk)]
    assert await act(worker, room, "record_stop", None, moderator) == (False, "the room is not being recorded")
    # The moderator plays it from the room's history page.
    await db(ConferenceAccess.objects.create)(conference=room, user=moderator, role="moderator")

    def download():
        client = Client()
        client.force_login(moderator)
        page = client.get(f"/conferences/{room.slug}/history/").content.decode()
        link = f"/conferences/{room.slug}/recordings/{recording.pk}/"
        response = client.get(link, HTTP_RANGE="bytes=0-43")  # the WAV header, as a player asks first
        return link in page, response.status_code, b"".join(response.streaming_content)

    listed, status, header = await db(download)()
    assert listed and status == 206 and header[:4] == b"RIFF" and header[8:12] == b"WAVE"


async def test_an_always_room_records_each_time_it_fills_and_a_never_room_refuses(
    runner, sandbox, make_room, moderator, media
):
    room = await make_room(191, record_mode="always")
    never = await make_room(192, record_mode="never")
    worker = await runner.start()
    first = await sandbox.caller(191, far="talk", name="First", number="611")
    await wait_roster(sandbox, worker, room, {first.channel_id})
    await eventually(lambda: db(lambda: Conference.objects.get(pk=room.pk).recording)(), message="recording")
    await sandbox.hangup(first)  # the room empties: the Recorder leaves, the file ends
    await stored(room, 1)
    again = await sandbox.caller(191, far="talk", name="Again", number="612")
    await wait_roster(sandbox, worker, room, {again.channel_id})
    await eventually(lambda: db(lambda: Conference.objects.get(pk=room.pk).recording)(), message="recording again")
    await sandbox.hangup(again)
    first_file, second_file = await stored(room, 2)
    assert first_file.file.name != second_file.file.name and first_file.started_by_id is None

    caller = await sandbox.caller(192, name="Never", number="613")
    await wait_roster(sandbox, worker, never, {caller.channel_id})
    assert await act(worker, never, "record_start", None, moderator) == (False, "this room is never recorded")
    assert await db(recordings)(never) == []


async def test_a_recording_goes_on_across_a_worker_restart_and_one_that_ended_meanwhile_is_fetched(
    runner, sandbox, make_room, moderator, media
):
    """The worker restarts while a room records: the new one finds the recording live and stops it when asked;
    a recording that ended while no worker ran (its RecordingFinished went to nobody) is finished and stored."""
    room = await make_room(193)
    worker = await runner.start()
    talker = await sandbox.caller(193, far="talk", name="Talker", number="621")
    await wait_roster(sandbox, worker, room, {talker.channel_id})
    assert await act(worker, room, "record_start", None, moderator) == (True, None)
    await asyncio.sleep(2)
    await runner.stop()
    worker = await runner.start()  # the resync finds the recording still live on Asterisk
    assert (await db(Conference.objects.get)(pk=room.pk)).recording is True
    await asyncio.sleep(1)
    assert await act(worker, room, "record_stop", None, moderator) == (True, None)
    [first] = await stored(room, 1)
    assert first.duration >= 2.5

    assert await act(worker, room, "record_start", None, moderator) == (True, None)
    await runner.stop()
    await sandbox.hangup(talker)  # the room empties while no worker runs: the file ends unheard
    await asyncio.sleep(1)
    worker = await runner.start()
    recordings_now = await stored(room, 2)
    assert (await db(Conference.objects.get)(pk=room.pk)).recording is False
    assert recordings_now[1].size > 0


@pytest.mark.parametrize("how", ["restart", "crash"])
async def test_an_asterisk_restart_mid_recording_ends_it_truthfully_and_keeps_the_audio(
    worker, sandbox, make_room, moderator, media, fresh_layer, how
):
    """Asterisk restarts (cleanly: the Recorder is hung up with the calls) or dies (SIGKILL: nobody closes
    the file) while a room records. After the reconnect the room is not shown recording, the recording is
    finished with the audio written before the restart, fetched and stored; the room records again."""
    from tests.live import RoomWatcher
    from tests.sandbox_control import crash_asterisk, restart_asterisk

    room = await make_room(194)
    async with RoomWatcher(fresh_layer, room.pk) as watcher:
        talker = await sandbox.caller(194, far="talk", name="Talker", number="631")
        await wait_roster(sandbox, worker, room, {talker.channel_id})
        assert await act(worker, room, "record_start", None, moderator) == (True, None)
        await asyncio.sleep(4)
        resyncs = worker.resyncs
        await (restart_asterisk() if how == "restart" else crash_asterisk())
        await eventually(lambda: worker.resyncs > resyncs, timeout=60, message="reconnected")
        [recording] = await stored(room, 1)
        assert (await db(Conference.objects.get)(pk=room.pk)).recording is False
        seconds, level = await db(measure)(recording.file.name)
        print(f"{how}: {seconds:.1f} s, RMS {level:.0f}, {recording.size} bytes, row says {recording.duration}")
        # A clean stop closes the file; SIGKILL loses what Asterisk's file buffer held (32 KiB: 2 s of 8 kHz
        # 16-bit audio), and the header the fetch filled in says what the file does hold.
        assert (3.0 if how == "restart" else 1.0) <= seconds <= 7.0 and level > 100
        assert recording.duration == pytest.approx(seconds, abs=1.5)
        updates = [f["conference"]["recording"] for f in watcher.of_type("conference.updated")]
        assert updates[-1] is False and True in updates, updates  # the pages saw it start, and end
        # The room records again after the restart.
        again = await sandbox.caller(194, far="talk", name="Again", number="632")
        await wait_roster(sandbox, worker, room, {again.channel_id})
        assert await act(worker, room, "record_start", None, moderator) == (True, None)
        await asyncio.sleep(1)
        assert await act(worker, room, "record_stop", None, moderator) == (True, None)
        await stored(room, 2)


async def test_a_recording_the_site_has_no_row_of_is_adopted_when_it_ends(runner, sandbox, make_room, moderator, media):
    """As if the worker had died between Asterisk's record call and the row's write (and missed the
    RecordingStarted): a recording that ends while a worker runs is adopted at its RecordingFinished; one
    that ended while none ran is found among Asterisk's stored recordings at the reconnect. Both are
    fetched and stored; neither is left on Asterisk."""
    room = await make_room(197)
    worker = await runner.start()
    talker = await sandbox.caller(197, far="talk", name="Talker", number="651")
    await wait_roster(sandbox, worker, room, {talker.channel_id})

    async def record_then_forget():
        assert await act(worker, room, "record_start", None, moderator) == (True, None)
        await asyncio.sleep(2)
        await runner.stop()
        [live] = await db(lambda: list(Recording.objects.filter(conference=room, state="recording")))()
        await db(Recording.objects.filter(pk=live.pk).delete)()
        await db(Conference.objects.filter(pk=room.pk).update)(recording=False)
        return live.name

    lost = await record_then_forget()
    worker = await runner.start()
    await sandbox.hangup(talker)  # the Recorder leaves: RecordingFinished of a recording the site never knew
    [adopted] = await stored(room, 1)
    assert adopted.name == lost and adopted.started_by_id is None and adopted.duration >= 1.5

    talker = await sandbox.caller(197, far="talk", name="Talker", number="652")
    await wait_roster(sandbox, worker, room, {talker.channel_id})
    lost = await record_then_forget()
    await sandbox.hangup(talker)  # ends while no worker runs
    await asyncio.sleep(1)
    await runner.start()
    first, second = await stored(room, 2)
    assert second.name == lost and second.size > 0
    for name in (first.name, second.name):
        await sandbox.call("GET", f"/recordings/stored/{name}", ok=(404,))


async def test_the_room_hears_that_it_is_recorded(runner, sandbox, make_room, moderator, media):
    """Heard, not only asked for: two silent callers, a snoop on one of them; the announcement is the only
    sound it hears when the recording starts."""
    from tests.sandbox import Ears

    room = await make_room(199)
    worker = await runner.start()
    async with Ears(sandbox) as ears:
        first = await sandbox.caller(199, name="First", number="671")
        second = await sandbox.caller(199, name="Second", number="672")
        await wait_roster(sandbox, worker, room, {first.channel_id, second.channel_id})
        ear = await ears.listen(first)
        await ears.wait(ear, False)
        await ears.steady(ear, False, 1)
        assert await act(worker, room, "record_start", None, moderator) == (True, None)
        await ears.wait(ear, True, timeout=5)  # "this conference is being recorded"
        await ears.wait(ear, False, timeout=10)
        assert await act(worker, room, "record_stop", None, moderator) == (True, None)
    await stored(room)
