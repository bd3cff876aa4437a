"""The event stream for programs (/ws/api/v1/events/): a bearer token, every visible room on one socket."""

import asyncio
import json
import time
from datetime import timedelta

import pytest
import websockets
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from django.utils import timezone

from conferences import api_stream, consumers, moderation, services, tokens
from conferences.models import ApiToken, AsteriskServer, ConferenceAccess, Participant
from conferencesite.asgi import application
from tests.sockets import closed_with, db, frame, send
from tests.stack import NonReadingClient, Processes, base_env, database_url, send_room_events

pytestmark = pytest.mark.django_db(transaction=True)

PATH = "/ws/api/v1/events/"


@pytest.fixture(autouse=True)
def fresh_layer():
    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture
def rooms(room, make_conference):
    """Two rooms on a connected server: ``sales`` (the shared fixture's) and ``support``."""
    support = make_conference("200", slug="support", name="Support")
    AsteriskServer.objects.filter(pk=support.server_id).update(connected=True)
    return room, support


@pytest.fixture
def owner(rooms, make_user, grant):
    """A user who may view both rooms and moderate ``sales``."""
    sales, support = rooms
    user = make_user("integrator")
    grant(sales, user=user, role=ConferenceAccess.Role.MODERATOR)
    grant(support, user=user)
    return user


@pytest.fixture
def make_token(owner):
    def make(*, user=None, conferences=(), **fields):
        _token, raw = tokens.create(user=user or owner, name="wallboard", conferences=conferences, **fields)
        return raw

    return make


@pytest.fixture
async def stream():
    communicators = []

    async def connect(raw=None, headers=()):
        headers = list(headers)
        if raw is not None:
            headers.append((b"authorization", f"Bearer {raw}".encode()))
        communicator = WebsocketCommunicator(application, PATH, headers=headers)
        communicators.append(communicator)
        connected, _ = await communicator.connect()
        assert connected  # refusals are close codes after the accept
        return communicator

    yield connect
    for communicator in communicators:
        if not communicator.future.done():
            await communicator.disconnect()


async def snapshots(communicator, count):
    """The first ``count`` frames, which must be snapshots: ``{room: snapshot}``."""
    got = {}
    for _ in range(count):
        snapshot = await frame(communicator)
        assert snapshot["type"] == "snapshot"
        got[snapshot["room"]] = snapshot
    return got


# --- refusals ---------------------------------------------------------------------


async def test_no_token_closes_4401(stream, rooms):
    communicator = await stream()
    assert await closed_with(communicator) == 4401


async def test_a_session_cookie_is_no_way_in(stream, owner, login):
    """A browser's cookie (and its Origin) without a token: 4401, so no page can ride a visitor's login."""
    session_key = await db(login)(owner)
    headers = [(b"cookie", f"sessionid={session_key}".encode()), (b"origin", b"http://127.0.0.1")]
    communicator = await stream(headers=headers)
    assert await closed_with(communicator) == 4401


def _revoke(raw):
    ApiToken.objects.update(revoked=True)
    return raw


def _expire(raw):
    ApiToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    return raw


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(_revoke, id="revoked"),
        pytest.param(_expire, id="expired"),
        pytest.param(lambda raw: raw[:-1] + ("A" if raw[-1] != "A" else "B"), id="unknown"),
        pytest.param(lambda raw: "not-a-token", id="malformed"),
        pytest.param(lambda raw: raw + "x" * 200, id="too-long"),
    ],
)
async def test_a_token_that_is_not_live_closes_4401(stream, make_token, spoil):
    raw = await db(make_token)()
    communicator = await stream(await db(spoil)(raw))
    assert await closed_with(communicator) == 4401


async def test_a_malformed_authorization_header_closes_4401(stream, make_token):
    raw = await db(make_token)()
    communicator = await stream(headers=[(b"authorization", f"Basic {raw}".encode())])
    assert await closed_with(communicator) == 4401


async def test_an_inactive_owner_closes_4401(stream, make_token, owner):
    raw = await db(make_token)()
    owner.is_active = False
    await db(owner.save)()
    communicator = await stream(raw)
    assert await closed_with(communicator) == 4401


async def test_a_token_that_sees_no_room_closes_4403(stream, rooms, make_user):
    raw = await db(lambda: tokens.create(user=make_user("nobody"), name="n")[1])()
    communicator = await stream(raw)
    assert await closed_with(communicator) == 4403


# --- snapshots and events ---------------------------------------------------------


