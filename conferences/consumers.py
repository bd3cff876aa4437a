"""The browser edge: one WebSocket per watcher of a room, at /ws/conferences/<slug>/.

Refusals are sent as close codes after accepting (4401 not logged in, 4403
no access, 4404 no such room, 4429 too many open sockets for this user; 4011 when
the server failed and the page should reconnect, conferences/protocol.py): a
handshake refused with an HTTP status looks like a network error to a
browser. Room events reach a socket through its process's hub
(conferences/fanout.py), which it joins before it builds the snapshot, so no
event falls between them: events that arrive meanwhile wait, and those the
snapshot already contains (seq not above it) are not sent again.

Rules every socket keeps, whatever the browser sends or the server does:

- Nothing a browser sends can end the socket or leak its resources: frames
  are checked in conferences/frames.py before anything else, every request
  gets an ``error`` or a ``reply``, and a failure while handling one (the
  database, the channel layer) is answered, not raised.
- Whatever ends a socket (a close, an exception, cancellation) releases
  everything it holds: hub membership, groups, its place under the per-user
  cap, its periodic check and pending requests (``GuardedConsumer``).
- The rate limit comes first, before any database hop.
- Grants and logins are re-checked from fresh rows, not only when a signal
  says so: every SESSION_CHECK_SECONDS the socket checks its session the way
  Django checks a request (conferences/sessions.py) and its role in the
  room, and every moderator action checks both again.
"""

import asyncio
import functools
import json
import logging
import time
import weakref
from collections import defaultdict, deque

from channels.consumer import AsyncConsumer, get_handler_name
from channels.exceptions import ChannelFull, StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import DatabaseError, transaction

from conferences import (
    access,
    broadcast,
    dbthreads,
    fanout,
    frames,
    metrics,
    moderation,
    protocol,
    socketcap,
)
from conferences.models import Conference, Invite, Participant
from conferences.ratelimit import TokenBucket
from conferences.sessions import session_user

logger = logging.getLogger(__name__)


async def db_call(func, /, *args):
    """One database hop of a socket, on the web process's database threads (conferences/dbthreads.py).

    Not Channels' ``database_sync_to_async``: its one thread per process made
    every socket of the process wait for every other's hops (a thousand pages
    opening at once waited there in turn), and with ``CONN_MAX_AGE=0`` each
    hop opened a new database connection.
    """
    return await dbthreads.web().call(func, *args)


CLOSE_NOT_LOGGED_IN = protocol.NOT_LOGGED_IN
CLOSE_FORBIDDEN = protocol.FORBIDDEN
CLOSE_NOT_FOUND = protocol.NOT_FOUND
CLOSE_TOO_MANY_SOCKETS = protocol.TOO_MANY_SOCKETS
CLOSE_INTERNAL_ERROR = protocol.SERVER_ERROR

MAX_FRAME_BYTES = frames.MAX_FRAME_BYTES
RATE_PER_SECOND = 5.0  # sustained frames per second a browser may send
RATE_BURST = 20  # frames it may send at once
PREPARED_AHEAD = 2  # requests of one socket whose checks may start before their turn
REPLY_TIMEOUT = moderation.REQUEST_TTL + 2
# How often an open socket re-checks its login session and its role in the
# room from fresh rows (changes that send signals are pushed at once; these
# catch the rest, so a revoked login or grant ends a socket within this
# time), and whether it has lost the room's last event (see _watch).
SESSION_CHECK_SECONDS = 30.0
# A resync with no event since the last snapshot sent gets that snapshot
# again (no database read) while it is younger than this.
SNAPSHOT_REUSE_SECONDS = 30.0
# How long a close waits for the frames handed over before it (FanOutConsumer.close).
CLOSE_FLUSH_SECONDS = 1.0

DATABASE_DOWN = "the database is unavailable; try again"
LAYER_BUSY = "the server is busy; try again"
INTERNAL_ERROR = "the request failed; try again"


# --- database helpers (run in the database thread) -----------------------------------------


# Rooms looked up by slug at handshakes, kept this long per process: a thousand pages of a
# room opening at once look it up once (the lookup was a third of a handshake's database
# time). A room deleted meanwhile: its snapshot read fails, the socket closes 4011.
ROOM_LOOKUP_SECONDS = 2.0
_rooms_by_slug = {}  # slug -> (Room, when looked up)


class Room:
    """What a socket keeps of its room: its id and its server's."""

    __slots__ = ("pk", "server_id")

    def __init__(self, pk, server_id):
        self.pk, self.server_id = pk, server_id


def _conference(slug):
    now = time.monotonic()
    known = _rooms_by_slug.get(slug)
    if known is not None and now - known[1] < ROOM_LOOKUP_SECONDS:
        return known[0]
    row = Conference.objects.filter(slug=slug).values_list("pk", "server_id").first()
    room = Room(*row) if row is not None else None
    if len(_rooms_by_slug) > 10_000:  # slugs that do not exist, sent on purpose
        _rooms_by_slug.clear()
    _rooms_by_slug[slug] = (room, now)
    return room


def request_arguments(request):
    """What the request's action carries besides a caller (moderation.ARGUMENTS), type-checked only: the
    worker judges the values (an invite's number against the server's pattern, the invite's room)."""
    if request.action == "invite":
        return {"number": frames.clean_text(request.fields.get("number"), 64)}
    if request.action == "cancel_invite":
        return {"invite": frames.database_id(request.fields.get("invite"))}
    if request.action == "play":
        return {"sound": frames.clean_text(request.fields.get("sound"), 64)}
    return {}


