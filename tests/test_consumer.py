"""The room WebSocket: every protocol rule and refusal, driven with Channels' WebsocketCommunicator."""

import asyncio
import contextlib
import json

import pytest
from asgiref.sync import sync_to_async
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from django.db.models import F

from conferences import broadcast, consumers, fanout, moderation, protocol, services
from conferences.models import AsteriskServer, Conference, ConferenceAccess, Participant
from conferencesite.asgi import application
from tests.sockets import closed_with, error_frame, frame, list_socket, refused, send

pytestmark = pytest.mark.django_db(transaction=True)

db = sync_to_async


@pytest.fixture(autouse=True)
def fresh_layer():
    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


# --- refusals ---------------------------------------------------------------------


async def test_anonymous_is_accepted_then_closed_4401(connect, room):
    communicator, connected = await connect(None)
    assert connected
    assert await closed_with(communicator) == 4401


async def test_unknown_room_closes_4404(connect, viewer):
    communicator, _ = await connect(viewer, slug="nope")
    assert await closed_with(communicator) == 4404


async def test_no_access_closes_4403(connect, room, make_user):
    communicator, _ = await connect(await db(make_user)("stranger"))
    assert await closed_with(communicator) == 4403


async def test_inactive_user_closes(connect, viewer):
    viewer.is_active = False
    await db(viewer.save)()
    communicator, _ = await connect(viewer)
    assert await closed_with(communicator) in (4401, 4403)


async def test_foreign_origin_is_refused_at_the_handshake(connect, viewer):
    _communicator, connected = await connect(viewer, origin="https://evil.example")
    assert not connected


# --- snapshot and events ----------------------------------------------------------


async def test_viewer_gets_a_snapshot_without_channel_ids(connect, viewer, room, make_participant):
    await db(make_participant)(room, "chan-secret-1", caller_name="<b>Alice</b>", caller_number="201")
    communicator, _ = await connect(viewer)
    snapshot = await frame(communicator)
    assert snapshot["type"] == "snapshot"
    assert snapshot["can_moderate"] is False
    assert snapshot["asterisk"] == {"connected": True}
    assert snapshot["conference"] == {
        "slug": "sales",
        "name": "Sales",
        "number": "100",
        "locked": False,
        "lobby": False,
        "wait_for_leader": False,
        "when_leader_leaves": "stay",
        "recording": False,
        "record_mode": "on_demand",
        "participant_count": 1,
        "waiting_count": 0,
    }
    assert [p["caller_name"] for p in snapshot["participants"]] == ["<b>Alice</b>"]
    assert "chan-secret-1" not in json.dumps(snapshot)


async def test_room_events_carry_seq_and_old_ones_are_not_repeated(connect, viewer, room, make_participant):
    alice = await db(make_participant)(room, "chan-a")
    communicator, _ = await connect(viewer)
    snapshot = await frame(communicator)
    await db(services.participant_update)(participant_id=alice.pk, talking=True)
    event = await frame(communicator)
    assert event["type"] == "participant.updated" and event["participant"]["talking"] is True
    assert event["seq"] == snapshot["seq"] + 1
    # A stale frame (seq already in the snapshot) is not forwarded.

    await db(broadcast.send_to_room)(room.pk, {"type": "participant.updated", "seq": 1, "participant": {}})
    assert await communicator.receive_nothing(timeout=0.3)


async def test_asterisk_status_reaches_the_room(connect, viewer, room):
    communicator, _ = await connect(viewer)
    await frame(communicator)
    server = await db(AsteriskServer.objects.get)(pk=room.server_id)
    await db(services.server_set_link_status)(server_id=server.pk, connected=False, error="connection refused")
    assert await frame(communicator) == {"type": "asterisk.status", "connected": False}


async def test_resync_answers_with_a_snapshot_then_the_reply(connect, viewer):
    communicator, _ = await connect(viewer)
    await frame(communicator)
    snapshot = await send(communicator, {"action": "resync", "request_id": "r1"})
    assert snapshot["type"] == "snapshot"
    assert await frame(communicator) == {"type": "reply", "request_id": "r1", "ok": True}


