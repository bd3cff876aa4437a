"""One subscription per web process and room: room events reach the process once, then its sockets.

Without it every socket watching a room is a member of the room's group: the
channel layer hands each event to every socket's consumer, and Channels wakes
each one (a receive, a task, a dispatch) before it forwards the text. The hub
is the only member for its process; it forwards the text to each of the
process's sockets of that room directly. Other messages of the room's group
(access changes) go on to the sockets' own channels.

If the hub's receive fails (the channel layer's Redis went away), it closes
every socket it serves: pages reconnect and resync, as they do when their own
consumer fails.
"""

import asyncio
import logging
import weakref
from collections import defaultdict

from conferences import broadcast, closecodes

logger = logging.getLogger(__name__)

CLOSE_LAYER_FAILED = closecodes.SERVER_ERROR
# How often a hub renews its group memberships (channels_redis forgets members after a day).
REFRESH_SECONDS = 3600.0

_hubs = weakref.WeakKeyDictionary()  # channel layer -> RoomHub


def hub_for(layer):
    loop = asyncio.get_running_loop()
    hub = _hubs.get(layer)
    if hub is None or hub.loop is not loop:
        hub = _hubs[layer] = RoomHub(layer, loop)
    return hub


class RoomHub:
    def __init__(self, layer, loop):
        self.layer = layer
        self.loop = loop
        self.channel = None
        self.task = None
        self.refresher = None
        self.rooms = defaultdict(set)  # conference id -> consumers
        self.lock = asyncio.Lock()

    async def join(self, conference_id, consumer):
        async with self.lock:
            if self.channel is None:
                # The default prefix: channels_redis reads a process's local channels from one
                # Redis key per prefix, and one receiver at a time; a prefix of its own would
                # leave the hub waiting behind the sockets' receive.
                self.channel = await self.layer.new_channel()
                self.task = self.loop.create_task(self._run(self.channel))
                self.refresher = self.loop.create_task(self._refresh(self.channel))
            # Every join also renews the membership's age: the layer forgets members
            # older than its group_expiry (a day), and a wall display stays for longer.
            await self.layer.group_add(broadcast.room_group(conference_id), self.channel)
            self.rooms[conference_id].add(consumer)

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
                for conference_id in list(self.rooms):
                    try:
                        await self.layer.group_add(broadcast.room_group(conference_id), channel)
                    except Exception as exc:  # noqa: BLE001 (retried at the next round)
                        logger.warning("room %s: renewing the group membership failed: %s", conference_id, exc)

    async def leave(self, conference_id, consumer):
        async with self.lock:
            members = self.rooms.get(conference_id)
            if not members or consumer not in members:
                return
            members.discard(consumer)
            if not members:
                del self.rooms[conference_id]
                if self.channel is not None:
                    try:
                        await self.layer.group_discard(broadcast.room_group(conference_id), self.channel)
                    except Exception as exc:  # noqa: BLE001 (the layer is down: the group expires)
                        logger.warning("room %s: leaving the group failed: %s", conference_id, exc)

    async def _run(self, channel):
        try:
            while True:
                message = await self.layer.receive(channel)
                conference_id = message.get("conference")
                forward = message.get("type") != broadcast.ROOM_EVENT
                for consumer in list(self.rooms.get(conference_id, ())):
                    try:
                        if forward:
                            await self.layer.send(consumer.channel_name, message)
                        else:
                            await consumer.room_event(message)
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        logger.exception("room %s: a socket failed to take an event", conference_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            logger.warning("room hub: the channel layer failed (%s); closing its sockets", exc)
            consumers = [c for members in self.rooms.values() for c in members]
            self.rooms.clear()
            self.channel = None
            for consumer in consumers:
                try:
                    await consumer.close(CLOSE_LAYER_FAILED)
                except Exception as close_exc:  # noqa: BLE001 (the socket is gone already)
                    logger.warning("closing a socket failed: %r", close_exc)
