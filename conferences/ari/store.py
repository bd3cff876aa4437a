"""The worker's reads and writes of the database: each function is one hop to a database thread.

Handlers call these through ``Effects.db`` (conferences/ari/effects.py),
which runs them in a database thread and sends what the services broadcast
once they return. A function gathers everything one event needs, so an event
costs one hop where it can; writes go through conferences.services, the one
write path.
"""

from dataclasses import dataclass

from django.db import transaction
from django.db.models import Q

from conferences import services
from conferences.ari import rules
from conferences.models import Conference, ConferenceEvent, Invite, Participant, Recording, Sound, present_filter


def room_directory(server_id):
    """``{room number: conference id}`` of the server's rooms: how the worker routes a StasisStart to its room."""
    return dict(Conference.objects.filter(server_id=server_id).values_list("number", "pk"))


def room_facts(conference):
    """A room's RoomFacts, with how many wait in it right now (the worker counts those waiting for the
    leader from its own calls: a row still says waiting while its caller is on the way in)."""
    return rules.RoomFacts(
        conference_id=conference.pk,
        number=conference.number,
        locked=conference.locked,
        max_participants=conference.max_participants,
        pin=conference.pin,
        lobby=conference.lobby,
        wait_for_leader=conference.wait_for_leader,
        when_leader_leaves=conference.when_leader_leaves,
        moh_class=conference.moh_class,
        waiting=Participant.objects.waiting().filter(conference_id=conference.pk).count(),
    )


def admission_facts(server_id, channel_id, number):
    """For a caller entering the application: ``(known, RoomFacts or None, present count)``.

    ``known``: None for a channel the database does not know, else whether its stay is over (a
    channel denied, ended or kicked whose prompt a worker restart cut short: to be hung up).
    """
    left_at = list(
        Participant.objects.filter(server_id=server_id, channel_id=channel_id).values_list("left_at", flat=True)[:1]
    )
    known = left_at[0] is not None if left_at else None
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


def caller_channel(call):
    """The channel JSON record_join reads, from what the worker knows of a call."""
    return {"id": call.channel_id, "caller": {"name": call.caller_name, "number": call.caller_number}}


def record_refusal(conference_id, reason, caller_number):
    services.conference_record(
        conference_id=conference_id,
        kind=ConferenceEvent.Kind.REFUSED,
        details={"reason": reason, "caller_number": services.caller_text(caller_number)},
    )


def moh_class(conference_id):
    return Conference.objects.filter(pk=conference_id).values_list("moh_class", flat=True).first()


def record_join(conference_id, channel, role, waiting_for="", admitted_by=None, with_tones=False):
    """The participant of a channel found in a room's bridge, or (``waiting_for``) waiting outside it.

    Returns ``(participant id, in the room, moh)``, or None when the room no
    longer exists. A channel already recorded (a replayed event, a resync) is
    returned as it is; a waiting one found in the bridge is now present.
    """
    caller = channel.get("caller") or {}
    invited = (
        Invite.objects.filter(channel_id=channel["id"]).values_list("number", flat=True).first()
        if rules.room_of_invite_channel(channel["id"]) is not None
        else None
    )
    if invited is not None:  # an invite's call: its caller ID is the room's own, the invitee is the number
        caller = {"number": invited, "name": caller.get("name", "") if caller.get("number") == invited else ""}
    participant, _created = services.participant_join(
        conference_id=conference_id,
        channel_id=channel["id"],
        caller_number=caller.get("number", ""),
        caller_name=caller.get("name", ""),
        role=role,
        waiting_for=waiting_for,
        admitted_by=admitted_by,
    )
    if participant is None:
        return None
    in_room = participant.left_at is None and participant.conference_id == conference_id
    if with_tones:  # the room's row as the join read it (no second read), else read now
        tones = (
            (participant.conference.join_leave_tones, participant.conference.announce_only_person)
            if Participant.conference.is_cached(participant) and participant.conference_id == conference_id
            else room_tones(conference_id)
        )
        return (participant.pk, in_room, participant.moh), tones
    return participant.pk, in_room, participant.moh


def record_entry(conference_id, channel, role, admitted_by=None):
    """``record_join`` of a caller found in the room's bridge, and the room's tones (``room_tones``), in one
    hop: ``(record_join's answer, tones)``."""
    found = record_join(conference_id, channel, role, admitted_by=admitted_by, with_tones=True)
    return (None, None) if found is None else found