# --- actions ----------------------------------------------------------------------


async def test_viewer_actions_are_refused(connect, viewer, room, make_participant):
    alice = await db(make_participant)(room)
    communicator, _ = await connect(viewer)
    await frame(communicator)
    for action in moderation.ACTIONS:
        reply = await send(communicator, {"action": action, "request_id": action, "participant": alice.pk})
        assert reply == refused(action, "you may not moderate this room")


async def test_a_russian_page_gets_every_error_in_russian_beside_the_protocol_text(connect, viewer, room):
    communicator, _ = await connect(viewer, extra_headers=[(b"accept-language", b"ru-RU,ru;q=0.9")])
    await frame(communicator)
    reply = await send(communicator, {"action": "lock", "request_id": "l"})
    assert reply["error"] == "you may not moderate this room"  # the protocol's text, for programs
    assert reply["error_text"] == "вы не можете управлять этой комнатой"
    error = await send(communicator, "not json")
    assert (error["type"], error["error"], error["error_text"]) == ("error", "not JSON", "это не JSON")


async def test_participant_of_another_room_is_refused(connect, moderator, room, make_conference, make_participant):
    other = await db(make_participant)(await db(make_conference)("200"))
    gone = await db(make_participant)(room, left_at=None)
    await db(services.participant_leave)(participant_id=gone.pk, reason="hangup")
    communicator, _ = await connect(moderator)
    await frame(communicator)
    for target in (other.pk, gone.pk, 999999):
        reply = await send(communicator, {"action": "kick", "request_id": 1, "participant": target})
        assert reply == refused(1, "no such participant in this room")
    reply = await send(communicator, {"action": "mute", "request_id": 2, "participant": "1"})
    assert reply["error"] == "participant missing or invalid"


class FakeWorker:
    """Answers moderation requests on the worker's channel like the real worker does."""

    def __init__(self, server_id, ok=True, error=None):
        self.channel = moderation.worker_channel(server_id)
        self.ok, self.error = ok, error
        self.requests = []

    async def run(self):
        layer = channel_layers["default"]
        while True:
            request = await layer.receive(self.channel)
            self.requests.append(request)
            reply = {"type": moderation.REPLY_TYPE, "request_id": request["request_id"], "ok": self.ok}
            if not self.ok:
                reply["error"] = self.error
            await layer.send(request["reply_channel"], reply)


@contextlib.asynccontextmanager
async def moderator_page(connect, moderator, room):
    """A moderator's page past its snapshot, and a FakeWorker answering its requests: ``(communicator, worker)``."""
    worker = FakeWorker(room.server_id)
    task = asyncio.create_task(worker.run())
    try:
        communicator, _ = await connect(moderator)
        await frame(communicator)
        yield communicator, worker
    finally:
        task.cancel()


async def test_moderator_action_goes_to_the_worker_and_the_reply_comes_back(connect, moderator, room, make_participant):
    alice = await db(make_participant)(room)
    worker = FakeWorker(room.server_id)
    task = asyncio.create_task(worker.run())
    try:
        communicator, _ = await connect(moderator)
        snapshot = await frame(communicator)
        assert snapshot["can_moderate"] is True
        reply = await send(communicator, {"action": "mute", "request_id": 42, "participant": alice.pk})
        assert reply == {"type": "reply", "request_id": 42, "ok": True}
        [request] = worker.requests
        assert (request["action"], request["participant_id"], request["actor_id"]) == ("mute", alice.pk, moderator.pk)
        assert request["conference_id"] == room.pk
        reply = await send(communicator, {"action": "lock", "request_id": "x", "participant": alice.pk})
        assert reply["ok"] and worker.requests[-1]["participant_id"] is None
        worker.ok, worker.error = False, "the caller has already left"
        reply = await send(communicator, {"action": "kick", "request_id": "k", "participant": alice.pk})
        assert reply == refused("k", "the caller has already left")
    finally:
        task.cancel()


