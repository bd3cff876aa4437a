"""Webhooks: room events posted to other systems, signed, retried, delivered at least once.

The outbox. ``enqueue`` runs inside the service function's transaction
(conferences/services.py, ``_send_room_frame``), beside the frame's broadcast:
a delivery row exists exactly when the change committed, and a change that
rolled back leaves none. There is no cursor over event ids (the worker's lanes
commit out of order); every row is its own job.

The cost for the worker: the enabled webhooks are cached in each process
(``CACHE_SECONDS``; a webhook saved or deleted in this process is seen at once,
one saved in another process, e.g. the admin's web process seen by a separate
worker, within ``CACHE_SECONDS``). With no webhook a frame costs nothing but a
look at that cache; with some, one ``INSERT ... SELECT`` for the matching ones
(the SELECT re-checks that each still exists and is enabled, so a stale cache
never inserts a row for a deleted webhook and never breaks the room's change).

The sender (``Sender``; ``manage.py webhook_sender``, or inside ``manage.py
serve`` in the embedded mode) claims due rows (PostgreSQL: ``FOR UPDATE SKIP
LOCKED``, so several senders never take one row), posts them with aiohttp
(``MAX_IN_FLIGHT`` at once, ``PER_WEBHOOK`` per webhook, so one slow receiver
does not hold the others) and marks a row delivered only after a 2xx answer.
A claim moves the row's next attempt ``CLAIM_MARGIN`` past the timeout: a
sender killed meanwhile (SIGKILL) leaves it pending, and it is sent again when
that time has passed. Failures are retried with exponential backoff and
jitter, ``WEBHOOK_RETRY_SECONDS`` doubling up to ``MAX_BACKOFF``, until
``WEBHOOK_MAX_ATTEMPTS`` attempts or ``WEBHOOK_RETRY_HOURS`` after the event;
then the row is failed. Delivered and failed rows are the delivery log, pruned
after ``WEBHOOK_RETENTION_DAYS``.

The request (docs/webhooks.md):

- ``POST`` of a JSON body ``{"id", "type", "time", "room": {"slug", "name",
  "number"} or null, "data"}``; ``data`` is the room frame as pages get it
  (``seq`` and the participant, conference, invite or recording), never an
  ARI id or a credential;
- ``X-Webhook-Id``: the delivery's id (also the body's ``id``), the same on
  every attempt: receivers deduplicate with it;
- ``X-Webhook-Timestamp``: Unix seconds when this attempt was signed;
- ``X-Webhook-Signature``: ``sha256=`` and the hex HMAC-SHA256, keyed with the
  webhook's secret, of ``<timestamp>.<body>`` (the raw body bytes). A receiver
  recomputes it, compares in constant time and refuses old timestamps (e.g.
  over 5 minutes) so a captured request cannot be replayed later.

Redirects are not followed (a 3xx is a failure); only ``http`` and ``https``
URLs are posted to; at most ``MAX_ANSWER_BYTES`` of an answer are read. The
secret is never logged.
"""

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import random
import socket
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from urllib.parse import urlsplit

import aiohttp
import aiohttp.abc
from django.conf import settings
from django.db import DatabaseError, connection, connections, transaction
from django.db.models import F
from django.db.models.signals import m2m_changed, post_delete, post_save
from django.dispatch import receiver
from django.utils import timezone

from conferences import protocol
from conferences.models import Conference, Webhook, WebhookDelivery

logger = logging.getLogger(__name__)

