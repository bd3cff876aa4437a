"""The write path's quick update (talking, music on hold): the same state and broadcast as the ORM's.

Runs on PostgreSQL with the suite and on SQLite (scripts/test): the
statement is raw SQL with RETURNING, whose values each database hands back
its own way.
"""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from conferences import broadcast, services
from conferences.models import Conference, ConferenceEvent, Meeting, Participant

pytestmark = pytest.mark.django_db(transaction=True)  # real commits: broadcasts go out after each


@pytest.fixture
def sent(monkeypatch):
    frames = []
    monkeypatch.setattr(broadcast, "send_to_room", lambda conference_id, frame: frames.append(frame))
    return frames


def test_a_talking_update_broadcasts_the_whole_state(conference, make_participant, sent):
    joined = timezone.now() - timedelta(minutes=3)
    alice = make_participant(conference, "chan-a", caller_name="Алиса <b>", caller_number="201", joined_at=joined)
    updated = services.participant_update(participant_id=alice.pk, talking=True)
    assert updated.talking is True and updated.pk == alice.pk
    assert Participant.objects.get(pk=alice.pk).talking is True
    [frame] = sent
    assert frame["type"] == "participant.updated" and frame["seq"] == Conference.objects.get(pk=conference.pk).seq
    assert frame["participant"] == {
        "id": alice.pk,
        "caller_number": "201",
        "caller_name": "Алиса <b>",
        "role": "participant",
        "status": "present",
        "waiting_for": None,
        "joined_at": joined.isoformat(),
        "talk_seconds": 0.0,
        "muted": False,
        "mute_source": None,
        "talking": True,
        "moh": False,
        "hand_raised": False,
        "hand_raised_at": None,
    }
    assert not ConferenceEvent.objects.exists()  # talking is not audited


def test_an_unchanged_flag_sends_nothing_and_takes_no_seq(conference, make_participant, sent):
    alice = make_participant(conference, "chan-a", moh=True)
    seq = Conference.objects.get(pk=conference.pk).seq
    assert services.participant_update(participant_id=alice.pk, moh=True).moh is True
    assert sent == [] and Conference.objects.get(pk=conference.pk).seq == seq


def test_a_participant_who_left_is_not_updated(conference, make_participant, sent):
    gone = make_participant(conference, "chan-gone", left_at=timezone.now(), left_reason="hangup")
    assert services.participant_update(participant_id=gone.pk, talking=True) is None
    assert services.participant_update(participant_id=999_999, talking=True) is None
    assert sent == [] and Participant.objects.get(pk=gone.pk).talking is False


def test_both_quick_flags_at_once_and_a_mute_still_audited(conference, make_participant, sent):
    alice = make_participant(conference, "chan-a", talking=True)
    services.participant_update(participant_id=alice.pk, talking=False, moh=True)
    assert (sent[-1]["participant"]["talking"], sent[-1]["participant"]["moh"]) == (False, True)
    services.participant_update(participant_id=alice.pk, muted=True, talking=False)
    assert sent[-1]["participant"]["muted"] is True
    assert list(ConferenceEvent.objects.values_list("kind", flat=True)) == ["muted"]


# --- the keypad's state: hands and who muted ------------------------------------------------------


def test_hands_keep_the_order_they_went_up_in_and_every_change_is_in_the_timeline(
    conference, make_participant, sent, make_user
):
    from conferences.ari import store

    alice, bob = make_participant(conference, "chan-a"), make_participant(conference, "chan-b")
    store.set_hand(bob.pk, True, by_self=True)
    store.set_hand(alice.pk, True, by_self=True)
    bob_at = Participant.objects.get(pk=bob.pk).hand_raised_at
    store.set_hand(bob.pk, True, by_self=True)  # raised already: keeps its place
    assert Participant.objects.get(pk=bob.pk).hand_raised_at == bob_at
    assert bob_at < Participant.objects.get(pk=alice.pk).hand_raised_at
    moderator = make_user("mod")
    store.set_hand(bob.pk, False, moderator.pk)
    bob.refresh_from_db()
    assert (bob.hand_raised, bob.hand_raised_at) == (False, None)
    frames = [f["participant"] for f in sent if f["type"] == "participant.updated"]
    assert [(f["id"], f["hand_raised"]) for f in frames] == [(bob.pk, True), (alice.pk, True), (bob.pk, False)]
    assert frames[0]["hand_raised_at"] == bob_at.isoformat()
    kinds = list(
        ConferenceEvent.objects.filter(conference=conference).order_by("id").values_list("kind", "participant", "actor")
    )
    assert kinds == [
        ("hand_raised", bob.pk, None),
        ("hand_raised", alice.pk, None),
        ("hand_lowered", bob.pk, moderator.pk),
    ]


def test_a_moderators_mute_outranks_the_callers_own_and_an_unmute_clears_both_and_the_hand(
    conference, make_participant, sent, make_user
):
    from conferences.ari import store

    carol = make_participant(conference, "chan-c")
    moderator = make_user("mod")
    store.self_mute(carol.pk, True)
    carol.refresh_from_db()
    assert (carol.muted, carol.mute_source) == (True, "self")
    store.moderator_mute(carol.pk, True, moderator.pk)  # now a moderator's: the caller cannot undo it
    carol.refresh_from_db()
    assert (carol.muted, carol.mute_source) == (True, "moderator")
    store.set_hand(carol.pk, True, by_self=True)
    store.moderator_mute(carol.pk, False, moderator.pk)
    carol.refresh_from_db()
    assert (carol.muted, carol.mute_source, carol.hand_raised) == (False, "", False)
    assert [f["participant"]["mute_source"] for f in sent] == ["self", "moderator", "moderator", None]
    kinds = list(ConferenceEvent.objects.filter(conference=conference).order_by("id").values_list("kind", "actor"))
    assert kinds == [
        ("self_muted", None),
        ("muted", moderator.pk),
        ("hand_raised", None),
        ("unmuted", moderator.pk),
        ("hand_lowered", moderator.pk),
    ]