async def test_a_reply_does_not_wait_for_the_next_clicks_checks_and_clicks_reach_the_worker_in_order(
    connect, moderator, room, monkeypatch
):
    """Two clicks in a row: the first's check is slow, the second's fast, yet the worker gets them in the
    order they were clicked; then the first's reply reaches the page while the next click's check still runs
    (Channels dispatches a consumer's messages one at a time: a check awaited there held the reply back)."""
    checked = consumers._moderation_check
    release = {"lock": asyncio.Event(), "unlock": asyncio.Event()}
    loop = asyncio.get_running_loop()

    def held_check(session_key, user_id, conference_id, action, participant_id):
        gate = release.get(action)
        if gate is not None:
            asyncio.run_coroutine_threadsafe(gate.wait(), loop).result(timeout=10)
        return checked(session_key, user_id, conference_id, action, participant_id)

    monkeypatch.setattr(consumers, "_moderation_check", held_check)
    try:
        async with moderator_page(connect, moderator, room) as (communicator, worker):
            await communicator.send_json_to({"action": "lock", "request_id": "first"})
            await communicator.send_json_to({"action": "unlock", "request_id": "second"})
            release["unlock"].set()  # the second click's check is done first ...
            await asyncio.sleep(0.3)
            assert worker.requests == []  # ... but it waits for the first click
            release["lock"].set()
            assert await frame(communicator) == {"type": "reply", "request_id": "first", "ok": True}
            assert await frame(communicator) == {"type": "reply", "request_id": "second", "ok": True}
            assert [request["action"] for request in worker.requests] == ["lock", "unlock"]

            release["lock"].clear()
            await communicator.send_json_to({"action": "unlock", "request_id": "third"})  # its check is quick
            await communicator.send_json_to({"action": "lock", "request_id": "fourth"})  # held
            assert await frame(communicator, timeout=5) == {"type": "reply", "request_id": "third", "ok": True}
            assert [request["action"] for request in worker.requests] == ["lock", "unlock", "unlock"]
            release["lock"].set()
            assert await frame(communicator) == {"type": "reply", "request_id": "fourth", "ok": True}
    finally:
        for gate in release.values():
            gate.set()


async def test_a_burst_of_clicks_starts_only_a_few_checks_ahead_and_all_are_answered_in_order(
    connect, moderator, room, monkeypatch
):
    """A hostile or stuck page sends the rate limit's whole burst at once: only PREPARED_AHEAD of its checks
    start before their turn (the web process's database threads serve every socket), and every click is still
    answered and reaches the worker in the order sent."""
    checked = consumers._moderation_check
    gate = asyncio.Event()
    loop = asyncio.get_running_loop()
    running, most = [0], [0]

    def held_check(*args):
        running[0] += 1
        most[0] = max(most[0], running[0])
        try:
            asyncio.run_coroutine_threadsafe(gate.wait(), loop).result(timeout=10)
            return checked(*args)
        finally:
            running[0] -= 1

    monkeypatch.setattr(consumers, "_moderation_check", held_check)
    try:
        async with moderator_page(connect, moderator, room) as (communicator, worker):
            for n in range(10):
                await communicator.send_json_to({"action": "lock" if n % 2 else "unlock", "request_id": n})
            await asyncio.sleep(0.3)
            assert running[0] == consumers.PREPARED_AHEAD and worker.requests == []
            gate.set()
            replies = [await frame(communicator, timeout=5) for _ in range(10)]
            assert [reply["request_id"] for reply in replies] == list(range(10))
            assert all(reply["ok"] for reply in replies)
            assert [request["request_id"] for request in worker.requests] == [str(n) for n in range(10)]
            assert most[0] <= consumers.PREPARED_AHEAD + 1
    finally:
        gate.set()


async def test_no_worker_answer_gives_a_clear_reply(connect, moderator, room, monkeypatch):
    monkeypatch.setattr(consumers, "REPLY_TIMEOUT", 0.3)
    communicator, _ = await connect(moderator)
    await frame(communicator)
    reply = await send(communicator, {"action": "lock", "request_id": "slow"})
    assert reply == refused("slow", moderation.WORKER_DOWN)


