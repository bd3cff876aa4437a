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

logger = logging.getLogger(__name__)

# The message type consumers handle: its "frame" goes to the browser as is.
ROOM_EVENT = "room.event"


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


def _iso(value):
    return value.isoformat() if value else None


def participant_state(participant):
    """A participant as browsers see it: no channel id, no server details."""
    state = {
        "id": participant.pk,
        "caller_number": participant.caller_number,
        "caller_name": participant.caller_name,
        "role": participant.role,
        "joined_at": _iso(participant.joined_at),
        "muted": participant.muted,
        "talking": participant.talking,
        "moh": participant.moh,
    }
    if participant.left_at is not None:
        state["left_at"] = _iso(participant.left_at)
        state["left_reason"] = participant.left_reason
    return state


def conference_state(conference, participant_count):
    """A room as browsers see it."""
    return {
        "slug": conference.slug,
        "name": conference.name,
        "number": conference.number,
        "locked": conference.locked,
        "participant_count": participant_count,
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
# before anything newer: browsers get every event once the layer is back.
_backlog = deque(maxlen=10_000)


async def send_collected(messages):
    """Send collected messages in order, from async code; what fails waits in the backlog."""
    _backlog.extend(messages)
    await flush_backlog()


# One flush at a time per event loop: the worker's event processing and its
# heartbeat both flush, and two flushes of one deque would send its head twice
# and then pop a message neither sent.
_flush_locks = weakref.WeakKeyDictionary()


async def flush_backlog():
    """Send what waits in the backlog, oldest first; stop at the first failure. Returns what is left."""
    loop = asyncio.get_running_loop()
    lock = _flush_locks.get(loop)
    if lock is None:
        lock = _flush_locks[loop] = asyncio.Lock()
    async with lock:
        return await _flush_backlog()


async def _flush_backlog():
    layer = get_channel_layer()
    if layer is None:
        _backlog.clear()
        return 0
    while _backlog:
        group, message = _backlog[0]
        try:
            await layer.group_send(group, message)
        except Exception as exc:
            logger.warning(
                "group %s: the channel layer refused %s (%s); %s message(s) wait",
                group,
                message.get("kind") or message.get("type"),
                exc.__class__.__name__,
                len(_backlog),
            )
            return len(_backlog)
        _backlog.popleft()
    return 0


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
        logger.exception("group %s: sending %s failed", group, message.get("type"))


def room_message(frame, conference_id=None):
    """The channel-layer message of a room frame, serialised once for every watcher.

    ``text`` is what goes to browsers as is (no per-socket JSON encoding);
    ``kind`` and ``seq`` are what consumers need to decide without parsing it.
    """
    return {
        "type": ROOM_EVENT,
        "conference": conference_id,
        "kind": frame["type"],
        "seq": frame.get("seq"),
        "text": json.dumps(frame, separators=(",", ":")),
    }


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
