"""The write path: every change of room and participant state goes through here.

Each function changes the database in one transaction, gives each room event
the room's next ``seq`` and broadcasts it to the room's group only after the
transaction committed. The ARI worker, the WebSocket consumer (through the
worker) and admin actions are thin callers of these functions; a raw
``.save()`` of room state elsewhere would skip the browsers.
"""

import contextvars
import logging
import re
from contextlib import contextmanager
from datetime import UTC, timedelta
from functools import partial

from django.db import connection, transaction
from django.db.models import Count, Exists, F, Subquery, Value
from django.db.models.functions import Greatest
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from conferences import broadcast, protocol, webhooks
from conferences.models import AsteriskServer, Conference, ConferenceEvent, Invite, Meeting, Participant, Recording

logger = logging.getLogger(__name__)

Kind = ConferenceEvent.Kind


class ServiceError(Exception):
    """A request that cannot be carried out; its message is fit to show to a moderator."""


# Control characters a caller ID can carry (a SIP display name may hold escaped ones, NUL included): PostgreSQL
# refuses a NUL in text and in jsonb, so one hostile caller's join failed, and none belongs on a page.
# A service's writes are one transaction, or part of its caller's (the worker's hop opens one for its
# lease check: conferences/ari/effects.py). Inside a caller's transaction no savepoint is taken: two round
# trips fewer on every event's path, and nothing needs one, as nobody catches a service's error to go on in
# the same transaction (a failed hop, or request, is rolled back whole).
_atomic = partial(transaction.atomic, savepoint=False)
_CALLER_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def caller_text(value, limit=80):
    """A caller's name or number as stored: control characters out, at most ``limit`` characters."""
    return _CALLER_CONTROL.sub("", str(value or ""))[:limit]


def _next_seq(conference_id, count=1):
    """Take the room's next ``count`` event numbers (row-locked until the transaction ends); returns the last.

    One statement (UPDATE ... RETURNING, PostgreSQL and SQLite 3.35+): it is on
    the path of every broadcast.
    """
    return _take_seq(conference_id, count)[0]


def _next_seq_and_counts(conference_id, count):
    """``_next_seq`` and the room's present and waiting callers after this transaction's changes, in one
    statement: ``(last seq, present, waiting)``.

    Only with the room's row locked earlier in the transaction (``_lock_room``):
    then the statement waits for no lock, and its counts are those of the
    moment it numbers the events (no other join or leave of the room can
    commit in between). It saves a join and a leave one round trip each.
    """
    in_room = Participant.objects.in_room().filter(conference_id=conference_id)
    return _take_seq(
        conference_id,
        count,
        in_room.filter(status=Participant.Status.PRESENT),
        in_room.filter(status=Participant.Status.WAITING),
    )


def _take_seq(conference_id, count, *counted):
    """The UPDATE of ``_next_seq``, returning the last number taken and how many rows each queryset of
    ``counted`` has (as a subquery of the same statement): ``(last seq, *counts)``."""
    table = connection.ops.quote_name(Conference._meta.db_table)
    returning, params = ["seq"], [count, conference_id]
    for queryset in counted:
        sql, sql_params = queryset.order_by().values("pk").query.sql_with_params()
        returning.append(f"(SELECT COUNT(*) FROM ({sql}) AS counted)")  # noqa: S608 (the ORM's SQL)
        params += sql_params
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET seq = seq + %s WHERE id = %s RETURNING {', '.join(returning)}", params)  # noqa: S608 (names from the model, the ORM's SQL, values bound)
        # Every row fetched: on SQLite a statement not stepped to its end keeps its reads (a subquery's
        # of the participants' table), and in a shared cache that locks other connections out.
        [row] = cursor.fetchall()
    return row


def _send_room_frame(conference_id, frame, webhook_type=None):
    """Send a room frame to the room's pages once the transaction commits, and queue it for the webhooks.

    The webhooks' rows are written in this transaction (conferences/webhooks.py): they exist exactly when
    the change committed. ``webhook_type``: the webhooks' type when it is not the frame's (talking).
    """
    transaction.on_commit(partial(broadcast.send_to_room, conference_id, frame))
    webhooks.enqueue(conference_id, frame, event_type=webhook_type)


def _emit(conference_id, frame_type, *, seq=None, webhook_type=None, **fields):
    """Number a room event (``seq``: a number taken already) and send it once the transaction has committed."""
    frame = {"type": frame_type, "seq": _next_seq(conference_id) if seq is None else seq, **fields}
    _send_room_frame(conference_id, frame, webhook_type)
    return frame


def _emit_participant(conference_id, frame_type, participant):
    return _emit(conference_id, frame_type, participant=broadcast.participant_state(participant))