async def test_link_down_is_refused_before_asking(connect, moderator, room):
    await db(AsteriskServer.objects.filter(pk=room.server_id).update)(connected=False)
    communicator, _ = await connect(moderator)
    await frame(communicator)
    reply = await send(communicator, {"action": "unlock", "request_id": "u"})
    assert reply["error"] == "the link to Asterisk is down"


async def test_permission_is_checked_on_every_action(connect, moderator, room):
    communicator, _ = await connect(moderator)
    await frame(communicator)
    # The role is lowered while the socket is open: the room's sockets get a fresh snapshot.
    await db(ConferenceAccess.objects.filter(user=moderator).update)(role="viewer")
    reply = await send(communicator, {"action": "lock", "request_id": "l"})
    assert reply["error"] == "you may not moderate this room"


# --- bad input ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload,error",
    [
        ("not json", "not JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('"text"', "expected a JSON object"),
        ('{"action": "mute"}', "request_id missing or invalid"),
        ('{"action": "mute", "request_id": true}', "request_id missing or invalid"),
        ('{"action": "mute", "request_id": {"a": 1}}', "request_id missing or invalid"),
        (json.dumps({"action": "mute", "request_id": "x" * 65}), "request_id missing or invalid"),
        (json.dumps({"action": "resync", "request_id": "x", "pad": "y" * 5000}), "message too large"),
    ],
)
async def test_garbage_gets_an_error_and_the_socket_stays_usable(connect, moderator, payload, error):
    communicator, _ = await connect(moderator)
    await frame(communicator)
    assert await send(communicator, payload) == error_frame(error)
    assert (await send(communicator, {"action": "resync", "request_id": "after"}))["type"] == "snapshot"


async def test_unknown_action_gets_a_not_ok_reply(connect, moderator):
    communicator, _ = await connect(moderator)
    await frame(communicator)
    reply = await send(communicator, {"action": "hangup_everyone", "request_id": "h"})
    assert reply == refused("h", "unknown action")


async def test_binary_frames_are_refused(connect, moderator):
    communicator, _ = await connect(moderator)
    await frame(communicator)
    await communicator.send_to(bytes_data=b"\x00\x01")
    assert await frame(communicator) == error_frame("send JSON text frames")


async def test_a_flood_is_rate_limited_and_nothing_changes(connect, moderator, room):
    communicator, _ = await connect(moderator)
    await frame(communicator)
    for i in range(60):
        await communicator.send_to(text_data=json.dumps({"action": "lock", "request_id": f"f{i}"}))
    frames = []
    while True:
        try:
            frames.append(await frame(communicator, timeout=1))
        except TimeoutError:
            break
    limited = [f for f in frames if f.get("error") == "too many messages; slow down"]
    assert len(limited) >= 30
    assert not (await db(type(room).objects.get)(pk=room.pk)).locked


# --- grants and sessions change under an open socket ---------------------------------------


async def test_access_removed_in_the_admin_closes_the_socket(connect, viewer, room):
    communicator, _ = await connect(viewer)
    await frame(communicator)
    await db(ConferenceAccess.objects.filter(user=viewer).delete)()
    assert await closed_with(communicator) == 4403


async def test_role_change_sends_a_fresh_snapshot(connect, moderator, room):
    communicator, _ = await connect(moderator)
    assert (await frame(communicator))["can_moderate"] is True
    access_row = await db(ConferenceAccess.objects.get)(user=moderator)
    access_row.role = "viewer"
    await db(access_row.save)()
    snapshot = await frame(communicator)
    assert snapshot["type"] == "snapshot" and snapshot["can_moderate"] is False


async def test_removal_from_a_group_closes_the_socket(connect, room, make_user, grant, group):
    member = await db(make_user)("member", groups=[group])
    await db(grant)(room, group=group)
    communicator, _ = await connect(member)
    await frame(communicator)
    await db(member.groups.remove)(group)
    assert await closed_with(communicator) == 4403


async def test_deactivated_user_is_disconnected(connect, viewer):
    communicator, _ = await connect(viewer)
    await frame(communicator)
    viewer.is_active = False
    await db(viewer.save)()
    # An inactive account's session no longer logs anybody in (as for Django's requests).
    assert await closed_with(communicator) == 4401


