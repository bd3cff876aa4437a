"""A hostile caller ID (a SIP display name may carry escaped control characters, NUL included) joins like any
other: control characters are taken out where it enters (services.participant_join), so PostgreSQL stores
the participant and the webhook's outbox row (both refused a NUL: the caller's join failed), and the name is
what the pages and the webhook get."""

import json

import pytest
from asgiref.sync import sync_to_async

from conferences import webhooks
from conferences.models import Webhook, WebhookDelivery
from tests.test_lobby_handlers import bridge_event, new_app

pytestmark = pytest.mark.django_db(transaction=True)

HOSTILE = 'Eve "\x00\r\n<script>alert(1)</script>\u202e\x7f' + "ж" * 200


async def test_a_hostile_caller_name_is_cleaned_stored_and_signed(server, make_conference):
    room = await sync_to_async(make_conference)("340")
    await sync_to_async(Webhook.objects.create)(name="crm", url="http://127.0.0.1:9/h", secret="s" * 32)
    await sync_to_async(webhooks.forget)()
    app = new_app(server)
    channel = {"id": "E", "name": "PJSIP/E", "state": "Up", "caller": {"name": HOSTILE, "number": "+1;evil\x00"}}
    await app.process_event({"type": "StasisStart", "channel": channel, "args": ["340"]})
    event = bridge_event("ChannelEnteredBridge", room, "E", ["E"])
    event["channel"] = channel
    await app.process_event(event)
    [joined] = await sync_to_async(list)(WebhookDelivery.objects.filter(event_type="participant.joined"))
    name = joined.payload["data"]["participant"]["caller_name"]
    assert name == ('Eve "<script>alert(1)</script>\u202e' + "ж" * 200)[:80]  # control characters out, 80 at most
    assert joined.payload["data"]["participant"]["caller_number"] == "+1;evil"
    assert json.loads(json.dumps(joined.payload))["data"]["participant"]["caller_name"] == name