# The API token a moderator acted with (its name), for the history entries of that action: set by the
# worker around a request that came through the API (conferences/ari/handlers.py, handle_command) and carried
# into the database thread by conferences/ari/effects.py.
acted_via = contextvars.ContextVar("acted_via", default=None)


@contextmanager
def acting_via(token_name):
    """History entries with an actor written inside the block name ``token_name`` (``None``: no token)."""
    reset = acted_via.set(token_name or None)
    try:
        yield
    finally:
        acted_via.reset(reset)


def _record(conference_id, kind, *, participant=None, actor_id=None, details=None, at=None):
    details = dict(details or {})
    via = acted_via.get()
    if actor_id is not None and via:
        details["token"] = via
    ConferenceEvent.objects.create(
        conference_id=conference_id,
        participant=participant,
        kind=kind,
        actor_id=actor_id,
        details=details,
        created_at=at or timezone.now(),
    )


def _emit_participant_and_conference(conference, frame_type, participant):
    """A participant's frame and the room's new counts, numbered and counted in one statement (a join's and a
    leave's, which hold the room's row locked)."""
    last, present, waiting = _next_seq_and_counts(conference.pk, 2)
    _emit(conference.pk, frame_type, seq=last - 1, participant=broadcast.participant_state(participant))
    _emit_conference(conference, seq=last, counts=(present, waiting))


def _emit_conference(conference, seq=None, counts=None):
    """The room's ``conference.updated`` (``counts``: its present and waiting callers, when known)."""
    if counts is None:
        by_status = dict(
            Participant.objects.in_room()
            .filter(conference_id=conference.pk)
            .order_by()
            .values_list("status")
            .annotate(n=Count("pk"))
        )
        counts = by_status.get(Participant.Status.PRESENT, 0), by_status.get(Participant.Status.WAITING, 0)
    _emit(
        conference.pk, protocol.CONFERENCE_UPDATED, seq=seq, conference=broadcast.conference_state(conference, *counts)
    )


# --- participants ---------------------------------------------------------------

# Meetings. A join or a leave locks the room's row before it reads the clock,
# so the joins and leaves of one room happen one after the other, in the order
# of their times: two joins into an empty room cannot open two meetings, a join
# cannot slip into a meeting that a concurrent last leave is ending, and the
# last leave is also the latest, so the meeting ends when its last stay does.
# A leave locks the participant's row first, then the room's: the order
# ``participant_update`` takes them in (its seq update locks the room).


def _lock_room(conference_id):
    """The room's row, locked until the transaction ends; None when there is no such room."""
    return Conference.objects.select_for_update().filter(pk=conference_id).first()


def _meeting_for_join(conference_id, at):
    """The id of the meeting a stay starting ``at`` belongs to: the one going on, or a new one."""
    latest = Meeting.objects.filter(conference_id=conference_id).order_by("-started_at", "-id").first()
    if latest is None or (latest.ended_at is not None and latest.ended_at < at):
        return Meeting.objects.create(conference_id=conference_id, started_at=at).pk
    if latest.ended_at is not None:
        # Joined the instant the last caller left (or the clock stepped back): stays that
        # touch are one meeting, the rule of history.meetings() and of the backfill.
        Meeting.objects.filter(pk=latest.pk).update(ended_at=None)
    return latest.pk


def _end_meeting_if_empty(conference_id, at):
    """End the room's meeting at ``at`` when nobody of it is left in the room.

    A caller back to waiting for the leader (``when_leader_leaves: wait``) is
    still on the call and in its meeting; one waiting in the lobby, or for
    the leader since it called, is in no meeting yet.
    """
    still_in = Participant.objects.in_room().filter(conference_id=conference_id, meeting__isnull=False)
    # One statement (the check in it); never before its start, whatever the clock did: the database
    # refuses such a meeting.
    Meeting.objects.filter(~Exists(still_in), conference_id=conference_id, ended_at__isnull=True).update(
        ended_at=Greatest(Value(at), F("started_at"))
    )