async def test_logout_closes_that_sessions_sockets(connect, viewer, client):
    communicator, _ = await connect(viewer)
    await frame(communicator)
    await db(client.post)("/accounts/logout/")
    assert await closed_with(communicator) == 4401


async def test_present_participants_only_in_snapshot(connect, viewer, room, make_participant):
    await db(make_participant)(room, "here")
    gone = await db(make_participant)(room, "gone")
    await db(services.participant_leave)(participant_id=gone.pk, reason=Participant.LeftReason.HANGUP)
    communicator, _ = await connect(viewer)
    snapshot = await frame(communicator)
    assert len(snapshot["participants"]) == 1 and snapshot["conference"]["participant_count"] == 1


async def test_no_message_takes_a_thread_hop(connect, viewer, room, monkeypatch):
    """Sockets skip Channels' per-message close_old_connections (a thread-sensitive hop per message)."""
    import channels.consumer

    hops = []
    real = channels.consumer.aclose_old_connections

    async def counting():
        hops.append(1)
        await real()

    monkeypatch.setattr(channels.consumer, "aclose_old_connections", counting)
    communicator, _ = await connect(viewer)
    snapshot = await frame(communicator)
    before = len(hops)
    from conferences import broadcast

    for n in range(1, 4):
        await db(broadcast.send_to_room)(room.pk, {"type": "participant.updated", "seq": snapshot["seq"] + n})
        assert (await frame(communicator))["seq"] == snapshot["seq"] + n
    assert len(hops) == before
    # Nor do the handshake and the browser's frames: the socket's database hops have threads of their own.
    await send(communicator, {"action": "resync", "request_id": "r1"})
    await communicator.disconnect()
    assert len(hops) == before == 0


async def test_events_that_arrive_while_the_snapshot_is_built_follow_it(connect, viewer, room, monkeypatch):
    """An event broadcast while the snapshot is read waits and is sent after it, never before."""
    from conferences import broadcast

    real = consumers._snapshot

    def slow_snapshot(conference_id):
        snapshot = real(conference_id)
        # Committed just after the snapshot's read: the hub hands it over while the socket still waits.
        broadcast.send_to_room(conference_id, {"type": "participant.updated", "seq": snapshot["seq"] + 1})
        import time

        time.sleep(0.3)
        return snapshot

    monkeypatch.setattr(consumers, "_snapshot", slow_snapshot)
    communicator, _ = await connect(viewer)
    first, second = await frame(communicator), await frame(communicator)
    assert first["type"] == "snapshot"
    assert second == {"type": "participant.updated", "seq": first["seq"] + 1}


async def test_one_group_membership_per_process_and_room(connect, viewer, room, make_user, grant):
    """The room's group holds the process's hub, not every socket; it is left with the last socket."""
    from conferences import broadcast

    other = await db(make_user)("other-viewer")
    await db(grant)(room, user=other)
    layer = channel_layers["default"]
    first, _ = await connect(viewer)
    second, _ = await connect(other)
    await frame(first), await frame(second)
    group = broadcast.room_group(room.pk)
    assert len(layer.groups[group]) == 1
    await db(broadcast.send_to_room)(room.pk, {"type": "participant.updated", "seq": 10**6})
    assert (await frame(first))["seq"] == 10**6 and (await frame(second))["seq"] == 10**6
    await first.disconnect()
    assert len(layer.groups[group]) == 1
    await second.disconnect()
    assert not layer.groups.get(group)


async def test_the_hub_renews_its_group_membership_before_the_layer_forgets_it(connect, viewer, room, monkeypatch):
    """A room watched for longer than the layer's group expiry (a day: wall displays) keeps getting events."""
    from conferences import broadcast, fanout

    monkeypatch.setattr(fanout, "REFRESH_SECONDS", 0.2)
    layer = channel_layers["default"]
    sweeps = []  # the Redis layer's sweep of messages left for closed sockets runs on the same round
    monkeypatch.setattr(layer, "sweep", lambda: sweeps.append(True), raising=False)
    communicator, _ = await connect(viewer)
    snapshot = await frame(communicator)
    group = broadcast.room_group(room.pk)
    hub_channel = fanout.hub_for(layer).channel
    first_added = layer.groups[group][hub_channel]
    await asyncio.sleep(0.6)
    assert layer.groups[group][hub_channel] > first_added
    assert sweeps
    await db(broadcast.send_to_room)(room.pk, {"type": "participant.updated", "seq": snapshot["seq"] + 1})
    assert (await frame(communicator))["seq"] == snapshot["seq"] + 1