def _snapshot(conference_id):
    """The room's present state and the seq it corresponds to, read consistently.

    The same for every viewer (the hub serves it to every socket of the room,
    conferences/fanout.py); ``can_moderate`` is added per socket.
    """
    with transaction.atomic():
        # The row lock orders this read with the services, which take the
        # room's next seq on the same row: seq and roster belong together.
        # The room's row only: the server's is read, not locked (every write of
        # the worker holds it shared, then takes the room's: locking both here
        # deadlocked with a join, tests/test_consumer.py).
        conference = Conference.objects.select_for_update(of=("self",)).select_related("server").get(pk=conference_id)
        participants = list(Participant.objects.in_room().filter(conference=conference))
        invites = list(Invite.objects.filter(conference=conference, status__in=Invite.OPEN).order_by("id"))
    waiting = sum(1 for participant in participants if participant.waiting)
    return {
        "type": protocol.SNAPSHOT,
        "seq": conference.seq,
        "conference": broadcast.conference_state(conference, len(participants) - waiting, waiting),
        "participants": [broadcast.participant_state(p) for p in participants],
        "invites": [broadcast.invite_state(invite) for invite in invites],
        "asterisk": {"connected": conference.server.connected},
    }


def _room_connect(session_key, slug):
    """Everything a room socket's handshake needs, in one hop: ``(closing code or None, user, room, role)``."""
    user = session_user(session_key)
    if user is None:
        return CLOSE_NOT_LOGGED_IN, None, None, None
    conference = _conference(slug)
    if conference is None:
        return CLOSE_NOT_FOUND, user, None, None
    role = access.conference_role(user, conference)
    if role is None:
        return CLOSE_FORBIDDEN, user, None, None
    return None, user, conference, role


def _room_check(session_key, user_id, conference_id):
    """The periodic check of a room socket, in one thread hop: ``(closing code or None, user, role, room seq)``."""
    user = session_user(session_key)
    if user is None or user.pk != user_id:
        return CLOSE_NOT_LOGGED_IN, None, None, None
    conference = Conference.objects.filter(pk=conference_id).first()
    if conference is None:
        return CLOSE_NOT_FOUND, None, None, None
    role = access.conference_role(user, conference)
    if role is None:
        return CLOSE_FORBIDDEN, None, None, None
    return None, user, role, conference.seq


def _moderation_check(session_key, user_id, conference_id, action, participant_id):
    """Everything a moderator action needs checked, from fresh rows: an error message, or None."""
    user = session_user(session_key)
    if user is None or user.pk != user_id:
        return "you are not logged in"
    conference = Conference.objects.select_related("server").filter(pk=conference_id).first()
    if conference is None:
        return "no such room"
    if not access.can_moderate(user, conference):
        return "you may not moderate this room"
    return moderation.refusal(conference, action, participant_id)


def _visible_rooms(user):
    """``[(room id, its state for the room list)]``: the room, who is in it (in join order), its Asterisk link."""
    rooms = list(access.conferences_visible_to(user).select_related("server").order_by("name"))
    present, waiting = defaultdict(list), defaultdict(int)
    for participant in Participant.objects.in_room().filter(conference__in=rooms).order_by("joined_at", "id"):
        if participant.waiting:
            waiting[participant.conference_id] += 1
        else:
            present[participant.conference_id].append(broadcast.list_participant(participant))
    return [(room.pk, broadcast.list_room_state(room, present[room.pk], waiting[room.pk])) for room in rooms]


def _session_rooms(session_key, user_id=None):
    """The user of a room-list socket and the rooms it may see: ``(user, rooms)``, user None when logged out.

    ``user_id``: the user the socket was opened for (None at the handshake).
    """
    user = session_user(session_key)
    if user is None or (user_id is not None and user.pk != user_id):
        return None, []
    return user, _visible_rooms(user)


def _visible_room_ids(session_key, user_id):
    """The periodic check of a room-list socket: ``{room id: its seq}`` of the rooms it may see, None: logged out."""
    user = session_user(session_key)
    if user is None or user.pk != user_id:
        return None
    return dict(access.conferences_visible_to(user).values_list("pk", "seq"))


def event_text(message, role):
    """A room event's text as a socket of ``role`` gets it: ``download_url`` is null for who may not download."""
    text = message["text"]
    if message.get("kind") == protocol.RECORDING_FINISHED and message.get("moderators_only"):
        if role != access.MODERATOR:  # a viewer of a room whose recordings moderators download
            frame = json.loads(text)
            frame["recording"]["download_url"] = None
            text = json.dumps(frame, separators=(",", ":"))
    return text


def start_eagerly(coroutine):
    """Run ``coroutine`` at once until it first has to wait: None if it finished, else the Task carrying it on.

    Python 3.12's eager tasks, for 3.11. A socket's writer usually finishes
    without waiting (the server takes the frame into a transport that is not
    full): then no task is made and no loop turn is spent per frame and socket,
    which is what a task per frame cost the fan-out (a quarter more CPU per
    frame at 200 pages, bench/web.py). Only a send that has to wait (the
    client is not reading) becomes a task, as a Task would resume it.
    """
    try:
        waits_for = coroutine.send(None)
    except StopIteration:
        return None
    return asyncio.get_running_loop().create_task(_carry_on(coroutine, waits_for))


