"""Webhooks (conferences/webhooks.py): the outbox rows the services write, and the sender against real receivers.

The receivers are aiohttp servers on loopback; the sender runs in the test's
event loop (its steps, or its whole loop) and, for SIGKILL and SIGTERM, as the
real ``manage.py webhook_sender`` process.
"""

import asyncio
import hashlib
import hmac
import json
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from aiohttp import web
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from conferences import services, webhooks
from conferences.models import Webhook, WebhookDelivery
from tests.live import db
from tests.sandbox import eventually
from tests.stack import ROOT, base_env, database_url, free_port

SECRET = "a-receiver-secret-0123456789"
Status = WebhookDelivery.Status


@pytest.fixture(autouse=True)
def _fresh_cache():
    webhooks.forget()  # rolled back rows of other tests send no signal
    yield
    webhooks.forget()


def verify(secret, headers, body, *, max_age=300):
    """What a receiver does (docs/webhooks.md): recompute the signature, compare in constant time, check the age."""
    timestamp = headers["X-Webhook-Timestamp"]
    expected = "sha256=" + hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, headers["X-Webhook-Signature"]) and abs(time.time() - int(timestamp)) < max_age


class Receiver:
    """An HTTP receiver on loopback that keeps every request; ``answer(n)`` (n from 1) says how to answer."""

    def __init__(self, answer=None):
        self.answer = answer or (lambda n: web.Response(text="ok"))
        self.requests = []  # (monotonic time, headers, body)
        self.wall_times = []  # time.time() of each
        self.arrived = asyncio.Event()

    async def __aenter__(self):
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self.runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.2, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/hook"
        return self

    async def __aexit__(self, *exc):
        await self.runner.cleanup()

    async def _handle(self, request):
        body = await request.read()
        self.requests.append((time.monotonic(), request.headers, body))
        self.wall_times.append(time.time())
        self.arrived.set()
        answer = self.answer(len(self.requests))
        if asyncio.iscoroutine(answer):
            answer = await answer
        return answer

    def bodies(self):
        return [json.loads(body) for _, _, body in self.requests]


def make_webhook(url="http://127.0.0.1:9/hook", **fields):
    rooms = fields.pop("conferences", ())
    fields.setdefault("every_room", not rooms)
    webhook = Webhook.objects.create(name=fields.pop("name", "crm"), url=url, secret=SECRET, **fields)
    webhook.conferences.set(rooms)
    return webhook


def deliveries(**filters):
    return list(WebhookDelivery.objects.filter(**filters).order_by("id"))


# --- the signature --------------------------------------------------------------------------------


def test_signature_is_hmac_sha256_of_timestamp_dot_body_with_the_secret():
    body = b'{"id":"x","type":"ping"}'
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert webhooks.signature(SECRET, "1700000000", body) == f"sha256={expected}"
    assert webhooks.signature("another-secret", "1700000000", body) != f"sha256={expected}"
    assert webhooks.signature(SECRET, "1700000001", body) != f"sha256={expected}"


# --- the outbox: which webhooks get a row ---------------------------------------------------------


@pytest.mark.django_db
def test_a_room_change_queues_one_delivery_per_matching_enabled_webhook(conference, make_conference):
    other = make_conference("200")
    every = make_webhook(name="every")
    joins = make_webhook(name="joins", events=["participant.joined"])
    this_room = make_webhook(name="sales only", conferences=[conference])
    other_room = make_webhook(name="other only", conferences=[other])
    make_webhook(name="off", enabled=False)

    services.conference_set_locked(conference_id=conference.pk, locked=True)

    rows = deliveries()
    assert {row.webhook_id for row in rows} == {every.pk, this_room.pk}
    assert {row.event_type for row in rows} == {"conference.updated"}
    body = rows[0].payload
    assert body["type"] == "conference.updated"
    assert body["room"] == {"slug": "sales", "name": "Sales", "number": "100"}
    assert body["data"]["conference"]["locked"] is True and body["data"]["seq"] >= 1
    assert rows[0].status == Status.PENDING and rows[0].attempts == 0
    assert rows[0].event_id != rows[1].event_id  # one id per delivery: the receiver's dedup key
    assert joins.pk not in {row.webhook_id for row in rows} and other_room.pk not in {row.webhook_id for row in rows}


