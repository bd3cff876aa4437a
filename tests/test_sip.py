"""Real SIP callers: phones that dial the sandbox over PJSIP with RTP on loopback (tests/sip.py).

Every other worker test calls with Local channels; here each caller is a
PJSIP channel of the sandbox whose far end is a SIP phone (the phones'
Asterisk), with the sandbox's endpoints as a deployment has them
(deploy/asterisk/pjsip.conf, direct media on). What a caller hears is heard
by the phone itself, over RTP.
"""

import asyncio
import inspect
import os
import uuid

import pytest
from django.contrib.auth.models import User

from conferences.ari.client import AriClient
from conferences.models import ConferenceEvent, Participant
from tests.live import EventLog, RoomWatcher, act, db, events_of, participant, wait_roster
from tests.sandbox import eventually
from tests.sip import AppSocket, AriAccess, Phones, channel_variable, rest

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
async def phones(phones_ari, sandbox):
    async with Phones(phones_ari, sandbox) as box:
        await box.cleanup()
        yield box


@pytest.fixture
async def moderator(transactional_db):
    return await db(User.objects.create_user)(username="mod", password="x")


def sandbox_access(sandbox):
    return AriAccess(sandbox.ari.url, sandbox.ari.username, sandbox.ari.password)


async def bridge_of(sandbox, channel_id):
    """The sandbox bridge a channel is in (None when in none)."""
    for bridge in await sandbox.bridges():
        if channel_id in bridge["channels"]:
            return bridge
    return None


async def media_through_asterisk(phones, a, b):
    """Neither phone sends its RTP to the other: both send it to the sandbox."""
    (a_src, a_dest), (b_src, b_dest) = await phones.rtp(a), await phones.rtp(b)
    return a_dest != b_src and b_dest != a_src


async def media_phone_to_phone(phones, a, b):
    (a_src, a_dest), (b_src, b_dest) = await phones.rtp(a), await phones.rtp(b)
    return a_dest == b_src and b_dest == a_src


# --- a two-person room of SIP callers -------------------------------------------------------


async def test_a_sip_caller_joins_with_the_caller_id_of_its_from_header_and_leaves_with_a_bye(
    worker, phones, sandbox, make_room, fresh_layer
):
    room = await make_room(300)
    async with RoomWatcher(fresh_layer, room.pk) as watcher:
        alice = await phones.call(300, name="Alice Smith", number="201")
        await wait_roster(sandbox, worker, room, {alice.channel_id})
        channel = await sandbox.call("GET", f"/channels/{alice.channel_id}")
        assert channel["name"].startswith("PJSIP/phones-")  # a SIP call, endpoint "phones"
        joined = await db(participant)(alice.channel_id)
        assert (joined.caller_name, joined.caller_number, joined.role) == ("Alice Smith", "201", "participant")
        await phones.hangup(alice)
        await wait_roster(sandbox, worker, room, set())
        await eventually(lambda: watcher.of_type("participant.left"))
    left = await db(participant)(alice.channel_id)
    assert left.left_reason == Participant.LeftReason.HANGUP
    frame = watcher.of_type("participant.joined")[0]["participant"]
    assert (frame["caller_name"], frame["caller_number"]) == ("Alice Smith", "201")
    watcher.assert_seq_contiguous()


async def test_a_talking_sip_caller_is_detected_and_heard_by_the_other_through_asterisk(
    worker, phones, sandbox, make_room
):
    room = await make_room(301)
    listener = await phones.call(301, name="Listener", number="211")
    talker = await phones.call(301, name="Talker", number="212", far="talk")
    await wait_roster(sandbox, worker, room, {listener.channel_id, talker.channel_id})
    await eventually(lambda: db(lambda: participant(talker.channel_id).talking)(), message="talker talking")
    await phones.hears(listener, True)
    assert (await db(participant)(listener.channel_id)).talking is False
    # The audio went through the sandbox: its bridge is not a native one, and
    # each phone sends its RTP to the sandbox, not to the other phone.
    bridge = await bridge_of(sandbox, talker.channel_id)
    assert bridge["technology"] != "native_rtp"
    assert await media_through_asterisk(phones, listener, talker)
    # When the talker stops, the room hears it stop.
    await phones.quiet(talker)
    await phones.hears(listener, False)
    await eventually(lambda: db(lambda: not participant(talker.channel_id).talking)(), message="talking ended")