def test_mute_all_is_a_moderators_mute_even_for_callers_muted_by_themselves(conference, make_participant, sent):
    from conferences.ari import store

    dave, erin = make_participant(conference, "chan-d"), make_participant(conference, "chan-e")
    store.self_mute(dave.pk, True)
    store.set_hand(erin.pk, True, by_self=True)
    targets = store.mute_all_targets(conference.pk, True)
    assert sorted(pk for pk, _channel in targets) == sorted([dave.pk, erin.pk])
    services.participants_set_muted(conference_id=conference.pk, participant_ids=[dave.pk, erin.pk], muted=True)
    assert set(Participant.objects.filter(conference=conference).values_list("mute_source", flat=True)) == {"moderator"}
    services.participants_set_muted(conference_id=conference.pk, participant_ids=[dave.pk, erin.pk], muted=False)
    rows = Participant.objects.filter(conference=conference).values_list("muted", "mute_source", "hand_raised")
    assert set(rows) == {(False, "", False)}
    last = {f["participant"]["id"]: f["participant"] for f in sent}
    assert last[erin.pk]["hand_raised"] is False and last[erin.pk]["hand_raised_at"] is None


# --- a join's and a leave's round trips ---------------------------------------------------------


def statements(captured):
    """The statements of a block, without its transaction's own (BEGIN, COMMIT): what costs a round trip."""
    return [query["sql"] for query in captured if not query["sql"].upper().startswith(("BEGIN", "COMMIT", "ROLLBACK"))]


def test_a_join_and_a_leave_take_six_statements_each_and_count_the_room_right(
    conference, make_conference, make_participant, sent
):
    """Every caller's join and leave is on the way of the page's frame: the room's server read with the
    participant's lock, the seq with the room's counts. The counts are the room's own callers in it."""
    make_participant(conference, "chan-present")
    make_participant(conference, "chan-waiting", status=Participant.Status.WAITING, waiting_for="lobby")
    make_participant(conference, "chan-gone", left_at=timezone.now(), left_reason="hangup")
    make_participant(make_conference(number="4321", slug="other"), "chan-other-room")
    services.participant_join(conference_id=conference.pk, channel_id="chan-first")  # the meeting opens
    sent.clear()
    with CaptureQueriesContext(connection) as join:
        joined, created = services.participant_join(conference_id=conference.pk, channel_id="chan-b", caller_number="9")
    assert created
    assert len(statements(join.captured_queries)) == 6, statements(join.captured_queries)
    participant_frame, room_frame = sent
    assert participant_frame["type"] == "participant.joined" and participant_frame["participant"]["id"] == joined.pk
    assert room_frame["type"] == "conference.updated" and room_frame["seq"] == participant_frame["seq"] + 1
    assert (room_frame["conference"]["participant_count"], room_frame["conference"]["waiting_count"]) == (3, 1)
    assert room_frame["seq"] == Conference.objects.get(pk=conference.pk).seq

    sent.clear()
    with CaptureQueriesContext(connection) as leave:
        left = services.channel_leave(
            server_id=conference.server_id, channel_id="chan-b", reason=Participant.LeftReason.HANGUP
        )
    assert left.pk == joined.pk and left.left_at is not None
    assert len(statements(leave.captured_queries)) == 6, statements(leave.captured_queries)
    participant_frame, room_frame = sent
    assert participant_frame["type"] == "participant.left"
    assert (room_frame["conference"]["participant_count"], room_frame["conference"]["waiting_count"]) == (2, 1)
    # Gone already, another server's channel, a channel nobody knows: nothing, and nothing sent.
    sent.clear()
    for server_id, channel_id in (
        (conference.server_id, "chan-b"),
        (conference.server_id + 1, "chan-present"),
        (conference.server_id, "nope"),
    ):
        assert services.channel_leave(server_id=server_id, channel_id=channel_id, reason="hangup") is None
    assert sent == []
    # A caller waiting in the lobby who hangs up leaves by its channel too.
    assert services.channel_leave(server_id=conference.server_id, channel_id="chan-waiting", reason="hangup")
    assert sent[-1]["conference"]["waiting_count"] == 0


def test_the_last_leave_ends_the_meeting_in_one_statement_and_a_remaining_caller_keeps_it(conference, sent):
    first, _ = services.participant_join(conference_id=conference.pk, channel_id="chan-1")
    second, _ = services.participant_join(conference_id=conference.pk, channel_id="chan-2")
    meeting = Meeting.objects.get(conference=conference)
    services.participant_leave(participant_id=first.pk, reason="hangup")
    meeting.refresh_from_db()
    assert meeting.ended_at is None  # chan-2 is still in it
    services.participant_leave(participant_id=second.pk, reason="hangup")
    meeting.refresh_from_db()
    assert meeting.ended_at == Participant.objects.get(pk=second.pk).left_at
