"""The worker's reads and writes of the database: each function is one hop to a database thread.

Handlers call these through ``Effects.db`` (conferences/ari/effects.py),
which runs them in a database thread and sends what the services broadcast
once they return. A function gathers everything one event needs, so an event
costs one hop where it can; writes go through conferences.services, the one
write path.
"""

from django.db.models import Q

from conferences import services
from conferences.ari import rules
from conferences.models import Conference, ConferenceEvent, Participant


def room_directory(server_id):
    """``{room number: conference id}`` of the server's rooms: how the worker routes a StasisStart to its room."""
    return dict(Conference.objects.filter(server_id=server_id).values_list("number", "pk"))


def room_facts(conference):
    return rules.RoomFacts(
        conference_id=conference.pk,
        number=conference.number,
        locked=conference.locked,
        max_participants=conference.max_participants,
        pin=conference.pin,
    )


def admission_facts(server_id, channel_id, number):
    """For a caller entering the application: ``(already a participant, RoomFacts or None, present count)``."""
    known = Participant.objects.filter(server_id=server_id, channel_id=channel_id).exists()
    conference = Conference.objects.filter(server_id=server_id, number=number).first() if number else None
    if conference is None:
        return known, None, 0
    return known, room_facts(conference), Participant.objects.present().filter(conference_id=conference.pk).count()


def room_now(conference_id):
    """``(RoomFacts or None, present count)`` of a room, read afresh (after a PIN, the room may have changed)."""
    conference = Conference.objects.filter(pk=conference_id).first()
    if conference is None:
        return None, 0
    return room_facts(conference), Participant.objects.present().filter(conference_id=conference_id).count()


def record_refusal(conference_id, reason, caller_number):
    services.conference_record(
        conference_id=conference_id,
        kind=ConferenceEvent.Kind.REFUSED,
        details={"reason": reason, "caller_number": (caller_number or "")[:80]},
    )


def moh_class(conference_id):
    return Conference.objects.filter(pk=conference_id).values_list("moh_class", flat=True).first()


def record_join(conference_id, channel, role):
    """The participant of a channel found in a room's bridge: ``(participant id, present, moh)``, or None.

    None when the room no longer exists. A channel already recorded (a
    replayed event, a resync) is returned as it is.
    """
    caller = channel.get("caller") or {}
    participant, _created = services.participant_join(
        conference_id=conference_id,
        channel_id=channel["id"],
        caller_number=caller.get("number", ""),
        caller_name=caller.get("name", ""),
        role=role,
    )
    if participant is None:
        return None
    present = participant.left_at is None and participant.conference_id == conference_id
    return participant.pk, present, participant.moh


def record_leave(server_id, channel_id, reason, actor_id=None):
    """End the stay of the participant of ``channel_id``, if it is present."""
    participant_id = (
        Participant.objects.present().filter(server_id=server_id, channel_id=channel_id).values_list("pk", flat=True)
    ).first()
    if participant_id is not None:
        services.participant_leave(participant_id=participant_id, reason=reason, actor_id=actor_id)


def update(participant_id, **changes):
    services.participant_update(participant_id=participant_id, **changes)


# --- the keypad -----------------------------------------------------------------------------------


def keypad_keys(conference_id):
    """``{action: keys}`` of a room's keypad (rules.KEYPAD_ACTIONS), or None when the room is gone."""
    row = Conference.objects.filter(pk=conference_id).values_list("keypad_hand", "keypad_mute").first()
    return None if row is None else dict(zip(rules.KEYPAD_ACTIONS, row, strict=True))


def keypad_state(participant_id):
    """``(hand raised, muted, mute source)`` of a present participant, or None."""
    return (
        Participant.objects.present()
        .filter(pk=participant_id)
        .values_list("hand_raised", "muted", "mute_source")
        .first()
    )


def set_hand(participant_id, raised, actor_id=None, by_self=False):
    services.participant_update(participant_id=participant_id, hand_raised=raised, actor_id=actor_id, by_self=by_self)


def self_mute(participant_id, muted):
    """The caller's own mute (keypad): muted by themself, or unmuted (only a mute of their own)."""
    if muted:
        changes = {"muted": True, "mute_source": Participant.MuteSource.SELF, "talking": False}
    else:
        changes = {"muted": False, "mute_source": ""}
    services.participant_update(participant_id=participant_id, by_self=True, **changes)