def record_leave(server_id, channel_id, reason, actor_id=None, talked=0.0):
    """End the stay of the participant of ``channel_id``, if it is present or waiting (``talked``: the
    seconds of a talking stretch still open)."""
    services.channel_leave(server_id=server_id, channel_id=channel_id, reason=reason, actor_id=actor_id, talked=talked)


def talked(participant_id, seconds):
    services.participant_talked(participant_id=participant_id, seconds=seconds)


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


# --- the lobby and the leader ------------------------------------------------------------------


def waiting_target(conference_id, participant_id):
    """``(channel id, waiting for)`` of a caller waiting in the room, or None."""
    if not isinstance(participant_id, int) or isinstance(participant_id, bool):
        return None
    return (
        Participant.objects.waiting()
        .filter(pk=participant_id, conference_id=conference_id)
        .values_list("channel_id", "waiting_for")
        .first()
    )


def waiting_targets(conference_id, waiting_for):
    """``[(participant id, channel id)]`` of the room's callers waiting for ``waiting_for``, in arrival order."""
    return list(
        Participant.objects.waiting()
        .filter(conference_id=conference_id, waiting_for=waiting_for)
        .order_by("joined_at", "id")
        .values_list("pk", "channel_id")
    )


def leader_left_facts(conference_id):
    """After a leader left: ``(when_leader_leaves, leaders still present, [(participant id, channel id)] of the
    other present callers, music on hold class)``; None when the room is gone. Read before any write: the
    writes are the last hop (a failed one repeats the whole event, which then reads the same)."""
    row = Conference.objects.filter(pk=conference_id).values_list("when_leader_leaves", "moh_class").first()
    if row is None:
        return None
    when, moh = row
    present = list(
        Participant.objects.present().filter(conference_id=conference_id).values_list("pk", "channel_id", "role")
    )
    leaders = sum(1 for _pk, _channel, role in present if role == Participant.Role.ADMIN)
    others = [(pk, channel_id) for pk, channel_id, role in present if role != Participant.Role.ADMIN]
    return when, leaders, others, moh


def deny(participant_id, actor_id):
    """A waiting caller turned away: its stay ends (``denied``)."""
    services.participant_leave(participant_id=participant_id, reason=Participant.LeftReason.DENIED, actor_id=actor_id)


def to_leader_wait(participant_id, actor_id):
    """A caller admitted from the lobby into a room that waits for its leader: it waits for the leader now."""
    services.participant_admit_to_leader_wait(participant_id=participant_id, actor_id=actor_id)


def end_with_leader(conference_id, participant_ids):
    """The room ends with its leader: the others' stays end (``ended``), and one entry for the room."""
    with transaction.atomic():
        # Every participant's row before the room's (each leave locks the room): the services' lock order.
        list(Participant.objects.select_for_update().filter(pk__in=list(participant_ids)).order_by("pk"))
        _end_each(conference_id, participant_ids)


def _end_each(conference_id, participant_ids):
    for participant_id in participant_ids:
        services.participant_leave(participant_id=participant_id, reason=Participant.LeftReason.ENDED)
    services.conference_record(conference_id=conference_id, kind=ConferenceEvent.Kind.ROOM_ENDED)


def wait_for_leader(conference_id, participant_ids):
    services.participants_wait_for_leader(conference_id=conference_id, participant_ids=participant_ids)


def room_opened(conference_id, actor_id, callers):
    """The room's callers waiting for the leader are let in: by the leader's arrival, or a moderator (actor)."""
    services.conference_record(
        conference_id=conference_id,
        kind=ConferenceEvent.Kind.ROOM_OPENED,
        actor_id=actor_id,
        details={"callers": callers, "by": "moderator" if actor_id else "leader"},
    )


def set_lobby(conference_id, lobby, actor_id):
    services.conference_set_lobby(conference_id=conference_id, lobby=lobby, actor_id=actor_id)


# --- recordings ---------------------------------------------------------------------------------


def recording_facts(conference_id):
    """``(record mode, announcement, name of the live recording or None)``, or None when the room is gone."""
    row = Conference.objects.filter(pk=conference_id).values_list("record_mode", "record_announcement").first()
    if row is None:
        return None
    live = (
        Recording.objects.filter(conference_id=conference_id, state=Recording.State.RECORDING)
        .values_list("name", flat=True)
        .first()
    )
    return row[0], row[1], live