async def test_no_origin_is_needed_and_every_visible_room_gets_a_named_snapshot(stream, make_token, rooms):
    raw = await db(make_token)(scope=ApiToken.Scope.MODERATE)
    communicator = await stream(raw)  # no Origin, no Host, no cookie: a program
    got = await snapshots(communicator, 2)
    assert set(got) == {"sales", "support"}
    assert got["sales"]["conference"]["slug"] == "sales" and got["support"]["conference"]["slug"] == "support"
    assert next(iter(got["sales"])) == "room"  # the room comes first: a program can route frames early
    assert got["sales"]["can_moderate"] is True  # a moderate token of a moderator
    assert got["support"]["can_moderate"] is False  # the owner only views there
    assert await communicator.receive_nothing(timeout=0.3)


async def test_a_read_only_token_of_a_moderator_does_not_moderate(stream, make_token, rooms):
    raw = await db(make_token)()  # scope read (the default)
    communicator = await stream(raw)
    got = await snapshots(communicator, 2)
    assert got["sales"]["can_moderate"] is False


async def test_a_token_limited_to_one_room_sees_only_that_room(stream, make_token, rooms, make_participant):
    sales, support = rooms
    await db(make_participant)(support, caller_name="Bob")
    raw = await db(make_token)(conferences=[sales])
    communicator = await stream(raw)
    (snapshot,) = (await snapshots(communicator, 1)).values()
    assert snapshot["room"] == "sales"
    # An event in the other room (the owner may see it) does not reach this token.
    await db(services.participant_join)(conference_id=support.pk, channel_id="chan-b", caller_name="Carol")
    assert await communicator.receive_nothing(timeout=0.5)


async def test_events_arrive_named_with_their_room_and_seq(stream, make_token, rooms):
    sales, _support = rooms
    raw = await db(make_token)()
    communicator = await stream(raw)
    got = await snapshots(communicator, 2)
    await db(services.participant_join)(conference_id=sales.pk, channel_id="chan-a", caller_name="Alice")
    joined = await frame(communicator)
    assert joined["type"] == "participant.joined" and joined["room"] == "sales"
    assert joined["participant"]["caller_name"] == "Alice"
    assert joined["seq"] == got["sales"]["seq"] + 1
    updated = await frame(communicator)
    assert updated["type"] == "conference.updated" and updated["room"] == "sales"
    assert updated["seq"] == joined["seq"] + 1 and updated["conference"]["participant_count"] == 1
    # The other room's seq is its own.
    assert got["support"]["seq"] == 0


async def test_the_asterisk_link_is_told_in_every_room_of_the_server(stream, make_token, rooms):
    sales, _support = rooms
    raw = await db(make_token)()
    communicator = await stream(raw)
    await snapshots(communicator, 2)
    await db(services.server_set_link_status)(server_id=sales.server_id, connected=False, error="refused")
    told = [await frame(communicator) for _ in range(2)]
    assert sorted(told, key=lambda f: f["room"]) == [
        {"room": "sales", "type": "asterisk.status", "connected": False},
        {"room": "support", "type": "asterisk.status", "connected": False},
    ]


async def test_resync_of_a_room_answers_with_its_snapshot_then_the_reply(stream, make_token, rooms, make_participant):
    sales, _support = rooms
    raw = await db(make_token)()
    communicator = await stream(raw)
    await snapshots(communicator, 2)
    await db(make_participant)(sales, caller_name="Dora")  # a row written past the services: only a read shows it
    snapshot = await send(communicator, {"action": "resync", "room": "sales", "request_id": 7})
    assert snapshot["type"] == "snapshot" and snapshot["room"] == "sales"
    assert [p["caller_name"] for p in snapshot["participants"]] == ["Dora"]
    assert await frame(communicator) == {"room": "sales", "type": "reply", "request_id": 7, "ok": True}


async def test_resync_of_a_room_the_token_may_not_see_reveals_nothing(stream, make_token, rooms):
    sales, _support = rooms
    raw = await db(make_token)(conferences=[sales])
    communicator = await stream(raw)
    await snapshots(communicator, 1)
    hidden = await send(communicator, {"action": "resync", "room": "support", "request_id": "a"})
    missing = await send(communicator, {"action": "resync", "room": "no-such", "request_id": "a"})
    assert {**hidden, "room": None} == {**missing, "room": None}
    assert hidden["ok"] is False and hidden["error"] == "no such room"
    assert (await send(communicator, {"action": "resync", "request_id": "b"}))["error"] == "room missing or invalid"
    assert await communicator.receive_nothing(timeout=0.3)  # no snapshot of either