def moderator_mute(participant_id, muted, actor_id):
    """A moderator's mute (the caller cannot undo it), or unmute (clears any mute, and lowers the hand)."""
    if muted:
        changes = {"muted": True, "mute_source": Participant.MuteSource.MODERATOR, "talking": False}
    else:
        changes = {"muted": False, "mute_source": "", "hand_raised": False}
    services.participant_update(participant_id=participant_id, actor_id=actor_id, **changes)


def set_moh(changes):
    """Record who hears music on hold: ``{participant id: bool}``, in one hop."""
    for participant_id, moh in changes.items():
        services.participant_update(participant_id=participant_id, moh=moh)


# --- moderation ---------------------------------------------------------------------------------


def room_of_server(server_id, conference_id):
    """The room a command names, when it is one of this server's; else None."""
    if not isinstance(conference_id, int) or isinstance(conference_id, bool):
        return None
    return Conference.objects.filter(pk=conference_id, server_id=server_id).first()


def target(conference_id, participant_id):
    """``(channel id, role, left)`` of a participant of the room, or None when it is not one of the room's."""
    if not isinstance(participant_id, int) or isinstance(participant_id, bool):
        return None
    row = (
        Participant.objects.filter(pk=participant_id, conference_id=conference_id)
        .values_list("channel_id", "role", "left_at")
        .first()
    )
    if row is None:
        return None
    channel_id, role, left_at = row
    return channel_id, role, left_at is not None


def mute_all_targets(conference_id, muted):
    """``[(participant id, channel id)]`` of the present callers whose mute would change (admins are spared).

    Mute all is a moderator's mute: it takes callers who muted themselves too
    (they could otherwise unmute themselves).
    """
    if muted:
        changing = Q(muted=False) | Q(mute_source=Participant.MuteSource.SELF)
    else:
        changing = Q(muted=True)
    return list(
        Participant.objects.present()
        .filter(changing, conference_id=conference_id)
        .exclude(role=Participant.Role.ADMIN)
        .values_list("pk", "channel_id")
    )


def record_mute_all(conference_id, muted, done, actor_id):
    """The participants muted or unmuted, then the room's one timeline entry for it, in one hop."""
    services.participants_set_muted(conference_id=conference_id, participant_ids=done, muted=muted, actor_id=actor_id)


# --- resync ------------------------------------------------------------------------------------


def resync_facts(server_id, channel_ids):
    """What a resync compares with Asterisk: present rows, the server's rooms, channels the database knows."""
    present = [
        rules.PresentRow(participant_id=pk, channel_id=channel_id, conference_id=conference_id, talking=talking)
        for pk, channel_id, conference_id, talking in Participant.objects.present()
        .filter(server_id=server_id)
        .values_list("pk", "channel_id", "conference_id", "talking")
    ]
    conference_ids = set(Conference.objects.filter(server_id=server_id).values_list("pk", flat=True))
    known = set(
        Participant.objects.filter(server_id=server_id, channel_id__in=list(channel_ids)).values_list(
            "channel_id", flat=True
        )
    )
    return present, conference_ids, known


def resync_apply(plan):
    """The lost stays and the talking flags a resync found wrong, in one hop."""
    for participant_id in plan.lost:
        services.participant_leave(participant_id=participant_id, reason=Participant.LeftReason.LOST)
    for participant_id in plan.stop_talking:
        services.participant_update(participant_id=participant_id, talking=False)


def present_calls(server_id):
    """``[(channel id, conference id, participant id, moh, role)]`` of the server's present participants."""
    return list(
        Participant.objects.present()
        .filter(server_id=server_id)
        .values_list("channel_id", "conference_id", "pk", "moh", "role")
    )


# Functions that only read: a worker runs them without the lease check (conferences/ari/lease.py).
# Everything else is a write and is fenced, new functions included.
READS = frozenset(
    {
        room_directory,
        admission_facts,
        room_now,
        moh_class,
        room_of_server,
        target,
        mute_all_targets,
        resync_facts,
        present_calls,
        keypad_keys,
        keypad_state,
    }
)
