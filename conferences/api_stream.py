"""The event stream for programs, at /ws/api/v1/events/: every room a token may see, on one socket.

The room socket's protocol (docs/protocol.md): a snapshot per room, room
events with the room's ``seq``, ``resync``. What differs:

- A program proves who it is with ``Authorization: Bearer <token>`` in the
  handshake (conferences/tokens.py), never with a cookie: the route is not
  behind the session middleware, so a browser page on another site cannot
  ride a visitor's login into it (a browser cannot set that header on a
  WebSocket). For the same reason it is not behind the Origin check
  (programs send no ``Origin``; conferencesite/asgi.py). A missing, bad,
  expired or revoked token is accepted, then closed with 4401.
- Every frame about a room names it: ``"room": <slug>`` is the first field
  of its snapshot, its events and the reply to its ``resync``. ``seq`` is
  per room.
- The stream only listens: a moderator action is answered with a ``reply``
  saying so (the REST API carries actions, with the token's scope, throttle
  and history in one place).

Everything else is the page sockets' machinery (conferences/consumers.py,
``GuardedConsumer``): the frame checks and the rate limit, the per-user cap
(a token's sockets count under its owner's), frames handed over without
waiting (a program that does not read is closed with 4008 and holds nobody
up), room events through the process's hub (conferences/fanout.py), and
rights read again from fresh rows every SESSION_CHECK_SECONDS and when a
grant changes: a room the token may no longer see is dropped
(``room.removed``), a room it may now see is added (its snapshot), and a
token revoked or expired, or an owner deactivated, ends the stream with
4401; a token that sees no room at all, with 4403.

The plain token is never kept on the socket nor logged: only the token's id.
"""

import asyncio
import json
import logging
from dataclasses import dataclass, field

from django.db import DatabaseError
from django.db.models import Q
from django.utils import timezone, translation
from django.utils.translation import gettext_noop

from conferences import access, consumers, dbthreads, fanout, frames, moderation, protocol, tokens
from conferences.models import ApiToken

logger = logging.getLogger(__name__)

PATH = "ws/api/v1/events/"
ROOM_REMOVED = "room.removed"  # the token may no longer see this room: no more of its frames come

# The stream's own reply errors (the page's are in conferences/protocol.py).
ACTIONS_NOT_HERE = gettext_noop("the event stream only listens: send actions through the REST API")
ROOM_MISSING = gettext_noop("room missing or invalid")
NO_SUCH_ROOM = "no such room"  # protocol.ERRORS: also for a room that exists but this token may not see
_OWN_ERRORS = frozenset((ACTIONS_NOT_HERE, ROOM_MISSING))
MAX_SLUG_LENGTH = 50  # Conference.slug


def localized(error, language):
    if error in _OWN_ERRORS:
        with translation.override(language):
            return translation.gettext(error)
    return protocol.localized(error, language)


def named(slug, text):
    """A room frame's JSON text with ``"room": slug`` put first (frames are non-empty JSON objects)."""
    return f'{{"room":{json.dumps(slug)},{text[1:]}' if text.startswith("{") and text != "{}" else text


# --- database helpers (run in the database threads) -----------------------------------------


def _visible(token):
    """``{room id: (slug, role, seq)}`` of the rooms ``token`` may see now."""
    rooms = tokens.conferences_visible(token).only("pk", "slug", "seq")
    return {room.pk: (room.slug, tokens.conference_role(token, room), room.seq) for room in rooms}


def _stream_connect(raw):
    """The handshake's one hop: ``(token or None, its visible rooms)``."""
    token = tokens.authenticate(raw)
    if token is None:
        return None, {}
    return token, _visible(token)


def _stream_check(token_id, user_id):
    """The periodic check, from fresh rows: ``(token or None, its visible rooms)``.

    Notes the use as ``tokens.authenticate`` does (at most once a LAST_USED_EVERY):
    a stream open for days is a token in use.
    """
    now = timezone.now()
    token = (
        ApiToken.objects.select_related("user")
        .filter(pk=token_id, user_id=user_id, revoked=False, expires_at__gt=now, user__is_active=True)
        .first()
    )
    if token is None:
        return None, {}
    if token.last_used_at is None or now - token.last_used_at >= tokens.LAST_USED_EVERY:
        ApiToken.objects.filter(pk=token.pk).filter(
            Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - tokens.LAST_USED_EVERY)
        ).update(last_used_at=now)
    return token, _visible(token)


# --- the socket ----------------------------------------------------------------------------