async def test_actions_are_refused_with_a_pointer_to_the_rest_api(stream, make_token, rooms, make_participant):
    sales, _support = rooms
    alice = await db(make_participant)(sales)
    raw = await db(make_token)(scope=ApiToken.Scope.MODERATE)
    communicator = await stream(raw)
    await snapshots(communicator, 2)
    for action in ("mute", "kick", "lock", "admit_all", "invite", "record_start"):
        assert action in moderation.ACTIONS
        reply = await send(communicator, {"action": action, "request_id": action, "participant": alice.pk})
        assert reply["ok"] is False and reply["error"] == api_stream.ACTIONS_NOT_HERE
    reply = await send(communicator, {"action": "dance", "request_id": "d"})
    assert reply["error"] == "unknown action"
    error = await send(communicator, "not json")
    assert (error["type"], error["error"]) == ("error", "not JSON")


# --- rights re-checked ------------------------------------------------------------


@pytest.fixture
def short_check(monkeypatch):
    monkeypatch.setattr(consumers, "SESSION_CHECK_SECONDS", 0.2)


async def test_a_revoked_tokens_open_stream_closes_at_the_next_check(stream, make_token, rooms, short_check):
    raw = await db(make_token)()
    communicator = await stream(raw)
    await snapshots(communicator, 2)
    await db(ApiToken.objects.update)(revoked=True)  # no signal: the periodic check finds it
    assert await closed_with(communicator) == 4401


async def test_a_token_revoked_or_narrowed_by_a_save_is_heard_at_once(stream, make_token, rooms):
    """The user's page and the admin save the token: its streams re-check then, not 30 s later (signals.py)."""
    sales, _support = rooms
    raw = await db(make_token)()
    communicator = await stream(raw)
    await snapshots(communicator, 2)
    token = await db(ApiToken.objects.get)()
    await db(token.conferences.set)([sales])
    token.every_room = False
    await db(token.save)(update_fields=["every_room"])  # narrowed to the one room listed
    assert await frame(communicator, timeout=3) == {"type": "room.removed", "room": "support"}
    token.revoked = True
    await db(token.save)(update_fields=["revoked"])
    assert await closed_with(communicator) == 4401


async def test_a_tokens_streams_have_a_cap_of_their_own_and_never_take_the_owners_pages(
    stream, make_token, rooms, owner, connect, settings
):
    """A leaked read token opening streams in a loop is refused at the cap; its owner's pages still open."""
    settings.MAX_SOCKETS_PER_USER = 2
    raw = await db(make_token)()
    for _ in range(2):
        await snapshots(await stream(raw), 2)
    assert await closed_with(await stream(raw)) == consumers.CLOSE_TOO_MANY_SOCKETS
    for _ in range(2):  # the owner's own two places are untouched
        page, connected = await connect(owner)
        assert connected and (await frame(page))["type"] == "snapshot"
    page, _connected = await connect(owner)
    assert await closed_with(page) == consumers.CLOSE_TOO_MANY_SOCKETS  # and the owner's cap still holds


async def test_a_grant_removed_drops_the_room_and_one_added_brings_its_snapshot(
    stream, make_token, rooms, owner, make_conference, grant, short_check
):
    raw = await db(make_token)()
    communicator = await stream(raw)
    await snapshots(communicator, 2)
    await db(ConferenceAccess.objects.filter(user=owner, conference__slug="support").delete)()
    assert await frame(communicator) == {"type": "room.removed", "room": "support"}
    training = await db(make_conference)("300", slug="training", name="Training")
    await db(grant)(training, user=owner)
    snapshot = await frame(communicator)
    assert (snapshot["type"], snapshot["room"]) == ("snapshot", "training")
    # The dropped room's events no longer come; the new room's do.
    sales, support = rooms
    await db(services.participant_join)(conference_id=support.pk, channel_id="chan-s")
    await db(services.participant_join)(conference_id=training.pk, channel_id="chan-t")
    joined = await frame(communicator)
    assert (joined["type"], joined["room"], joined["seq"]) == ("participant.joined", "training", snapshot["seq"] + 1)


async def test_a_role_given_in_the_admin_sends_the_room_a_fresh_snapshot(stream, make_token, rooms, owner):
    raw = await db(make_token)(scope=ApiToken.Scope.MODERATE)
    communicator = await stream(raw)
    got = await snapshots(communicator, 2)
    assert got["support"]["can_moderate"] is False
    # The admin's save sends the grant signal: no waiting for the periodic check.
    await db(ConferenceAccess.objects.filter(user=owner, conference__slug="support").update)(role="moderator")
    await db(lambda: ConferenceAccess.objects.get(user=owner, conference__slug="support").save())()
    snapshot = await frame(communicator)
    assert (snapshot["type"], snapshot["room"], snapshot["can_moderate"]) == ("snapshot", "support", True)