@pytest.mark.django_db
def test_participant_frames_carry_what_pages_get_and_no_channel_id(conference, make_participant):
    make_webhook()
    alice = make_participant(conference, channel_id="PJSIP/secret-chan-1", caller_name="Alice", caller_number="201")
    services.participant_update(participant_id=alice.pk, hand_raised=True)
    (row,) = deliveries()
    assert row.event_type == "participant.updated"
    assert row.payload["data"]["participant"]["hand_raised"] is True
    assert row.payload["data"]["participant"]["caller_name"] == "Alice"
    assert "secret-chan-1" not in json.dumps(row.payload) and "channel_id" not in row.payload["data"]["participant"]
    assert SECRET not in json.dumps(row.payload)


def test_the_body_has_no_consumer_only_keys():
    frame = {"type": "recording.finished", "seq": 3, "recording": {"id": 1}, "_moderators_only": True}
    assert webhooks.frame_data(frame) == {"seq": 3, "recording": {"id": 1}}


@pytest.mark.django_db
def test_talking_goes_only_to_webhooks_that_chose_it(conference, make_participant):
    make_webhook(name="every")
    talk = make_webhook(name="talk", events=["participant.talking"])
    alice = make_participant(conference)
    services.participant_update(participant_id=alice.pk, talking=True)
    services.participant_talked(participant_id=alice.pk, seconds=2.5)
    services.participant_update(participant_id=alice.pk, moh=True)  # music on hold: an ordinary update
    rows = deliveries()
    assert [(row.webhook_id, row.event_type) for row in rows] == [
        (talk.pk, "participant.talking"),
        (talk.pk, "participant.talking"),
        (Webhook.objects.get(name="every").pk, "participant.updated"),
    ]
    assert rows[1].payload["data"]["participant"]["talk_seconds"] == 2.5


@pytest.mark.django_db
def test_mute_all_and_the_asterisk_link_are_queued_too(conference, make_participant, server):
    make_webhook(events=["participant.updated", "asterisk.status"])
    alice, bob = make_participant(conference), make_participant(conference)
    services.participants_set_muted(conference_id=conference.pk, participant_ids=[alice.pk, bob.pk], muted=True)
    services.server_set_link_status(server_id=server.pk, connected=True)
    types = [row.event_type for row in deliveries()]
    assert types == ["participant.updated", "participant.updated", "asterisk.status"]
    assert deliveries()[2].payload["data"] == {"connected": True}


@pytest.mark.django_db
def test_a_change_that_rolls_back_leaves_no_delivery(conference):
    make_webhook()
    with pytest.raises(RuntimeError), transaction.atomic():
        services.conference_set_locked(conference_id=conference.pk, locked=True)
        assert len(deliveries()) == 1  # written in the change's transaction ...
        raise RuntimeError("the change fails after its frame")
    assert deliveries() == []  # ... and gone with it


@pytest.mark.django_db
def test_no_webhook_costs_no_statement(conference, django_assert_num_queries):
    webhooks.enqueue(conference.pk, {"type": "conference.updated", "seq": 1})  # loads the (empty) cache
    with django_assert_num_queries(0):
        for _ in range(100):
            assert webhooks.enqueue(conference.pk, {"type": "conference.updated", "seq": 1}) == 0


@pytest.mark.django_db
def test_a_matching_frame_costs_one_insert(conference, django_assert_num_queries):
    make_webhook(name="a")
    make_webhook(name="b")
    webhooks.enqueue(conference.pk, {"type": "conference.updated", "seq": 1})  # cache and room loaded
    with django_assert_num_queries(1):
        assert webhooks.enqueue(conference.pk, {"type": "conference.updated", "seq": 2}) == 2


@pytest.mark.django_db
def test_a_webhook_saved_or_deleted_in_this_process_is_seen_at_once_and_a_stale_cache_inserts_nothing(conference):
    frame = {"type": "conference.updated", "seq": 1}
    assert webhooks.enqueue(conference.pk, frame) == 0
    hook = make_webhook()
    assert webhooks.enqueue(conference.pk, frame) == 1
    hook.enabled = False
    hook.save()
    assert webhooks.enqueue(conference.pk, frame) == 0
    hook.enabled = True
    hook.save()
    webhooks.enqueue(conference.pk, frame)  # cached as enabled ...
    Webhook.objects.filter(pk=hook.pk).update(enabled=False)  # ... then changed without a signal (another process)
    assert webhooks.enqueue(conference.pk, frame) == 0  # the INSERT's own SELECT checks the row