async def _carry_on(coroutine, waits_for):
    while True:
        try:
            if waits_for is None:  # a bare yield: one turn of the loop
                await asyncio.sleep(0)
            else:
                waits_for._asyncio_future_blocking = False
                await asyncio.wait([waits_for])  # done, failed or cancelled: the coroutine sees which
        except asyncio.CancelledError as exc:
            try:
                waits_for = coroutine.throw(exc)
            except StopIteration as stop:
                return stop.value
            continue
        try:
            waits_for = coroutine.send(None)
        except StopIteration as stop:
            return stop.value


class FanOutConsumer(AsyncWebsocketConsumer):
    """A socket that never makes its sender wait, and no message of it takes Channels' per-message thread hop.

    **Frames are handed over, not awaited.** ``send()`` puts the frame in the
    socket's outbox and returns; one writer task per socket (started when
    the outbox stops being empty) hands the frames to the ASGI server in
    order. The room hub forwards an event to every socket of a room in one
    pass: under uvicorn a send waits while the client's TCP buffer is full,
    and awaiting it there would hold the whole room behind one page that
    stopped reading. The outbox is bounded: when more than
    ``settings.WEBSOCKET_MAX_QUEUED_BYTES`` (1 MiB) waits, it is dropped and
    the socket closed with 4008 (protocol.TOO_SLOW; the page reconnects
    and gets a fresh snapshot). Frames are ASCII (``json.dumps`` escapes
    the rest), so their length is their size. ``close()`` goes after the
    frames already handed over, waiting at most CLOSE_FLUSH_SECONDS for them.

    ``AsyncConsumer.dispatch`` runs ``close_old_connections`` in the process's
    one thread-sensitive thread (``aclose_old_connections``) before every
    handler: for a room event that reaches every socket of a room (in a
    profile of the benchmark, the largest single cost of the fan-out,
    docs/performance.md), and for every handshake and browser frame (in a
    connect storm every socket waited there in turn). The sockets' database
    hops run on the web's own database threads (``db_call``), which look
    after their connections themselves; the thread-sensitive thread's
    connection belongs to Django's HTTP views, which close it per request.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.outbox = deque()
        self.outbox_bytes = 0
        self.writer = None
        self.outbox_closed = False  # overflowed, closing or gone: frames are dropped
        self.close_sent = False

    async def send(self, text_data=None, bytes_data=None, close=False):
        if text_data is not None:
            self.hand_over(text_data)
        elif bytes_data is not None:
            self.hand_over(bytes_data)
        if close:
            await self.close(close)

    def hand_over(self, data):
        """Queue one frame for the socket without waiting for it (see the class)."""
        if self.outbox_closed:
            return
        self.outbox.append(data)
        self.outbox_bytes += len(data)
        limit = settings.WEBSOCKET_MAX_QUEUED_BYTES
        if limit and self.outbox_bytes > limit:
            self._overflowed(limit)
        elif self.writer is None:
            self.writer = start_eagerly(self._write())

    async def _write(self):
        try:
            while self.outbox:
                data = self.outbox.popleft()
                self.outbox_bytes -= len(data)
                key = "text" if isinstance(data, str) else "bytes"
                await AsyncConsumer.send(self, {"type": "websocket.send", key: data})
                metrics.FRAMES.sent += 1
        except Exception as exc:  # noqa: BLE001 (the connection went away: its disconnect follows)
            logger.debug("socket %s: a send failed (%r); dropping its outbox", self.scope.get("path"), exc)
            self._drop_outbox()
        finally:
            self.writer = None

    def _drop_outbox(self):
        self.outbox_closed = True
        self.outbox.clear()
        self.outbox_bytes = 0

    def _overflowed(self, limit):
        logger.warning(
            "socket %s: %s bytes wait for a client that does not read (limit %s); closing it",
            self.scope.get("path"),
            self.outbox_bytes,
            limit,
        )
        metrics.FRAMES.dropped += len(self.outbox)
        self._drop_outbox()
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.cancel()  # a send stuck behind the client's full buffer
        # The close frame queues behind what the server holds already; the server gives up
        # on the connection after its close timeout (uvicorn's websockets: 10 s).
        asyncio.get_running_loop().create_task(self.close(protocol.TOO_SLOW))

    async def close(self, code=None, reason=None):
        """Close once (a second close is a no-op: ASGI servers refuse it), after the frames handed over."""
        if self.close_sent:
            return
        self.close_sent = True
        writer = self.writer
        if writer is not None and not self.outbox_closed:
            # What was handed over goes first; a client that does not take it does not hold the close.
            await asyncio.wait([writer], timeout=CLOSE_FLUSH_SECONDS)
        self._drop_outbox()
        try:
            await super().close(code, reason)
        except Exception as exc:  # noqa: BLE001 (the client left first: its disconnect follows)
            logger.debug("socket %s: closing failed (%r)", self.scope.get("path"), exc)

    async def dispatch(self, message):
        if message.get("type") in (broadcast.ROOM_EVENT, broadcast.ROOM_EVENTS):
            for event in broadcast.room_events(message):
                await self.room_event(event)
            return
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def websocket_disconnect(self, message):
        """As Channels' (its ``groups`` are not used here), without its thread-sensitive hop at the end."""
        await self.disconnect(message["code"])
        raise StopConsumer()


