"""The browser edge: one WebSocket per watcher of a room, at /ws/conferences/<slug>/.

Refusals are sent as close codes after accepting (4401 not logged in, 4403
no access, 4404 no such room): a handshake refused with an HTTP status looks
like a network error to a browser. Room events reach a socket through its
process's hub (conferences/fanout.py), which it joins before it builds the
snapshot, so no event falls between them: events that arrive meanwhile wait,
and those the snapshot already contains (seq not above it) are not sent again.
"""

import asyncio
import json
import logging
import time

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.db import DatabaseError, transaction
from django.db.models import Count

from conferences import access, broadcast, fanout, moderation
from conferences.models import AsteriskServer, Conference, Participant

logger = logging.getLogger(__name__)

db = database_sync_to_async

CLOSE_NOT_LOGGED_IN = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404

MAX_FRAME_BYTES = 4096
RATE_PER_SECOND = 5.0  # sustained frames per second a browser may send
RATE_BURST = 20  # frames it may send at once
REPLY_TIMEOUT = moderation.REQUEST_TTL + 2
# How often an open socket checks that its login session still exists and
# has not expired (logout is pushed at once; expiry is found by looking), and
# that it has not lost the room's last event (see _watch_session).
SESSION_CHECK_SECONDS = 30.0


def _conference(slug):
    return Conference.objects.select_related("server").filter(slug=slug).first()


def _snapshot(conference_id, user):
    """The room's present state and the seq it corresponds to, read consistently."""
    with transaction.atomic():
        # The row lock orders this read with the services, which take the
        # room's next seq on the same row: seq and roster belong together.
        conference = Conference.objects.select_for_update().select_related("server").get(pk=conference_id)
        participants = list(Participant.objects.filter(conference=conference, left_at__isnull=True))
    return {
        "type": "snapshot",
        "seq": conference.seq,
        "conference": broadcast.conference_state(conference, len(participants)),
        "participants": [broadcast.participant_state(p) for p in participants],
        "asterisk": {"connected": conference.server.connected},
        "can_moderate": access.can_moderate(user, conference),
    }


def _fresh_user(user_id):
    from django.contrib.auth import get_user_model

    return get_user_model().objects.filter(pk=user_id).first()


def _session_alive(session_key, user_id):
    from django.contrib.auth import get_user_model
    from django.contrib.sessions.models import Session
    from django.utils import timezone

    if not session_key:
        return False
    session = Session.objects.filter(session_key=session_key, expire_date__gt=timezone.now()).first()
    if session is None or str(session.get_decoded().get("_auth_user_id")) != str(user_id):
        return False
    return get_user_model().objects.filter(pk=user_id, is_active=True).exists()


def _session_alive_and_room_seq(session_key, user_id, conference_id):
    """One thread hop and one connection for the periodic check of an open socket."""
    if not _session_alive(session_key, user_id):
        return False, None
    return True, Conference.objects.filter(pk=conference_id).values_list("seq", flat=True).first()


def _server_connected(server_id):
    return AsteriskServer.objects.filter(pk=server_id, connected=True).exists()


def _present_in_room(conference_id, participant_id):
    return Participant.objects.filter(pk=participant_id, conference_id=conference_id, left_at__isnull=True).exists()


