"""A token or webhook limited to one room reaches no room once that room is deleted (when an empty room list
meant "every room", deleting the room widened them: an attacker's review)."""

import pytest

from conferences import tokens, webhooks
from conferences.models import ConferenceAccess, Webhook, WebhookDelivery

pytestmark = pytest.mark.django_db


def test_a_token_limited_to_a_deleted_room_does_not_then_see_every_room(make_conference, make_user, grant):
    old, secret = make_conference(), make_conference()
    owner = make_user("integrator")
    grant(old, user=owner, role=ConferenceAccess.Role.MODERATOR)
    grant(secret, user=owner, role=ConferenceAccess.Role.MODERATOR)
    _token, raw = tokens.create(user=owner, name="wallboard for the old room", conferences=[old])
    assert not tokens.can_view(tokens.authenticate(raw), secret)
    old.delete()
    assert not tokens.can_view(tokens.authenticate(raw), secret)


def test_a_webhook_limited_to_a_deleted_room_gets_no_other_room_s_events(make_conference):
    old, other = make_conference(), make_conference()
    hook = Webhook.objects.create(name="partner", url="https://partner.example.com/hook", secret="s" * 32)
    hook.conferences.set([old])
    old.delete()
    webhooks.forget()
    webhooks.enqueue(other.pk, {"type": "participant.joined", "seq": 1, "participant": {"caller_number": "+4912345"}})
    assert not WebhookDelivery.objects.filter(webhook=hook).exists()
