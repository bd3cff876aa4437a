"""The lobby and the leader in the write path: waiting stays, admission, the wait for the leader, what pages see.

Without Asterisk (tests/test_lobby.py runs the same against the sandbox):
the services' frames, stored events and meetings, the snapshot and the
room list, and the socket's checks of ``admit`` / ``deny``.
"""

import pytest

from conferences import broadcast, consumers, services
from conferences.consumers import _moderation_check, _snapshot, _visible_rooms
from conferences.models import ConferenceEvent, Meeting, Participant

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def sent(monkeypatch):
    frames = []
    monkeypatch.setattr(broadcast, "send_to_room", lambda conference_id, frame: frames.append(frame))
    return frames


def wait(conference, channel_id, waiting_for="lobby", **fields):
    participant, created = services.participant_join(
        conference_id=conference.pk, channel_id=channel_id, caller_name=channel_id, waiting_for=waiting_for, **fields
    )
    assert created
    return participant


def test_a_waiting_caller_is_listed_but_not_present_and_starts_no_meeting(conference, sent):
    waiting = wait(conference, "w1")
    assert (waiting.status, waiting.waiting_for, waiting.meeting_id) == ("waiting", "lobby", None)
    assert [f["type"] for f in sent] == ["participant.joined", "conference.updated"]
    assert sent[0]["participant"]["status"] == "waiting" and sent[0]["participant"]["waiting_for"] == "lobby"
    assert sent[1]["conference"]["participant_count"] == 0 and sent[1]["conference"]["waiting_count"] == 1
    assert not Participant.objects.present().exists() and not Meeting.objects.exists()
    snapshot = _snapshot(conference.pk)
    assert [p["status"] for p in snapshot["participants"]] == ["waiting"]
    assert (snapshot["conference"]["participant_count"], snapshot["conference"]["waiting_count"]) == (0, 1)


def test_admission_starts_the_stay_and_its_meeting_and_records_who_admitted(conference, sent, make_user):
    moderator = make_user()
    waiting = wait(conference, "w1")
    sent.clear()
    admitted, created = services.participant_join(
        conference_id=conference.pk, channel_id="w1", admitted_by=moderator.pk
    )
    assert not created and admitted.pk == waiting.pk
    row = Participant.objects.get(pk=waiting.pk)
    assert (row.status, row.waiting_for) == ("present", "")
    assert row.joined_at > waiting.joined_at and row.meeting_id is not None
    assert [f["type"] for f in sent] == ["participant.updated", "conference.updated"]
    assert sent[0]["participant"]["status"] == "present"
    assert sent[0]["participant"]["joined_at"] == row.joined_at.isoformat()
    kinds = list(ConferenceEvent.objects.order_by("id").values_list("kind", "actor_id"))
    assert kinds == [("waiting", None), ("admitted", moderator.pk), ("joined", None)]
    # The same event again (a replay) changes nothing.
    sent.clear()
    services.participant_join(conference_id=conference.pk, channel_id="w1")
    assert sent == []


def test_a_denied_caller_leaves_with_denied_and_the_count_follows(conference, sent, make_user):
    moderator = make_user()
    waiting = wait(conference, "w1")
    sent.clear()
    services.participant_leave(participant_id=waiting.pk, reason="denied", actor_id=moderator.pk)
    assert [f["type"] for f in sent] == ["participant.left", "conference.updated"]
    assert sent[0]["participant"]["left_reason"] == "denied" and sent[1]["conference"]["waiting_count"] == 0
    assert ConferenceEvent.objects.filter(kind="denied", actor=moderator).count() == 1


def test_admitted_into_a_room_waiting_for_its_leader_the_caller_waits_for_the_leader(conference, sent, make_user):
    moderator = make_user()
    waiting = wait(conference, "w1")
    sent.clear()
    services.participant_admit_to_leader_wait(participant_id=waiting.pk, actor_id=moderator.pk)
    assert Participant.objects.get(pk=waiting.pk).waiting_for == "leader"
    assert [(f["type"], f["participant"]["waiting_for"]) for f in sent] == [("participant.updated", "leader")]
    # Not twice: it no longer waits in the lobby.
    assert services.participant_admit_to_leader_wait(participant_id=waiting.pk) is None