async def test_mute_silences_a_sip_caller_for_the_other_and_unmute_brings_the_voice_back(
    worker, phones, sandbox, make_room, moderator
):
    room = await make_room(302)
    listener = await phones.call(302, name="Listener", number="221")
    talker = await phones.call(302, name="Talker", number="222", far="talk")
    await wait_roster(sandbox, worker, room, {listener.channel_id, talker.channel_id})
    await phones.hears(listener, True)
    talker_row = await db(participant)(talker.channel_id)

    assert await act(worker, room, "mute", talker_row.pk, moderator) == (True, None)
    await phones.hears(listener, False)
    await phones.steady(listener, False, 2)
    assert (await db(participant)(talker.channel_id)).muted is True

    assert await act(worker, room, "unmute", talker_row.pk, moderator) == (True, None)
    await phones.hears(listener, True)
    await eventually(lambda: db(lambda: participant(talker.channel_id).talking)(), message="talking again")
    assert (await db(participant)(talker.channel_id)).muted is False


async def test_a_talking_sip_caller_muted_is_no_longer_shown_talking(worker, phones, sandbox, make_room, moderator):
    room = await make_room(306)
    listener = await phones.call(306, name="Listener", number="281")
    talker = await phones.call(306, name="Talker", number="282", far="talk")
    await wait_roster(sandbox, worker, room, {listener.channel_id, talker.channel_id})
    await eventually(lambda: db(lambda: participant(talker.channel_id).talking)(), message="talker talking")
    talker_row = await db(participant)(talker.channel_id)
    assert await act(worker, room, "mute", talker_row.pk, moderator) == (True, None)
    await phones.hears(listener, False)
    await eventually(
        lambda: db(lambda: not participant(talker.channel_id).talking)(), timeout=5, message="talking cleared"
    )


async def test_a_lone_sip_caller_hears_music_on_hold_until_the_second_joins(worker, phones, sandbox, make_room):
    room = await make_room(303, moh_class="default")
    alice = await phones.call(303, name="Alice", number="231")
    await wait_roster(sandbox, worker, room, {alice.channel_id})
    await phones.hears(alice, True)  # alone: music, over RTP
    assert (await db(participant)(alice.channel_id)).moh is True

    bob = await phones.call(303, name="Bob", number="232")  # silent
    await wait_roster(sandbox, worker, room, {alice.channel_id, bob.channel_id})
    await phones.hears(alice, False)
    await phones.steady(alice, False, 2)
    await phones.steady(bob, False, 0.5)  # nobody plays music to the newcomer either
    assert (await db(participant)(alice.channel_id)).moh is False

    await phones.hangup(bob)
    await wait_roster(sandbox, worker, room, {alice.channel_id})
    await phones.hears(alice, True)  # alone again: music again


async def test_kick_hangs_up_the_sip_phone_and_the_other_stays(worker, phones, sandbox, make_room, moderator):
    room = await make_room(304)
    stay = await phones.call(304, name="Stays", number="241")
    go = await phones.call(304, name="Goes", number="242")
    await wait_roster(sandbox, worker, room, {stay.channel_id, go.channel_id})
    target = await db(participant)(go.channel_id)
    assert await act(worker, room, "kick", target.pk, moderator) == (True, None)
    await phones.wait_hung_up(go)  # the phone got the BYE
    await wait_roster(sandbox, worker, room, {stay.channel_id})
    assert (await db(participant)(go.channel_id)).left_reason == Participant.LeftReason.KICKED
    assert await phones.exists(stay)
    assert [(e["kind"], e["actor_id"]) for e in await db(events_of)(room, "kicked")] == [("kicked", moderator.pk)]


