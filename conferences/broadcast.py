"""Fan-out to browsers: group names, frame shapes and the channel-layer sends.

The only module that calls ``group_send``. Services call it after their
transaction commits; consumers join the groups named here.
"""

import asyncio
import hashlib
import json
import logging
import threading
import weakref
from collections import deque
from contextlib import contextmanager

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from conferences import metrics, protocol

logger = logging.getLogger(__name__)

# The message type consumers handle: its "frame" goes to the browser as is.
ROOM_EVENT = "room.event"
# Several room events of one room in one channel-layer message, in seq order (``events``): what a change
# broadcasts at once (a join and the room's new count; mute all's eight callers) costs one group_send,
# which on a busy worker is a Redis round trip and a Lua script of its own.
ROOM_EVENTS = "room.events"
BATCH_LIMIT = 50  # room events in one such message at most


def room_group(conference_id):
    """The channel-layer group of one room's watchers."""
    return f"conference.{conference_id}"


def user_group(user_id):
    """Every socket of one user: told when the user's grants change."""
    return f"user.{user_id}"


def session_group(session_key):
    """Every socket of one login session: closed when it logs out."""
    digest = hashlib.sha256(session_key.encode()).hexdigest()[:32]
    return f"session.{digest}"


def iso(value):
    return value.isoformat() if value else None


def participant_state(participant):
    """A participant as browsers see it: no channel id, no server details."""
    state = {
        "id": participant.pk,
        "caller_number": participant.caller_number,
        "caller_name": participant.caller_name,
        "role": participant.role,
        # present, or waiting (in the lobby or for the leader: waiting_for says which; joined_at is the arrival)
        "status": str(participant.status),
        "waiting_for": (participant.waiting_for or None) if participant.status == "waiting" else None,
        "joined_at": iso(participant.joined_at),
        "muted": participant.muted,
        "mute_source": (participant.mute_source or None) if participant.muted else None,
        "talking": participant.talking,
        "talk_seconds": round(participant.talk_seconds or 0.0, 1),
        "moh": participant.moh,
        "hand_raised": participant.hand_raised,
        "hand_raised_at": iso(participant.hand_raised_at),
    }
    if participant.left_at is not None:
        state["left_at"] = iso(participant.left_at)
        state["left_reason"] = participant.left_reason
    return state


LIST_FIELDS = ("id", "caller_name", "caller_number", "status", "talking", "muted", "hand_raised")


def list_participant(participant):
    """A present caller as the room list shows it (the room page's state, less what a wall needs not)."""
    state = participant_state(participant)
    return {field: state[field] for field in LIST_FIELDS}


def list_participant_state(frame):
    """The compact caller of a room's participant frame (left ones keep ``left_at``)."""
    participant = frame.get("participant") or {}
    state = {field: participant.get(field) for field in LIST_FIELDS}
    if participant.get("left_at"):
        state["left_at"] = participant["left_at"]
    return state


def list_room_state(conference, participants, waiting_count=0):
    """A room as the room list shows it: its state, who is in it (present), its Asterisk link, its last seq."""
    return {
        **conference_state(conference, len(participants), waiting_count),
        "participants": participants,
        "asterisk": {"connected": conference.server.connected},
        "seq": conference.seq,
    }


def conference_state(conference, participant_count, waiting_count=0):
    """A room as browsers see it: ``participant_count`` counts the present callers, ``waiting_count`` the waiting."""
    return {
        "slug": conference.slug,
        "name": conference.name,
        "number": conference.number,
        "locked": conference.locked,
        "lobby": conference.lobby,
        "wait_for_leader": conference.wait_for_leader,
        "when_leader_leaves": conference.when_leader_leaves,
        "recording": conference.recording,
        "record_mode": conference.record_mode,
        "participant_count": participant_count,
        "waiting_count": waiting_count,
    }


def invite_state(invite):
    """An invitation as browsers see it (``invite.updated``, the snapshot's ``invites``)."""
    return {
        "id": invite.pk,
        "number": invite.number,
        "status": invite.status,
        "participant": invite.participant_id,
        "created_at": iso(invite.created_at),
    }


_outbox = threading.local()


@contextmanager
def collecting():
    """Collect, instead of sending, what this thread broadcasts (after commit) inside the block.

    The worker runs service functions in a database thread and sends what they
    collected from its event loop: no hop back into the loop for every frame.
    """
    _outbox.messages = []
    try:
        yield _outbox.messages
    finally:
        del _outbox.messages


# Messages the channel layer refused (Redis down), kept in order and sent again
# before anything newer: browsers get every event once the layer is back. One
# queue per group (a room's frames keep their order; rooms do not wait for each
# other: with one queue for all, every room's broadcasts took turns behind
# every other's), at most BACKLOG_LIMIT messages in all.
BACKLOG_LIMIT = 10_000
_backlogs: dict[str, deque] = {}

# One flush of a group at a time per event loop: the worker's event processing
# and its heartbeat both flush, and two flushes of one queue would send its head
# twice and then pop a message neither sent.
_flush_locks = weakref.WeakKeyDictionary()  # event loop -> {group: asyncio.Lock}


