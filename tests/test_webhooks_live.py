"""Webhooks from the real worker: a caller enters a sandbox room and a loopback receiver gets it, signed, in 1 s.

The worker and the sender run in this test's process, as in the embedded
``manage.py serve``; the caller is a Local channel of the sandbox Asterisk.
"""

import asyncio
import json
import signal
import time
from datetime import datetime

import pytest
from aiohttp import web

from conferences import webhooks
from conferences.models import Participant, Webhook, WebhookDelivery
from tests.live import db, wait_roster
from tests.sandbox import eventually
from tests.test_webhooks import SECRET, Receiver, sender_process, verify

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


class StasisClock:
    """When the worker got each channel's StasisStart (a ``configure`` hook of ``WorkerRunner.start``)."""

    def __init__(self):
        self.entered = {}

    def __call__(self, worker):
        original = worker.process_event

        async def process(event):
            if event.get("type") == "StasisStart":
                self.entered.setdefault(event["channel"]["id"], time.monotonic())
            await original(event)

        worker.process_event = process


@pytest.fixture
async def sender():
    webhooks.forget()
    running = webhooks.Sender()
    task = asyncio.create_task(running.run())
    yield running
    running.stopping.set()
    await asyncio.wait_for(task, 10)
    webhooks.forget()


async def test_a_caller_entering_reaches_a_receiver_signed_within_a_second(runner, sandbox, make_room, sender):
    clock = StasisClock()
    worker = await runner.start(configure=clock)
    room = await make_room(150, name="Support line")
    async with Receiver() as receiver:
        await db(Webhook.objects.create)(name="crm", url=receiver.url, secret=SECRET, events=["participant.joined"])
        dialled = time.monotonic()
        alice = await sandbox.caller(150, name="Alice Smith", number="201")
        await eventually(lambda: receiver.requests, timeout=5, message="no webhook arrived")
        arrived, headers, body = receiver.requests[0]
        await wait_roster(sandbox, worker, room, {alice.channel_id})
        await sandbox.hangup(alice)
        await wait_roster(sandbox, worker, room, set())
    latency = arrived - clock.entered[alice.channel_id]
    queued = receiver.wall_times[0] - datetime.fromisoformat(json.loads(body)["time"]).timestamp()
    print(
        f"\nStasisStart -> webhook at the receiver: {latency * 1000:.0f} ms "
        f"(queued -> received: {queued * 1000:.0f} ms); dial -> webhook {arrived - dialled:.2f} s"
    )
    assert latency < 1.0
    assert verify(SECRET, headers, body)
    payload = json.loads(body)
    assert headers["X-Webhook-Id"] == payload["id"]
    assert payload["type"] == "participant.joined"
    assert payload["room"] == {"slug": "room-150", "name": "Support line", "number": "150"}
    joined = payload["data"]["participant"]
    assert (joined["caller_name"], joined["caller_number"], joined["status"]) == ("Alice Smith", "201", "present")
    assert alice.channel_id not in body.decode() and alice.far_id not in body.decode()  # no ARI ids
    participant = await db(Participant.objects.get)(channel_id=alice.channel_id)
    assert joined["id"] == participant.pk
    # Only the chosen type: the leave and the room's counts were not queued for this webhook.
    kinds = await db(lambda: list(WebhookDelivery.objects.values_list("event_type", "status")))()
    assert kinds == [("participant.joined", "delivered")]


async def test_a_500_from_the_receiver_is_retried_and_the_log_shows_it(runner, sandbox, make_room, sender, settings):
    settings.WEBHOOK_RETRY_SECONDS = 1
    worker = await runner.start()
    room = await make_room(151)
    answers = {1: web.Response(status=500, text="try later")}
    async with Receiver(lambda n: answers.get(n, web.Response(text="ok"))) as receiver:
        await db(Webhook.objects.create)(name="crm", url=receiver.url, secret=SECRET, events=["participant.joined"])
        bob = await sandbox.caller(151, name="Bob", number="202")
        await wait_roster(sandbox, worker, room, {bob.channel_id})
        await eventually(lambda: len(receiver.requests) == 2, timeout=8, message="no retry arrived")

        async def delivered():
            row = await db(WebhookDelivery.objects.get)()
            return row.status == WebhookDelivery.Status.DELIVERED and row

        row = await eventually(delivered, timeout=5)
        await sandbox.hangup(bob)
    (_, first, body1), (_, second, body2) = receiver.requests
    assert first["X-Webhook-Id"] == second["X-Webhook-Id"] and body1 == body2
    assert verify(SECRET, second, body2)
    assert (row.attempts, row.last_status_code, row.last_error) == (2, 200, "HTTP 500: try later")


async def test_a_separate_sender_process_also_delivers_a_join_within_a_second(runner, sandbox, make_room):
    """Production's shape: the sender is its own process (no nudge from the worker: it polls)."""
    clock = StasisClock()
    worker = await runner.start(configure=clock)
    room = await make_room(152)
    async with Receiver() as receiver:
        await db(Webhook.objects.create)(name="crm", url=receiver.url, secret=SECRET, events=["participant.joined"])
        process = sender_process()
        try:
            line = await asyncio.to_thread(process.stdout.readline)
            assert "Sending webhooks" in line
            carol = await sandbox.caller(152, name="Carol", number="203")
            await eventually(lambda: receiver.requests, timeout=5, message="no webhook arrived")
            await wait_roster(sandbox, worker, room, {carol.channel_id})
            await sandbox.hangup(carol)
        finally:
            process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(process.wait, 10)
    latency = receiver.requests[0][0] - clock.entered[carol.channel_id]
    print(f"\nseparate sender: StasisStart -> webhook at the receiver: {latency * 1000:.0f} ms")
    assert latency < 1.0
    assert verify(SECRET, receiver.requests[0][1], receiver.requests[0][2])
    assert process.returncode == 0