_admitted = weakref.WeakSet()  # the process's admitted sockets (GuardedConsumer.admit)
_watched_layers = weakref.WeakSet()  # channel layers told to call _after_outage
_outage_tasks = set()


def _watch_layer(layer):
    """Have ``layer`` (the project's Redis layer, conferencesite/layers.py) call ``_after_outage`` after an outage."""
    if layer in _watched_layers or not hasattr(layer, "on_recovery"):
        return
    _watched_layers.add(layer)

    def start(coroutine):
        task = asyncio.get_running_loop().create_task(coroutine)
        _outage_tasks.add(task)
        task.add_done_callback(_outage_tasks.discard)

    layer.on_recovery(lambda _seconds: start(_after_outage(layer)))
    if hasattr(layer, "on_give_up"):
        layer.on_give_up(lambda: start(_close_all(layer)))


async def _close_all(layer):
    """Redis stayed away too long: close every socket of the layer (pages reconnect with backoff)."""
    consumers = [c for c in list(_admitted) if c.channel_layer is layer and not c.released]
    logger.warning("channel layer gone: closing %s socket(s)", len(consumers))
    results = await asyncio.gather(*(c.close(CLOSE_INTERNAL_ERROR) for c in consumers), return_exceptions=True)
    for result in results:
        if isinstance(result, Exception):
            logger.warning("closing a socket failed: %r", result)


async def _after_outage(layer):
    """Redis answers again: the hub joins its rooms' groups, then every socket joins its own and refreshes.

    In this order, so that a room socket's fresh snapshot is read while the
    hub is a member of the room's group again (join first, then read).
    """
    hub = fanout.existing_hub(layer)
    if hub is not None:
        await hub.rejoin()
    consumers = [c for c in list(_admitted) if c.channel_layer is layer and not c.released]
    logger.info("channel layer back: %s socket(s) join their groups again and refresh", len(consumers))
    for consumer in consumers:
        consumer.start_task(_logged(consumer.after_outage()), name="after-outage")


async def _logged(coroutine):
    try:
        await coroutine
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("socket: refreshing after a channel-layer outage failed")


