"""The page's actions over HTTP: ``POST /rooms/{slug}/actions/{action}``, the socket protocol's names.

An action goes the page's way (conferences/consumers.py, ``moderate``): the
caller's role in the room is checked from fresh rows (a token's scope and
rooms narrow it), then the target (a present caller, or a waiting one for
``admit`` / ``deny``) and the Asterisk link, then the request goes to the
room's worker (conferences/moderation.py), which carries it out through the
services and answers. The answer is the page's error text, with an HTTP
status (conferences/api/errors.py). A token's name goes with the request
(``via``) and is kept in the history beside the actor.

The view awaits the worker's reply on the event loop: no thread waits.
"""

import logging
from typing import Literal

from channels.exceptions import ChannelFull
from django.db import DatabaseError
from ninja import Body, Router

from conferences import access, dbthreads, moderation, protocol
from conferences.api import errors
from conferences.api.rooms import room_of
from conferences.api.schemas import ActionIn, ActionOut, Error

logger = logging.getLogger(__name__)

router = Router(tags=["actions"])

# The action names, as the path parameter's type (the protocol's list: conferences/protocol.py). Any other
# name is answered 404 "unknown action" (conferences/api/__init__.py).
Action = Literal[protocol.ACTIONS]


def _check(caller, slug, action, participant_id):
    """``(conference, None)`` or ``(conference, the refusal)``: the checks of the page's ``_moderation_check``.

    A room the caller may not see is a 404 (as for every read); a room it may only see is a 403.
    """
    conference, role = room_of(caller, slug)
    if role != access.MODERATOR:
        return conference, "you may not moderate this room"
    return conference, moderation.refusal(conference, action, participant_id)


def _arguments(action, body):
    """What ``action`` carries besides a caller (moderation.ARGUMENTS), as the socket passes them on."""
    if action == "invite":
        return {"number": body.number}
    if action == "cancel_invite":
        return {"invite": body.invite}
    if action == "play":
        return {"sound": body.sound}
    return {}


@router.post(
    "/rooms/{slug}/actions/{action}",
    response={200: ActionOut, 400: Error, 401: Error, 403: Error, 404: Error, 409: Error, 429: Error, 503: Error},
    summary="A moderator action, as on the room page",
    description=(
        "`action`: one of "
        + ", ".join(f"`{name}`" for name in protocol.ACTIONS)
        + ". `mute`, `unmute`, `kick`, `lower_hand` need `participant` (a present caller's id), `admit` and "
        "`deny` a waiting one's; `invite` needs `number`, `cancel_invite` `invite` (an open invite's id), "
        "`play` `sound` (a name from the server's list). Refusals carry the room page's error text: 403 not a "
        "moderator (or a read-only token), 404 no such room or participant, 409 the room's state refused it, "
        "503 the Asterisk link or worker is down."
    ),
)
async def room_action(request, slug: str, action: Action, body: ActionIn = Body(None)):  # noqa: B008 (ninja's way to declare a body)
    body = body or ActionIn()
    caller = request.auth
    participant_id = body.participant if action in moderation.PARTICIPANT_ACTIONS else None
    try:
        conference, refusal = await dbthreads.web().call(_check, caller, slug, action, participant_id)
        if refusal is not None:
            raise errors.ApiError(errors.action_status(refusal), refusal)
        ok, error = await moderation.request(
            server_id=conference.server_id,
            conference_id=conference.pk,
            action=action,
            participant_id=participant_id,
            actor_id=caller.user.pk,
            via=caller.via,
            **_arguments(action, body),
        )
    except DatabaseError as exc:
        logger.warning("api: room %s: %s failed: database: %s", slug, action, exc)
        raise errors.ApiError(503, errors.DATABASE_DOWN) from None
    except ChannelFull:
        logger.warning("api: room %s: %s refused: the channel layer is full", slug, action)
        raise errors.ApiError(503, errors.LAYER_BUSY) from None
    if not ok:
        error = error or errors.INTERNAL_ERROR
        raise errors.ApiError(errors.action_status(error), error)
    return {"ok": True}
