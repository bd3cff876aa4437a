"""An action taken with an API token is in the history with the user and the token's name (issue 18).

The request's ``via`` (conferences/moderation.py) reaches the history entries the worker writes for it,
in the database thread, also for a kick, whose entry is written later, when the caller has left.
"""

import pytest
from asgiref.sync import sync_to_async

from conferences import history, moderation
from conferences.models import ConferenceEvent
from tests.test_lobby_handlers import enter, leave, new_app, pk_of, start

pytestmark = pytest.mark.django_db(transaction=True)


def request(room, action, participant, actor, via):
    return moderation.build_request(
        conference_id=room.pk, action=action, participant_id=participant, actor_id=actor.pk, via=via
    )


@sync_to_async
def entries(room, kind):
    return [(event.actor_id, event.details) for event in ConferenceEvent.objects.filter(conference=room, kind=kind)]


async def test_a_mute_and_a_kick_with_a_token_name_it_and_one_without_does_not(server, make_conference, make_user):
    app = new_app(server)
    room = await sync_to_async(make_conference)("330")
    alice = await sync_to_async(make_user)("alice")
    for channel_id in ("A", "B"):
        await app.process_event(start(channel_id, "330"))
    await enter(app, room, "A", ["A"])
    await enter(app, room, "B", ["A", "B"])
    a, b = await pk_of("A"), await pk_of("B")

    assert await app.handle_command(request(room, "mute", a, alice, "crm-bot")) == (True, None)
    assert await app.handle_command(request(room, "unmute", a, alice, None)) == (True, None)
    assert await app.handle_command(request(room, "kick", b, alice, "crm-bot")) == (True, None)
    await leave(app, room, "B", ["A"])  # Asterisk takes the kicked caller out: the entry is written now
    await app.process_event({"type": "StasisStart", "channel": {"id": "C"}, "args": ["330"]})  # a later event

    assert await entries(room, ConferenceEvent.Kind.MUTED) == [(alice.pk, {"token": "crm-bot"})]
    assert await entries(room, ConferenceEvent.Kind.UNMUTED) == [(alice.pk, {})]
    [(actor, details)] = await entries(room, ConferenceEvent.Kind.KICKED)
    assert actor == alice.pk and details.get("token") == "crm-bot"
    # What happens after, without a token, names none: the name does not stick to the worker.
    joined = await entries(room, ConferenceEvent.Kind.JOINED)
    assert all("token" not in details for _actor, details in joined)


@pytest.mark.django_db
def test_the_history_page_shows_the_token_beside_the_user(conference, make_user):
    alice = make_user("alice")
    event = ConferenceEvent.objects.create(
        conference=conference,
        kind=ConferenceEvent.Kind.LOCKED,
        actor=alice,
        details={"token": "wallboard"},
        created_at=conference.created_at,
    )
    assert history._actor(event) == "alice (API token “wallboard”)"
    event.details = {}
    assert history._actor(event) == "alice"