@pytest.mark.parametrize("mode", ["rfc4733", "info"])
async def test_pin_typed_on_a_sip_phone_reaches_the_prompt(runner, phones, sandbox, make_room, own_cache, mode):
    """RFC 4733 events and SIP INFO: a wrong PIN is refused, the right one admits; every key arrives once."""
    room = await make_room(305, pin="4321")
    log = EventLog()
    # The deployment's PIN timeouts: the test's short ones run out while the
    # re-prompt after a wrong PIN still waits behind conf-invalidpin.
    worker = await runner.start(configure=log, fast_pin=False)
    phone = await phones.call(305, name="Keypad", number="251")
    await phones.hears(phone, True)  # the PIN prompt, heard on the phone
    await phones.dtmf(phone, "1111#", mode=mode)
    await eventually(
        lambda: log.sounds(phone.channel_id).count("sound:conf-getpin") == 2, message="asked again after a wrong PIN"
    )
    assert "sound:conf-invalidpin" in log.sounds(phone.channel_id)
    assert await db(participant)(phone.channel_id) is None
    await phones.dtmf(phone, "4321#", mode=mode)
    await wait_roster(sandbox, worker, room, {phone.channel_id})
    keys = [
        e["digit"]
        for e in log.events
        if e.get("type") == "ChannelDtmfReceived" and e["channel"]["id"] == phone.channel_id
    ]
    assert "".join(keys) == "1111#4321#"


async def test_keys_typed_in_the_room_reach_the_worker_both_ways(runner, phones, sandbox, make_room):
    """In the room's bridge DTMF still passes Asterisk: what the keypad features (*1, *6) will read."""
    room = await make_room(307)
    log = EventLog()
    worker = await runner.start(configure=log)
    talker = await phones.call(307, name="Talker", number="291", far="talk")
    typist = await phones.call(307, name="Typist", number="292")
    await wait_roster(sandbox, worker, room, {talker.channel_id, typist.channel_id})
    await phones.dtmf(typist, "*6", mode="rfc4733")
    await phones.dtmf(typist, "*1", mode="info")

    def keys():
        return "".join(
            e["digit"]
            for e in log.events
            if e.get("type") == "ChannelDtmfReceived" and e["channel"]["id"] == typist.channel_id
        )

    await eventually(lambda: keys() == "*6*1", message="keys at the worker")
    assert (await bridge_of(sandbox, typist.channel_id))["technology"] != "native_rtp"
    # The keypad acted on them: muted by themself, hand up.
    await eventually(
        lambda: db(lambda: Participant.objects.filter(
            channel_id=typist.channel_id, muted=True, mute_source="self", hand_raised=True
        ).exists())(),
        message="the typist's keys carried out",
    )  # fmt: skip
    # And the room did not get them (absorbDTMF): the other phone received no key.
    await asyncio.sleep(1)
    assert phones.socket.of("ChannelDtmfReceived", talker.id) == []


# --- the bridge keeps the media in Asterisk -------------------------------------------------


@pytest.fixture
async def conference_app(ari):
    """The sandbox's "conference" application held by the test itself (no worker)."""
    async with AppSocket(AriAccess(ari.url, ari.username, ari.password), "conference") as app:
        yield app


async def two_phones_in_a_bridge(phones, sandbox, app, bridge_id):
    talker = await phones.call(310, name="Talker", number="261", far="talk")
    listener = await phones.call(310, name="Listener", number="262")
    for phone in (talker, listener):
        await app.wait_for(lambda p=phone: app.of("StasisStart", p.channel_id), message="call in Stasis")
        await sandbox.call("POST", f"/bridges/{bridge_id}/addChannel", params={"channel": phone.channel_id})
    return talker, listener