# The event types a webhook may ask for. Talking changes are participant.updated frames for the pages;
# for webhooks they are their own type, participant.talking, sent only to webhooks that chose it: a room
# of ten people makes several a second, a CRM or a ticket bot wants none of them, and every one is a row
# and a request. Everything else a participant does (mute, hand, admission, music) stays participant.updated.
TALKING = "participant.talking"
PING = "ping"  # the admin's "send test"; not a room event, never chosen
EVENT_TYPES = (
    protocol.PARTICIPANT_JOINED,
    protocol.PARTICIPANT_UPDATED,
    protocol.PARTICIPANT_LEFT,
    TALKING,
    protocol.CONFERENCE_UPDATED,
    protocol.INVITE_UPDATED,
    protocol.RECORDING_FINISHED,
    protocol.ASTERISK_STATUS,
)
# What a webhook with no event types chosen gets: every type but the talking ones.
DEFAULT_TYPES = frozenset(EVENT_TYPES) - {TALKING}

CACHE_SECONDS = 5.0
POLL_SECONDS = 0.25  # the sender's look for due rows when nothing woke it (one indexed query)
MAX_IN_FLIGHT = 20  # requests at once, all webhooks together
PER_WEBHOOK = 4  # requests at once to one webhook: a slow receiver holds at most these
CLAIM_MARGIN = 5.0  # seconds past the timeout before a claimed, unanswered row is due again
MAX_BACKOFF = 3600.0
MAX_ANSWER_BYTES = 4096
MAX_ERROR_CHARS = 500
PRUNE_EVERY = 600.0
PRUNE_BATCH = 5000
USER_AGENT = "conference-webhooks/1"
BODY_KEYS = ("type", "time", "room", "data")
NOT_HTTP = "not an http or https URL"
REFUSED_ADDRESS = "the address is this host's own, link-local or not a host (refused)"


# --- where a webhook may post --------------------------------------------------------------------
#
# A receiver's URL is staff's to set, but a URL at the host itself (Asterisk's ARI on loopback takes its
# credentials in the query string: a POST there can originate calls), at a cloud's metadata service
# (link-local) or at no host at all is refused, in the admin's form and again at connect time, after DNS
# (a name may resolve to such an address). Private (RFC 1918) addresses stay allowed: intranet CRMs are
# the common receiver. WEBHOOK_ALLOW_LOOPBACK lets development and the tests post to receivers on loopback.


def address_refused(address):
    """Whether the sender may not connect to ``address`` (an IP address string)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return True
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return not settings.WEBHOOK_ALLOW_LOOPBACK
    return ip.is_link_local or ip.is_unspecified or ip.is_multicast or ip.is_reserved


def url_problem(url):
    """Why the sender will not post to ``url`` (the text for the form and the log), or ``None``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return NOT_HTTP
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        return REFUSED_ADDRESS
    if host == "localhost" or host.endswith(".localhost"):
        return None if settings.WEBHOOK_ALLOW_LOOPBACK else REFUSED_ADDRESS
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None  # a name: its addresses are checked when connecting (GuardedResolver)
    return REFUSED_ADDRESS if address_refused(host) else None


class GuardedResolver(aiohttp.abc.AbstractResolver):
    """aiohttp's resolver with the refused addresses taken out: a name that resolves to none left fails."""

    def __init__(self):
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(self, host, port=0, family=socket.AF_INET):
        found = await self._inner.resolve(host, port, family)
        kept = [info for info in found if not address_refused(info["host"])]
        if not kept:
            raise OSError(f"{host}: {REFUSED_ADDRESS}")
        return kept

    async def close(self):
        await self._inner.close()


def secret_fingerprint(secret):
    """What the admin shows of a secret: which one it is (compare with the receiver's), no part of it."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:8]


# --- enqueue (inside the service's transaction) -------------------------------------------------


@dataclass(frozen=True)
class _Hook:
    id: int
    events: frozenset  # empty: DEFAULT_TYPES
    rooms: frozenset | None  # None: every room

    def wants(self, conference_id, event_type):
        if self.rooms is not None and conference_id not in self.rooms:
            return False
        return event_type in self.events if self.events else event_type in DEFAULT_TYPES


@dataclass
class _Cache:
    loaded_at: float
    hooks: tuple
    rooms: dict  # conference id -> {"slug", "name", "number"}, filled as frames come


_cache = None


def forget():
    """Drop this process's cache of webhooks and rooms (a change was saved; tests)."""
    global _cache
    _cache = None