# --- the sender's steps ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_claim_takes_due_rows_counts_an_attempt_and_holds_them_past_the_timeout(conference, settings):
    settings.WEBHOOK_TIMEOUT_SECONDS = 5
    hook = make_webhook()
    for seq in range(3):
        webhooks.enqueue(conference.pk, {"type": "conference.updated", "seq": seq})
    now = timezone.now()
    claimed = webhooks.claim_due(limit=10, busy={hook.pk: 2}, per_webhook=4, now=now)
    assert len(claimed) == 2  # 2 already in flight to that webhook, 4 at most
    assert len(webhooks.claim_due(limit=10, now=now)) == 1  # the third
    row = WebhookDelivery.objects.get(pk=claimed[0].id)
    assert row.attempts == 1 and row.next_attempt_at == now + timedelta(seconds=5 + webhooks.CLAIM_MARGIN)
    assert webhooks.claim_due(limit=10, now=now + timedelta(seconds=1)) == []
    assert len(webhooks.claim_due(limit=10, now=now + timedelta(seconds=11))) == 3  # unanswered: due again
    body = json.loads(claimed[0].body)
    assert body["id"] == claimed[0].event_id and list(body)[:2] == ["id", "type"]


@pytest.mark.django_db
def test_failures_back_off_then_fail_after_the_attempts_or_the_hours(conference, settings):
    settings.WEBHOOK_RETRY_SECONDS = 10
    settings.WEBHOOK_MAX_ATTEMPTS = 3
    make_webhook()
    webhooks.enqueue(conference.pk, {"type": "conference.updated", "seq": 1})
    (row,) = deliveries()
    steps = []
    for _attempt in range(3):
        now = timezone.now()
        (claimed,) = webhooks.claim_due(now=now + timedelta(hours=2))
        status = webhooks.record_result(claimed.id, status_code=503, error="HTTP 503", now=now)
        row.refresh_from_db()
        steps.append((status, row.attempts, (row.next_attempt_at - now).total_seconds()))
    assert [s[:2] for s in steps] == [(Status.PENDING, 1), (Status.PENDING, 2), (Status.FAILED, 3)]
    assert 5 <= steps[0][2] <= 10 and 10 <= steps[1][2] <= 20  # doubling, between half and all of the step
    assert row.last_status_code == 503 and row.last_error == "HTTP 503"
    webhooks.enqueue(conference.pk, {"type": "conference.updated", "seq": 2})
    young = deliveries()[-1]
    WebhookDelivery.objects.filter(pk=young.pk).update(created_at=timezone.now() - timedelta(hours=25))
    assert webhooks.record_result(young.pk, error="timeout") == Status.FAILED  # past WEBHOOK_RETRY_HOURS


def test_backoff_doubles_up_to_an_hour_with_jitter():
    class Top:
        @staticmethod
        def uniform(low, high):
            return high

    assert [webhooks.backoff(n, first=10, rng=Top) for n in (1, 2, 3, 4)] == [10, 20, 40, 80]
    assert webhooks.backoff(30, first=10, rng=Top) == webhooks.MAX_BACKOFF
    assert all(5 <= webhooks.backoff(1, first=10) <= 10 for _ in range(100))


@pytest.mark.django_db
def test_prune_deletes_old_delivered_and_failed_rows_only(conference, settings):
    settings.WEBHOOK_RETENTION_DAYS = 7
    make_webhook()
    for seq in range(4):
        webhooks.enqueue(conference.pk, {"type": "conference.updated", "seq": seq})
    old, old_failed, old_pending, young = deliveries()
    WebhookDelivery.objects.filter(pk=old.pk).update(status=Status.DELIVERED)
    WebhookDelivery.objects.filter(pk=old_failed.pk).update(status=Status.FAILED)
    WebhookDelivery.objects.exclude(pk=young.pk).update(created_at=timezone.now() - timedelta(days=8))
    assert webhooks.prune() == 2
    assert {row.pk for row in deliveries()} == {old_pending.pk, young.pk}


@pytest.mark.django_db
def test_send_test_queues_a_ping_whatever_the_events(conference):
    hook = make_webhook(events=["participant.left"], conferences=[conference])
    webhooks.send_test(hook)
    (row,) = deliveries()
    assert row.event_type == "ping" and row.payload["room"] is None and row.payload["data"] == {"webhook": "crm"}


# --- against real receivers -----------------------------------------------------------------------

live = pytest.mark.django_db(transaction=True)


async def run_sender():
    sender = webhooks.Sender()
    task = asyncio.create_task(sender.run())
    return sender, task


