"""The worker loop: keep the ARI event socket of one Asterisk server alive.

Reading the socket never waits on anything else: frames go straight into a
queue. One dispatcher task takes ARI events, moderation requests and timers
from it in order and hands each to the lane of the room it concerns
(conferences/ari/lanes.py): one room's items are handled one at a time, in
order; different rooms' at the same time, each with its own database thread
(conferences/dbthreads.py, DatabaseThreads). After every (re)connect the
first item is a resync with Asterisk's bridges and channels, since Asterisk
does not queue events for a disconnected application: the dispatcher waits
until every lane is idle, runs it alone, then goes on.
"""

import asyncio
import contextlib
import json
import logging
import random
import time

import websockets
from asgiref.sync import ThreadSensitiveContext
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import connections

from conferences import broadcast, metrics, moderation, services
from conferences.ari import inbox, lease, rules, store
from conferences.ari.client import AriClient, AriError
from conferences.ari.effects import DatabaseUnavailable
from conferences.ari.handlers import ConferenceApp
from conferences.ari.lanes import RECEIVED_AT, Lanes
from conferences.dbthreads import TRANSIENT_DB_ERRORS, DatabaseThreads
from conferencesite import logformat

logger = logging.getLogger(__name__)

db = database_sync_to_async

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
STABLE_AFTER = 10.0  # a connection that lasted this long resets the backoff
HEARTBEAT_EVERY = 5.0
PURGE_EVERY = 24 * 3600.0  # seconds between the worker's deletions of expired recordings
PING_INTERVAL = 10.0
PING_TIMEOUT = 10.0
DB_RETRY_FIRST = 0.2
DB_RETRY_MAX = 5.0
NO_ROOM_SECONDS = 5.0  # how long a number found to be no room is believed before it is looked up again
STOP_TIMEOUT = 10.0  # seconds the lanes have to finish the item in hand at shutdown
STANDBY_POLL = 1.0  # how often a standby worker tries to take the lease
TALKING_EVENTS = frozenset({"ChannelTalkingStarted", "ChannelTalkingFinished"})
TALKING_MARK = "_conference_talking_mark"  # put into a talking event by the dispatcher (see _mark_talking)


class WorkerConflict(Exception):
    """Another worker holds this server's lease."""


def backoff_delay(attempt, *, first=BACKOFF_FIRST, maximum=BACKOFF_MAX, rng=random):
    """Exponential backoff with jitter: in [d/2, d] where d = first * 2**attempt, capped."""
    delay = min(maximum, first * (2 ** min(attempt, 30)))
    return delay * rng.uniform(0.5, 1.0)