def _current():
    global _cache
    cache = _cache
    if cache is None or time.monotonic() - cache.loaded_at > CACHE_SECONDS:
        rooms = {}
        for webhook_id, conference_id in Webhook.conferences.through.objects.filter(webhook__enabled=True).values_list(
            "webhook_id", "conference_id"
        ):
            rooms.setdefault(webhook_id, set()).add(conference_id)
        hooks = tuple(
            _Hook(pk, frozenset(events or ()), None if every_room else frozenset(rooms.get(pk, ())))
            for pk, events, every_room in Webhook.objects.filter(enabled=True).values_list("pk", "events", "every_room")
        )
        cache = _cache = _Cache(time.monotonic(), hooks, {})
    return cache


def _room(cache, conference_id):
    room = cache.rooms.get(conference_id)
    if room is None:
        room = Conference.objects.filter(pk=conference_id).values("slug", "name", "number").first()
        cache.rooms[conference_id] = room
    return room


def frame_data(frame):
    """What a webhook body carries of a room frame: the frame without its type and its consumer-only keys."""
    return {key: value for key, value in frame.items() if key != "type" and not key.startswith("_")}


def enqueue(conference_id, frame, *, event_type=None):
    """Queue a room frame for the webhooks that want it; call inside the transaction of the change.

    ``event_type``: the webhook type when it is not the frame's (``TALKING``).
    Returns how many deliveries were queued.
    """
    cache = _current()
    if not cache.hooks:
        return 0
    event_type = event_type or frame["type"]
    ids = [hook.id for hook in cache.hooks if hook.wants(conference_id, event_type)]
    if not ids:
        return 0
    payload = {
        "type": event_type,
        "time": timezone.now().isoformat(),
        "room": _room(cache, conference_id),
        "data": frame_data(frame),
    }
    count = _insert(ids, event_type, conference_id, payload)
    if count:
        transaction.on_commit(_nudge)
    return count


