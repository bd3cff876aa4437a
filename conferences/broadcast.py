"""Fan-out to browsers: group names, frame shapes and the channel-layer sends.

The only module that calls ``group_send``. Services call it after their
transaction commits; consumers join the groups named here.
"""

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)

# The message type consumers handle: its "frame" goes to the browser as is.
ROOM_EVENT = "room.event"


def room_group(conference_id):
    """The channel-layer group of one room's watchers."""
    return f"conference.{conference_id}"


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


def send_to_room(conference_id, frame):
    """Send one frame to every watcher of a room. Call only after the change committed."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(room_group(conference_id), {"type": ROOM_EVENT, "frame": frame})
    except Exception:
        # A channel layer outage must not undo a committed change: browsers
        # catch up through seq gaps and resync.
        logger.exception("conference %s: broadcast of %s failed", conference_id, frame.get("type"))