def test_when_the_leader_leaves_the_others_wait_on_the_call_and_in_the_meeting(conference, sent):
    alice, _ = services.participant_join(conference_id=conference.pk, channel_id="a", caller_name="Alice")
    bob, _ = services.participant_join(conference_id=conference.pk, channel_id="b", caller_name="Bob")
    sent.clear()
    moved = services.participants_wait_for_leader(conference_id=conference.pk, participant_ids=[alice.pk, bob.pk])
    assert {p.pk for p in moved} == {alice.pk, bob.pk}
    assert [f["participant"]["status"] for f in sent if f["type"] == "participant.updated"] == ["waiting", "waiting"]
    assert sent[-1]["conference"]["waiting_count"] == 2 and sent[-1]["conference"]["participant_count"] == 0
    assert ConferenceEvent.objects.filter(kind="room_waiting").count() == 1
    # Still on the call: the meeting goes on, a lobby caller hanging up meanwhile does not end it.
    lobby = wait(conference, "w1")
    services.participant_leave(participant_id=lobby.pk, reason="hangup")
    assert Meeting.objects.get().ended_at is None
    # Back in (the room opened): the same stay, the same meeting, no second "joined".
    services.participant_join(conference_id=conference.pk, channel_id="a")
    row = Participant.objects.get(pk=alice.pk)
    assert (row.status, row.joined_at, row.meeting_id) == ("present", alice.joined_at, alice.meeting_id)
    assert ConferenceEvent.objects.filter(kind="joined", participant=alice).count() == 1
    # Bob hangs up while waiting, then Alice: the meeting ends with the last of its callers.
    services.participant_leave(participant_id=bob.pk, reason="hangup")
    assert Meeting.objects.get().ended_at is None
    services.participant_leave(participant_id=alice.pk, reason="hangup")
    assert Meeting.objects.get().ended_at is not None


def test_the_room_list_counts_the_waiting_apart(conference, make_user):
    user = make_user(is_superuser=True)
    services.participant_join(conference_id=conference.pk, channel_id="a", caller_name="Alice")
    wait(conference, "w1")
    wait(conference, "w2", waiting_for="leader")
    [(_pk, state)] = _visible_rooms(user)
    assert [p["caller_name"] for p in state["participants"]] == ["Alice"]
    assert (state["participant_count"], state["waiting_count"]) == (1, 2)


def test_the_lobby_switch_is_audited_and_broadcast(conference, sent, make_user):
    moderator = make_user()
    services.conference_set_lobby(conference_id=conference.pk, lobby=True, actor_id=moderator.pk)
    services.conference_set_lobby(conference_id=conference.pk, lobby=True, actor_id=moderator.pk)  # no change
    services.conference_set_lobby(conference_id=conference.pk, lobby=False, actor_id=moderator.pk)
    assert [f["conference"]["lobby"] for f in sent] == [True, False]
    assert list(ConferenceEvent.objects.order_by("id").values_list("kind", flat=True)) == ["lobby_on", "lobby_off"]


def test_admit_and_deny_name_a_waiting_caller_and_the_others_a_present_one(
    conference, make_user, make_participant, monkeypatch
):
    """What the room socket checks before an action reaches the worker (conferences/consumers.py)."""
    moderator = make_user(is_superuser=True)
    conference.server.connected = True
    conference.server.save()
    present = make_participant(conference, "p1")
    waiting = wait(conference, "w1")

    def check(action, participant):
        return _moderation_check(None, moderator.pk, conference.pk, action, participant.pk)

    monkeypatch.setattr(consumers, "session_user", lambda key: moderator)
    assert check("admit", present) == "no such waiting caller in this room"
    assert check("deny", present) == "no such waiting caller in this room"
    assert check("admit", waiting) is None and check("deny", waiting) is None
    assert check("mute", waiting) == "no such participant in this room"  # not in the room yet
    assert check("kick", waiting) == "no such participant in this room"
    assert check("mute", present) is None
