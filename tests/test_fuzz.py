"""Property-based fuzzing: hostile browser frames and hostile ARI events never crash anything.

Browser frames go through the real consumer stack; ARI events through the
worker's handlers against a fake REST side. Afterwards the database's own
invariants still hold.
"""

import json

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conferences.ari.handlers import ConferenceApp
from conferences.ari.rules import role_from_channelvars
from conferences.models import Conference, ConferenceAccess, Participant
from conferencesite.asgi import application
from tests.recorded import FakeAri

pytestmark = pytest.mark.django_db(transaction=True)

db = sync_to_async
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))

hostile_text = st.one_of(
    st.text(max_size=60),
    st.sampled_from(
        [
            "<script>alert(1)</script>",
            "'; DROP TABLE conferences_participant; --",
            "=cmd|' /C calc'!A0",
            "\u202e\u0000\ud7ff",
            "../../etc/passwd",
            "1" * 300,
            "１２３",
        ]
    ),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | hostile_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(hostile_text, children, max_size=4),
    max_leaves=12,
)
actions = st.sampled_from(["mute", "unmute", "kick", "mute_all", "unmute_all", "lock", "unlock", "resync", "x", ""])
frames = st.one_of(
    st.fixed_dictionaries(
        {"action": st.one_of(actions, json_values), "request_id": json_values},
        optional={"participant": json_values, "extra": json_values},
    ).map(json.dumps),
    json_values.map(json.dumps),
    st.text(min_size=1, max_size=200),  # (the test communicator cannot send an empty frame)
    # Deep nesting (RecursionError in json.loads), lone surrogates, numbers out of range.
    st.integers(min_value=5, max_value=3000).map(lambda n: "[" * n + "]" * n),
    st.integers(min_value=5, max_value=1500).map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.sampled_from(["\\ud800", "\\udfff", "a\\udc00b"]).map(
        lambda s: '{"action": "mute", "request_id": "' + s + '", "participant": 1}'
    ),
    st.integers(min_value=2**63, max_value=10**400).map(
        lambda n: '{"action": "kick", "request_id": "k", "participant": ' + str(n) + "}"
    ),
    st.sampled_from(["1e400", "-1e400", "NaN", "Infinity"]).map(
        lambda n: '{"action": "kick", "request_id": "k", "participant": ' + n + "}"
    ),
)


def check_invariants():
    for participant in Participant.objects.all():
        assert (participant.left_at is None) == (participant.left_reason == "")
        assert participant.server_id == participant.conference.server_id


@FUZZ
@given(payloads=st.lists(frames, min_size=1, max_size=8))
def test_browser_frames_never_crash_the_consumer(payloads, conference, make_user, grant, client):
    user = make_user()
    grant(conference, user=user, role=ConferenceAccess.Role.MODERATOR)
    client.force_login(user)
    key = client.cookies["sessionid"].value
    channel_layers.backends.clear()

    async def run():
        communicator = WebsocketCommunicator(
            application,
            "/ws/conferences/sales/",
            headers=[(b"origin", b"http://127.0.0.1"), (b"cookie", f"sessionid={key}".encode())],
        )
        connected, _ = await communicator.connect()
        assert connected
        assert json.loads(await communicator.receive_from())["type"] == "snapshot"
        for payload in payloads:
            await communicator.send_to(text_data=payload)
            answer = json.loads(await communicator.receive_from(timeout=3))
            assert answer["type"] in ("error", "reply", "snapshot")
            if answer["type"] == "snapshot":  # resync: its reply follows
                assert json.loads(await communicator.receive_from())["type"] == "reply"
        # Still usable afterwards.
        await communicator.send_to(text_data=json.dumps({"action": "resync", "request_id": "end"}))
        assert json.loads(await communicator.receive_from())["type"] == "snapshot"
        await communicator.disconnect()

    async_to_sync(run)()
    check_invariants()


channel_ids = st.sampled_from(["p1", "p2", "p3", "<script>", "", "x" * 200])
channel = st.fixed_dictionaries(
    {"id": channel_ids},
    optional={
        "name": st.one_of(hostile_text, st.just("Announcer/ARI_MOH-1;1")),
        "state": st.sampled_from(["Up", "Ring", "Down", ""]),
        "caller": st.fixed_dictionaries({"name": hostile_text, "number": hostile_text}),
        "dialplan": st.fixed_dictionaries({"app_name": hostile_text, "app_data": hostile_text}),
        "channelvars": st.one_of(
            st.fixed_dictionaries(
                {"CONFERENCE_ROLE": st.one_of(st.sampled_from(["admin", "", "participant"]), hostile_text)}
            ),
            json_values,
        ),
    },
)
ari_events = st.one_of(
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(
                [
                    "StasisStart",
                    "StasisEnd",
                    "ChannelEnteredBridge",
                    "ChannelLeftBridge",
                    "ChannelTalkingStarted",
                    "ChannelTalkingFinished",
                    "ChannelDtmfReceived",
                    "PlaybackFinished",
                    "ChannelDestroyed",
                    "BridgeDestroyed",
                    "_PinTimeout",
                    "_PinPauseOver",
                    "_HangupTimeout",
                ]
            ),
            "application": st.sampled_from(["conference", "other"]),
        },
        optional={
            "channel": channel,
            "args": st.one_of(
                st.lists(st.one_of(hostile_text, st.sampled_from(["100", "admin", "101", ""])), max_size=3),
                json_values,
            ),
            "bridge": st.fixed_dictionaries(
                {
                    "id": st.one_of(hostile_text, st.just("conference-conference-{room}")),
                    "channels": st.lists(channel_ids, max_size=4),
                }
            ),
            "digit": st.sampled_from(["1", "2", "#", "*", "", "x"]),
            "playback": st.fixed_dictionaries({"id": hostile_text}),
            "channel_id": channel_ids,
            "attempt": st.integers(),
            "digits": st.integers(),
        },
    ),
    st.dictionaries(hostile_text, json_values, max_size=5),
)


@FUZZ
@given(events=st.lists(ari_events, min_size=1, max_size=15))
def test_hostile_ari_events_never_crash_the_handlers(events, server):
    room, _ = Conference.objects.get_or_create(server=server, number="100", defaults={"slug": "f100", "name": "F"})
    Conference.objects.get_or_create(
        server=server, number="101", defaults={"slug": "f101", "name": "G", "pin": "42", "locked": True}
    )
    ari = FakeAri()
    app = ConferenceApp(server_id=server.pk, app_name="conference", ari=ari, schedule=lambda delay, event: None)
    text = json.dumps(events).replace("{room}", str(room.pk))

    async def run():
        for event in json.loads(text):
            await app.process_event(event)  # must not raise

    async_to_sync(run)()
    check_invariants()
    # Nothing but a channel's own CONFERENCE_ROLE=admin makes an admin (not the arguments).
    said_admin = {
        event["channel"]["id"]
        for event in json.loads(text)
        if isinstance(event.get("channel"), dict) and role_from_channelvars(event["channel"]) == Participant.Role.ADMIN
    }
    for participant in Participant.objects.all():
        assert len(participant.caller_name) <= 80 and len(participant.caller_number) <= 80
        assert participant.channel_id  # never an empty channel id
        assert participant.role == Participant.Role.PARTICIPANT or participant.channel_id in said_admin