async def test_losing_every_room_closes_4403(stream, make_token, rooms, owner, short_check):
    raw = await db(make_token)()
    communicator = await stream(raw)
    await snapshots(communicator, 2)
    await db(ConferenceAccess.objects.filter(user=owner).delete)()
    assert await closed_with(communicator) == 4403


# --- the page routes keep their guard ---------------------------------------------


async def test_the_page_sockets_still_refuse_a_foreign_origin(owner):
    communicator = WebsocketCommunicator(
        application, "/ws/conferences/sales/", headers=[(b"origin", b"https://evil.example"), (b"host", b"127.0.0.1")]
    )
    connected, _ = await communicator.connect()
    assert not connected


# --- over a real socket -----------------------------------------------------------


@pytest.mark.integration
async def test_a_program_streams_from_the_real_server_with_a_bearer_token(tmp_path, redis_url, redis_layer, make_token):
    raw = await db(make_token)()
    sales = await db(lambda: ConferenceAccess.objects.get(conference__slug="sales").conference)()
    stack = Processes(base_env(database_url(), redis_url), "pbx", tmp_path)
    try:
        stack.start_web()
        await stack.web_up()
        url = f"ws://127.0.0.1:{stack.port}{PATH}"
        async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {raw}"}) as ws:
            got = {}
            for _ in range(2):
                snapshot = json.loads(await asyncio.wait_for(ws.recv(), 10))
                got[snapshot["room"]] = snapshot
            assert set(got) == {"sales", "support"}
            # A join committed here reaches the web process through Redis, as the worker's would.
            await db(services.participant_join)(conference_id=sales.pk, channel_id="chan-live", caller_name="Eve")
            joined = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert (joined["type"], joined["room"]) == ("participant.joined", "sales")
            assert joined["seq"] == got["sales"]["seq"] + 1
        async with websockets.connect(url) as ws:  # no token
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            assert ws.close_code == 4401
        log = "".join(path.read_text() for path in tmp_path.glob("web-*.log"))
        assert raw not in log and raw[4:] not in log
    finally:
        stack.close()


@pytest.mark.integration
async def test_a_program_that_does_not_read_is_dropped_and_holds_nobody_up(
    tmp_path, redis_url, redis_layer, make_token, rooms
):
    """Streams that stopped reading (resync after resync of a big room) are closed; a reading one keeps up."""
    sales, _support = rooms
    now = timezone.now()
    await db(Participant.objects.bulk_create)(
        [
            Participant(
                conference=sales,
                server_id=sales.server_id,
                channel_id=f"big-{i}",
                caller_number=f"7{i:05d}",
                caller_name=f"Caller number {i} of a big room",
                joined_at=now,
            )
            for i in range(300)
        ]
    )
    raw = await db(make_token)(conferences=[sales])
    stack = Processes(base_env(database_url(), redis_url), "pbx", tmp_path)
    greedy = []
    try:
        stack.start_web()
        await stack.web_up()
        url = f"ws://127.0.0.1:{stack.port}{PATH}"
        async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {raw}"}, max_size=None) as ws:
            seq = json.loads(await asyncio.wait_for(ws.recv(), 10))["seq"]
            greedy = [NonReadingClient(stack.port, PATH, None, authorization=f"Bearer {raw}") for _ in range(3)]
            for client in greedy:
                await client.connect()
            started, events = time.monotonic(), None
            delivered_while_stuck = None
            while time.monotonic() - started < 90 and any(c.dropped_after is None for c in greedy):
                for client in greedy:
                    await client.send('{"action": "resync", "room": "sales", "request_id": "r"}')
                if events is None and time.monotonic() - started > 2.5:
                    sent_at = time.monotonic()
                    await send_room_events(redis_url, sales.pk, seq + 1, 20)
                    for expected in range(seq + 1, seq + 21):
                        event = json.loads(await asyncio.wait_for(ws.recv(), 5))
                        assert (event["room"], event["seq"]) == ("sales", expected)
                    events = time.monotonic() - sent_at
                    delivered_while_stuck = sum(c.dropped_after is None for c in greedy)
                await asyncio.sleep(0.1)
            assert all(c.dropped_after is not None for c in greedy), [c.dropped_after for c in greedy]
            assert events is not None and events < 20 * 0.01 + 1.0, events
            assert delivered_while_stuck > 0  # the reading stream kept up while greedy ones were still open
        log = "".join(path.read_text() for path in tmp_path.glob("web-*.log"))
        assert "does not read (limit 1048576); closing it" in log
    finally:
        for client in greedy:
            client.close()
        stack.close()
