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
        "joined_at": joined.isoformat(),
        "muted": False,
        "talking": True,
        "moh": False,
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