async def test_a_failing_hub_closes_its_sockets_so_pages_reconnect(connect, viewer, room, monkeypatch):
    """When the hub's receive fails (Redis gone), its sockets close with 4011 instead of going quiet."""
    from conferences import broadcast, fanout

    communicator, _ = await connect(viewer)
    snapshot = await frame(communicator)
    layer = channel_layers["default"]
    hub = fanout.hub_for(layer)
    real = type(layer).receive

    async def failing(self, channel):
        message = await real(self, channel)
        if channel == hub.channel and message.get("type") == "test.fail":
            raise ConnectionError("the channel layer went away")
        return message

    monkeypatch.setattr(type(layer), "receive", failing)
    # The hub's receive in progress returns this one; its next receive is the failing one.
    await db(broadcast.send_to_room)(room.pk, {"type": "participant.updated", "seq": snapshot["seq"] + 1})
    assert (await frame(communicator))["seq"] == snapshot["seq"] + 1
    await layer.send(hub.channel, {"type": "test.fail"})
    assert await closed_with(communicator) == protocol.SERVER_ERROR


async def test_a_lost_last_event_is_repaired_by_a_fresh_snapshot(connect, viewer, room, make_participant, monkeypatch):
    """The room's last event never reaches the socket (dropped by the layer): the periodic check sends a snapshot."""
    monkeypatch.setattr(consumers, "SESSION_CHECK_SECONDS", 0.2)
    communicator, _ = await connect(viewer)
    snapshot = await frame(communicator)
    assert snapshot["participants"] == []
    # A join the database holds but whose broadcast was lost: no frame was sent.
    await db(make_participant)(room, "chan-lost", caller_name="Late Larry")
    await db(Conference.objects.filter(pk=room.pk).update)(seq=F("seq") + 1)
    repaired = await frame(communicator, timeout=5)
    assert repaired["type"] == "snapshot" and repaired["seq"] == snapshot["seq"] + 1
    assert [p["caller_name"] for p in repaired["participants"]] == ["Late Larry"]
    # Caught up: no more snapshots while the room stays quiet.
    assert await communicator.receive_nothing(timeout=1.0)


async def test_a_socket_that_lags_but_advances_gets_no_snapshot(connect, viewer, room, monkeypatch):
    """Events queued behind others under load are not lost: while frames keep arriving, no snapshot is sent."""
    from conferences import broadcast

    monkeypatch.setattr(consumers, "SESSION_CHECK_SECONDS", 1.0)
    communicator, _ = await connect(viewer)
    snapshot = await frame(communicator)
    # The database is 5 events ahead; they arrive one every 0.5 s (at least one per check period).
    await db(Conference.objects.filter(pk=room.pk).update)(seq=F("seq") + 5)
    for n in range(1, 6):
        await asyncio.sleep(0.5)
        await db(broadcast.send_to_room)(room.pk, {"type": "participant.updated", "seq": snapshot["seq"] + n})
        event = await frame(communicator)
        assert event["type"] == "participant.updated" and event["seq"] == snapshot["seq"] + n
    assert await communicator.receive_nothing(timeout=2.5)


@pytest.mark.integration
async def test_socket_idles_past_redis_timeout_on_the_redis_layer(connect, viewer, room, redis_layer):
    communicator, _ = await connect(viewer)
    await frame(communicator)
    await asyncio.sleep(7)  # longer than redis-py 8's default 5 s socket timeout
    server = await db(AsteriskServer.objects.get)(pk=room.server_id)
    await db(services.server_set_link_status)(server_id=server.pk, connected=False)
    assert await frame(communicator, timeout=5) == {"type": "asterisk.status", "connected": False}
    await communicator.disconnect()
    await channel_layers["default"].flush()


