"""Talk time against the sandbox: a far end that talks for a known time, measured by the worker.

The far end (held in the test's application, tests/sandbox.py) plays one of
the shipped indication tones (deploy/asterisk/indications.conf) into the
participant's channel: ``ring`` is 2 s of tone, then 4 s of silence;
``record`` 0.5 s, then 15 s. A tone with its silence after it, because a
Local channel that sends no frames at all never lets the detector see the
silence that ends a stretch (a custom ``tone:`` string cannot say so: ARI
splits its media on commas). The room's talk detection (``TALK_DETECT(set)``
with Asterisk's defaults: 2.5 s of silence ends a stretch, and the duration
it reports leaves those 2.5 s out) measures it.
"""

import asyncio

import pytest
from django.contrib.auth.models import User

from conferences.models import Participant
from tests.live import EventLog, act, db, wait_roster
from tests.sandbox import Ears, eventually

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SILENCE_THRESHOLD = 2.5  # seconds: TALK_DETECT's default dsp_silence_threshold


def talked(channel_id):
    row = Participant.objects.get(channel_id=channel_id)
    return row.talking, row.talk_seconds


@pytest.mark.parametrize(("tone", "seconds", "number"), [("ring", 2.0, 171), ("record", 0.5, 172)])
async def test_a_tone_of_known_length_is_counted_as_that_long(runner, sandbox, make_room, tone, seconds, number):
    room = await make_room(number)
    worker = await runner.start()
    async with Ears(sandbox) as ears:
        talker = await sandbox.typist(ears, number, name="Tone", number="501")
        await wait_roster(sandbox, worker, room, {talker.channel_id})
        await sandbox.call(
            "POST",
            f"/channels/{talker.far_id}/play",
            params={"media": f"tone:{tone}", "playbackId": f"tone-{talker.far_id}"},
            ok=(201,),
        )

        async def finished():
            is_talking, total = await db(talked)(talker.channel_id)
            return not is_talking and total > 0 and total

        total = await eventually(finished, timeout=15, message="the stretch never ended")
    print(f"tone {tone} of {seconds} s: talk_seconds {total:.2f}")
    assert abs(total - seconds) <= 1.0, total


async def test_a_muted_caller_is_not_detected_talking(runner, sandbox, make_room):
    """ARI's channel mute drops the caller's audio before talk detection: a muted caller who talks is not
    seen talking (so there is no "talking while muted" to show), and its talk time does not grow."""
    moderator = await db(User.objects.create_user)(username="mod", password="x")
    room = await make_room(179)
    log = EventLog()
    worker = await runner.start(configure=log)
    async with Ears(sandbox) as ears:
        talker = await sandbox.typist(ears, 179, name="Muted", number="502")
        await wait_roster(sandbox, worker, room, {talker.channel_id})
        row = await db(Participant.objects.get)(channel_id=talker.channel_id)
        assert await act(worker, room, "mute", row.pk, moderator) == (True, None)
        before = len(log.events)
        await sandbox.call(
            "POST",
            f"/channels/{talker.far_id}/play",
            params={"media": "tone:ring", "playbackId": f"tone-{talker.far_id}"},
            ok=(201,),
        )
        await asyncio.sleep(2 + SILENCE_THRESHOLD + 2)  # a stretch would have started and ended meanwhile
        started = [
            event
            for event in log.events[before:]
            if event.get("type") == "ChannelTalkingStarted" and event["channel"]["id"] == talker.channel_id
        ]
        assert started == []
        assert await db(talked)(talker.channel_id) == (False, 0.0)


async def test_mute_all_while_callers_talk_ends_their_stretches_with_their_time(runner, sandbox, make_room):
    """Mute all writes the stretches it cut short with the mutes, in one hop: each talker is no longer
    talking, has the seconds it talked, and is detected talking again after unmute all."""
    moderator = await db(User.objects.create_user)(username="mod", password="x")
    room = await make_room(178)
    worker = await runner.start()
    async with Ears(sandbox) as ears:
        talkers = [await sandbox.typist(ears, 178, name=f"Talker {n}", number=f"50{n}", talking=True) for n in (3, 4)]
        await wait_roster(sandbox, worker, room, {t.channel_id for t in talkers})

        async def all_talking():
            states = [await db(talked)(t.channel_id) for t in talkers]
            return all(is_talking for is_talking, _total in states)

        await eventually(all_talking, timeout=10, message="the talkers were never seen talking")
        await asyncio.sleep(1.5)
        assert await act(worker, room, "mute_all", actor=moderator) == (True, None)
        for talker in talkers:
            is_talking, total = await db(talked)(talker.channel_id)
            assert not is_talking and total >= 1.0, (talker.channel_id, is_talking, total)
            assert (await db(Participant.objects.get)(channel_id=talker.channel_id)).muted
        assert await act(worker, room, "unmute_all", actor=moderator) == (True, None)
        await eventually(all_talking, timeout=10, message="not detected talking again after unmute all")