class AriWorker:
    """Runs one Asterisk server's conference application until told to stop."""

    def __init__(self, server, *, stopping=None, standby=False):
        self.server = server
        self.standby = standby  # wait for the lease instead of refusing to start
        self.lease_confirmed_at = None  # monotonic time the last lease renewal was sent (see may_act)
        self.ari = AriClient(server.ari_url, server.username, server.password, guard=self.may_act)
        self.database = DatabaseThreads(name="ari-db")
        self.app = ConferenceApp(
            server_id=server.pk,
            app_name=server.app_name,
            ari=self.ari,
            schedule=self.schedule,
            database=self.database,
            fence=self._fence,
        )
        self.queue: asyncio.Queue = asyncio.Queue()
        self.lanes = None
        # Where items go: the room of each channel the worker routed, the room of each number.
        self.room_of_channel: dict[str, object] = {}
        self.directory: dict[str, int] = {}
        self.no_room: dict[str, float] = {}  # number -> when it was found to be no room
        self.latest_talking: dict[str, int] = {}  # channel id -> number of its latest talking event
        self._talking_marks = 0
        self.coalesced = 0  # talking events skipped for a later one of the same caller
        self.stopping = stopping or asyncio.Event()
        self.next_purge = time.monotonic() + 60.0  # the first a minute after the start
        self.owner = lease.new_owner()
        self.connected = False
        self.replaced = False
        self.lost_lease = False
        self.asterisk_startup = None
        self.resyncs = 0
        self.ping_interval = PING_INTERVAL
        self.ping_timeout = PING_TIMEOUT
        # Prometheus series of this server (conferences/metrics.py), looked up once.
        self.m_link = metrics.ARI_LINK_UP.labels(server.name)
        self.m_received = metrics.ARI_EVENTS_RECEIVED.labels(server.name)
        self.m_handled = metrics.ARI_EVENTS_HANDLED.labels(server.name)
        self.m_wait = metrics.QUEUE_WAIT.labels(server.name)

    def __repr__(self):
        return f"<AriWorker server={self.server.name}>"

    # --- public entry points ----------------------------------------------------------

    async def process_event(self, event):
        """Handle one ARI event now (the processor's step; tests call it directly)."""
        if event.get("type") == "ApplicationReplaced" and event.get("application") == self.server.app_name:
            if not await self._still_holds_lease():
                # Our standby took over and connected: not a foreign client, a failover.
                self._lose_lease("the standby took over (ApplicationReplaced)")
                return
            logger.critical(
                "server %s: another client connected as ARI application %r and took its events; "
                "this worker stops instead of fighting over it",
                self.server.name,
                self.server.app_name,
            )
            self.replaced = True
            self.stopping.set()
            return
        if self.superseded(event):
            self.coalesced += 1
            return  # a later talking event of the same caller waits behind this one in its lane
        await self.app.process_event(event)

    def schedule(self, delay, event):
        """Queue a synthetic event (a timer) to be processed after ``delay`` seconds."""
        asyncio.get_running_loop().call_later(delay, self.queue.put_nowait, ("event", event))

    async def run(self):
        """Hold the lease, keep the link up and process until ``stopping`` is set."""
        # The worker's database calls get a thread of their own: sharing asgiref's
        # global one with a sync caller that waits for this worker (an admin
        # action in the same process) would deadlock.
        async with ThreadSensitiveContext():
            try:
                await self._run()
            finally:
                await db(connections.close_all)()
                await asyncio.to_thread(self.database.close)

    # --- the lease (conferences/ari/lease.py) ---------------------------------------------

    def may_act(self):
        """Raise LeaseLost unless the lease was confirmed recently enough to act on Asterisk (every ARI call)."""
        confirmed = self.lease_confirmed_at
        if self.lost_lease or confirmed is None or time.monotonic() - confirmed > lease.ACT_SECONDS:
            self._lose_lease("its lease was not confirmed in time")
            raise lease.LeaseLost(f"server {self.server.name}: this worker's lease is not confirmed")

    async def _still_holds_lease(self):
        try:
            return await db(lease.holds)(self.server.pk, self.owner)
        except Exception as exc:  # noqa: BLE001 (cannot tell: treat it as the foreign client it looks like)
            logger.warning("server %s: could not read the lease (%s)", self.server.name, exc)
            return True

    def _fence(self):
        """In a write's transaction (database thread): raise LeaseLost unless this worker holds the lease."""
        lease.check(self.server.pk, self.owner)

    def _lose_lease(self, why):
        if not self.lost_lease:
            logger.critical("server %s: %s; stopping without acting", self.server.name, why)
        self.lost_lease = True
        self.stopping.set()

    async def _acquire(self):
        """Take the lease; with ``standby``, wait for it (checked every STANDBY_POLL s) until stopped."""
        sent = time.monotonic()
        acquired, holder = await db(lease.acquire)(self.server.pk, self.owner)
        if not acquired and self.standby:
            logger.info("server %s: standing by; %s holds the lease", self.server.name, holder)
        while not acquired and self.standby and not self.stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), STANDBY_POLL)
            sent = time.monotonic()
            acquired, holder = await db(lease.acquire)(self.server.pk, self.owner)
            if acquired:
                logger.warning("server %s: took over from %s", self.server.name, holder)
        if acquired:
            self.lease_confirmed_at = sent
        return acquired, holder

    async def _run(self):
        acquired, holder = await self._acquire()
        if not acquired and self.stopping.is_set():
            return
        if not acquired:
            raise WorkerConflict(
                f"another worker ({holder}) is running for Asterisk server {self.server.name!r}; one worker per server"
            )
        logger.info("server %s: worker %s started for ARI app %r", self.server.name, self.owner, self.server.app_name)
        tasks = [
            asyncio.create_task(self._processor(), name="ari-processor"),
            asyncio.create_task(self._commands(), name="ari-commands"),
            asyncio.create_task(self._heartbeat(), name="ari-heartbeat"),
        ]
        try:
            await self._connection_loop()
        finally:
            # The processor finishes the item in hand, then everything stops.
            self.stopping.set()
            self.queue.put_nowait(("stop", None))
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(tasks[0]), STOP_TIMEOUT + 2)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.app.stop_fetches()  # recordings left to fetch are the next worker's (resync)
            if not self.lost_lease:  # the link is the new holder's to report
                await self._set_link(False, "worker stopped")
            await db(lease.release)(self.server.pk, self.owner)
            await self.ari.close()
            logger.info("server %s: worker stopped", self.server.name)

    # --- the link -------------------------------------------------------------------

    async def _connection_loop(self):
        attempt = 0
        loop = asyncio.get_running_loop()
        while not self.stopping.is_set():
            started = loop.time()
            error = await self._connect_once()
            if self.stopping.is_set():
                break
            if loop.time() - started >= STABLE_AFTER:
                attempt = 0
            delay = backoff_delay(attempt)
            attempt += 1
            logger.warning("server %s: ARI link down (%s); reconnecting in %.1f s", self.server.name, error, delay)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)

    async def _connect_once(self):
        """One connection's life; returns why it ended."""
        url = self.ari.events_url(self.server.app_name)
        try:
            async with websockets.connect(
                url,
                additional_headers=self.ari.auth_header(),
                open_timeout=10,
                ping_interval=self.ping_interval,
                ping_timeout=self.ping_timeout,
                close_timeout=2,
                max_queue=None,  # never stop reading: Asterisk drops a reader that blocks its writes
                max_size=2**24,
            ) as socket:
                await self._set_link(True)
                logger.info("server %s: connected to %s", self.server.name, self.ari.base_url)
                self.queue.put_nowait(("resync", None))
                reader = asyncio.create_task(self._read(socket))
                await self._filter_events()
                stopper = asyncio.create_task(self.stopping.wait())
                try:
                    await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stopper.cancel()
                    if not reader.done():
                        reader.cancel()
                        await socket.close()
                exc = reader.exception() if reader.done() and not reader.cancelled() else None
                if self.stopping.is_set():
                    return "stopping"
                error = describe_error(exc) if exc else "the event socket closed"
        except websockets.InvalidStatus as exc:
            status = exc.response.status_code
            error = "ARI refused the credentials (HTTP 401)" if status == 401 else f"ARI answered HTTP {status}"
        except (OSError, TimeoutError, websockets.WebSocketException) as exc:
            error = describe_error(exc)
        await self._set_link(False, error)
        return error

    async def _filter_events(self):
        """Ask Asterisk for the events the application handles only.

        A conference's channels raise many more (ChannelVarset for every
        BRIDGEPEER change, ChannelDialplan, ChannelStateChange...): about nine
        in ten of what the busy-PBX bench's rooms sent. Each costs Asterisk its
        JSON and the worker a parse and a trip through its lanes. An Asterisk
        without the filter (before 16.29/18.14) sends everything; the worker
        ignores the rest then.
        """
        try:
            wanted = sorted(self.app.event_types() | {"ApplicationReplaced"})
            await self.ari.set_event_filter(self.server.app_name, wanted)
        except AriError as exc:
            logger.info("server %s: no event filter (%s); unhandled events are dropped here", self.server.name, exc)

    async def _read(self, socket):
        async for raw in socket:
            try:
                event = json.loads(raw)
            except ValueError:
                logger.warning("server %s: ignoring a frame that is not JSON", self.server.name)
                continue
            if isinstance(event, dict):
                self.m_received.inc()
                event[RECEIVED_AT] = time.monotonic()
                self.queue.put_nowait(("event", event))

    async def _set_link(self, connected, error=""):
        self.connected = connected
        self.m_link.set(1 if connected else 0)
        try:
            await self.app.effects.db(
                services.server_set_link_status, server_id=self.server.pk, connected=connected, error=error
            )
        except lease.LeaseLost:
            self._lose_lease("another worker holds the lease")
        except Exception:
            logger.exception("server %s: could not record the link status", self.server.name)

    # --- processing ---------------------------------------------------------------------

    async def _processor(self):
        """Hand every queued item to its room's lane; a resync waits for all lanes and runs alone."""
        self.lanes = Lanes(self._lane_item)
        try:
            while True:
                kind, item = await self.queue.get()
                if kind == "stop":
                    return
                if self.stopping.is_set():
                    continue  # stopping: what is still queued is left to the next start's resync
                if kind == "resync":
                    await self.lanes.drain()
                    await self._process_item(kind, item)
                    await self._after_resync()
                    continue
                if kind == "event" and item.get("type") == "ApplicationReplaced":
                    await self.process_event(item)
                    continue
                if kind == "event" and not self.app.handles(item):
                    continue  # no handler: not worth a trip through a lane
                key = await self._lane_of(kind, item)
                self._mark_talking(kind, item)
                self.lanes.submit(key, (kind, item))
        finally:
            # The lanes finish the item in hand; what is still queued is left to the next start's resync.
            await self.lanes.close(STOP_TIMEOUT)
            await self.app.music.close()

    async def _lane_item(self, pair):
        kind, item = pair
        # The caller's channel in every log line of this event (LOG_FORMAT=json; the lane names the room).
        token = logformat.channel.set(rules.event_channel_id(item) if kind == "event" else None)
        if kind == "event":
            received = item.get(RECEIVED_AT)
            if received is not None:
                self.m_wait.observe(time.monotonic() - received)
        try:
            await self._process_item(kind, item)
            if kind == "event":
                self.m_handled.inc()
        finally:
            logformat.channel.reset(token)

    def _mark_talking(self, kind, item):
        """Number a talking event of a caller (``TALKING_MARK``), so that ``process_event`` can skip it if superseded.

        Talking events are whole state (talking or not) and the most frequent:
        a caller who pauses between words sends one every second or so. When
        a room's lane falls behind, only the latest of one caller's queued
        talking events is worth a database write and a broadcast; the earlier
        ones are skipped when their turn comes. With no backlog nothing is
        skipped.
        """
        if kind != "event" or item.get("type") not in TALKING_EVENTS:
            return
        channel_id = rules.event_channel_id(item)
        if channel_id is None:
            return
        self._talking_marks += 1
        self.latest_talking[channel_id] = self._talking_marks
        item[TALKING_MARK] = self._talking_marks

    def superseded(self, event):
        """Whether a talking event has a later one of the same caller queued behind it.

        Only a start is ever skipped: a finish carries the stretch's length (talk_seconds), which a later
        event does not repeat.
        """
        mark = event.get(TALKING_MARK)
        if mark is None or event.get("type") != "ChannelTalkingStarted":
            return False
        return self.latest_talking.get(rules.event_channel_id(event), mark) != mark

    async def _lane_of(self, kind, item):
        """The lane of an item (see rules.lane_of_event); remembers which room each channel went to."""
        if kind != "event":
            return rules.lane_of_command(item)
        key = rules.lane_of_event(
            item,
            app_name=self.server.app_name,
            room_of_channel=self.room_of_channel.get,
            room_of_number=self.directory.get,
        )
        if isinstance(key, rules.LookUp):
            key = await self._look_up(key.number)
        channel_id = rules.event_channel_id(item)
        if channel_id is not None:
            if item.get("type") == "ChannelDestroyed":
                self.room_of_channel.pop(channel_id, None)
                self.latest_talking.pop(channel_id, None)
            elif item.get("type") in ("StasisStart", "ChannelEnteredBridge"):
                self.room_of_channel[channel_id] = key
        return key

    async def _look_up(self, number):
        """The lane of a caller of a number the worker does not know: a room created since the last read, or none.

        The numbers are read again, so a new room's first caller goes to its
        room's lane like every later one (its seats are counted there). A
        number that is no room is remembered as such for NO_ROOM_SECONDS:
        someone dialling every number costs one read per number and period.
        """
        loop = asyncio.get_running_loop()
        if loop.time() - self.no_room.get(number, -NO_ROOM_SECONDS) < NO_ROOM_SECONDS:
            return rules.SERVER
        await self._read_directory()
        conference_id = self.directory.get(number)
        if conference_id is None:
            if len(self.no_room) > 10_000:
                self.no_room.clear()
            self.no_room[number] = loop.time()
            return rules.SERVER
        return conference_id

    async def _read_directory(self):
        try:
            self.directory = await self.app.effects.db(store.room_directory, self.server.pk)
        except DatabaseUnavailable as exc:
            logger.warning("server %s: room numbers unreadable (%s); keeping the last ones", self.server.name, exc)
        self.no_room.clear()

    async def _after_resync(self):
        """After a resync (alone): the numbers read afresh, each known channel routed to its room."""
        await self._read_directory()
        self.room_of_channel = {
            channel_id: call.conference_id if call.conference_id is not None else rules.SERVER
            for channel_id, call in self.app.state.calls.items()
        }

    async def _process_item(self, kind, item):
        """Process one queued item; a database outage holds it (and the queue) until it passes."""
        attempt = 0
        while not self.stopping.is_set():
            try:
                if kind == "event":
                    await self.process_event(item)
                elif kind == "resync":
                    await self.resync()
                elif kind == "command":
                    await self.handle_command(item)
                return
            except lease.LeaseLost:
                self._lose_lease("another worker holds the lease")
                return
            except (DatabaseUnavailable, *TRANSIENT_DB_ERRORS) as exc:
                # Skipping would lose the event; crashing would lose the queue.
                delay = min(DB_RETRY_MAX, DB_RETRY_FIRST * 2**attempt)
                attempt += 1
                logger.warning(
                    "server %s: database unavailable (%s); retrying %s in %.1f s",
                    self.server.name,
                    str(exc).strip()[:200],
                    kind,
                    delay,
                )
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
            except Exception:
                logger.exception("server %s: %s failed; skipped", self.server.name, kind)
                return

    async def resync(self):
        """Reconcile with Asterisk; detects an Asterisk restart on the way."""
        try:
            info = await self.ari.asterisk_info()
        except AriError as exc:
            logger.warning("server %s: resync postponed: %s", self.server.name, exc)
            return
        startup = ((info or {}).get("status") or {}).get("startup_time")
        if self.asterisk_startup and startup and startup != self.asterisk_startup:
            logger.warning("server %s: Asterisk restarted (up since %s); its calls are gone", self.server.name, startup)
        self.asterisk_startup = startup or self.asterisk_startup
        await self.app.resync()
        self.resyncs += 1

    async def handle_command(self, command):
        reply_channel = command.get("reply_channel")
        expires_at = command.get("expires_at") or 0
        if expires_at and expires_at < time.time():
            logger.info("server %s: dropped an expired %s request", self.server.name, command.get("action"))
            return
        started = time.monotonic()
        if not self.connected:
            ok, error = False, "the link to Asterisk is down"
        else:
            ok, error = await self.app.handle_command(command)
        action = metrics.action_label(command.get("action"))
        metrics.COMMANDS.labels(self.server.name, action).observe(time.monotonic() - started)
        if reply_channel:
            reply = {"type": moderation.REPLY_TYPE, "request_id": command.get("request_id"), "ok": ok}
            if not ok:
                reply["error"] = error
            try:
                await get_channel_layer().send(reply_channel, reply)
            except Exception:
                logger.exception("server %s: could not send a moderation reply", self.server.name)

    def _command_in(self, message):
        if isinstance(message, dict) and message.get("type") == moderation.REQUEST_TYPE:
            self.queue.put_nowait(("command", message))

    async def _commands(self):
        layer = get_channel_layer()
        channel = moderation.worker_channel(self.server.pk)
        if inbox.needs_own_loop(layer):  # received beside this loop (conferences/ari/inbox.py)
            receiver = inbox.CommandInbox(channel, self._command_in, asyncio.get_running_loop())
            await asyncio.to_thread(receiver.start)
            try:
                await asyncio.Future()  # until the worker stops
            finally:
                await asyncio.shield(asyncio.to_thread(receiver.stop))
        # A layer of this process only (in memory): read here, in its own loop.
        while True:
            try:
                message = await layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("server %s: channel layer receive failed (%s); retrying", self.server.name, exc)
                await asyncio.sleep(1)
                continue
            self._command_in(message)

    async def _heartbeat(self):
        while True:
            await asyncio.sleep(HEARTBEAT_EVERY)
            try:
                sent = time.monotonic()
                if not await db(lease.renew)(self.server.pk, self.owner):
                    self._lose_lease("another worker took over this server")
                    return
                self.lease_confirmed_at = sent
                if self.connected:
                    await self.app.effects.db(services.server_heartbeat, server_id=self.server.pk)
                await broadcast.flush_backlog()  # events the channel layer refused earlier
                if time.monotonic() >= self.next_purge:  # once a day: recordings past their retention
                    self.next_purge = time.monotonic() + PURGE_EVERY
                    await self.app.effects.db(services.purge_recordings, server_id=self.server.pk)
            except asyncio.CancelledError:
                raise
            except lease.LeaseLost:
                self._lose_lease("another worker holds the lease")
                return
            except Exception:
                logger.exception("server %s: heartbeat failed", self.server.name)


def describe_error(exc):
    """A short, credential-free description of a connection failure."""
    if isinstance(exc, websockets.ConnectionClosed):
        return f"the event socket closed ({exc.rcvd.code if exc.rcvd else 'no close frame'})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{exc.__class__.__name__}: {exc}"[:300]