@pytest.mark.integration
async def test_closed_sockets_leave_nothing_in_the_redis_layers_receive_buffer(connect, viewer, room, redis_layer):
    """channels_redis keeps a queue per channel it receives on. A socket closed while its receive
    was the one reading Redis for the whole process left its queue behind for ever (found by the
    soak: the web process grew by one queue every minute or so)."""
    layer = redis_layer
    for _ in range(3):
        # The first socket of a fresh process is the one reading Redis when it closes.
        communicator, _ = await connect(viewer)
        assert (await frame(communicator))["type"] == "snapshot"
        assert len(layer.receive_buffer) == 2  # the socket's channel and the hub's
        await communicator.disconnect()
        assert set(layer.receive_buffer) <= {fanout.hub_for(layer).channel}
    await layer.flush()


@pytest.mark.integration
async def test_messages_left_for_a_closed_socket_are_dropped_after_a_round(connect, login, viewer, room, redis_layer):
    """A message that reaches the process for a socket that has just closed would wait for ever."""
    layer = redis_layer
    session_key = await db(login)(viewer)
    cookie = f"sessionid={session_key}".encode()
    headers = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1"), (b"cookie", cookie)]
    communicator = WebsocketCommunicator(application, "/ws/conferences/sales/", headers=headers)
    assert (await communicator.connect())[0]
    assert (await frame(communicator))["type"] == "snapshot"
    gone = await layer.new_channel()  # like the channel of a socket that closed before its reply came
    await layer.send(gone, {"type": "moderation.reply", "ok": True})
    for _ in range(50):
        if gone in layer.receive_buffer:
            break
        await asyncio.sleep(0.05)
    assert layer.receive_buffer[gone].qsize() == 1
    layer.sweep()
    assert gone in layer.receive_buffer  # one round: its reader may yet come
    layer.sweep()
    assert gone not in layer.receive_buffer
    # The open socket still gets what is sent to its own channel.
    await db(broadcast.send_session_ended)(session_key)
    assert await closed_with(communicator) == consumers.CLOSE_NOT_LOGGED_IN
    await layer.flush()


# --- the room list's live counts --------------------------------------------------------


async def test_room_list_socket_refuses_anonymous(login):
    communicator = await list_socket(login, None)
    assert await closed_with(communicator) == 4401


async def test_room_list_shows_who_is_in_the_visible_rooms_only(login, viewer, room, make_conference, make_participant):
    hidden = await db(make_conference)("300", slug="hidden", name="Hidden")
    await db(make_participant)(hidden, caller_name="Secret")
    alice = await db(make_participant)(room, caller_name="Alice", caller_number="201")
    communicator = await list_socket(login, viewer)
    try:
        rooms = await frame(communicator)
        [sales] = rooms["rooms"]
        assert rooms["type"] == "rooms"
        assert {key: sales[key] for key in ("slug", "name", "number", "locked", "participant_count")} == {
            "slug": "sales",
            "name": "Sales",
            "number": "100",
            "locked": False,
            "participant_count": 1,
        }
        assert sales["participants"] == [
            {
                "id": alice.pk,
                "caller_name": "Alice",
                "caller_number": "201",
                "status": "present",
                "talking": False,
                "muted": False,
                "hand_raised": False,
            }
        ]
        assert sales["asterisk"] == {"connected": True}  # not the server's name: the page says only that
        # Alice talks: the list says so (compact, with the room's slug), then her leave and the room's count.
        await db(services.participant_update)(participant_id=alice.pk, talking=True)
        talking = await frame(communicator)
        assert talking["type"] == "participant.updated" and talking["conference"] == "sales"
        assert talking["participant"]["talking"] is True and "joined_at" not in talking["participant"]
        await db(services.participant_leave)(participant_id=alice.pk, reason="hangup")
        left = await frame(communicator)
        assert left["type"] == "participant.left" and left["participant"]["id"] == alice.pk
        update = await frame(communicator)
        assert update["type"] == "conference.updated" and update["conference"]["participant_count"] == 0
        # Nothing from a room the user may not see.
        await db(services.conference_set_locked)(conference_id=hidden.pk, locked=True)
        assert await communicator.receive_nothing(timeout=0.3)
    finally:
        await communicator.disconnect()


