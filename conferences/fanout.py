"""One subscription per web process and room: room events reach the process once, then its sockets.

Without it every socket watching a room is a member of the room's group: the
channel layer hands each event to every socket's consumer, and Channels wakes
each one (a receive, a task, a dispatch) before it forwards the text. The hub
is the only member for its process; it forwards the text to each of the
process's sockets of that room directly. Other messages of the room's group
(access changes) go on to the sockets' own channels.

The hub joins a room's group once, when the room's first socket arrives (the
membership is renewed hourly), and keeps the room's last snapshot with the
events that came after it (``RoomView``): a socket that connects gets that
snapshot and those events, so a thousand pages opening at once cost one
database read per room, not one each, and no socket waits for another's
Redis round trip. The snapshot is read only while the hub is a member of the
room's group, so every event after it reaches the hub (the same rule a socket
keeps on its own: join first, then read). It serves new sockets for
SNAPSHOT_MAX_AGE seconds or SINCE_LIMIT events, whichever comes first, and
is dropped when the hub sees a gap in the room's seq. A page's ``resync``
and the periodic repair read afresh (``fresh=True``: a read that began after
the request), since they may be repairing an event the hub lost too.

The layer rides out a short Redis outage or a Sentinel failover itself
(conferencesite/layers.py); afterwards the hub joins its rooms' groups again
(``rejoin``) before its sockets read fresh snapshots (conferences/consumers.py).
If the hub's receive fails for longer, it closes every socket it serves:
pages reconnect and resync, as they do when their own consumer fails.
"""

import asyncio
import itertools
import json
import logging
import time
import weakref
from collections import defaultdict

from conferences import broadcast, metrics, protocol

logger = logging.getLogger(__name__)

CLOSE_LAYER_FAILED = protocol.SERVER_ERROR
# How often a hub renews its group memberships (channels_redis forgets members after a day).
REFRESH_SECONDS = 3600.0
# How long, and for how many later events, a room's snapshot serves new sockets.
SNAPSHOT_MAX_AGE = 2.0
SINCE_LIMIT = 200

_hubs = weakref.WeakKeyDictionary()  # channel layer -> RoomHub


def hub_for(layer):
    loop = asyncio.get_running_loop()
    hub = _hubs.get(layer)
    if hub is None or hub.loop is not loop:
        hub = _hubs[layer] = RoomHub(layer, loop)
    return hub


def existing_hub(layer):
    """The hub of ``layer`` on the running loop, or None (no room socket has joined one)."""
    hub = _hubs.get(layer)
    if hub is None or hub.loop is not asyncio.get_running_loop():
        return None
    return hub


def retrieve(task):
    """A done callback for a task whose failure its awaiters report, if any are left (a read whose sockets
    all closed meanwhile, a socket's check whose socket closed): not 'never retrieved' otherwise."""
    if not task.cancelled():
        task.exception()


class RoomView:
    """What a hub keeps of one room: its last snapshot, the room messages since, and the read in flight."""

    def __init__(self):
        self.member = False  # the hub's channel is in the room's group
        self.snapshot = None  # the room's state without the viewer's part (can_moderate)
        self.read_at = 0.0
        self.since = []  # room messages received since the read of ``snapshot`` began
        self.texts = {}  # can_moderate -> the snapshot as sent
        self.reading = None  # the read in flight: a task
        self.asks = 0  # snapshot requests so far
        self.read_after = 0  # the requests made before the read in flight began
        self.last_seq = None
        self.outages = 0  # channel-layer outages the hub lived through: a read begun before one is not kept

    def usable(self):
        return (
            self.snapshot is not None
            and self.reading is None
            and len(self.since) <= SINCE_LIMIT
            and time.monotonic() - self.read_at < SNAPSHOT_MAX_AGE
        )

    def heard(self, message):
        """A room message the hub received: kept for sockets that connect later."""
        seq = message.get("seq")
        if seq is not None:
            if self.last_seq is not None and seq > self.last_seq + 1:
                self.read_at = float("-inf")  # the hub missed an event: the next socket reads afresh
            if self.last_seq is None or seq > self.last_seq:
                self.last_seq = seq
        if self.snapshot is not None or self.reading is not None:
            self.since.append(message)
            if len(self.since) > SINCE_LIMIT and self.reading is None:
                self.snapshot, self.since, self.texts = None, [], {}

    def served(self, can_moderate):
        """``(snapshot text, messages after it)`` for a new socket."""
        text = self.texts.get(can_moderate)
        if text is None:
            text = self.texts[can_moderate] = json.dumps({**self.snapshot, "can_moderate": can_moderate})
        after = [m for m in self.since if m.get("seq") is None or m["seq"] > self.snapshot["seq"]]
        return self.snapshot["seq"], text, after