def participant_join(
    *,
    conference_id,
    channel_id,
    caller_number="",
    caller_name="",
    role=Participant.Role.PARTICIPANT,
    waiting_for="",
    admitted_by=None,
):
    """Record that a caller is in the room's bridge, or (``waiting_for``: lobby, leader) waits to be let in.

    Returns ``(participant, created)``. Idempotent: a channel already recorded
    is returned as is, except a waiting one that now enters the room: its
    stay starts (``joined_at`` = now, its meeting, ``participant.updated``
    with ``status: present``; ``admitted_by``: the moderator who let it in
    from the lobby). ``(None, False)`` when the room no longer exists.
    """
    with _atomic():
        # The participant's row before the room's: the order participant_leave takes them in. One
        # statement: the room's server is read in it.
        server_id = Subquery(Conference.objects.filter(pk=conference_id).values("server_id")[:1])
        existing = Participant.objects.select_for_update().filter(server_id=server_id, channel_id=channel_id).first()
        conference = _lock_room(conference_id)
        if conference is None:
            return None, False
        if existing is not None:
            if not waiting_for and existing.waiting and existing.conference_id == conference.pk:
                _enter_from_waiting(conference, existing, admitted_by)
            return existing, False
        now = timezone.now()
        participant = Participant.objects.create(
            conference=conference,
            server_id=conference.server_id,
            channel_id=channel_id,
            caller_number=caller_text(caller_number),
            caller_name=caller_text(caller_name),
            role=role,
            joined_at=now,
            status=Participant.Status.WAITING if waiting_for else Participant.Status.PRESENT,
            waiting_for=waiting_for,
            meeting_id=None if waiting_for else _meeting_for_join(conference.pk, now),
        )
        if waiting_for:
            _record(conference.pk, Kind.WAITING, participant=participant, at=now, details={"for": waiting_for})
        else:
            _record(conference.pk, Kind.JOINED, participant=participant, at=now, details={"role": role})
        _emit_participant_and_conference(conference, protocol.PARTICIPANT_JOINED, participant)
    logger.info(
        "conference %s: participant %s %s (channel %s)",
        conference.pk,
        participant.pk,
        f"waits for {waiting_for}" if waiting_for else "joined",
        channel_id,
    )
    return participant, True


def _enter_from_waiting(conference, participant, admitted_by):
    """A waiting caller enters the room (the room's row and the participant's are locked).

    Its stay starts now (``joined_at``, its meeting), unless it is a caller
    back from waiting for the leader: that one never left the call, and its
    stay and meeting go on.
    """
    now = timezone.now()
    from_lobby = participant.waiting_for == Participant.WaitingFor.LOBBY
    returning = participant.meeting_id is not None
    participant.status, participant.waiting_for = Participant.Status.PRESENT, ""
    if not returning:
        participant.joined_at = now
        participant.meeting_id = _meeting_for_join(conference.pk, now)
    participant.save(update_fields=["status", "waiting_for", "joined_at", "meeting"])
    if from_lobby:
        _record(conference.pk, Kind.ADMITTED, participant=participant, actor_id=admitted_by, at=now)
    if not returning:
        _record(conference.pk, Kind.JOINED, participant=participant, at=now, details={"role": participant.role})
    _emit_participant(conference.pk, protocol.PARTICIPANT_UPDATED, participant)
    _emit_conference(conference)


def participant_admit_to_leader_wait(*, participant_id, actor_id=None):
    """A caller admitted from the lobby while the room waits for its leader: it waits for the leader now.

    Returns the participant, or None when it is not waiting in the lobby.
    """
    with _atomic():
        participant = (
            Participant.objects.waiting()
            .select_for_update()
            .filter(pk=participant_id, waiting_for=Participant.WaitingFor.LOBBY)
            .first()
        )
        if participant is None:
            return None
        participant.waiting_for = Participant.WaitingFor.LEADER
        participant.save(update_fields=["waiting_for"])
        _record(participant.conference_id, Kind.ADMITTED, participant=participant, actor_id=actor_id)
        _emit(
            participant.conference_id,
            protocol.PARTICIPANT_UPDATED,
            participant=broadcast.participant_state(participant),
        )
    return participant


def participants_wait_for_leader(*, conference_id, participant_ids):
    """The room's leader left (``when_leader_leaves: wait``): these present callers wait for a leader again.

    One timeline entry for the room. They stay on the call: their stays and
    the meeting go on (``_end_meeting_if_empty``). Returns the participants
    that went back to waiting.
    """
    with _atomic():
        moved = list(
            Participant.objects.present()
            .select_for_update()
            .filter(pk__in=list(participant_ids), conference_id=conference_id)
            .order_by("pk")
        )
        conference = _lock_room(conference_id)
        if conference is None:
            return []
        now = timezone.now()
        for participant in moved:
            participant.status, participant.waiting_for = Participant.Status.WAITING, Participant.WaitingFor.LEADER
            participant.talking = participant.moh = False
            participant.save(update_fields=["status", "waiting_for", "talking", "moh"])
            _emit_participant(conference.pk, protocol.PARTICIPANT_UPDATED, participant)
        _record(conference.pk, Kind.ROOM_WAITING, at=now, details={"callers": len(moved)})
        _emit_conference(conference)
    logger.info("conference %s: the leader left; %s callers wait for a leader", conference_id, len(moved))
    return moved


