"""Moderation requests: from a browser's socket or the admin to the worker, and the reply back.

Only the worker talks to Asterisk, so callers do not act themselves: they send
a request over the channel layer to the worker of the room's server, which
carries it out through the service functions and replies to the requester.
Permission is the caller's to check (``conferences.access``) before sending;
the worker checks that the target is present in that room.
"""

import asyncio
import time

from channels.layers import get_channel_layer

from conferences import protocol

# The actions and which of them name a caller: the protocol's (conferences/protocol.py).
ACTIONS, PARTICIPANT_ACTIONS, WAITING_ACTIONS = protocol.ACTIONS, protocol.PARTICIPANT_ACTIONS, protocol.WAITING_ACTIONS

REQUEST_TYPE = "moderation.request"
REPLY_TYPE = "moderation.reply"

# A request the worker has not picked up in this time is dropped, not done late.
REQUEST_TTL = 10.0
WORKER_DOWN = "the Asterisk worker did not answer; try again when the link is up"


def refusal(conference, action, participant_id):
    """What the sender checks once the actor may moderate ``conference``: the refusal's text, or None.

    The caller the action names is in this room (present, or waiting for ``admit`` / ``deny``), and the
    room's Asterisk link is up. The page's socket and the REST API both ask here; the worker checks again.
    """
    from conferences.models import Participant

    if action in PARTICIPANT_ACTIONS:
        if participant_id is None:
            return "participant missing or invalid"
        if action in WAITING_ACTIONS:
            if not Participant.objects.waiting().filter(pk=participant_id, conference_id=conference.pk).exists():
                return "no such waiting caller in this room"
        elif not Participant.objects.present().filter(pk=participant_id, conference_id=conference.pk).exists():
            return "no such participant in this room"
    if not conference.server.connected:
        return "the link to Asterisk is down"
    return None


def worker_channel(server_id):
    """The channel-layer channel the worker of one Asterisk server listens on."""
    return f"ari-worker.{server_id}"


# What some actions carry besides the room and the caller (``invite``: the number; ``cancel_invite``: the
# invite's id; ``play``: the sound's name), passed to the worker as they came, after the socket's type
# check; the worker judges them.
ARGUMENTS = ("number", "invite", "sound")


def build_request(
    *,
    conference_id,
    action,
    participant_id=None,
    actor_id=None,
    request_id="",
    reply_channel="",
    via=None,
    **arguments,
):
    """``via``: the name of the API token the actor acted with (kept in the history beside the actor)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    unknown = set(arguments) - set(ARGUMENTS)
    if unknown:
        raise ValueError(f"unknown arguments {sorted(unknown)}")
    return {
        **arguments,
        "type": REQUEST_TYPE,
        "action": action,
        "conference_id": conference_id,
        "participant_id": participant_id,
        "actor_id": actor_id,
        "request_id": request_id,
        "reply_channel": reply_channel,
        "via": via,
        "expires_at": time.time() + REQUEST_TTL,
    }


async def send_request(*, server_id, **fields):
    """Send a request whose reply goes to ``fields['reply_channel']`` (a consumer's channel)."""
    await get_channel_layer().send(worker_channel(server_id), build_request(**fields))


async def request(
    *,
    server_id,
    conference_id,
    action,
    participant_id=None,
    actor_id=None,
    timeout=REQUEST_TTL,
    via=None,
    **arguments,
):
    """Send a request and wait for the worker's reply: ``(ok, error)``."""
    layer = get_channel_layer()
    reply_channel = await layer.new_channel("moderation-reply")
    request_id = reply_channel.rsplit("!", 1)[-1]
    await layer.send(
        worker_channel(server_id),
        build_request(
            conference_id=conference_id,
            action=action,
            participant_id=participant_id,
            actor_id=actor_id,
            request_id=request_id,
            reply_channel=reply_channel,
            via=via,
            **arguments,
        ),
    )
    try:
        reply = await asyncio.wait_for(layer.receive(reply_channel), timeout)
    except TimeoutError:
        return False, WORKER_DOWN
    return bool(reply.get("ok")), reply.get("error")