class GuardedConsumer(FanOutConsumer):
    metrics_kind = "room"  # conference_open_sockets{kind} (conferences/metrics.py)

    """A socket that gives back everything it holds however it ends, and never lets an error out.

    Channels does not call ``disconnect()`` when a handler raises: the
    exception ends the consumer, daphne closes the socket with 1011 and logs
    a traceback, and whatever the socket had joined (the hub, groups) and
    started (its periodic check) stays behind. Here the consumer's whole life
    runs inside ``try/finally``: an exception is logged, the socket is closed
    with 4011 (protocol.SERVER_ERROR), and ``release()`` runs on every path
    — a normal close, an exception, cancellation. ``release()`` is idempotent.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.released = False
        self.groups_joined = []
        self.tasks = set()
        self.cap_user_id = None
        self.user_id = None
        self.session_key = None
        self.bucket = TokenBucket(RATE_PER_SECOND, RATE_BURST)
        self.m_open = None  # this socket's open-sockets gauge, once admitted

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        except Exception:
            logger.exception("socket %s: failed; closing it", scope.get("path"))
            try:
                await self.close(CLOSE_INTERNAL_ERROR)
            except Exception as exc:  # noqa: BLE001 (the connection is gone already)
                logger.warning("closing a failed socket failed: %r", exc)
        finally:
            await self.release()

    async def disconnect(self, code):
        await self.release()

    def start_task(self, coroutine, name):
        """A task that lives as long as the socket (cancelled by ``release()``)."""
        task = asyncio.create_task(coroutine, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def join_group(self, group):
        self.groups_joined.append(group)  # before the call: a failed add is discarded too
        await self.channel_layer.group_add(group, self.channel_name)

    async def leave_group(self, group):
        if group in self.groups_joined:
            self.groups_joined.remove(group)
        await self.channel_layer.group_discard(group, self.channel_name)

    async def admit(self, user):
        """Claim a place under the per-user cap for a logged-in ``user``; False when refused (closed).

        Then join the user's and the session's groups (at the same time: the
        socket waits for one Redis round trip, not two).
        """
        self.user_id = user.pk
        self.scope["user"] = user
        if not await self._claim_place():
            logger.info("user %s: %s sockets open already; refusing another", user.pk, settings.MAX_SOCKETS_PER_USER)
            await self.close(CLOSE_TOO_MANY_SOCKETS)
            return False
        self.m_open = metrics.OPEN_SOCKETS.labels(self.metrics_kind)
        self.m_open.inc()
        _admitted.add(self)
        _watch_layer(self.channel_layer)
        groups = [broadcast.user_group(user.pk)]
        if self.session_key:  # a program's stream has a token, no session (conferences/api_stream.py)
            groups.append(broadcast.session_group(self.session_key))
        await asyncio.gather(*(self.join_group(group) for group in groups))
        return True

    def cap_owner(self):
        """Whose places under the socket cap this socket takes: its user's (a program's stream: its token's)."""
        return self.user_id

    async def _claim_place(self):
        owner = self.cap_owner()
        try:
            claimed = await socketcap.claim(owner, self.channel_name)
        except Exception as exc:  # noqa: BLE001 (Redis unreachable: do not lock everybody out for it)
            logger.warning("user %s: the socket cap could not be checked (%s); allowing the socket", self.user_id, exc)
            return True
        if claimed:
            self.cap_user_id = owner
        return claimed

    async def confirm_place(self):
        if self.cap_user_id is None:
            return
        try:
            await socketcap.confirm(self.cap_user_id, self.channel_name)
        except Exception as exc:  # noqa: BLE001 (retried at the next check)
            logger.warning("user %s: confirming a socket's place failed: %s", self.cap_user_id, exc)

    async def release(self):
        """Give back everything the socket holds. Safe to call more than once, on any path."""
        if self.released:
            return
        self.released = True
        _admitted.discard(self)
        if self.m_open is not None:
            self.m_open.dec()
            self.m_open = None
        for task in list(self.tasks):
            task.cancel()
        await self.release_more()

        async def leave(group):
            try:
                await self.channel_layer.group_discard(group, self.channel_name)
            except Exception as exc:  # noqa: BLE001 (the layer is down: the membership expires)
                logger.warning("socket: leaving group %s failed: %s", group, exc)

        await asyncio.gather(*(leave(group) for group in self.groups_joined))  # one round trip's wait, not one each
        self.groups_joined.clear()
        if self.cap_user_id is not None:
            try:
                await socketcap.release(self.cap_user_id, self.channel_name)
            except Exception as exc:  # noqa: BLE001 (the place goes stale and stops counting)
                logger.warning("user %s: giving a socket's place back failed: %s", self.cap_user_id, exc)
            self.cap_user_id = None

    async def release_more(self):
        """What a subclass holds besides groups, tasks and the cap's place."""

    async def after_outage(self):
        """Redis answers again: join this socket's groups again (a Redis restarted empty forgot them)."""

        async def join(group):
            try:
                await self.channel_layer.group_add(group, self.channel_name)
            except Exception as exc:  # noqa: BLE001 (down again: the next recovery repeats it)
                logger.warning("socket: joining group %s again failed: %s", group, exc)

        joined = list(self.groups_joined)
        await asyncio.gather(*(join(group) for group in joined))
        # A group left meanwhile (access changed while the adds were under way) is left again.
        for group in set(joined) - set(self.groups_joined):
            try:
                await self.channel_layer.group_discard(group, self.channel_name)
            except Exception as exc:  # noqa: BLE001 (the membership expires)
                logger.warning("socket: leaving group %s failed: %s", group, exc)
        if self.cap_user_id is not None:  # a Redis restarted empty forgot the socket's place too
            try:
                await socketcap.confirm(self.cap_user_id, self.channel_name, recreate=True)
            except Exception as exc:  # noqa: BLE001 (retried at the next check)
                logger.warning("user %s: claiming a socket's place again failed: %s", self.cap_user_id, exc)
        await self.refresh_after_outage()

    async def refresh_after_outage(self):
        """What a subclass sends after an outage, for the events it may have lost."""

    async def send_frame(self, frame):
        await self.send(text_data=json.dumps(frame))

    @functools.cached_property
    def language(self):
        """The language of this socket's page (conferences/protocol.py), worked out once."""
        return protocol.language_of(self.scope)

    async def send_error(self, error):
        """An ``error`` frame: the protocol's English text, and ``error_text`` in the page's language."""
        await self.send_frame({"type": "error", "error": error, "error_text": protocol.localized(error, self.language)})

    async def session_ended(self, message):
        await self.close(CLOSE_NOT_LOGGED_IN)


class RequestsConsumer(GuardedConsumer):
    """A socket that takes requests (the room page's, a program's stream): the rate limit, the frame checks, and
    an answer for every request whatever fails while handling it. Subclasses give ``handle_request``.

    A socket's requests are handled in the order they came, by a task of the
    socket's own, not in its consumer's dispatch: meanwhile the socket goes on
    taking what the channel layer brings it, so the worker's reply to one
    click does not wait for the checks of the click after it (Channels
    dispatches one message of a consumer at a time). ``prepare`` starts the
    part of a request that may run beside the earlier ones, for at most
    PREPARED_AHEAD requests at a time; the others' waits for their turn (a
    burst of the rate limit's twenty does not put twenty database checks of
    one socket in front of every other socket's).
    """

    request_queue = None
    prepared_ahead = 0

    def takes_requests(self):
        """Whether the socket is far enough in its connect to take requests."""
        raise NotImplementedError

    def log_name(self):
        raise NotImplementedError

    async def request_failed(self, request, error):
        await self.reply(request.request_id, False, error)

    async def receive(self, text_data=None, bytes_data=None):
        if not self.takes_requests():
            return
        # The rate limit first: a flood costs no database hop and no parsing.
        if not self.bucket.take():
            await self.send_error("too many messages; slow down")
            return
        if bytes_data is not None or text_data is None:
            await self.send_error("send JSON text frames")
            return
        try:
            request = frames.parse_request(text_data)
        except frames.FrameError as exc:
            await self.send_error(str(exc))
            return
        arrived = time.monotonic()
        prepared = self._prepare(request, arrived) if self.prepared_ahead < PREPARED_AHEAD else None
        if self.request_queue is None:
            self.request_queue = asyncio.Queue()  # as long as the rate limit's bucket lets it be
            self.start_task(self._take_requests(self.request_queue), name="socket-requests")
        self.request_queue.put_nowait((request, arrived, prepared))

    def prepare(self, request, arrived):
        """A task doing the part of ``request`` that need not wait for the socket's earlier requests, or None;
        ``handle_request`` is given it. ``arrived``: when the request came (``time.monotonic()``)."""
        return None

    def _prepare(self, request, arrived):
        prepared = self.prepare(request, arrived)
        if prepared is not None:
            self.prepared_ahead += 1
            prepared.add_done_callback(self._prepared_done)
        return prepared

    def _prepared_done(self, task):
        self.prepared_ahead -= 1
        fanout.retrieve(task)  # awaited in turn, unless the socket closed first

    async def _take_requests(self, queue):
        while True:
            request, arrived, prepared = await queue.get()
            if prepared is None:  # more came at once than may be prepared ahead: its turn now
                prepared = self._prepare(request, arrived)
            await self._handle(request, prepared)

    async def _handle(self, request, prepared):
        try:
            await self.handle_request(request, prepared)
        except DatabaseError as exc:
            logger.warning("%s: request failed: database: %s", self.log_name(), exc)
            await self.request_failed(request, DATABASE_DOWN)
        except ChannelFull:
            logger.warning("%s: request refused: the channel layer is full", self.log_name())
            await self.request_failed(request, LAYER_BUSY)
        except Exception:
            logger.exception("%s: request failed", self.log_name())
            await self.request_failed(request, INTERNAL_ERROR)


