"""The REST API against the real stack: a real worker on the sandbox Asterisk, the channel layer on Redis.

A caller dials into a room; a program with an API token lists the room,
cannot kick with a read-only token, and mutes the caller with a moderate
one: the worker does it on Asterisk, the participant is muted in the
database and the history names the token's owner and the token.
"""

import pytest
from django.contrib.auth.models import User
from django.test import AsyncClient
from django.utils import timezone

from conferences import tokens
from conferences.models import ApiToken, ConferenceAccess
from tests.live import db, events_of, participant, wait_roster
from tests.sandbox import eventually

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def _owner_and_tokens(room):
    owner = User.objects.create_user(username="integrator", password="x")
    ConferenceAccess.objects.create(conference=room, user=owner, role=ConferenceAccess.Role.MODERATOR)
    _token, moderate = tokens.create(user=owner, name="crm-bot", scope=ApiToken.Scope.MODERATE)
    _token, read = tokens.create(user=owner, name="wallboard", scope=ApiToken.Scope.READ)
    _token, expired = tokens.create(
        user=owner, name="old", scope=ApiToken.Scope.MODERATE, expires_at=timezone.now() - timezone.timedelta(days=1)
    )
    return owner, moderate, read, expired


def bearer(raw):
    return {"Authorization": f"Bearer {raw}"}


async def test_a_moderate_token_mutes_a_live_caller_and_the_history_names_the_token(
    redis_layer, own_cache, worker, sandbox, make_room
):
    room = await make_room(160)
    owner, moderate, read, expired = await db(_owner_and_tokens)(room)
    alice = await sandbox.caller(160, name="Alice Smith", number="201")
    await wait_roster(sandbox, worker, room, {alice.channel_id})
    row = await db(participant)(alice.channel_id)
    client = AsyncClient()
    action = f"/api/v1/rooms/{room.slug}/actions"

    listed = await client.get("/api/v1/rooms", headers=bearer(read))
    assert listed.status_code == 200
    [state] = listed.json()
    assert (state["slug"], state["participant_count"], state["asterisk"]) == (room.slug, 1, {"connected": True})
    detail = (await client.get(f"/api/v1/rooms/{room.slug}", headers=bearer(read))).json()
    assert [(p["id"], p["caller_name"], p["muted"]) for p in detail["participants"]] == [(row.pk, "Alice Smith", False)]

    # A read-only token cannot kick; an expired one is refused: the caller stays.
    refused = await client.post(
        f"{action}/kick", data={"participant": row.pk}, content_type="application/json", headers=bearer(read)
    )
    assert refused.status_code == 403 and refused.json()["error"] == "you may not moderate this room"
    stale = await client.post(
        f"{action}/kick", data={"participant": row.pk}, content_type="application/json", headers=bearer(expired)
    )
    assert stale.status_code == 401
    assert await sandbox.channel_exists(alice.channel_id)
    assert (await db(participant)(alice.channel_id)).left_at is None

    muted = await client.post(
        f"{action}/mute", data={"participant": row.pk}, content_type="application/json", headers=bearer(moderate)
    )
    assert (muted.status_code, muted.json()) == (200, {"ok": True})
    assert (await db(participant)(alice.channel_id)).muted is True
    [event] = await db(events_of)(room, "muted")
    assert event["actor_id"] == owner.pk and event["participant_id"] == row.pk
    # The token's name beside the actor (the worker keeps the request's ``via``).
    assert event["details"].get("token") == "crm-bot", event["details"]

    # The history shows it, and the live state too.
    history = (await client.get(f"/api/v1/rooms/{room.slug}/history", headers=bearer(read))).json()
    muted_entry = next(e for e in history["events"] if e["kind"] == "muted")
    assert muted_entry["actor"] == "integrator" and muted_entry["details"]["token"] == "crm-bot"
    again = await client.post(
        f"{action}/mute", data={"participant": row.pk + 1000}, content_type="application/json", headers=bearer(moderate)
    )
    assert again.status_code == 404 and again.json()["error"] == "no such participant in this room"

    async def shown_muted():
        detail = (await client.get(f"/api/v1/rooms/{room.slug}", headers=bearer(read))).json()
        return detail["participants"][0]["muted"] is True

    await eventually(shown_muted, timeout=5, message="the room's state shows the caller muted")
    await sandbox.hangup(alice)
    await wait_roster(sandbox, worker, room, set())