class TokenBucket:
    """Allows ``burst`` frames at once and ``rate`` per second after that."""

    def __init__(self, rate, burst, clock=time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens = float(burst)
        self.updated = clock()

    def take(self):
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class FanOutConsumer(AsyncWebsocketConsumer):
    """Room events that come through the socket's own channel skip Channels' per-message thread hop.

    ``AsyncConsumer.dispatch`` runs ``close_old_connections`` in a thread
    (``aclose_old_connections``) before every handler. A room event reaches
    every socket watching the room, and its handler only forwards text: in
    a profile of the benchmark that hop was the largest single cost of the
    fan-out (docs/performance.md). Handlers that read the database go through
    ``database_sync_to_async``, which closes stale connections itself. (The
    room page's sockets get room events from the hub, which calls
    ``room_event`` directly; the room list's sockets get them here.)
    """

    async def dispatch(self, message):
        if message.get("type") == broadcast.ROOM_EVENT:
            await self.room_event(message)
            return
        await super().dispatch(message)


class ConferenceConsumer(FanOutConsumer):
    """Streams a room's events to one browser and carries its moderator actions to the worker."""

    async def connect(self):
        self.conference = None
        self.hub = None
        self.snapshot_pending = False
        self.waiting_events = []
        self.last_seq = 0
        self.pending = {}
        self.bucket = TokenBucket(RATE_PER_SECOND, RATE_BURST)
        await self.accept()
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(CLOSE_NOT_LOGGED_IN)
            return
        conference = await db(_conference)(self.scope["url_route"]["kwargs"]["slug"])
        if conference is None:
            await self.close(CLOSE_NOT_FOUND)
            return
        if not await db(access.can_view)(user, conference):
            await self.close(CLOSE_FORBIDDEN)
            return
        self.conference = conference
        self.session_watch = asyncio.create_task(self._watch_session())
        self.groups_joined = [broadcast.user_group(user.pk)]
        session_key = getattr(self.scope.get("session"), "session_key", None)
        if session_key:
            self.groups_joined.append(broadcast.session_group(session_key))
        for group in self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)
        # Room events come through the process's hub; they wait while the snapshot is built.
        self.snapshot_pending = True
        self.hub = fanout.hub_for(self.channel_layer)
        await self.hub.join(conference.pk, self)
        await self.send_snapshot()

    async def disconnect(self, code):
        if getattr(self, "hub", None) is not None:
            await self.hub.leave(self.conference.pk, self)
        if getattr(self, "session_watch", None):
            self.session_watch.cancel()
        for task, _request_id in self.pending.values():
            task.cancel()
        for group in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def _watch_session(self):
        """Every SESSION_CHECK_SECONDS: is the login still valid, and was the room's last event lost?

        A gap in seq makes the page ask for a snapshot, but only when a later
        event arrives: an event the channel layer dropped (over capacity, Redis
        restarted) at the end of a burst would leave the roster wrong until the
        room's next event. So the check also reads the room's seq: when the
        socket is behind it and has received nothing since the previous check,
        the missing events are not merely queued behind others (a socket that
        lags under load keeps advancing) but lost, and a fresh snapshot repairs
        the roster, within two check periods.
        """
        session_key = getattr(self.scope.get("session"), "session_key", None)
        seq_at_last_check = None
        while True:
            await asyncio.sleep(SESSION_CHECK_SECONDS)
            try:
                alive, room_seq = await db(_session_alive_and_room_seq)(
                    session_key, self.scope["user"].pk, self.conference.pk
                )
            except DatabaseError as exc:
                # The database is briefly unavailable: look again next time.
                logger.warning("room socket check failed: %s", exc)
                continue
            if not alive:
                await self.close(CLOSE_NOT_LOGGED_IN)
                return
            if room_seq is not None and room_seq > self.last_seq and self.last_seq == seq_at_last_check:
                logger.info(
                    "room %s: socket stuck at seq %s while the room is at %s, sending a snapshot",
                    self.conference.pk,
                    self.last_seq,
                    room_seq,
                )
                await self.send_snapshot()
            seq_at_last_check = self.last_seq

    async def send_snapshot(self):
        self.snapshot_pending = True
        try:
            snapshot = await db(_snapshot)(self.conference.pk, self.scope["user"])
            self.last_seq = snapshot["seq"]
            await self.send_frame(snapshot)
        finally:
            self.snapshot_pending = False
            waiting, self.waiting_events = self.waiting_events, []
            for message in waiting:
                await self.room_event(message)

    async def send_frame(self, frame):
        await self.send(text_data=json.dumps(frame))

    # --- from the browser -----------------------------------------------------------

    async def receive(self, text_data=None, bytes_data=None):
        if self.conference is None:
            return
        if not self.bucket.take():
            await self.send_frame({"type": "error", "error": "too many messages; slow down"})
            return
        if bytes_data is not None or text_data is None:
            await self.send_frame({"type": "error", "error": "send JSON text frames"})
            return
        if len(text_data.encode()) > MAX_FRAME_BYTES:
            await self.send_frame({"type": "error", "error": "message too large"})
            return
        try:
            frame = json.loads(text_data)
        except ValueError:
            await self.send_frame({"type": "error", "error": "not JSON"})
            return
        if not isinstance(frame, dict):
            await self.send_frame({"type": "error", "error": "expected a JSON object"})
            return
        request_id = frame.get("request_id")
        if not isinstance(request_id, str | int) or isinstance(request_id, bool) or len(str(request_id)) > 64:
            await self.send_frame({"type": "error", "error": "request_id missing or invalid"})
            return
        action = frame.get("action")
        if action == "resync":
            await self.send_snapshot()
            await self.reply(request_id, True)
            return
        if action not in moderation.ACTIONS:
            await self.reply(request_id, False, "unknown action")
            return
        await self.moderate(action, request_id, frame.get("participant"))

    async def moderate(self, action, request_id, participant_id):
        # Permission is checked on every action, not only at connect.
        if not await db(access.can_moderate)(self.scope["user"], self.conference):
            await self.reply(request_id, False, "you may not moderate this room")
            return
        if action in moderation.PARTICIPANT_ACTIONS:
            if not isinstance(participant_id, int) or isinstance(participant_id, bool):
                await self.reply(request_id, False, "participant missing or invalid")
                return
            if not await db(_present_in_room)(self.conference.pk, participant_id):
                await self.reply(request_id, False, "no such participant in this room")
                return
        else:
            participant_id = None
        key = str(request_id)
        if key in self.pending:
            await self.reply(request_id, False, "request_id already in use")
            return
        if not await db(_server_connected)(self.conference.server_id):
            await self.reply(request_id, False, "the link to Asterisk is down")
            return
        self.pending[key] = (asyncio.create_task(self._expire(key, request_id)), request_id)
        await moderation.send_request(
            server_id=self.conference.server_id,
            conference_id=self.conference.pk,
            action=action,
            participant_id=participant_id,
            actor_id=self.scope["user"].pk,
            request_id=key,
            reply_channel=self.channel_name,
        )

    async def _expire(self, key, request_id):
        await asyncio.sleep(REPLY_TIMEOUT)
        if self.pending.pop(key, None) is not None:
            await self.reply(request_id, False, moderation.WORKER_DOWN)

    async def reply(self, request_id, ok, error=None):
        frame = {"type": "reply", "request_id": request_id, "ok": ok}
        if not ok:
            frame["error"] = error
        await self.send_frame(frame)

    # --- from the channel layer -----------------------------------------------------

    async def room_event(self, message):
        if self.snapshot_pending:
            self.waiting_events.append(message)
            return
        seq = message.get("seq")
        if seq is not None:
            if seq <= self.last_seq:
                return  # already in the snapshot
            self.last_seq = seq
        await self.send(text_data=message["text"])

    async def moderation_reply(self, message):
        pending = self.pending.pop(str(message.get("request_id")), None)
        if pending is None:
            return  # not ours, or already answered by the timeout
        task, request_id = pending
        task.cancel()
        await self.reply(request_id, bool(message.get("ok")), message.get("error"))

    async def access_changed(self, message):
        """Grants changed (room, user or group): close if no longer allowed, else refresh the role."""
        user = await db(_fresh_user)(self.scope["user"].pk)
        if user is None or not await db(access.can_view)(user, self.conference):
            await self.close(CLOSE_FORBIDDEN)
            return
        self.scope["user"] = user
        await self.send_snapshot()

    async def session_ended(self, message):
        await self.close(CLOSE_NOT_LOGGED_IN)


