"""The room's own sounds in the worker's handlers, with a recording fake ARI: a tone when someone joins or
leaves (``join_leave_tones``), "you are the only person" to a caller alone (``announce_only_person``),
off by default; tests/test_announcements.py hears them on the sandbox."""

import pytest
from asgiref.sync import sync_to_async

from conferences.models import Conference
from tests.test_lobby_handlers import enter, leave, new_app, start

pytestmark = pytest.mark.django_db(transaction=True)


def sounds(app):
    """What the room was played (to its bridge) and each caller (to its channel), in order."""
    played = [("room", call[2]) for call in app.ari.calls if call[0] == "play_to_bridge"]
    played += [(call[1], call[2]) for call in app.ari.calls if call[0] == "play"]
    return played


async def test_tones_and_the_lone_callers_prompt_only_when_the_room_asks(server, make_conference):
    app = new_app(server)
    room = await sync_to_async(make_conference)("330")
    for channel_id in ("A", "B", "C"):
        await app.process_event(start(channel_id, "330"))
    await enter(app, room, "A", ["A"])
    await enter(app, room, "B", ["A", "B"])
    await leave(app, room, "B", ["A"])
    assert sounds(app) == []  # off by default

    await sync_to_async(Conference.objects.filter(pk=room.pk).update)(join_leave_tones=True, announce_only_person=True)
    await leave(app, room, "A", [])
    app.ari.calls.clear()
    await enter(app, room, "C", ["C"])  # alone: told so, no tone
    await app.process_event(start("D", "330"))
    await enter(app, room, "D", ["C", "D"])  # the room hears the join tone
    await leave(app, room, "D", ["C"])  # and the leave tone
    await leave(app, room, "C", [])  # nobody left to hear one
    assert sounds(app) == [
        ("room", "sound:confbridge-join"),
        ("room", "sound:confbridge-leave"),
        ("C", "sound:conf-onlyperson"),
    ]
