"""A moderator's sound played to the room, against the sandbox: heard by a participant (its audio, through a
snoop), music on hold paused around it and back afterwards; names not in the server's list refused."""

import pytest
from django.contrib.auth.models import User

from conferences.models import Sound
from tests.live import EventLog, act, db, events_of, wait_roster
from tests.sandbox import Ears, eventually

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
async def moderator(transactional_db):
    return await db(User.objects.create_user)(username="mod", password="x")


async def test_a_played_sound_is_heard_and_the_music_comes_back_after_it(runner, sandbox, make_room, moderator, pbx):
    await db(Sound.objects.create)(server=pbx, name="alone", label="You are alone", sound="conf-onlyperson")
    room = await make_room(177)
    log = EventLog()
    worker = await runner.start(configure=log)
    async with Ears(sandbox) as ears:
        first = await sandbox.caller(177, name="First", number="801")
        second = await sandbox.caller(177, name="Second", number="802")
        await wait_roster(sandbox, worker, room, {first.channel_id, second.channel_id})
        ear = await ears.listen(first)
        await ears.wait(ear, False)  # two silent callers: no music, nothing to hear
        assert await act(worker, room, "play", None, moderator, sound="alone") == (True, None)
        await ears.wait(ear, True, timeout=5)  # the announcement
        await ears.wait(ear, False, timeout=10)  # and over
        await sandbox.hangup(second)
        await wait_roster(sandbox, worker, room, {first.channel_id})
        state = worker.app.state.rooms[room.pk]
        await eventually(lambda: state.moh is True, message="music for the lone caller")
        await ears.wait(ear, True)
        assert await act(worker, room, "play", None, moderator, sound="alone") == (True, None)
        assert state.moh is False and state.announcing  # paused for the announcement
        await eventually(lambda: not state.announcing, timeout=15, message="announcement over")
        assert state.moh is True  # the music is back (after the gap of a second or so that ends the sound)
        await ears.wait(ear, False, timeout=5)
        await ears.wait(ear, True, timeout=5)
        await ears.steady(ear, True, 3)
    played = [
        e["playback"]["media_uri"]
        for e in log.events
        if e.get("type") == "PlaybackStarted" and e["playback"]["target_uri"].startswith("bridge:")
    ]
    assert played == ["sound:conf-onlyperson", "sound:conf-onlyperson"]
    kinds = [(e["kind"], e["actor_id"], e["details"]) for e in await db(events_of)(room, "played")]
    assert kinds == [("played", moderator.pk, {"sound": "alone"})] * 2


async def test_only_the_servers_sounds_play(worker, sandbox, make_room, moderator, pbx):
    await db(Sound.objects.create)(server=pbx, name="alone", label="You are alone", sound="conf-onlyperson")
    room = await make_room(178)
    assert await act(worker, room, "play", None, moderator, sound="alone") == (False, "nobody is in the room")
    caller = await sandbox.caller(178, name="Only", number="803")
    await wait_roster(sandbox, worker, room, {caller.channel_id})
    for name in ("conf-onlyperson", "../../etc/passwd", "", None, "x" * 200):  # a name, never a sound path
        assert await act(worker, room, "play", None, moderator, sound=name) == (
            False,
            "no such sound on this room's server",
        ), name


async def test_the_room_hears_join_and_leave_tones_and_a_lone_caller_is_told(runner, sandbox, make_room):
    room = await make_room(181, join_leave_tones=True, announce_only_person=True)
    log = EventLog()
    worker = await runner.start(configure=log)
    async with Ears(sandbox) as ears:
        first = await sandbox.caller(181, name="First", number="811")
        await wait_roster(sandbox, worker, room, {first.channel_id})
        await eventually(lambda: log.sounds(first.channel_id) == ["sound:conf-onlyperson"], message="told alone")
        second = await sandbox.caller(181, name="Second", number="812")
        await wait_roster(sandbox, worker, room, {first.channel_id, second.channel_id})
        ear = await ears.listen(second)
        await ears.wait(ear, False)  # two silent callers
        third = await sandbox.caller(181, name="Third", number="813")
        await wait_roster(sandbox, worker, room, {first.channel_id, second.channel_id, third.channel_id})
        await ears.wait(ear, True, timeout=5)  # the join tone
        await ears.wait(ear, False, timeout=5)
        await sandbox.hangup(third)
        await ears.wait(ear, True, timeout=5)  # the leave tone
    bridge_plays = [
        e["playback"]["media_uri"]
        for e in log.events
        if e.get("type") == "PlaybackStarted" and e["playback"]["target_uri"].startswith("bridge:")
    ]
    assert bridge_plays == ["sound:confbridge-join", "sound:confbridge-join", "sound:confbridge-leave"]