async def stop_sender(sender, task):
    sender.stopping.set()
    await asyncio.wait_for(task, 10)


@live
async def test_a_receiver_gets_the_signed_body_with_the_delivery_id(conference):
    async with Receiver() as receiver:
        await db(make_webhook)(receiver.url)
        await db(services.conference_set_locked)(conference_id=conference.pk, locked=True)
        sender, task = await run_sender()
        try:
            await eventually(lambda: receiver.requests, timeout=5)
            (row,) = await db(deliveries)()
        finally:
            await stop_sender(sender, task)
    _, headers, body = receiver.requests[0]
    assert headers["Content-Type"] == "application/json"
    assert verify(SECRET, headers, body)
    assert not verify("not-the-secret-xxxxxxxx", headers, body)
    payload = json.loads(body)
    assert headers["X-Webhook-Id"] == payload["id"] == row.event_id
    assert payload["type"] == "conference.updated" and payload["room"]["slug"] == "sales"
    row = await db(WebhookDelivery.objects.get)(pk=row.pk)
    assert (row.status, row.attempts, row.last_status_code) == (Status.DELIVERED, 1, 200)


@live
async def test_a_500_is_retried_with_backoff_and_the_log_shows_the_attempts_and_the_error(conference, settings):
    settings.WEBHOOK_RETRY_SECONDS = 1
    answers = {1: web.Response(status=500, text="database\nis down")}
    async with Receiver(lambda n: answers.get(n, web.Response(text="ok"))) as receiver:
        await db(make_webhook)(receiver.url)
        await db(services.conference_set_locked)(conference_id=conference.pk, locked=True)
        sender, task = await run_sender()
        try:
            await eventually(lambda: receiver.requests, timeout=5)
            (row,) = await db(deliveries)()

            async def noted():
                current = await db(WebhookDelivery.objects.get)(pk=row.pk)
                return current.last_status_code == 500 and current

            after_500 = await eventually(noted, timeout=5)
            await eventually(lambda: len(receiver.requests) == 2, timeout=5)

            async def delivered():
                current = await db(WebhookDelivery.objects.get)(pk=row.pk)
                return current.status == Status.DELIVERED and current

            final = await eventually(delivered, timeout=5)
        finally:
            await stop_sender(sender, task)
    assert (after_500.status, after_500.attempts, after_500.last_error) == (
        Status.PENDING,
        1,
        "HTTP 500: database is down",
    )
    assert (final.attempts, final.last_status_code, final.last_error) == (2, 200, "HTTP 500: database is down")
    (first, h1, _), (second, h2, _) = receiver.requests
    assert 0.5 <= second - first <= 2.5  # WEBHOOK_RETRY_SECONDS = 1, jittered to between 0.5 and 1 s
    assert h1["X-Webhook-Id"] == h2["X-Webhook-Id"]


@live
async def test_a_receiver_that_does_not_answer_in_time_is_a_failed_attempt(conference, settings):
    settings.WEBHOOK_TIMEOUT_SECONDS = 0.5

    async def hang(n):
        await asyncio.sleep(30)
        return web.Response(text="too late")

    async with Receiver(hang) as receiver:
        await db(make_webhook)(receiver.url)
        await db(webhooks.send_test)(await db(Webhook.objects.get)())
        sender, task = await run_sender()
        started = time.monotonic()
        try:

            async def noted():
                (current,) = await db(deliveries)()
                return current.last_error and current

            row = await eventually(noted, timeout=5)
        finally:
            await stop_sender(sender, task)
        took = time.monotonic() - started
    assert row.status == Status.PENDING and row.attempts == 1 and row.last_status_code is None
    assert row.last_error == "no answer within 0.5 s"
    assert took < 3


@live
async def test_a_huge_answer_or_a_redirect_does_not_hold_the_sender(conference, settings):
    huge = b"x" * (20 * 1024 * 1024)
    answers = {
        1: web.Response(status=500, body=huge),
        2: web.Response(status=302, headers={"Location": "http://127.0.0.1:9/elsewhere"}),
    }
    async with Receiver(lambda n: answers[n]) as receiver:
        hook = await db(make_webhook)(receiver.url)
        await db(webhooks.send_test)(hook)
        await db(webhooks.send_test)(hook)
        sender, task = await run_sender()
        started = time.monotonic()
        try:

            async def both_noted():
                rows = await db(deliveries)()
                return all(row.last_status_code for row in rows) and rows

            rows = await eventually(both_noted, timeout=5)
        finally:
            await stop_sender(sender, task)
    assert time.monotonic() - started < 3
    errors = sorted(row.last_error for row in rows)
    assert (
        errors[0] == "HTTP 302 (redirects are not followed)"
        and errors[1].startswith("HTTP 500: xxx")
        and len(errors[1]) < 300
    )
    assert all(row.status == Status.PENDING for row in rows)  # retried later, never followed