def recording_started(conference_id, name, actor_id=None):
    recording = services.recording_started(conference_id=conference_id, name=name, actor_id=actor_id)
    return recording.pk if recording else None


def unknown_recordings(server_id, rooms):
    """Of ``rooms`` (``{name: conference id}``, from names this application made), the names the site has no
    row of whose room is one of this server's: what a worker that died before writing them left."""
    known = set(Recording.objects.filter(name__in=list(rooms)).values_list("name", flat=True))
    ours = set(Conference.objects.filter(server_id=server_id, pk__in=set(rooms.values())).values_list("pk", flat=True))
    return {name: room for name, room in rooms.items() if name not in known and room in ours}


def recording_adopted(conference_id, name, started_at):
    """A row for a recording of the room the site did not know of (its start was never written)."""
    recording = services.recording_started(conference_id=conference_id, name=name, started_at=started_at)
    return recording.pk if recording else None


def recording_stopping(name, actor_id):
    services.recording_stopping(name=name, actor_id=actor_id)


def recording_finished(name, duration=None, error=""):
    """``(recording id, conference id, state)`` of the finished recording, or None when unknown."""
    recording = services.recording_finished(name=name, duration=duration, error=error)
    return None if recording is None else (recording.pk, recording.conference_id, recording.state)


def recording_stored(recording_id, file_name, size, seconds=None):
    services.recording_stored(recording_id=recording_id, file_name=file_name, size=size, seconds=seconds)


def recording_fetch_failed(recording_id, error):
    services.recording_fetch_failed(recording_id=recording_id, error=error)


def recordings_to_fetch(server_id):
    """``[(recording id, name, conference id)]`` finished on Asterisk, not yet in the site's storage."""
    return list(
        Recording.objects.filter(conference__server_id=server_id, state=Recording.State.FINISHED).values_list(
            "pk", "name", "conference_id"
        )
    )


def live_recordings(server_id):
    return list(
        Recording.objects.filter(conference__server_id=server_id, state=Recording.State.RECORDING).values_list(
            "name", "conference_id"
        )
    )


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
    row = (  # present only: a caller waiting (in the lobby, or again for the leader) is no target
        Participant.objects.filter(present_filter() | Q(left_at__isnull=False), pk=participant_id)
        .filter(conference_id=conference_id)
        .values_list("channel_id", "role", "left_at")
        .first()
    )
    if row is None:
        return None
    channel_id, role, left_at = row
    return channel_id, role, left_at is not None


def mute_all_targets(conference_id, muted, server_id=None):
    """``[(participant id, channel id)]`` of the present callers whose mute would change (admins are spared).

    Mute all is a moderator's mute: it takes callers who muted themselves too
    (they could otherwise unmute themselves). With ``server_id``: None when
    the room is not one of that server's (the command's room check and its
    read in one hop).
    """
    if server_id is not None and room_of_server(server_id, conference_id) is None:
        return None
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


def record_mute_all(conference_id, muted, done, actor_id, talked=None):
    """The talking stretches the mutes cut short (``talked``: participant id -> seconds), the participants
    muted or unmuted, then the room's one timeline entry for it, in one hop."""
    for participant_id, seconds in (talked or {}).items():
        services.participant_talked(participant_id=participant_id, seconds=seconds)
    services.participants_set_muted(conference_id=conference_id, participant_ids=done, muted=muted, actor_id=actor_id)


# --- resync ------------------------------------------------------------------------------------


def resync_facts(server_id, channel_ids):
    """What a resync compares with Asterisk: present rows, the server's rooms, channels the database knows,
    waiting rows."""
    present = [
        rules.PresentRow(
            participant_id=pk, channel_id=channel_id, conference_id=conference_id, talking=talking, role=role
        )
        for pk, channel_id, conference_id, talking, role in Participant.objects.present()
        .filter(server_id=server_id)
        .values_list("pk", "channel_id", "conference_id", "talking", "role")
    ]
    conference_ids = set(Conference.objects.filter(server_id=server_id).values_list("pk", flat=True))
    known = set(
        Participant.objects.filter(server_id=server_id, channel_id__in=list(channel_ids)).values_list(
            "channel_id", flat=True
        )
    )
    waiting = [
        rules.WaitingRow(participant_id=pk, channel_id=channel_id, conference_id=conference_id, waiting_for=waiting_for)
        for pk, channel_id, conference_id, waiting_for in Participant.objects.waiting()
        .filter(server_id=server_id)
        .values_list("pk", "channel_id", "conference_id", "waiting_for")
    ]
    return present, conference_ids, known, waiting