LEAVE_KINDS = {Participant.LeftReason.KICKED: Kind.KICKED, Participant.LeftReason.DENIED: Kind.DENIED}


def participant_leave(*, participant_id, reason, actor_id=None, talked=0.0):
    """Record that a participant left the room or its lobby (hangup, kicked, lost, denied, ended).

    Returns the participant, or ``None`` when it had left already.
    """
    return _leave(Participant.objects.filter(pk=participant_id), reason, actor_id, talked)


def channel_leave(*, server_id, channel_id, reason, actor_id=None, talked=0.0):
    """``participant_leave`` of the caller on a server's channel, when it is in a room (present or waiting):
    found and locked in one statement. Returns the participant, or ``None``."""
    return _leave(
        Participant.objects.in_room().filter(server_id=server_id, channel_id=channel_id), reason, actor_id, talked
    )


def _leave(found, reason, actor_id, talked):
    with _atomic():
        participant = found.select_related("conference").select_for_update(of=("self",)).first()
        if participant is None or participant.left_at is not None:
            return None
        _lock_room(participant.conference_id)
        now = timezone.now()
        participant.left_at = max(now, participant.joined_at)
        participant.left_reason = reason
        participant.talking = False
        participant.moh = False
        participant.talk_seconds += max(0.0, talked)  # a talking stretch still open at the leave
        participant.save(update_fields=["left_at", "left_reason", "talking", "moh", "talk_seconds"])
        _record(
            participant.conference_id,
            LEAVE_KINDS.get(reason, Kind.LEFT),
            participant=participant,
            actor_id=actor_id,
            details={"reason": reason},
            at=now,
        )
        _end_meeting_if_empty(participant.conference_id, participant.left_at)
        _emit_participant_and_conference(participant.conference, protocol.PARTICIPANT_LEFT, participant)
    logger.info("conference %s: participant %s left (%s)", participant.conference_id, participant.pk, reason)
    return participant


UPDATABLE = {"muted", "mute_source", "talking", "moh", "hand_raised"}
QUICK = {"talking", "moh"}  # never audited: the quick path
# The timeline entry of a change: (on, off), for a moderator's change and for the caller's own (keypad).
AUDITED = {
    "muted": {False: (Kind.MUTED, Kind.UNMUTED), True: (Kind.SELF_MUTED, Kind.SELF_UNMUTED)},
    "hand_raised": {False: (Kind.HAND_RAISED, Kind.HAND_LOWERED), True: (Kind.HAND_RAISED, Kind.HAND_LOWERED)},
}
FLAGS = ("muted", "talking", "moh", "hand_raised")

# What a browser sees of a participant (broadcast.participant_state), as the columns a quick update returns.
STATE_FIELDS = (
    "id",
    "conference_id",
    "caller_number",
    "caller_name",
    "role",
    "joined_at",
    *FLAGS,
    "mute_source",
    "hand_raised_at",
    "talk_seconds",
)