def _insert(webhook_ids, event_type, conference_id, payload):
    """One INSERT ... SELECT: a row per listed webhook that still exists and is enabled."""
    quote = connection.ops.quote_name
    table = quote(WebhookDelivery._meta.db_table)
    hooks = quote(Webhook._meta.db_table)
    columns = ", ".join(
        quote(WebhookDelivery._meta.get_field(name).column)
        for name in (
            "webhook",
            "event_id",
            "event_type",
            "conference",
            "payload",
            "status",
            "attempts",
            "created_at",
            "next_attempt_at",
            "last_error",
        )
    )
    as_json = "CAST(%s AS jsonb)" if connection.vendor == "postgresql" else "%s"
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    marks = ", ".join(["%s"] * len(webhook_ids))
    sql = (
        f"INSERT INTO {table} ({columns}) "  # noqa: S608 (names from the models, values bound)
        f"SELECT w.id, %s || CAST(w.id AS TEXT), %s, %s, {as_json}, %s, 0, %s, %s, '' "
        f"FROM {hooks} w WHERE w.id IN ({marks}) AND w.enabled"
    )
    params = [
        f"{uuid.uuid4().hex}.",
        event_type,
        conference_id,
        json.dumps(payload, separators=(",", ":")),
        WebhookDelivery.Status.PENDING,
        now,
        now,
        *webhook_ids,
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def send_test(webhook):
    """Queue a ``ping`` for one webhook (the admin's "send test"), whatever its events and rooms."""
    with transaction.atomic():
        delivery = WebhookDelivery.objects.create(
            webhook=webhook,
            event_id=f"{uuid.uuid4().hex}.{webhook.pk}",
            event_type=PING,
            payload={"type": PING, "time": timezone.now().isoformat(), "room": None, "data": {"webhook": webhook.name}},
            created_at=timezone.now(),
            next_attempt_at=timezone.now(),
        )
        transaction.on_commit(_nudge)
    return delivery


def retry_now(queryset):
    """Make pending and failed deliveries due now (the admin's "retry now"); returns how many."""
    now = timezone.now()
    return queryset.exclude(status=WebhookDelivery.Status.DELIVERED).update(
        status=WebhookDelivery.Status.PENDING, next_attempt_at=now
    )


@receiver([post_save, post_delete], sender=Webhook, dispatch_uid="webhooks-cache")
@receiver([post_save, post_delete], sender=Conference, dispatch_uid="webhooks-cache-rooms")
@receiver(m2m_changed, sender=Webhook.conferences.through, dispatch_uid="webhooks-cache-m2m")
def _changed(**kwargs):
    forget()


# --- waking a sender of this process ------------------------------------------------------------

_listeners = set()  # (event loop, asyncio.Event) of the senders running in this process


def _nudge():
    for loop, event in list(_listeners):
        try:
            loop.call_soon_threadsafe(event.set)
        except RuntimeError:  # that loop is closed
            _listeners.discard((loop, event))


# --- the sender's steps (ORM: called in the sender's database thread) ---------------------------


@dataclass(frozen=True)
class Claimed:
    id: int
    event_id: str
    webhook_id: int
    url: str
    secret: str
    body: bytes


def timeout_seconds():
    return float(settings.WEBHOOK_TIMEOUT_SECONDS)


def body_of(event_id, payload):
    """The exact bytes posted (and signed): the delivery's id and the stored payload, in a fixed key order.

    (PostgreSQL's jsonb keeps keys in an order of its own.)
    """
    body = {"id": event_id, **{key: payload.get(key) for key in BODY_KEYS}}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def signature(secret, timestamp, body):
    """``sha256=<hex>``: HMAC-SHA256 of ``<timestamp>.<body>`` keyed with the webhook's secret."""
    message = f"{timestamp}.".encode() + body
    return "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def claim_due(*, limit=MAX_IN_FLIGHT, busy=None, per_webhook=PER_WEBHOOK, now=None):
    """Take up to ``limit`` due pending deliveries of enabled webhooks, at most ``per_webhook`` per webhook
    counting ``busy`` (webhook id -> requests in flight already); returns them as ``Claimed``.

    Each taken row counts an attempt and is due again only after the timeout and
    ``CLAIM_MARGIN``: what a killed sender did not finish is sent again then.
    """
    now = now or timezone.now()
    busy = Counter(busy or {})
    if limit <= 0:
        return []
    with transaction.atomic():
        due = (
            WebhookDelivery.objects.filter(
                status=WebhookDelivery.Status.PENDING, next_attempt_at__lte=now, webhook__enabled=True
            )
            .order_by("next_attempt_at", "id")
            .values_list("id", "event_id", "webhook_id", "webhook__url", "webhook__secret", "payload")
        )
        if connection.features.has_select_for_update_skip_locked:
            due = due.select_for_update(skip_locked=True, of=("self",))
        taken = []
        for pk, event_id, webhook_id, url, secret, payload in due[: limit * PER_WEBHOOK + 50]:
            if busy[webhook_id] >= per_webhook:
                continue
            busy[webhook_id] += 1
            taken.append(Claimed(pk, event_id, webhook_id, url, secret, body_of(event_id, payload)))
            if len(taken) == limit:
                break
        if taken:
            WebhookDelivery.objects.filter(pk__in=[claimed.id for claimed in taken]).update(
                attempts=F("attempts") + 1,
                next_attempt_at=now + timedelta(seconds=timeout_seconds() + CLAIM_MARGIN),
            )
    return taken


def backoff(attempts, *, first=None, rng=random):
    """Seconds until the next attempt after ``attempts`` failed ones: doubling, capped, between half and all."""
    first = float(settings.WEBHOOK_RETRY_SECONDS if first is None else first)
    step = min(MAX_BACKOFF, first * 2 ** max(0, attempts - 1))
    return step * rng.uniform(0.5, 1.0)


def record_result(delivery_id, *, status_code=None, error="", permanent=False, now=None):
    """Note the answer to one attempt: delivered on a 2xx, else retried later or, past the bounds, failed.

    Returns the new status (None when the row is gone: its webhook was deleted).
    """
    now = now or timezone.now()
    Status = WebhookDelivery.Status
    rows = WebhookDelivery.objects.filter(pk=delivery_id)
    if status_code is not None and 200 <= status_code < 300:
        # last_error stays: the log shows why a delivered row took more than one attempt.
        rows.update(status=Status.DELIVERED, delivered_at=now, last_status_code=status_code)
        return Status.DELIVERED
    delivery = rows.only("attempts", "created_at").first()
    if delivery is None:
        return None
    error = (error or "")[:MAX_ERROR_CHARS]
    too_old = now - delivery.created_at >= timedelta(hours=settings.WEBHOOK_RETRY_HOURS)
    if permanent or too_old or delivery.attempts >= settings.WEBHOOK_MAX_ATTEMPTS:
        rows.update(status=Status.FAILED, last_status_code=status_code, last_error=error)
        logger.warning("webhook delivery %s: failed after %s attempt(s): %s", delivery_id, delivery.attempts, error)
        return Status.FAILED
    rows.update(
        last_status_code=status_code,
        last_error=error,
        next_attempt_at=now + timedelta(seconds=backoff(delivery.attempts)),
    )
    return Status.PENDING


def prune(*, now=None):
    """Delete delivered and failed rows older than ``WEBHOOK_RETENTION_DAYS``, in bounded batches."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.WEBHOOK_RETENTION_DAYS)
    old = WebhookDelivery.objects.filter(
        status__in=[WebhookDelivery.Status.DELIVERED, WebhookDelivery.Status.FAILED], created_at__lt=cutoff
    )
    total = 0
    while True:
        ids = list(old.order_by().values_list("pk", flat=True)[:PRUNE_BATCH])
        if not ids:
            return total
        total += WebhookDelivery.objects.filter(pk__in=ids).delete()[0]


# --- the request (on the event loop) ------------------------------------------------------------


async def post(session, claimed, *, timeout=None):
    """POST one delivery; ``(status code or None, error text)`` with an empty error on a 2xx."""
    timeout = timeout_seconds() if timeout is None else timeout
    problem = url_problem(claimed.url)
    if problem is not None:
        return None, problem
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "X-Webhook-Id": claimed.event_id,
        "X-Webhook-Timestamp": timestamp,
        "X-Webhook-Signature": signature(claimed.secret, timestamp, claimed.body),
    }
    try:
        async with asyncio.timeout(timeout):
            async with session.post(claimed.url, data=claimed.body, headers=headers, allow_redirects=False) as answer:
                status = answer.status
                # At most this much: a small answer lets the connection be used again, a huge one is cut off.
                head = await answer.content.read(MAX_ANSWER_BYTES)
    except TimeoutError:
        return None, f"no answer within {timeout:g} s"
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        return None, f"{exc.__class__.__name__}: {exc}"
    if 200 <= status < 300:
        return status, ""
    if 300 <= status < 400:
        return status, f"HTTP {status} (redirects are not followed)"
    text = " ".join(head.decode("utf-8", "replace").split())[:200]
    return status, f"HTTP {status}" + (f": {text}" if text else "")


# --- the loop ------------------------------------------------------------------------------------


def _in_db_thread(function, *args, **kwargs):
    try:
        return function(*args, **kwargs)
    except DatabaseError:
        connection.close()  # a broken connection: the next step opens a new one
        raise


class Sender:
    """Claims due deliveries and posts them, until ``stopping`` is set; tests call ``step()`` alone.

    The ORM runs in one thread of the sender's own (never on the event loop);
    requests run on the loop, ``MAX_IN_FLIGHT`` at once.
    """

    def __init__(self, *, stopping=None, max_in_flight=MAX_IN_FLIGHT, per_webhook=PER_WEBHOOK):
        self.stopping = stopping or asyncio.Event()
        self.max_in_flight = max_in_flight
        self.per_webhook = per_webhook
        self.in_flight = {}  # asyncio.Task -> webhook id
        self.session = None
        self.wake = None
        self.sent = 0
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="webhooks-db")
        self._pruned_at = None

    async def db(self, function, *args, **kwargs):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(_in_db_thread, function, *args, **kwargs))

    async def __aenter__(self):
        self.wake = asyncio.Event()
        self._listener = (asyncio.get_running_loop(), self.wake)
        _listeners.add(self._listener)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.max_in_flight, limit_per_host=0, resolver=GuardedResolver()),
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": USER_AGENT},
            trust_env=False,
        )
        return self

    async def __aexit__(self, *exc):
        _listeners.discard(self._listener)
        await self.drain()
        await self.session.close()
        with contextlib.suppress(DatabaseError):
            await self.db(connections.close_all)
        self._executor.shutdown(wait=False)

    async def run(self):
        async with self:
            logger.info("webhook sender: started")
            while not self.stopping.is_set():
                try:
                    await self.step()
                except Exception:
                    logger.exception("webhook sender: a step failed; trying again in 1 s")
                    await self._sleep(1.0)
                    continue
                await self._sleep(POLL_SECONDS)
            logger.info("webhook sender: stopping (%s request(s) in flight)", len(self.in_flight))

    async def _sleep(self, seconds):
        stop = asyncio.ensure_future(self.stopping.wait())
        wake = asyncio.ensure_future(self.wake.wait())
        await asyncio.wait([stop, wake], timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        for task in (stop, wake):
            task.cancel()
        self.wake.clear()

    async def step(self):
        """Prune now and then; claim what is due and start its requests. Returns the tasks started."""
        if self._pruned_at is None or time.monotonic() - self._pruned_at > PRUNE_EVERY:
            self._pruned_at = time.monotonic()
            pruned = await self.db(prune)
            if pruned:
                logger.info("webhook sender: pruned %s old delivery row(s)", pruned)
        free = self.max_in_flight - len(self.in_flight)
        if free <= 0:
            return []
        busy = Counter(self.in_flight.values())
        claimed = await self.db(claim_due, limit=free, busy=busy, per_webhook=self.per_webhook)
        tasks = []
        for delivery in claimed:
            task = asyncio.create_task(self.deliver(delivery))
            self.in_flight[task] = delivery.webhook_id
            task.add_done_callback(self._done)
            tasks.append(task)
        return tasks

    def _done(self, task):
        self.in_flight.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            logger.error("webhook sender: a delivery failed: %r", task.exception())
        if self.wake is not None:
            self.wake.set()  # a free slot: claim again without waiting for the poll

    async def deliver(self, claimed):
        """Post one delivery and record the answer."""
        status_code, error = await post(self.session, claimed)
        permanent = error == NOT_HTTP  # never posted: no retry can help
        status = await self.db(record_result, claimed.id, status_code=status_code, error=error, permanent=permanent)
        if status == WebhookDelivery.Status.DELIVERED:
            self.sent += 1
            logger.debug("webhook %s: delivery %s delivered (%s)", claimed.webhook_id, claimed.id, status_code)
        elif status == WebhookDelivery.Status.PENDING:
            logger.info("webhook %s: delivery %s will be retried: %s", claimed.webhook_id, claimed.id, error)
        return status

    async def drain(self, timeout=None):
        """Let the requests in flight finish (up to the timeout); cancelled ones stay pending and come again."""
        if not self.in_flight:
            return
        timeout = timeout_seconds() + 1 if timeout is None else timeout
        tasks = list(self.in_flight)
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=2)
