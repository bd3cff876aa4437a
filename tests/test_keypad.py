"""The keypad during the call, against the sandbox Asterisk: callers raise hands and mute themselves.

Callers are Local channels whose far end, held in the test's application,
sends the keys (``POST /channels/{far end}/dtmf``: Asterisk passes them to
the participant's half, which is in the room's bridge, as a phone's keys
would arrive) and talks (tests/sandbox.py, ``Typist``). What the others hear
is measured at the audio level (``Ears``); the SIP tier (tests/test_sip.py)
sends the keys from real phones and checks that the room does not hear
them.
"""

import asyncio

import pytest
from django.contrib.auth.models import User

from conferences.ari import rules
from conferences.models import ConferenceEvent, Participant
from tests.live import EventLog, act, db, events_of, participant, wait_roster
from tests.sandbox import Ears, eventually

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
async def moderator(transactional_db):
    return await db(User.objects.create_user)(username="mod", password="x")


def state_of(channel_id):
    row = Participant.objects.get(channel_id=channel_id)
    return {"hand": row.hand_raised, "muted": row.muted, "source": row.mute_source}


async def reaches(channel_id, **expected):
    async def check():
        state = await db(state_of)(channel_id)
        return all(state[key] == value for key, value in expected.items())

    await eventually(check, timeout=10, message=f"{channel_id} never reached {expected}")


async def test_keys_raise_and_lower_the_hand_and_mute_the_caller_but_never_undo_a_moderators_mute(
    runner, sandbox, make_room, moderator
):
    room = await make_room(141)
    log = EventLog()
    worker = await runner.start(configure=log)
    async with Ears(sandbox) as ears:
        listener = await sandbox.caller(141, name="Listener", number="301")
        talker = await sandbox.typist(ears, 141, name="Talker", number="302", talking=True)
        await wait_roster(sandbox, worker, room, {listener.channel_id, talker.channel_id})
        ear = await ears.listen(listener)
        await ears.wait(ear, True)  # the listener hears the talker

        # *1: the hand goes up (its time kept for the order), *1 again: down.
        await talker.press("*1")
        await reaches(talker.channel_id, hand=True)
        assert (await db(participant)(talker.channel_id)).hand_raised_at is not None
        await talker.press("*1")
        await reaches(talker.channel_id, hand=False)

        # *6: muted by themself; the listener hears nothing. *6 again: heard again.
        await talker.press("*6")
        await reaches(talker.channel_id, muted=True, source="self")
        await ears.wait(ear, False)
        await ears.steady(ear, False, 2)
        await talker.press("*6")
        await reaches(talker.channel_id, muted=False, source="")
        await ears.wait(ear, True)

        # A moderator's mute: *6 does not undo it (still silent), the moderator's unmute does, and lowers the hand.
        row = await db(participant)(talker.channel_id)
        assert await act(worker, room, "mute", row.pk, moderator) == (True, None)
        await ears.wait(ear, False)
        await talker.press("*1")
        await reaches(talker.channel_id, hand=True, muted=True, source="moderator")
        await talker.press("*6")
        await eventually(lambda: len(log.sounds(talker.channel_id)) >= 8, message="the refusal's prompt")
        await ears.steady(ear, False, 2)
        await reaches(talker.channel_id, muted=True, source="moderator", hand=True)
        assert await act(worker, room, "unmute", row.pk, moderator) == (True, None)
        await reaches(talker.channel_id, muted=False, source="", hand=False)
        await ears.wait(ear, True)

    # Each key was confirmed to the caller who pressed it, and to nobody else.
    assert log.sounds(talker.channel_id) == [  # each sound of a playback starts on its own
        "sound:beep",  # hand up
        "sound:beep",  # hand down: two beeps
        "sound:beep",
        "sound:conf-muted",
        "sound:conf-unmuted",
        "sound:beep",  # hand up while muted by the moderator
        "sound:beeperr",  # *6 refused: still muted
        "sound:conf-muted",
    ]
    assert log.sounds(listener.channel_id) == []
    kinds = [
        (event["kind"], event["actor_id"])
        for event in await db(events_of)(room)
        if event["kind"] not in (ConferenceEvent.Kind.JOINED, ConferenceEvent.Kind.LEFT)
    ]
    assert kinds == [
        ("hand_raised", None),
        ("hand_lowered", None),
        ("self_muted", None),
        ("self_unmuted", None),
        ("muted", moderator.pk),
        ("hand_raised", None),
        ("unmuted", moderator.pk),
        ("hand_lowered", moderator.pk),
    ]


async def test_a_rooms_own_keys_and_stray_keys(runner, sandbox, make_room, moderator):
    """Keys set for the room replace *1 and *6; other keys, slow keys and PIN-like typing do nothing."""
    room = await make_room(142, keypad_hand="#5", keypad_mute="99")
    worker = await runner.start()
    async with Ears(sandbox) as ears:
        caller = await sandbox.typist(ears, 142, name="Typist", number="303")
        other = await sandbox.typist(ears, 142, name="Other", number="304")
        await wait_roster(sandbox, worker, room, {caller.channel_id, other.channel_id})
        await caller.press("*1*61234#")  # the defaults and some digits: not this room's keys
        await other.press("#5")  # a sequence typed by another caller is that caller's
        await reaches(other.channel_id, hand=True)
        assert await db(state_of)(caller.channel_id) == {"hand": False, "muted": False, "source": ""}
        await caller.press("#")
        await asyncio.sleep(3.5)  # longer than rules.KEY_GAP_SECONDS: "#" and "5" are no sequence
        await caller.press("5")
        await caller.press("99", between=400)
        await reaches(caller.channel_id, muted=True, source="self")
        assert (await db(state_of)(caller.channel_id))["hand"] is False
        row = await db(participant)(other.channel_id)
        assert await act(worker, room, "lower_hand", row.pk, moderator) == (True, None)
        await reaches(other.channel_id, hand=False)
        [lowered] = [e for e in await db(events_of)(room) if e["kind"] == "hand_lowered"]
        assert lowered["actor_id"] == moderator.pk
        # A flood of sequences (eight #5 in about 1.2 s): at most the keypad's burst and rate get through.
        before = len([e for e in await db(events_of)(room) if e["kind"].startswith("hand_")])
        await other.press("#5" * 8, between=50)
        await asyncio.sleep(1)
        flood = len([e for e in await db(events_of)(room) if e["kind"].startswith("hand_")]) - before
        assert 1 <= flood <= rules.KEYPAD_BURST + 2, flood