class ConferenceConsumer(RequestsConsumer):
    """Streams a room's events to one browser and carries its moderator actions to the worker."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.conference = None
        self.hub = None
        self.role = None
        self.snapshot_pending = False
        self.waiting_events = []
        self.last_seq = 0
        self.pending = {}
        self.pending_since = {}  # request key -> (monotonic time it arrived, action): the reply time metric
        # The last snapshot sent, for a resync when nothing happened since.
        self.snapshot_text = None
        self.snapshot_at = 0.0

    async def connect(self):
        """Accept, then check everything in one database hop, join the hub and send the snapshot.

        Refusals, in this order: 4401 not logged in, 4404 no such room, 4403
        no access, 4429 too many sockets.
        """
        await self.accept()
        self.session_key = self.scope.get("session_key")
        refusal, user, conference, role = await db_call(
            _room_connect, self.session_key, self.scope["url_route"]["kwargs"]["slug"]
        )
        if refusal is not None:
            await self.close(refusal)
            return
        if not await self.admit(user):
            return
        self.conference, self.role = conference, role
        self.start_task(self._watch(), name="room-socket-check")
        # Room events come through the process's hub; they wait while the snapshot is built.
        self.snapshot_pending = True
        self.hub = fanout.hub_for(self.channel_layer)
        await self.hub.join(conference.pk, self)
        await self.send_snapshot()

    async def release_more(self):
        for task, _request_id in self.pending.values():
            task.cancel()
        self.pending.clear()
        if self.hub is not None:
            try:
                await self.hub.leave(self.conference.pk, self)
            except Exception as exc:  # noqa: BLE001 (the hub forgets failed sockets when its layer fails)
                logger.warning("room %s: leaving the hub failed: %s", self.conference.pk, exc)
            self.hub = None

    async def _watch(self):
        """Every SESSION_CHECK_SECONDS: still logged in, still allowed, and was the room's last event lost?

        The login and the role come from fresh rows (see the module's rules).
        A lower role sends a fresh snapshot (``can_moderate`` changed).

        A gap in seq makes the page ask for a snapshot, but only when a later
        event arrives: an event the channel layer dropped (over capacity, Redis
        restarted) at the end of a burst would leave the roster wrong until the
        room's next event. So the check also reads the room's seq: when the
        socket is behind it and has received nothing since the previous check,
        the missing events are not merely queued behind others (a socket that
        lags under load keeps advancing) but lost, and a fresh snapshot repairs
        the roster, within two check periods.
        """
        seq_at_last_check = None
        while True:
            await asyncio.sleep(SESSION_CHECK_SECONDS)
            try:
                refusal, user, role, room_seq = await db_call(
                    _room_check, self.session_key, self.user_id, self.conference.pk
                )
            except DatabaseError as exc:
                # The database is briefly unavailable: look again next time.
                logger.warning("room %s: socket check failed: %s", self.conference.pk, exc)
                continue
            try:
                if refusal is not None:
                    logger.info("room %s: user %s: closing a socket (%s)", self.conference.pk, self.user_id, refusal)
                    await self.close(refusal)
                    return
                await self.confirm_place()
                self.scope["user"] = user
                if role != self.role:
                    self.role = role
                    await self.send_snapshot()
                elif room_seq > self.last_seq and self.last_seq == seq_at_last_check:
                    logger.info(
                        "room %s: socket stuck at seq %s while the room is at %s, sending a snapshot",
                        self.conference.pk,
                        self.last_seq,
                        room_seq,
                    )
                    await self.send_snapshot(fresh=True)
                seq_at_last_check = self.last_seq
            except DatabaseError as exc:
                logger.warning("room %s: socket check failed: %s", self.conference.pk, exc)
            except Exception:
                # The check must outlive any one failure: it is what ends revoked sockets.
                logger.exception("room %s: socket check failed", self.conference.pk)

    async def send_snapshot(self, *, fresh=False):
        """Send the room's snapshot (from the hub: shared with the room's other sockets), then what followed it.

        ``fresh``: read after this call (a resync, the lost-event repair),
        not a snapshot the hub keeps.
        """
        self.snapshot_pending = True
        after = []
        try:
            seq, text, after = await self.hub.snapshot(
                self.conference.pk, self.role == access.MODERATOR, self._read_snapshot, fresh=fresh
            )
            self.last_seq = seq
            self.snapshot_text = text
            self.snapshot_at = time.monotonic()
            await self.send(text_data=text)
        finally:
            self.snapshot_pending = False
            # The messages the hub heard after its snapshot, then those that came to this socket
            # meanwhile (the same message objects: each once, in order; seq filters the rest).
            given = {id(message) for message in after}
            waiting = after + [m for m in self.waiting_events if id(m) not in given]
            self.waiting_events = []
            for message in waiting:
                await self.room_event(message)

    async def _read_snapshot(self):
        return await dbthreads.web("snapshots").call(_snapshot, self.conference.pk)

    async def refresh_after_outage(self):
        # After the hub has joined the room's group again (_after_outage): join first, then read.
        if self.hub is not None and self.conference is not None:
            await self.send_snapshot(fresh=True)

    async def resync(self):
        """A snapshot for a page that asks: the last one again when nothing happened since, else a fresh one."""
        if self.snapshot_text is not None and time.monotonic() - self.snapshot_at < SNAPSHOT_REUSE_SECONDS:
            await self.send(text_data=self.snapshot_text)
            return
        await self.send_snapshot(fresh=True)

    # --- from the browser -----------------------------------------------------------

    def takes_requests(self):
        return self.conference is not None

    def log_name(self):
        return f"room {self.conference.pk}"

    async def request_failed(self, request, error):
        await self._fail(request, error)

    async def _fail(self, request, error):
        pending = self.pending.pop(str(request.request_id), None)
        if pending is not None:
            pending[0].cancel()
        self._replied(str(request.request_id), "error")
        await self.reply(request.request_id, False, error)

    def _replied(self, key, outcome):
        since = self.pending_since.pop(key, None)
        if since is not None:
            started, action = since
            metrics.MODERATION_REPLY.labels(action, outcome).observe(time.monotonic() - started)

    def prepare(self, request, arrived):
        if request.action not in moderation.ACTIONS:
            return None
        # Login, permission and target are checked on every action, from fresh rows; the checks of a
        # socket's clicks run side by side (the "actions" threads), the clicks go to the worker in order.
        check = dbthreads.web("actions").call(
            _moderation_check, self.session_key, self.user_id, self.conference.pk, request.action, request.participant
        )
        task = self.start_task(check, name="room-socket-check")
        task.arrived = arrived
        return task

    async def handle_request(self, request, prepared=None):
        if request.action == protocol.RESYNC:
            await self.resync()
            await self.reply(request.request_id, True)
            return
        if request.action not in moderation.ACTIONS:
            await self.reply(request.request_id, False, "unknown action")
            return
        await self.moderate(
            request.action, request.request_id, request.participant, request_arguments(request), check=prepared
        )

    async def moderate(self, action, request_id, participant_id, arguments, check):
        """Carry a moderator's action to the worker (``check``: the task checking it, begun when it came)."""
        key = str(request_id)
        if key in self.pending:
            await self.reply(request_id, False, "request_id already in use")
            return
        arrived = check.arrived
        error = await check
        if error is not None:
            await self.reply(request_id, False, error)
            return
        if action not in moderation.PARTICIPANT_ACTIONS:
            participant_id = None
        self.pending[key] = (self.start_task(self._expire(key, request_id), name="room-socket-reply"), request_id)
        self.pending_since[key] = (arrived, metrics.action_label(action))
        await moderation.send_request(
            server_id=self.conference.server_id,
            conference_id=self.conference.pk,
            action=action,
            participant_id=participant_id,
            actor_id=self.user_id,
            request_id=key,
            reply_channel=self.channel_name,
            **(arguments or {}),
        )

    async def _expire(self, key, request_id):
        await asyncio.sleep(REPLY_TIMEOUT)
        if self.pending.pop(key, None) is not None:
            self._replied(key, "timeout")
            await self.reply(request_id, False, moderation.WORKER_DOWN)

    async def reply(self, request_id, ok, error=None):
        frame = {"type": protocol.REPLY, "request_id": request_id, "ok": ok}
        if not ok:
            frame["error"] = error
            frame["error_text"] = protocol.localized(error, self.language)
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
        self.snapshot_text = None  # something happened: a resync reads afresh
        await self.send(text_data=event_text(message, self.role))

    async def moderation_reply(self, message):
        pending = self.pending.pop(str(message.get("request_id")), None)
        if pending is None:
            return  # not ours, or already answered by the timeout
        task, request_id = pending
        task.cancel()
        self._replied(str(message.get("request_id")), "ok" if message.get("ok") else "error")
        await self.reply(request_id, bool(message.get("ok")), message.get("error"))

    async def access_changed(self, message):
        """Grants changed (room, user or group): close if no longer allowed, else refresh the role."""
        try:
            refusal, user, role, _seq = await db_call(_room_check, self.session_key, self.user_id, self.conference.pk)
        except DatabaseError as exc:
            logger.warning("room %s: access check failed (%s); the periodic check repeats it", self.conference.pk, exc)
            return
        if refusal is not None:
            await self.close(refusal)
            return
        self.scope["user"], self.role = user, role
        await self.send_snapshot()