@live
async def test_a_slow_receiver_does_not_hold_the_others(conference, settings):
    settings.WEBHOOK_TIMEOUT_SECONDS = 5

    async def slow(n):
        await asyncio.sleep(3)
        return web.Response(text="ok")

    async with Receiver(slow) as slow_receiver, Receiver() as fast_receiver:
        await db(make_webhook)(slow_receiver.url, name="slow")
        await db(make_webhook)(fast_receiver.url, name="fast")
        for locked in (True, False, True, False, True, False):  # 6 events for each: more than PER_WEBHOOK
            await db(services.conference_set_locked)(conference_id=conference.pk, locked=locked)
        sender, task = await run_sender()
        started = time.monotonic()
        try:
            await eventually(lambda: len(fast_receiver.requests) == 6, timeout=5)
            fast_done = time.monotonic() - started
        finally:
            await stop_sender(sender, task)
    assert fast_done < 1.5
    assert len(slow_receiver.requests) <= webhooks.PER_WEBHOOK


@pytest.mark.django_db
def test_urls_other_than_http_are_never_posted_and_fail_at_once(conference):
    hook = make_webhook(url="file:///etc/passwd")
    webhooks.send_test(hook)
    (claimed,) = webhooks.claim_due()
    status_code, error = asyncio.run(_post_alone(claimed))
    assert (status_code, error) == (None, "not an http or https URL")
    assert webhooks.record_result(claimed.id, error=error, permanent=True) == Status.FAILED


async def _post_alone(claimed):
    import aiohttp

    async with aiohttp.ClientSession() as session:
        return await webhooks.post(session, claimed)


# --- the process: SIGKILL redelivers, SIGTERM stops ----------------------------------------------