def waiting_calls(server_id):
    """``[(channel id, conference id, participant id, waiting for, role, moh class)]`` of the server's waiting."""
    return list(
        Participant.objects.waiting()
        .filter(server_id=server_id)
        .values_list("channel_id", "conference_id", "pk", "waiting_for", "role", "conference__moh_class")
    )


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
        waiting_target,
        waiting_targets,
        leader_left_facts,
        waiting_calls,
        recording_facts,
        recordings_to_fetch,
        live_recordings,
    }
)


# --- invites --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InviteFacts:
    template: str
    pattern: str
    caller_id: str
    room_name: str
    room_number: str
    ring_seconds: int
    max_open: int
    max_participants: int | None
    present: int
    is_room_number: bool
    open_invites: int
    by_moderator: int
    by_room: int


def invite_facts(conference_id, actor_id, number):
    """What an invite of ``number`` into the room is judged on (rules.invite_refusal) and dialled with."""
    conference = Conference.objects.select_related("server").get(pk=conference_id)
    is_room_number = isinstance(number, str) and (
        Conference.objects.filter(server_id=conference.server_id, number=number).exists()
    )
    window = max(rules.INVITES_BY_MODERATOR[1], rules.INVITES_BY_ROOM[1])
    open_count, by_actor, by_room = services.invite_counts(
        conference_id=conference_id, actor_id=actor_id, window=window
    )
    return InviteFacts(
        template=conference.server.dial_template,
        pattern=conference.server.invite_pattern,
        caller_id=conference.invite_caller_id,
        room_name=conference.name,
        room_number=conference.number,
        ring_seconds=conference.invite_ring_seconds,
        max_open=conference.max_open_invites,
        max_participants=conference.max_participants,
        present=Participant.objects.present().filter(conference_id=conference_id).count(),
        is_room_number=is_room_number,
        open_invites=open_count,
        by_moderator=by_actor,
        by_room=by_room,
    )


def invite_created(conference_id, number, actor_id, channel_id):
    invite = services.invite_created(
        conference_id=conference_id,
        number=number,
        actor_id=actor_id,
        channel_id=channel_id,
        actor_limit=rules.INVITES_BY_MODERATOR,
    )
    return invite.pk if invite else None


def invite_updated(invite_id, status, cause=None, participant_id=None):
    services.invite_updated(invite_id=invite_id, status=status, cause=cause, participant_id=participant_id)


def open_invite(conference_id, invite_id):
    """``(invite id, channel id)`` of an open invite of the room, or None."""
    if not isinstance(invite_id, int) or isinstance(invite_id, bool):
        return None
    return (
        Invite.objects.filter(pk=invite_id, conference_id=conference_id, status__in=Invite.OPEN)
        .values_list("pk", "channel_id")
        .first()
    )


def open_invites(server_id):
    """``[(invite id, conference id, channel id, ring seconds, number, seconds since it was placed,
    participant id or None)]`` of the server's open invites; the participant: the invitee present in the
    room (found in the bridge by the resync)."""
    from django.utils import timezone

    now = timezone.now()
    rows = [
        (*row[:5], max(0.0, (now - row[5]).total_seconds()))
        for row in Invite.objects.filter(conference__server_id=server_id, status__in=Invite.OPEN).values_list(
            "pk", "conference_id", "channel_id", "conference__invite_ring_seconds", "number", "created_at"
        )
    ]
    present = dict(
        Participant.objects.present()
        .filter(server_id=server_id, channel_id__in=[row[2] for row in rows])
        .values_list("channel_id", "pk")
    )
    return [(*row, present.get(row[2])) for row in rows]


def sound_to_play(conference_id, name):
    """The Asterisk sound of the room's server's sound ``name``, or None."""
    if not isinstance(name, str):
        return None
    return (
        Sound.objects.filter(server__conferences__pk=conference_id, name=name).values_list("sound", flat=True).first()
    )


def record_played(conference_id, name, actor_id):
    services.sound_played(conference_id=conference_id, name=name, actor_id=actor_id)


def room_tones(conference_id):
    """``(join_leave_tones, announce_only_person)`` of the room, or None when it is gone (read with each
    join: a change in the admin applies from the next caller on)."""
    return Conference.objects.filter(pk=conference_id).values_list("join_leave_tones", "announce_only_person").first()