class RoomListConsumer(GuardedConsumer):
    """The room list, an overview that moves: the rooms a user may see, who is in each, who talks, the links.

    ``rooms`` at connect (and when the visible rooms change) has each room's
    state with its present callers (compact) and its Asterisk link; then
    ``conference.updated``, ``participant.joined`` / ``updated`` / ``left``
    (compact, with the room's ``conference`` slug) and ``asterisk.status``
    for those rooms. Room events carry seq: a gap in a room's events (an
    event lost by the layer) sends the whole list again.
    """

    metrics_kind = "rooms"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.room_seqs = {}  # room id -> the seq of its last event sent to this socket
        self.slugs = {}  # room id -> its slug, for the rooms listed
        self.rooms_lock = asyncio.Lock()  # one list at a time: an older read may not undo a newer one

    async def connect(self):
        await self.accept()
        self.session_key = self.scope.get("session_key")
        user, rooms = await db_call(_session_rooms, self.session_key)
        if user is None:
            await self.close(CLOSE_NOT_LOGGED_IN)
            return
        if not await self.admit(user):
            return
        await self.send_rooms(rooms)
        self.start_task(self._watch(), name="room-list-check")

    async def send_rooms(self, rooms=None):
        """Join the groups of the rooms the user may see now and send them; False when logged out (closed).

        ``rooms``: read in the same hop as the login check already.
        """
        async with self.rooms_lock:  # (a revoked room must not come back with an older read)
            return await self._send_rooms(rooms)

    async def _send_rooms(self, rooms):
        if rooms is None:
            user, rooms = await db_call(_session_rooms, self.session_key, self.user_id)
            if user is None:
                await self.close(CLOSE_NOT_LOGGED_IN)
                return False
            self.scope["user"] = user
        wanted = {broadcast.room_group(pk) for pk, _state in rooms}
        for group in [g for g in self.groups_joined if g.startswith("conference.") and g not in wanted]:
            await self.leave_group(group)
        for group in sorted(wanted - set(self.groups_joined)):
            await self.join_group(group)
        self.room_seqs = {pk: state["seq"] for pk, state in rooms}
        self.slugs = {pk: state["slug"] for pk, state in rooms}
        await self.send(text_data=json.dumps({"type": protocol.ROOMS, "rooms": [state for _pk, state in rooms]}))
        return True

    async def refresh_after_outage(self):
        await self.send_rooms()

    def _room_ids_joined(self):
        return {int(g.split(".", 1)[1]) for g in self.groups_joined if g.startswith("conference.")}

    async def _watch(self):
        """Every SESSION_CHECK_SECONDS: still logged in, the visible rooms the same, and no room's event lost?

        A room whose seq stayed ahead of the socket's for a whole check
        period lost an event (one committed while the list was read, one the
        layer dropped at the end of a burst): the list is sent again.
        """
        behind_before = set()
        while True:
            await asyncio.sleep(SESSION_CHECK_SECONDS)
            try:
                visible = await db_call(_visible_room_ids, self.session_key, self.user_id)
                if visible is None:
                    await self.close(CLOSE_NOT_LOGGED_IN)
                    return
                await self.confirm_place()
                behind = {pk for pk, seq in visible.items() if seq > self.room_seqs.get(pk, 0)}
                if set(visible) != self._room_ids_joined() or behind & behind_before:
                    await self.send_rooms()
                    behind = set()
                behind_before = behind
            except DatabaseError as exc:
                logger.warning("user %s: room list check failed: %s", self.user_id, exc)
            except Exception:
                logger.exception("user %s: room list check failed", self.user_id)

    async def receive(self, text_data=None, bytes_data=None):
        pass  # nothing to say: this socket only listens

    async def room_event(self, message):
        conference_id, seq, kind = message.get("conference"), message.get("seq"), message.get("kind")
        slug = self.slugs.get(conference_id)
        if slug is None:
            return  # a room this socket no longer lists (or not yet)
        if seq is not None:
            last = self.room_seqs.get(conference_id, 0)
            if seq <= last:
                return  # in the list sent already
            self.room_seqs[conference_id] = seq
            if seq > last + 1:
                await self.send_rooms()  # an event was lost: the whole list again
                return
        # The room message carries its list part serialised once for every list socket (broadcast.py).
        part = message.get("list")
        if kind == protocol.CONFERENCE_UPDATED and part is not None:
            text = f'{{"type":"conference.updated","conference":{part}}}'
        elif kind in broadcast.LIST_PARTICIPANT_KINDS and part is not None:
            text = f'{{"type":"{kind}","conference":{json.dumps(slug)},"participant":{part}}}'
        elif kind == protocol.ASTERISK_STATUS:
            connected = bool(json.loads(message["text"]).get("connected"))
            text = json.dumps({"type": kind, "conference": slug, "connected": connected})
        else:
            return
        await self.send(text_data=text)

    async def access_changed(self, message):
        try:
            await self.send_rooms()
        except DatabaseError as exc:
            logger.warning("user %s: access check failed (%s); the periodic check repeats it", self.user_id, exc)


class NoSuchSocket(AsyncWebsocketConsumer):
    """Any WebSocket path that is not one of ours: accepted, then closed with 4404 (Channels would raise)."""

    async def connect(self):
        await self.accept()
        await self.close(CLOSE_NOT_FOUND)
        raise StopConsumer  # nothing to wait for: not the client's half of the close either