@dataclass
class StreamRoom:
    """What the stream keeps of one room it follows."""

    pk: int
    slug: str
    role: str
    last_seq: int = 0
    snapshot_pending: bool = True  # events wait while the snapshot is read (the hub's rule: join, then read)
    waiting_events: list = field(default_factory=list)
    seq_at_last_check: int | None = None


class EventStreamConsumer(consumers.RequestsConsumer):
    metrics_kind = "stream"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.token_id = None
        self.hub = None
        self.rooms = {}  # room id -> StreamRoom
        self.by_slug = {}  # slug -> StreamRoom
        self.rooms_lock = asyncio.Lock()  # one change of the followed rooms at a time

    async def connect(self):
        """Accept, check the token and read its rooms in one hop, then a snapshot per room.

        Refusals: 4401 no token or not a live one (a cookie does not count),
        4403 the token sees no room, 4429 too many streams of this token.
        """
        await self.accept()
        raw = tokens.bearer(dict(self.scope.get("headers") or ()).get(b"authorization"))
        if raw is None:
            await self.close(protocol.NOT_LOGGED_IN)
            return
        token, visible = await consumers.db_call(_stream_connect, raw)
        del raw
        if token is None:
            await self.close(protocol.NOT_LOGGED_IN)
            return
        if not visible:
            await self.close(protocol.FORBIDDEN)
            return
        self.token_id = token.pk
        if not await self.admit(token.user):
            return
        self.hub = fanout.hub_for(self.channel_layer)
        self.start_task(self._watch(), name="event-stream-check")
        async with self.rooms_lock:
            await self._follow(visible)

    def cap_owner(self):
        # A token's streams have a cap of their own (MAX_SOCKETS_PER_USER, like a user's pages): a leaked read
        # token must not be able to fill its owner's places and lock the owner's own pages out (4429).
        return f"token-{self.token_id}"

    async def release_more(self):
        hub, self.hub = self.hub, None
        if hub is None:
            return
        for room in list(self.rooms.values()):
            try:
                await hub.leave(room.pk, self)
            except Exception as exc:  # noqa: BLE001 (the hub forgets failed sockets when its layer fails)
                logger.warning("token %s: leaving room %s's hub failed: %s", self.token_id, room.pk, exc)

    # --- the rooms followed -----------------------------------------------------------

    async def _follow(self, visible, *, repair=False):
        """Follow exactly the rooms of ``visible`` (``{id: (slug, role, seq)}``); hold ``rooms_lock``.

        Rooms no longer visible are dropped (``room.removed``), new ones
        joined with their snapshot, a changed role gets a fresh snapshot
        (``can_moderate``). ``repair``: also a fresh snapshot for a room
        whose last event was lost (see ConferenceConsumer._watch).
        """
        for pk in [pk for pk in self.rooms if pk not in visible]:
            room = self.rooms[pk]
            await self._unfollow(room)
            await self.send_frame({"type": ROOM_REMOVED, "room": room.slug})
        for pk, (slug, role, seq) in visible.items():
            room = self.rooms.get(pk)
            if room is None:
                room = self.rooms[pk] = StreamRoom(pk, slug, role)
                self.by_slug[slug] = room
                try:
                    await self.hub.join(pk, self)
                    await self.send_snapshot(room)
                except BaseException:
                    await self._unfollow(room)  # not followed yet: the next check tries again
                    raise
                continue
            if room.slug != slug:  # renamed in the admin
                self.by_slug.pop(room.slug, None)
                room.slug = slug
                self.by_slug[slug] = room
            if role != room.role:
                old, room.role = room.role, role
                try:
                    await self.send_snapshot(room)
                except BaseException:
                    room.role = old  # the next check sends it again
                    raise
            elif repair and seq > room.last_seq and room.last_seq == room.seq_at_last_check:
                logger.info(
                    "token %s: room %s stuck at seq %s while the room is at %s, sending a snapshot",
                    self.token_id,
                    pk,
                    room.last_seq,
                    seq,
                )
                await self.send_snapshot(room, fresh=True)
            if repair:
                room.seq_at_last_check = room.last_seq

    async def _unfollow(self, room):
        if self.rooms.get(room.pk) is room:
            del self.rooms[room.pk]
        if self.by_slug.get(room.slug) is room:
            del self.by_slug[room.slug]
        if self.hub is not None:
            await self.hub.leave(room.pk, self)

    async def _recheck(self, *, repair=False):
        """Read the token and its rooms again; close (4401, 4403) or follow what it may see now.

        False when the stream was closed.
        """
        if self.close_sent:
            return False
        token, visible = await consumers.db_call(_stream_check, self.token_id, self.user_id)
        if token is None:
            logger.info("token %s: no longer valid; closing its event stream", self.token_id)
            await self.close(protocol.NOT_LOGGED_IN)
            return False
        if not visible:
            logger.info("token %s: sees no room any more; closing its event stream", self.token_id)
            await self.close(protocol.FORBIDDEN)
            return False
        self.scope["user"] = token.user
        async with self.rooms_lock:
            await self._follow(visible, repair=repair)
        return True

    async def _watch(self):
        """Every SESSION_CHECK_SECONDS (the page sockets' period): the token, its rooms, lost events."""
        while True:
            await asyncio.sleep(consumers.SESSION_CHECK_SECONDS)
            try:
                if not await self._recheck(repair=True):
                    return
                await self.confirm_place()
            except DatabaseError as exc:
                logger.warning("token %s: event stream check failed: %s", self.token_id, exc)
            except Exception:
                # The check must outlive any one failure: it is what ends revoked streams.
                logger.exception("token %s: event stream check failed", self.token_id)

    async def access_changed(self, message):
        """Grants changed (the owner's, or a room's): follow what the token may see now."""
        try:
            await self._recheck()
        except DatabaseError as exc:
            logger.warning("token %s: access check failed (%s); the periodic check repeats it", self.token_id, exc)

    # --- snapshots and events ---------------------------------------------------------

    async def send_snapshot(self, room, *, fresh=False):
        """The room's snapshot (the hub's, shared with the process's other sockets of the room), then what followed."""
        room.snapshot_pending = True
        after = []
        try:

            async def read():
                return await dbthreads.web("snapshots").call(consumers._snapshot, room.pk)

            seq, text, after = await self.hub.snapshot(room.pk, room.role == access.MODERATOR, read, fresh=fresh)
            room.last_seq = seq
            await self.send(text_data=named(room.slug, text))
        finally:
            room.snapshot_pending = False
            given = {id(message) for message in after}
            waiting = after + [m for m in room.waiting_events if id(m) not in given]
            room.waiting_events = []
            for message in waiting:
                await self.room_event(message)

    async def room_event(self, message):
        room = self.rooms.get(message.get("conference"))
        if room is None:
            return  # a room this stream no longer follows
        if room.snapshot_pending:
            room.waiting_events.append(message)
            return
        seq = message.get("seq")
        if seq is not None:
            if seq <= room.last_seq:
                return  # already in the snapshot
            room.last_seq = seq
        await self.send(text_data=named(room.slug, consumers.event_text(message, room.role)))

    async def refresh_after_outage(self):
        # The hub has joined the rooms' groups again (consumers._after_outage): fresh snapshots.
        if self.hub is None:
            return
        async with self.rooms_lock:
            for room in list(self.rooms.values()):
                await self.send_snapshot(room, fresh=True)

    # --- from the program -------------------------------------------------------------

    def takes_requests(self):
        return self.hub is not None

    def log_name(self):
        return f"token {self.token_id}"

    async def handle_request(self, request, prepared=None):
        if request.action == protocol.RESYNC:
            slug = frames.clean_text(request.fields.get("room"), MAX_SLUG_LENGTH)
            if slug is None:
                await self.reply(request.request_id, False, ROOM_MISSING)
                return
            room = self.by_slug.get(slug)
            if room is None:
                # The same answer for a room that does not exist and one this token may not see.
                await self.reply(request.request_id, False, NO_SUCH_ROOM, room=slug)
                return
            async with self.rooms_lock:
                if self.rooms.get(room.pk) is room:
                    await self.send_snapshot(room, fresh=True)
                    await self.reply(request.request_id, True, room=room.slug)
                    return
            await self.reply(request.request_id, False, NO_SUCH_ROOM, room=slug)  # dropped meanwhile
            return
        if request.action in moderation.ACTIONS:
            await self.reply(request.request_id, False, ACTIONS_NOT_HERE)
            return
        await self.reply(request.request_id, False, "unknown action")

    async def reply(self, request_id, ok, error=None, *, room=None):
        frame = {"type": protocol.REPLY, "request_id": request_id, "ok": ok}
        if room is not None:
            frame = {"room": room, **frame}
        if not ok:
            frame["error"] = error
            frame["error_text"] = localized(error, self.language)
        await self.send_frame(frame)
