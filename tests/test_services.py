"""The write path's quick update (talking, music on hold): the same state and broadcast as the ORM's.

Runs on PostgreSQL with the suite and on SQLite (scripts/test): the
statement is raw SQL with RETURNING, whose values each database hands back
its own way.
"""

from datetime import timedelta

import pytest
from django.utils import timezone

from conferences import broadcast, services
from conferences.models import Conference, ConferenceEvent, Participant

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