def _quick_update(participant_ids, changes, add=None):
    """Set flags nobody audits (talking, music on hold, mute all's mutes) in one statement.

    Returns the new state of each present participant whose flags changed (as
    Participants, in id order). The worker changes these many times a second
    (every caller's talk detection): one ``UPDATE … RETURNING`` costs about a
    fifth of the ORM's read-modify-save (0.28 against 1.5 ms of CPU here), and
    a whole room's in one statement spares the worker one round trip to the
    database per caller (each of which can also wait for the interpreter).
    PostgreSQL and SQLite 3.35+ both have RETURNING; their values are turned
    into Participants as the ORM would.
    """
    if not participant_ids:
        return []
    add = {field: value for field, value in (add or {}).items() if value}
    quote = connection.ops.quote_name
    columns = [Participant._meta.get_field(name).column for name in STATE_FIELDS]
    sets = ", ".join(
        [f"{quote(field)} = %s" for field in changes] + [f"{quote(field)} = {quote(field)} + %s" for field in add]
    )
    compared = {field: value for field, value in changes.items() if value is not None}
    differs = " OR ".join(
        [f"{quote(field)} <> %s" for field in compared]
        + [f"{quote(field)} IS NOT NULL" for field, value in changes.items() if value is None]
        + ["1 = 1"] * bool(add)  # an addition always changes the row
    )
    ids = ", ".join(["%s"] * len(participant_ids))
    sql = (
        f"UPDATE {quote(Participant._meta.db_table)} SET {sets} "  # noqa: S608 (names from the model, values bound)
        f"WHERE id IN ({ids}) AND left_at IS NULL AND status = 'present' AND ({differs}) "
        f"RETURNING {', '.join(map(quote, columns))}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*changes.values(), *add.values(), *participant_ids, *compared.values()])
        rows = cursor.fetchall()
    return sorted((_participant_from_row(row) for row in rows), key=lambda participant: participant.pk)


def _participant_from_row(row):
    fields = dict(zip(STATE_FIELDS, row, strict=True))
    for name in FLAGS:
        fields[name] = bool(fields[name])
    fields["talk_seconds"] = float(fields["talk_seconds"] or 0)
    for name in ("joined_at", "hand_raised_at"):
        value = fields[name]
        if isinstance(value, str):  # SQLite hands back the stored text
            value = parse_datetime(value)
        if value is not None and timezone.is_naive(value):
            value = timezone.make_aware(value, UTC)
        fields[name] = value
    return Participant(**fields)


def participant_update(*, participant_id, actor_id=None, audit=True, by_self=False, **changes):
    """Change muted / mute_source / talking / moh / hand_raised of a present participant; broadcast a change.

    Returns the participant's new state, or ``None`` when it is not present.
    What needs no audit entry (talking, music on hold; mute all's mutes,
    audited once for the room) takes the quick path: one statement.
    ``hand_raised`` sets ``hand_raised_at`` (the order hands went up);
    ``by_self``: the caller's own change from the keypad (``self_muted`` …
    in the timeline, no actor).
    """
    unknown = set(changes) - UPDATABLE
    if unknown:
        raise ValueError(f"cannot update {', '.join(sorted(unknown))}")
    if "hand_raised" in changes:
        changes["hand_raised_at"] = timezone.now() if changes["hand_raised"] else None
    if changes and (set(changes) <= QUICK or not audit):
        with _atomic():
            for updated in _quick_update([participant_id], changes):
                _emit(
                    updated.conference_id,
                    protocol.PARTICIPANT_UPDATED,
                    webhook_type=webhooks.TALKING if set(changes) == {"talking"} else None,
                    participant=broadcast.participant_state(updated),
                )
                return updated
        return Participant.objects.present().filter(pk=participant_id).first()
    with _atomic():
        current = Participant.objects.present().filter(pk=participant_id).first()
        if current is None:
            return None
        if changes.get("hand_raised") and current.hand_raised:
            changes.pop("hand_raised_at")  # raised already: its place in the order stays
        changed = [field for field, value in changes.items() if getattr(current, field) != value]
        if not changed:
            return current
        for field in changed:
            setattr(current, field, changes[field])
        current.save(update_fields=changed)
        for field in changed:
            if audit and field in AUDITED:
                on, off = AUDITED[field][by_self]
                _record(current.conference_id, on if changes[field] else off, participant=current, actor_id=actor_id)
        if audit and "mute_source" in changed and "muted" not in changed and current.muted and not by_self:
            # A moderator's mute of a caller muted by themself: now only a moderator unmutes.
            _record(current.conference_id, Kind.MUTED, participant=current, actor_id=actor_id)
        _emit_participant(current.conference_id, protocol.PARTICIPANT_UPDATED, current)
    return current


def participant_talked(*, participant_id, seconds):
    """A talking stretch of a present participant ended: it no longer talks, and talked ``seconds`` more.

    The quick path (one statement); returns the new state, or None when it is not present.
    """
    with _atomic():
        for updated in _quick_update([participant_id], {"talking": False}, add={"talk_seconds": max(0.0, seconds)}):
            _emit(
                updated.conference_id,
                protocol.PARTICIPANT_UPDATED,
                webhook_type=webhooks.TALKING,
                participant=broadcast.participant_state(updated),
            )
            return updated
    return None


def participants_set_muted(*, conference_id, participant_ids, muted, actor_id=None):
    """Mute all / unmute all: the callers given, their frames and the room's one timeline entry, in one go.

    One transaction: one statement for the callers (a muted caller is also no
    longer talking: its audio no longer reaches talk detection), one for
    their event numbers, one for the entry (``muted_all`` / ``unmuted_all``,
    with its actor). Returns the participants that changed.
    """
    # A moderator's mute (the caller cannot undo it); unmuting also lowers the hand.
    if muted:
        changes = {"muted": True, "mute_source": Participant.MuteSource.MODERATOR, "talking": False}
    else:
        changes = {"muted": False, "mute_source": "", "hand_raised": False, "hand_raised_at": None}
    with _atomic():
        updated = [p for p in _quick_update(list(participant_ids), changes) if p.conference_id == conference_id]
        if updated:
            last = _next_seq(conference_id, len(updated))
            for seq, participant in enumerate(updated, start=last - len(updated) + 1):
                frame = {
                    "type": protocol.PARTICIPANT_UPDATED,
                    "seq": seq,
                    "participant": broadcast.participant_state(participant),
                }
                _send_room_frame(conference_id, frame)
        _record(conference_id, Kind.MUTED_ALL if muted else Kind.UNMUTED_ALL, actor_id=actor_id)
    return updated


# --- rooms ------------------------------------------------------------------------


# A room's switches a moderator turns from the page: the timeline entry of each, (on, off).
SWITCHES = {"locked": (Kind.LOCKED, Kind.UNLOCKED), "lobby": (Kind.LOBBY_ON, Kind.LOBBY_OFF)}


def _set_switch(conference_id, field, value, actor_id):
    with _atomic():
        conference = _lock_room(conference_id)
        if conference is None or getattr(conference, field) == value:
            return conference
        setattr(conference, field, value)
        conference.save(update_fields=[field])
        on, off = SWITCHES[field]
        _record(conference.pk, on if value else off, actor_id=actor_id)
        _emit_conference(conference)
    logger.info("conference %s: %s %s", conference.pk, field, "on" if value else "off")
    return conference


def conference_set_locked(*, conference_id, locked, actor_id=None):
    """Lock or unlock a room; a locked room admits admin callers only. Returns the room (None: no such room)."""
    return _set_switch(conference_id, "locked", locked, actor_id)


def conference_set_lobby(*, conference_id, lobby, actor_id=None):
    """Turn a room's lobby on or off (new callers wait to be admitted). Returns the room (None: no such room)."""
    return _set_switch(conference_id, "lobby", lobby, actor_id)


def conference_record(*, conference_id, kind, actor_id=None, participant_id=None, details=None):
    """Store a timeline entry that changes no state (mute all, a refused caller...)."""
    ConferenceEvent.objects.create(
        conference_id=conference_id,
        participant_id=participant_id,
        kind=kind,
        actor_id=actor_id,
        details=details or {},
        created_at=timezone.now(),
    )


# --- recordings ------------------------------------------------------------------


def recording_started(*, conference_id, name, actor_id=None, started_at=None):
    """A recording of the room is being written (``name``: Asterisk's). Idempotent; returns the Recording.

    ``started_at``: when it began, for one found after the fact (else now).
    """
    with _atomic():
        conference = _lock_room(conference_id)
        if conference is None:
            return None
        existing = Recording.objects.filter(name=name).first()
        if existing is not None:
            return existing
        live = Recording.objects.filter(conference_id=conference_id, state=Recording.State.RECORDING).first()
        if live is not None:  # one live recording per room: a second is not recorded as one
            logger.warning("conference %s: recording %s started while %s is live", conference_id, name, live.name)
            return live
        now = timezone.now()
        meeting_id = (
            Meeting.objects.filter(conference_id=conference_id, ended_at__isnull=True).values_list("pk", flat=True)
        ).first()
        recording = Recording.objects.create(
            conference=conference,
            meeting_id=meeting_id,
            name=name,
            started_at=started_at or now,
            started_by_id=actor_id,
        )
        conference.recording = True
        conference.save(update_fields=["recording"])
        _record(
            conference.pk,
            Kind.RECORDING_STARTED,
            actor_id=actor_id,
            at=started_at or now,
            details={"recording": recording.pk},
        )
        _emit_conference(conference)
    logger.info("conference %s: recording %s started", conference_id, name)
    return recording


def recording_stopping(*, name, actor_id):
    """A moderator asked to stop the recording: the stop's actor, for its timeline entry."""
    Recording.objects.filter(name=name, state=Recording.State.RECORDING).update(stopped_by_id=actor_id)


def recording_finished(*, name, duration=None, error=""):
    """Asterisk finished (or, with ``error``, failed) writing a recording. Returns it, or None if unknown."""
    with _atomic():
        recording = Recording.objects.select_for_update().filter(name=name).first()
        if recording is None or recording.state != Recording.State.RECORDING:
            return recording
        conference = _lock_room(recording.conference_id)
        now = timezone.now()
        recording.state = Recording.State.FAILED if error else Recording.State.FINISHED
        recording.stopped_at = now
        recording.duration = duration if duration is not None else (now - recording.started_at).total_seconds()
        recording.error = error[:1000]
        recording.save(update_fields=["state", "stopped_at", "duration", "error"])
        conference.recording = False
        conference.save(update_fields=["recording"])
        _record(
            conference.pk,
            Kind.RECORDING_FAILED if error else Kind.RECORDING_STOPPED,
            actor_id=recording.stopped_by_id,
            at=now,
            details={"recording": recording.pk, **({"error": error[:200]} if error else {})},
        )
        _emit_conference(conference)
    logger.info("conference %s: recording %s %s", recording.conference_id, name, "failed" if error else "finished")
    return recording


def recording_stored(*, recording_id, file_name, size, seconds=None):
    """The recording's file is in the site's storage now: ``recording.finished`` to the room's pages.

    ``seconds``: the audio the file holds, when it could be read; it becomes
    the duration (``recording_finished`` could only estimate one for a
    recording that ended while no worker listened, or whose Asterisk died).
    """
    from conferences import recordings

    with _atomic():
        updated = Recording.objects.filter(pk=recording_id).update(
            state=Recording.State.STORED, file=file_name, size=size, error=""
        )
        if seconds is not None:
            Recording.objects.filter(pk=recording_id).update(duration=round(seconds, 3))
        recording = Recording.objects.select_related("conference").filter(pk=recording_id).first()
        if not updated or recording is None:
            return None
        conference = recording.conference
        _emit(
            conference.pk,
            protocol.RECORDING_FINISHED,
            recording={
                "id": recording.pk,
                "started_at": broadcast.iso(recording.started_at),
                "duration": recording.duration,
                "download_url": recordings.download_url(recording),
            },
            _moderators_only=conference.record_download != Conference.RecordDownload.VIEWERS,
        )
    return recording


def purge_recordings(*, now=None, server_id=None):
    """Delete the files of stored recordings past their room's retention (``record_retention_days``).

    A recording still being written or fetched is never touched; each one
    deleted keeps its row (state ``purged``, no file) and gets a timeline
    entry. Returns how many were deleted.
    """
    from django.core.files.storage import default_storage

    now = now or timezone.now()
    stored = Recording.objects.filter(state=Recording.State.STORED).select_related("conference")
    if server_id is not None:
        stored = stored.filter(conference__server_id=server_id)
    purged = 0
    for recording in stored.iterator():
        days = recording.conference.record_retention_days
        if recording.stopped_at is None or recording.stopped_at > now - timedelta(days=days):
            continue
        if recording.file:
            try:
                default_storage.delete(recording.file.name)
            except Exception:  # the store is down (S3): kept stored, tried again at the next purge
                logger.exception("recording %s: its file could not be deleted", recording.pk)
                continue
        with _atomic():
            changed = Recording.objects.filter(pk=recording.pk, state=Recording.State.STORED).update(
                state=Recording.State.PURGED, file=""
            )
            if changed:
                _record(
                    recording.conference_id,
                    Kind.RECORDING_PURGED,
                    details={"recording": recording.pk, "retention_days": days},
                )
                purged += changed
    if purged:
        logger.info("recordings: %s deleted after their retention", purged)
    return purged


def recording_fetch_failed(*, recording_id, error):
    Recording.objects.filter(pk=recording_id).update(error=error[:1000])


# --- invites ----------------------------------------------------------------------


# An invite still "open" this long after it was placed is one whose end was never seen (a database outage
# at the wrong moment): it no longer holds one of the room's max_open_invites (the next resync ends it).
INVITE_OPEN_AT_MOST = timedelta(minutes=10)


def invite_counts(*, conference_id, actor_id, window):
    """``(open invites of the room, invites by the moderator, invites into the room)``, the last two in the
    ``window`` seconds up to now: what the invite limits are judged on (they hold across worker restarts)."""
    now = timezone.now()
    since = now - timedelta(seconds=window)
    open_count = Invite.objects.filter(
        conference_id=conference_id, status__in=Invite.OPEN, created_at__gte=now - INVITE_OPEN_AT_MOST
    ).count()
    by_actor = Invite.objects.filter(actor_id=actor_id, created_at__gte=since).count() if actor_id else 0
    by_room = Invite.objects.filter(conference_id=conference_id, created_at__gte=since).count()
    return open_count, by_actor, by_room


def invite_created(*, conference_id, number, actor_id, channel_id, actor_limit=None):
    """A moderator invited ``number``: stored (with a timeline entry) and on the room's pages, before the
    worker dials it.

    ``actor_limit``: ``(count, seconds)``, the moderator's limit, checked again here with the moderator's
    row locked: invites into different rooms are handled side by side, and both may have passed the
    first count (ServiceError then).
    """
    from django.contrib.auth import get_user_model

    with _atomic():
        conference = _lock_room(conference_id)
        if conference is None:
            return None
        now = timezone.now()
        if actor_id is not None and actor_limit is not None:
            get_user_model().objects.select_for_update().filter(pk=actor_id).exists()
            count, seconds = actor_limit
            recent = Invite.objects.filter(actor_id=actor_id, created_at__gte=now - timedelta(seconds=seconds))
            if recent.count() >= count:
                raise ServiceError("too many invites lately; try again in a few minutes")
        invite = Invite.objects.create(
            conference=conference, number=number, actor_id=actor_id, channel_id=channel_id, created_at=now
        )
        _record(conference.pk, Kind.INVITED, actor_id=actor_id, at=now, details={"invite": invite.pk, "number": number})
        _emit(conference.pk, protocol.INVITE_UPDATED, invite=broadcast.invite_state(invite))
    logger.info("conference %s: invite %s: dialing %s", conference_id, invite.pk, number)
    return invite


def invite_updated(*, invite_id, status, cause=None, participant_id=None):
    """An invite's call moved on. Only forward: an open invite may ring or end; an ended one stays as it
    ended (a late event changes nothing). Returns the invite, or None when it did not change."""
    with _atomic():
        invite = Invite.objects.select_for_update().filter(pk=invite_id).first()
        if invite is None or invite.status not in Invite.OPEN or status in (invite.status, Invite.Status.DIALING):
            return None
        conference = _lock_room(invite.conference_id)
        now = timezone.now()
        invite.status = status
        fields = ["status"]
        if status != Invite.Status.RINGING:
            invite.ended_at, invite.cause = now, cause
            fields += ["ended_at", "cause"]
        if participant_id is not None:
            invite.participant_id = participant_id
            fields.append("participant")
        invite.save(update_fields=fields)
        if status != Invite.Status.RINGING:
            details = {"invite": invite.pk, "number": invite.number, "status": status}
            if cause is not None:
                details["cause"] = cause
            _record(conference.pk, Kind.INVITE_ENDED, actor_id=invite.actor_id, at=now, details=details)
        _emit(conference.pk, protocol.INVITE_UPDATED, invite=broadcast.invite_state(invite))
    logger.info("conference %s: invite %s: %s", invite.conference_id, invite.pk, status)
    return invite


def sound_played(*, conference_id, name, actor_id):
    """A moderator played a sound to the room: a timeline entry with its actor."""
    _record(conference_id, Kind.PLAYED, actor_id=actor_id, details={"sound": name})


# --- servers ----------------------------------------------------------------------


def server_set_link_status(*, server_id, connected, error=""):
    """Record the worker's link to Asterisk and tell every room of that server when it changed."""
    now = timezone.now()
    with _atomic():
        current = AsteriskServer.objects.select_for_update().get(pk=server_id)
        changed = current.connected != connected
        current.connected = connected
        current.last_seen_at = now if connected else current.last_seen_at
        if changed or current.status_since is None:
            current.status_since = now
        if error or connected:
            current.last_error = error[:1000] if error else current.last_error
        current.save(update_fields=["connected", "last_seen_at", "status_since", "last_error"])
        if changed:
            frame = {"type": protocol.ASTERISK_STATUS, "connected": connected}
            for conference_id in Conference.objects.filter(server_id=server_id).values_list("pk", flat=True):
                _send_room_frame(conference_id, frame)
    return current


def server_heartbeat(*, server_id):
    """Note that the link was confirmed alive just now."""
    AsteriskServer.objects.filter(pk=server_id).update(last_seen_at=timezone.now())


# The room settings pages show: a change of one is broadcast.
BROADCAST_FIELDS = {"name", "number", "slug", "locked", "lobby", "wait_for_leader", "when_leader_leaves"}


def configurable_fields():
    """The room's settings staff may change (every editable field: seq and the creation time are not)."""
    return {field.name for field in Conference._meta.concrete_fields if field.editable and not field.primary_key}


def conference_update(*, conference_id, actor_id=None, **changes):
    """Change a room's settings (the admin's form): saved, audited and broadcast like every other change.

    ``locked`` is recorded as the room being locked or unlocked by ``actor``,
    as from the page; the other settings are in the admin's own change log.
    Returns the room, or ``None`` when it no longer exists.
    """
    unknown = set(changes) - configurable_fields()
    if unknown:
        raise ValueError(f"cannot update {', '.join(sorted(unknown))}")
    with _atomic():
        conference = Conference.objects.select_for_update().filter(pk=conference_id).first()
        if conference is None:
            return None
        changed = [field for field, value in changes.items() if getattr(conference, field) != value]
        if not changed:
            return conference
        for field in changed:
            setattr(conference, field, changes[field])
        conference.full_clean(validate_unique=True, validate_constraints=True)
        conference.save(update_fields=changed)
        for field, (on, off) in SWITCHES.items():
            if field in changed:
                _record(conference.pk, on if getattr(conference, field) else off, actor_id=actor_id)
        if BROADCAST_FIELDS & set(changed):
            _emit_conference(conference)
    logger.info("conference %s: settings changed (%s)", conference.pk, ", ".join(sorted(changed)))
    return conference