def sandbox_dtmf(app, phone):
    """The keys of a phone that the sandbox saw (its application's events)."""
    return [event["digit"] for event in app.of("ChannelDtmfReceived", phone.channel_id)]


@pytest.mark.parametrize(
    "bridge_type",
    # Asterisk reads the type left to right: flags before "mixing" take nothing away.
    ["mixing", "dtmf_events,proxy_media,mixing"],
    ids=["mixing", "flags-before-mixing"],
)
async def test_two_sip_phones_in_a_plain_mixing_bridge_send_their_media_to_each_other(
    phones, sandbox, conference_app, bridge_type
):
    """Why the room's bridge type matters: Asterisk bridges direct-media callers natively when it may."""
    bridge_id = f"plain-{uuid.uuid4().hex}"
    await sandbox.call("POST", f"/bridges/{bridge_id}", params={"type": bridge_type})
    talker, listener = await two_phones_in_a_bridge(phones, sandbox, conference_app, bridge_id)

    async def native():
        return (await sandbox.call("GET", f"/bridges/{bridge_id}"))["technology"] == "native_rtp"

    await eventually(native, message="native RTP bridge")
    # Direct media: the sandbox re-INVITEd both phones to send RTP to each other.
    await eventually(lambda: media_phone_to_phone(phones, talker, listener), message="RTP phone to phone")
    assert await channel_variable(sandbox_access(sandbox), listener.channel_id, "CHANNEL(rtp,direct)") not in (
        "",
        "(null)",
    )
    await phones.hears(listener, True)  # the voice still arrives, past Asterisk
    # ... and so do keys: the other phone gets them, the sandbox never sees them.
    await phones.dtmf(listener, "12")
    await phones.socket.wait_for(
        lambda: phones.socket.of("ChannelDtmfReceived", talker.id), message="keys at the phone"
    )
    await asyncio.sleep(1)
    assert sandbox_dtmf(conference_app, listener) == []


async def test_two_sip_phones_in_a_room_bridge_keep_their_media_in_asterisk(phones, sandbox, conference_app, ari):
    """The bridge type AriClient.create_bridge gives every room: no native bridging, DTMF seen by Asterisk."""
    bridge_id = f"room-{uuid.uuid4().hex}"
    client = AriClient(ari.url, ari.username, ari.password)
    try:
        await client.create_bridge(bridge_id, "conference 310")
    finally:
        closing = client.close()
        if inspect.isawaitable(closing):  # the client's own pool, thread or asyncio
            await closing
    talker, listener = await two_phones_in_a_bridge(phones, sandbox, conference_app, bridge_id)
    await phones.hears(listener, True)
    bridge = await sandbox.call("GET", f"/bridges/{bridge_id}")
    # Two callers and nothing needing their audio (no talk detection here): a
    # plain mixing bridge would go native (the test above); this one does not.
    assert bridge["technology"] == "simple_bridge" and bridge["bridge_type"] == "mixing"
    assert await media_through_asterisk(phones, talker, listener)
    assert await channel_variable(sandbox_access(sandbox), listener.channel_id, "CHANNEL(rtp,direct)") in ("", "(null)")
    await phones.dtmf(listener, "34")
    await conference_app.wait_for(
        lambda: len(conference_app.of("ChannelDtmfReceived", listener.channel_id)) == 2, message="keys at the sandbox"
    )
    assert sandbox_dtmf(conference_app, listener) == ["3", "4"]