def sender_process(**extra):
    env = base_env(database_url(), "")
    env.pop("REDIS_URL", None)
    env.update(WEBHOOK_TIMEOUT_SECONDS="2", **extra)
    return subprocess.Popen(
        [sys.executable, "manage.py", "webhook_sender"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@live
async def test_a_sender_killed_with_sigkill_sends_again_what_was_not_acknowledged(conference):
    hanging = asyncio.Event()

    async def answer(n):
        if n == 1:
            hanging.set()
            await asyncio.sleep(60)  # never answers the first attempt: the sender is killed meanwhile
        return web.Response(text="ok")

    async with Receiver(answer) as receiver:
        await db(make_webhook)(receiver.url)
        await db(services.conference_set_locked)(conference_id=conference.pk, locked=True)
        first = sender_process()
        try:
            await asyncio.wait_for(hanging.wait(), 20)
            first.send_signal(signal.SIGKILL)
            first.wait(5)
        finally:
            if first.poll() is None:
                first.kill()
        (row,) = await db(deliveries)()
        assert row.status == Status.PENDING and row.attempts == 1  # claimed, never acknowledged
        killed_at = time.monotonic()
        second = sender_process()
        try:

            async def delivered():
                return (await db(WebhookDelivery.objects.get)(pk=row.pk)).status == Status.DELIVERED

            await eventually(delivered, timeout=20)
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(10)
    assert second.returncode == 0
    assert len(receiver.requests) == 2
    (_, h1, b1), (_, h2, b2) = receiver.requests
    assert h1["X-Webhook-Id"] == h2["X-Webhook-Id"] == row.event_id and b1 == b2
    # due again once the claim ran out: the timeout (2 s) and CLAIM_MARGIN after the first claim
    assert receiver.requests[1][0] - killed_at < 2 + webhooks.CLAIM_MARGIN + 3


@live
async def test_sigterm_stops_the_sender_cleanly_and_an_unanswered_delivery_stays_pending(conference):
    hanging = asyncio.Event()

    async def hang(n):
        hanging.set()
        await asyncio.sleep(60)

    async with Receiver(hang) as receiver:
        hook = await db(make_webhook)(receiver.url)
        await db(webhooks.send_test)(hook)
        process = sender_process()
        try:
            line = await asyncio.to_thread(process.stdout.readline)
            assert "Sending webhooks" in line
            await asyncio.wait_for(hanging.wait(), 20)
            process.send_signal(signal.SIGTERM)
            started = time.monotonic()
            code = await asyncio.to_thread(process.wait, 10)
            took = time.monotonic() - started
        finally:
            if process.poll() is None:
                process.kill()
    assert code == 0, process.stdout.read()
    assert took < 2 + 2  # the request in flight gets its timeout (2 s here), then the sender exits
    (row,) = await db(deliveries)()
    assert row.status == Status.PENDING and row.attempts == 1 and len(receiver.requests) == 1


def serve_process():
    """``manage.py serve`` in the embedded mode (no REDIS_URL) on the test database."""
    env = base_env(database_url(), "")
    env.pop("REDIS_URL", None)
    return subprocess.Popen(
        [sys.executable, "manage.py", "serve", f"127.0.0.1:{free_port()}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@live
async def test_the_embedded_serve_sends_webhooks_with_no_further_step():
    async with Receiver() as receiver:
        hook = await db(make_webhook)(receiver.url)
        process = serve_process()
        try:
            await db(webhooks.send_test)(hook)
            await eventually(lambda: receiver.requests, timeout=15, message="serve sent no webhook")
        finally:
            process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(process.wait, 20)
        output = process.stdout.read()
    assert json.loads(receiver.requests[0][2])["type"] == "ping"
    assert "webhook sender: stopping" in output  # stopped with the server (uvicorn then re-raises SIGTERM)


# --- the admin ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_admin_events_as_checkboxes_secret_write_only_and_send_test(client, superuser, conference):
    client.force_login(superuser)
    add = client.get(reverse("admin:conferences_webhook_add"))
    assert b'type="checkbox" name="events" value="participant.talking"' in add.content
    response = client.post(
        reverse("admin:conferences_webhook_add"),
        {
            "name": "crm",
            "url": "https://crm.example.com/hook",
            "enabled": "on",
            "every_room": "on",
            "events": ["participant.joined"],
        },
        follow=True,
    )
    assert response.redirect_chain
    hook = Webhook.objects.get()
    assert hook.events == ["participant.joined"] and len(hook.secret) >= 32  # made and shown once
    assert hook.secret in "".join(str(m) for m in response.context["messages"])
    listing = client.get(reverse("admin:conferences_webhook_changelist"))
    assert f"?webhook__id__exact={hook.pk}".encode() in listing.content and hook.secret.encode() not in listing.content
    change = reverse("admin:conferences_webhook_change", args=[hook.pk])
    page = client.get(change)
    assert hook.secret.encode() not in page.content and hook.secret[:4].encode() not in page.content
    assert webhooks.secret_fingerprint(hook.secret).encode() in page.content  # which secret, without a part of it
    assert b'name="_send_test"' in page.content
    secret = hook.secret
    client.post(
        change,
        {
            "name": "crm",
            "url": "https://crm.example.com/hook",
            "enabled": "on",
            "every_room": "on",
            "events": [],
            "_send_test": "1",
        },
    )
    hook.refresh_from_db()
    assert hook.secret == secret and hook.events == []  # empty secret field: kept
    assert [row.event_type for row in deliveries()] == ["ping"]
    refused = client.post(reverse("admin:conferences_webhook_add"), {"name": "x", "url": "ftp://example.com/"})
    assert refused.status_code == 200 and not Webhook.objects.filter(name="x").exists()


@pytest.mark.django_db
def test_admin_delivery_log_is_read_only_and_retry_now_makes_a_failed_delivery_due(client, superuser, conference):
    client.force_login(superuser)
    hook = make_webhook()
    webhooks.send_test(hook)
    WebhookDelivery.objects.update(
        status=Status.FAILED, attempts=20, last_error="HTTP 500: down", next_attempt_at=timezone.now()
    )
    listing = client.get(reverse("admin:conferences_webhookdelivery_changelist"))
    assert b"HTTP 500: down" in listing.content
    row = WebhookDelivery.objects.get()
    detail = client.get(reverse("admin:conferences_webhookdelivery_change", args=[row.pk]))
    assert detail.status_code == 200 and b"<pre>" in detail.content and b'name="last_error"' not in detail.content
    client.post(
        reverse("admin:conferences_webhookdelivery_changelist"),
        {"action": "retry", "_selected_action": [row.pk]},
    )
    row.refresh_from_db()
    assert row.status == Status.PENDING and row.next_attempt_at <= timezone.now()