def _visible_rooms(user):
    rooms = access.conferences_visible_to(user).order_by("name")
    counts = dict(
        Participant.objects.filter(conference__in=rooms, left_at__isnull=True)
        .values_list("conference_id")
        .annotate(n=Count("id"))
    )
    return [(room.pk, broadcast.conference_state(room, counts.get(room.pk, 0))) for room in rooms]


class RoomListConsumer(FanOutConsumer):
    """Live counts for the room list: the rooms a user may see, and their conference.updated frames only."""

    async def connect(self):
        self.groups_joined = []
        await self.accept()
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(CLOSE_NOT_LOGGED_IN)
            return
        await self._join(broadcast.user_group(user.pk))
        session_key = getattr(self.scope.get("session"), "session_key", None)
        if session_key:
            await self._join(broadcast.session_group(session_key))
        await self.send_rooms()

    async def _join(self, group):
        await self.channel_layer.group_add(group, self.channel_name)
        self.groups_joined.append(group)

    async def send_rooms(self):
        user = await db(_fresh_user)(self.scope["user"].pk)
        rooms = await db(_visible_rooms)(user) if user is not None else []
        wanted = {broadcast.room_group(pk) for pk, _state in rooms}
        for group in [g for g in self.groups_joined if g.startswith("conference.") and g not in wanted]:
            await self.channel_layer.group_discard(group, self.channel_name)
            self.groups_joined.remove(group)
        for group in sorted(wanted - set(self.groups_joined)):
            await self._join(group)
        await self.send(text_data=json.dumps({"type": "rooms", "rooms": [state for _pk, state in rooms]}))

    async def disconnect(self, code):
        for group in self.groups_joined:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None):
        pass  # nothing to say: this socket only listens

    async def room_event(self, message):
        if message.get("kind") == "conference.updated":
            frame = json.loads(message["text"])
            await self.send(text_data=json.dumps({"type": "conference.updated", "conference": frame["conference"]}))

    async def access_changed(self, message):
        await self.send_rooms()

    async def session_ended(self, message):
        await self.close(CLOSE_NOT_LOGGED_IN)