def backlog_size():
    return sum(len(queue) for queue in _backlogs.values())


def _keep(group, message):
    if backlog_size() >= BACKLOG_LIMIT:
        max(_backlogs.values(), key=len).popleft()  # its pages see a gap in seq and resync
    _backlogs.setdefault(group, deque()).append(message)


async def send_collected(messages):
    """Send collected messages in order, from async code; what fails waits in its group's backlog."""
    groups = []
    for group, message in messages:
        _keep(group, message)
        if group not in groups:
            groups.append(group)
    for group in groups:
        await _flush_group(group)


async def flush_backlog():
    """Send what waits in the backlogs, oldest first per group; stop a group at its first failure.

    Returns how many messages are left.
    """
    for group in [name for name, queue in _backlogs.items() if queue]:
        await _flush_group(group)
    return backlog_size()


def _lock(group):
    loop = asyncio.get_running_loop()
    locks = _flush_locks.get(loop)
    if locks is None:
        locks = _flush_locks[loop] = {}
    lock = locks.get(group)
    if lock is None:
        lock = locks[group] = asyncio.Lock()
    return lock


async def _flush_group(group):
    async with _lock(group):
        layer = get_channel_layer()
        queue = _backlogs.get(group)
        if queue is None:
            return
        if layer is None:
            queue.clear()
        while queue:
            message, taken = _batch(queue)
            try:
                await layer.group_send(group, message)
            except Exception as exc:
                metrics.LAYER_FAILURES.labels("broadcast").inc()
                logger.warning(
                    "group %s: the channel layer refused %s (%s); %s message(s) wait",
                    group,
                    message.get("kind") or message.get("type"),
                    exc.__class__.__name__,
                    len(queue),
                )
                return
            for _ in range(taken):
                queue.popleft()
        if not queue:
            _backlogs.pop(group, None)


def _batch(queue):
    """The next message to send from a group's queue, and how many queued messages it carries.

    Consecutive room events at the head go together as one ``ROOM_EVENTS``
    message; anything else goes alone.
    """
    head = queue[0]
    if head.get("type") != ROOM_EVENT or len(queue) == 1:
        return head, 1
    events = []
    for message in queue:
        if message.get("type") != ROOM_EVENT or len(events) == BATCH_LIMIT:
            break
        events.append(message)
    if len(events) == 1:
        return head, 1
    return {"type": ROOM_EVENTS, "conference": head.get("conference"), "events": events}, len(events)


def room_events(message):
    """The room events a channel-layer message of a room group carries, in order (none for other messages)."""
    kind = message.get("type")
    if kind == ROOM_EVENT:
        return [message]
    if kind == ROOM_EVENTS:
        return list(message.get("events") or ())
    return []


def _group_send(group, message):
    collected = getattr(_outbox, "messages", None)
    if collected is not None:
        collected.append((group, message))
        return
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(group, message)
    except Exception:
        # A channel layer outage must not undo a committed change: browsers
        # catch up through seq gaps and resync.
        metrics.LAYER_FAILURES.labels("broadcast").inc()
        logger.exception("group %s: sending %s failed", group, message.get("type"))


def room_message(frame, conference_id=None):
    """The channel-layer message of a room frame, serialised once for every watcher.

    ``text`` is what goes to browsers as is (no per-socket JSON encoding);
    ``kind`` and ``seq`` are what consumers need to decide without parsing it.
    """
    # Keys starting with "_" are for the consumers, not the browsers (RoomConsumer.room_event).
    private = {key[1:]: frame[key] for key in frame if key.startswith("_")}
    frame = {key: value for key, value in frame.items() if not key.startswith("_")}
    message = {
        "type": ROOM_EVENT,
        "conference": conference_id,
        "kind": frame["type"],
        "seq": frame.get("seq"),
        "text": json.dumps(frame, separators=(",", ":")),
        **private,
    }
    # The room list's part, also serialised once (conferences/consumers.py, RoomListConsumer).
    if frame["type"] in LIST_PARTICIPANT_KINDS:
        message["list"] = json.dumps(list_participant_state(frame), separators=(",", ":"))
    elif frame["type"] == protocol.CONFERENCE_UPDATED and frame.get("conference"):
        message["list"] = json.dumps(frame["conference"], separators=(",", ":"))
    return message


LIST_PARTICIPANT_KINDS = frozenset(protocol.PARTICIPANT_FRAMES)


def send_to_room(conference_id, frame):
    """Send one frame to every watcher of a room. Call only after the change committed."""
    _group_send(room_group(conference_id), room_message(frame, conference_id))


def send_room_access_changed(conference_id):
    """Tell a room's sockets to check their viewer's grants again."""
    _group_send(room_group(conference_id), {"type": "access.changed", "conference": conference_id})


def send_user_access_changed(user_id):
    """Tell one user's sockets to check the user's grants again."""
    _group_send(user_group(user_id), {"type": "access.changed"})


def send_session_ended(session_key):
    """Close the sockets opened with a session that has logged out."""
    _group_send(session_group(session_key), {"type": "session.ended"})