class RoomHub:
    def __init__(self, layer, loop):
        self.layer = layer
        self.loop = loop
        self.channel = None
        self.task = None
        self.refresher = None
        self.rooms = defaultdict(set)  # conference id -> consumers
        self.views = {}  # conference id -> RoomView
        self.lock = asyncio.Lock()

    async def _ensure_channel(self):
        if self.channel is not None:
            return self.channel
        async with self.lock:
            if self.channel is None:
                # The default prefix: channels_redis reads a process's local channels from one
                # Redis key per prefix, and one receiver at a time; a prefix of its own would
                # leave the hub waiting behind the sockets' receive.
                channel = await self.layer.new_channel()
                self.task = self.loop.create_task(self._run(channel))
                self.refresher = self.loop.create_task(self._refresh(channel))
                self.channel = channel
        return self.channel

    async def join(self, conference_id, consumer):
        """Serve ``consumer`` the room's events; the hub joins the room's group with the room's first socket."""
        channel = await self._ensure_channel()
        view = self.views.get(conference_id)
        if view is None:
            view = self.views[conference_id] = RoomView()
        self.rooms[conference_id].add(consumer)
        if view.member:
            return
        # Only a room's first socket (and those that arrive meanwhile) waits here. The hub's lock
        # orders the room's group add after the discard of a room that emptied just before.
        async with self.lock:
            if view.member or self.views.get(conference_id) is not view or self.channel != channel:
                return
            try:
                await self.layer.group_add(broadcast.room_group(conference_id), channel)
            except BaseException:
                self._forget(conference_id, consumer)
                if conference_id not in self.rooms:
                    self.views.pop(conference_id, None)
                raise
            view.member = True

    async def snapshot(self, conference_id, can_moderate, read, *, fresh=False):
        """The room's snapshot for one socket, and the room messages after it: ``(seq, text, messages)``.

        ``read()`` reads the room's state from the database (without
        ``can_moderate``). Sockets that ask at the same time share one read;
        with ``fresh`` the read began after the call.
        """
        view = self.views.get(conference_id)
        if view is None or not view.member:
            raise RuntimeError("the socket has not joined the room")
        view.asks += 1
        asked = view.asks
        while True:
            if not fresh and view.usable():
                return view.served(can_moderate)
            if view.reading is None:
                view.reading = self.loop.create_task(self._read(view, read))
                view.reading.add_done_callback(retrieve)
                view.read_after = view.asks  # the asks this read answers as fresh
            reading, answers = view.reading, view.read_after
            await asyncio.shield(reading)  # its failure is every waiting socket's
            if (not fresh or answers >= asked) and view.snapshot is not None:
                return view.served(can_moderate)
            # A read that began before this ask, or a snapshot dropped meanwhile: read again.

    async def _read(self, view, read):
        view.since, view.texts = [], {}
        outages = view.outages
        try:
            snapshot = await read()
        except BaseException:
            view.snapshot, view.since = None, []
            raise
        finally:
            view.reading = None
        view.snapshot, view.read_at = snapshot, time.monotonic()
        if view.outages != outages:
            view.read_at = float("-inf")  # begun before the hub joined the group again: served, not kept
        view.since = [m for m in view.since if m.get("seq") is None or m["seq"] > snapshot["seq"]]
        numbered = [snapshot["seq"], *(m["seq"] for m in view.since if m.get("seq") is not None)]
        if any(later != earlier + 1 for earlier, later in itertools.pairwise(numbered)):
            view.read_at = float("-inf")  # served to the sockets that asked (they resync); not kept
        view.last_seq = max(view.last_seq or 0, numbered[-1])
        return snapshot

    def _forget(self, conference_id, consumer):
        members = self.rooms.get(conference_id)
        if members is not None:
            members.discard(consumer)
            if not members:
                del self.rooms[conference_id]

    async def _refresh(self, channel):
        """Renew the hub's memberships while it serves rooms, well inside the layer's group expiry."""
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            sweep = getattr(self.layer, "sweep", None)  # the project's Redis layer (conferencesite/layers.py)
            if sweep is not None:
                sweep()
            async with self.lock:
                if self.channel != channel:
                    return  # this hub's channel failed; a new one renews its own
                for conference_id, view in list(self.views.items()):
                    if not view.member:
                        continue
                    try:
                        await self.layer.group_add(broadcast.room_group(conference_id), channel)
                    except Exception as exc:  # noqa: BLE001 (retried at the next round)
                        metrics.LAYER_FAILURES.labels("group").inc()
                        logger.warning("room %s: renewing the group membership failed: %s", conference_id, exc)

    async def rejoin(self):
        """After a Redis outage: join the rooms' groups again and read their snapshots afresh.

        A Redis restarted empty has forgotten the hub's memberships; after a
        Sentinel failover they are on the new master already (adding again
        changes nothing). Events sent meanwhile may be lost either way, so
        the next socket's snapshot is read, not served from before.
        """
        async with self.lock:
            if self.channel is None:
                return
            channel = self.channel
            views = [(conference_id, view) for conference_id, view in self.views.items() if view.member]
            for _conference_id, view in views:
                view.read_at = float("-inf")
                view.outages += 1

            async def add(conference_id):
                try:
                    await self.layer.group_add(broadcast.room_group(conference_id), channel)
                except Exception as exc:  # noqa: BLE001 (the layer is down again: the next recovery repeats it)
                    metrics.LAYER_FAILURES.labels("group").inc()
                    logger.warning("room %s: joining the group again failed: %s", conference_id, exc)

            await asyncio.gather(*(add(conference_id) for conference_id, _view in views))

    async def leave(self, conference_id, consumer):
        members = self.rooms.get(conference_id)
        if not members or consumer not in members:
            return
        self._forget(conference_id, consumer)
        if conference_id in self.rooms:
            return
        view = self.views.pop(conference_id, None)
        if view is None or not view.member:
            return
        async with self.lock:
            view.member = False
            if self.channel is None:
                return
            try:
                await self.layer.group_discard(broadcast.room_group(conference_id), self.channel)
            except Exception as exc:  # noqa: BLE001 (the layer is down: the group expires)
                metrics.LAYER_FAILURES.labels("group").inc()
                logger.warning("room %s: leaving the group failed: %s", conference_id, exc)

    async def _run(self, channel):
        try:
            while True:
                message = await self.layer.receive(channel)
                conference_id = message.get("conference")
                events = broadcast.room_events(message)
                if events:
                    view = self.views.get(conference_id)
                    if view is not None:
                        for event in events:
                            view.heard(event)
                for consumer in list(self.rooms.get(conference_id, ())):
                    try:
                        if not events:
                            await self.layer.send(consumer.channel_name, message)
                        for event in events:
                            await consumer.room_event(event)
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        logger.exception("room %s: a socket failed to take an event", conference_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            metrics.LAYER_FAILURES.labels("hub").inc()
            logger.warning("room hub: the channel layer failed (%s); closing its sockets", exc)
            consumers = [c for members in self.rooms.values() for c in members]
            self.rooms.clear()
            self.views.clear()
            self.channel = None
            # At the same time: a close waits for what its socket was handed (FanOutConsumer.close).
            results = await asyncio.gather(
                *(consumer.close(CLOSE_LAYER_FAILED) for consumer in consumers), return_exceptions=True
            )
            for result in results:
                if isinstance(result, Exception):
                    logger.warning("closing a socket failed: %r", result)