# --- hostile SIP input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sent,stored",
    [
        # Asterisk keeps the backslash escapes of the From header's quoted
        # display name ("Evil \"Boss\" \\ ..." on the wire).
        ('Evil "Boss" \\ <sip:x@y>; tag=1', 'Evil \\"Boss\\" \\\\ <sip:x@y>; tag=1'),
        ("Ёжик 🦔 в тумане", "Ёжик 🦔 в тумане"),
        # Asterisk cuts a From name to 79 bytes, at a character boundary.
        ("x" * 200, "x" * 79),
        ("Ё" * 200, "Ё" * 39),
    ],
    ids=["quotes", "unicode", "200-ascii", "200-cyrillic"],
)
async def test_hostile_from_display_names_reach_the_page_as_plain_text(
    worker, phones, sandbox, make_room, fresh_layer, sent, stored
):
    room = await make_room(320)
    async with RoomWatcher(fresh_layer, room.pk) as watcher:
        caller = await phones.call(320, name=sent, number="271")
        await wait_roster(sandbox, worker, room, {caller.channel_id})
        await eventually(lambda: watcher.of_type("participant.joined"))
    row = await db(participant)(caller.channel_id)
    assert (row.caller_name, row.caller_number) == (stored, "271")
    frame = watcher.of_type("participant.joined")[0]["participant"]
    assert frame["caller_name"] == stored


async def test_a_comma_in_the_sip_user_part_makes_an_ordinary_participant(runner, phones, sandbox, make_room):
    """The issue-11 attack over real SIP: INVITE sip:321,admin@pbx lands in room 321 as a participant."""
    room = await make_room(321)
    log = EventLog()
    worker = await runner.start(configure=log)
    caller = await phones.call("321,admin", name="Mallory", number="666")
    await wait_roster(sandbox, worker, room, {caller.channel_id})
    channel = await sandbox.call("GET", f"/channels/{caller.channel_id}")
    assert channel["dialplan"]["exten"] == "321,admin"  # the comma arrived over SIP
    assert log.stasis_args(caller.channel_id) == ["321"]  # [conferences] kept the digits
    assert (await db(participant)(caller.channel_id)).role == Participant.Role.PARTICIPANT


async def test_the_old_unfiltered_dialplan_refuses_a_sip_user_part_with_a_comma(runner, phones, sandbox, make_room):
    room = await make_room(322, locked=True)  # an admin would pass the lock
    log = EventLog()
    await runner.start(configure=log)
    caller = await phones.call("322,admin", line="unfiltered", name="Mallory", number="667")
    await phones.wait_hung_up(caller)
    assert log.stasis_args(caller.channel_id) == ["322", "admin"]
    assert log.sounds(caller.channel_id) == ["sound:conf-invalid"]
    assert await db(participant)(caller.channel_id) is None
    refused = await db(events_of)(room, ConferenceEvent.Kind.REFUSED)
    assert [e["details"]["reason"] for e in refused] == ["invalid arguments"]


async def test_a_trusted_sip_device_is_an_admin_and_passes_the_lock(worker, phones, sandbox, make_room):
    room = await make_room(323, locked=True)
    chair = await phones.call(323, line="trusted", name="Chair", number="100")
    await wait_roster(sandbox, worker, room, {chair.channel_id})
    assert (await db(participant)(chair.channel_id)).role == Participant.Role.ADMIN


async def test_a_stranger_naming_the_trusted_endpoint_in_its_from_header_is_turned_away(
    runner, phones, sandbox, make_room
):
    """From an address no [identify] matches, From: <sip:trusted-phones@...> finds no endpoint (identify_by=ip)."""
    await make_room(324)
    log = EventLog()
    await runner.start(configure=log)
    stranger = await phones.call(324, line="stranger", name="Chair", number="trusted-phones", answer=False)
    cause = await phones.wait_hung_up(stranger)
    assert not phones.answered[stranger.id].is_set()
    assert not [e for e in log.events if (e.get("channel") or {}).get("protocol_id") == stranger.call_id]
    assert not await rest(sandbox_access(sandbox), "GET", "/channels")
    assert await db(lambda: Participant.objects.count())() == 0
    assert cause  # the phone was told why (the sandbox's 401/403)
    # The same From user from the ordinary line is just a participant: the address decides.
    ordinary = await phones.call(324, name="Chair", number="trusted-phones")
    await eventually(lambda: db(participant)(ordinary.channel_id), message="ordinary caller joined")
    assert (await db(participant)(ordinary.channel_id)).role == Participant.Role.PARTICIPANT