async def test_room_list_sends_the_whole_list_again_after_a_lost_event(login, viewer, room, make_participant):
    alice = await db(make_participant)(room, caller_name="Alice")
    communicator = await list_socket(login, viewer)
    try:
        first = await frame(communicator)
        # An event the layer lost: the room's seq moves on without it reaching the socket.
        await db(Conference.objects.filter(pk=room.pk).update)(seq=F("seq") + 1)
        await db(services.participant_update)(participant_id=alice.pk, talking=True)
        again = await frame(communicator)
        assert again["type"] == "rooms"
        assert again["rooms"][0]["participants"][0]["talking"] is True
        assert again["rooms"][0]["seq"] == first["rooms"][0]["seq"] + 2
    finally:
        await communicator.disconnect()


async def test_room_list_repairs_an_event_lost_in_a_quiet_room_at_its_periodic_check(
    login, viewer, room, make_participant, monkeypatch
):
    """No later event shows the gap (the room went quiet): the check finds the room's seq ahead, twice, and resends."""
    monkeypatch.setattr(consumers, "SESSION_CHECK_SECONDS", 0.2)
    await db(make_participant)(room, caller_name="Alice")
    communicator = await list_socket(login, viewer)
    try:
        first = await frame(communicator)
        await db(Conference.objects.filter(pk=room.pk).update)(seq=F("seq") + 1)  # an event that never came
        again = await frame(communicator, timeout=3)
        assert again["type"] == "rooms" and again["rooms"][0]["seq"] == first["rooms"][0]["seq"] + 1
        assert await communicator.receive_nothing(timeout=0.7)  # repaired: no resend loop
    finally:
        await communicator.disconnect()


async def test_room_list_follows_new_grants(login, room, make_user, grant):
    user = await db(make_user)("late")
    communicator = await list_socket(login, user)
    try:
        assert (await frame(communicator))["rooms"] == []
        await db(grant)(room, user=user)
        assert [r["slug"] for r in (await frame(communicator))["rooms"]] == ["sales"]
        await db(services.conference_set_locked)(conference_id=room.pk, locked=True)
        assert (await frame(communicator))["conference"]["locked"] is True
    finally:
        await communicator.disconnect()


async def test_a_request_id_repeated_while_the_first_is_pending_is_refused(connect, moderator, room, monkeypatch):
    """A page (or a forged frame) reuses a request_id before the worker answered the first: the second is
    refused with its own reply, the first stays pending; no worker here, so nothing answers the first."""
    monkeypatch.setattr(consumers, "REPLY_TIMEOUT", 30)
    communicator, _ = await connect(moderator)
    await frame(communicator)
    await communicator.send_json_to({"action": "lock", "request_id": "dup"})
    await communicator.send_json_to({"action": "unlock", "request_id": "dup"})
    assert await frame(communicator, timeout=5) == refused("dup", "request_id already in use")
    assert await communicator.receive_nothing(timeout=0.3)


def test_a_snapshot_read_locks_the_room_not_its_server(room):
    """Every write of the worker first holds the server's row shared (the lease fence), then locks the room's.
    A snapshot read that locked the server's row too (select_related without ``of``) waited for the fence
    while holding the room, and PostgreSQL broke the deadlock by failing the snapshot: every socket
    connecting then was closed (seen in the chaos test). The snapshot must go through under a held fence."""
    import threading

    from django.db import connection, transaction

    from conferences.ari import lease

    AsteriskServer.objects.filter(pk=room.server_id).update(worker_owner="me")
    done = threading.Event()
    result = {}

    def read():
        try:
            result["snapshot"] = consumers._snapshot(room.pk)
        finally:
            connection.close()
            done.set()

    with transaction.atomic():
        lease.check(room.server_id, "me")  # the fence of a worker's hop, held
        reader = threading.Thread(target=read)
        reader.start()
        assert done.wait(5), "the snapshot waited for the worker's fence"
    reader.join()
    assert result["snapshot"]["seq"] == room.seq
