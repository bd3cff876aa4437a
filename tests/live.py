"""Fixtures and helpers for tests that run the worker against the real Asterisk sandbox."""

import asyncio
import contextlib
import copy
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import requests
from channels.db import database_sync_to_async
from channels.layers import channel_layers, get_channel_layer

from conferences import broadcast, moderation
from conferences.ari.rules import room_bridge_id
from conferences.ari.worker import AriWorker
from conferences.models import AsteriskServer, Conference, ConferenceEvent, Participant
from conferencesite import env
from tests.sandbox import Sandbox, eventually
from tests.sip import AriAccess

db = database_sync_to_async


@pytest.fixture
async def sandbox(ari):
    box = Sandbox(ari)
    await box.cleanup()
    yield box
    await box.cleanup()


@pytest.fixture
def fresh_layer():
    """A new in-memory channel layer for this test's event loop."""
    channel_layers.backends.clear()
    yield get_channel_layer()
    channel_layers.backends.clear()


@pytest.fixture
async def pbx(ari, transactional_db):
    return await db(AsteriskServer.objects.create)(
        name="sandbox", ari_url=ari.url, username=ari.username, password=ari.password, app_name="conference"
    )


@pytest.fixture
def make_room(pbx):
    async def make(number, **fields):
        fields.setdefault("slug", f"room-{number}")
        fields.setdefault("name", f"Room {number}")
        return await db(Conference.objects.create)(server=pbx, number=str(number), **fields)

    return make


class WorkerRunner:
    """Starts and stops in-process workers for one server."""

    def __init__(self, server):
        self.server = server
        self.worker = None
        self.task = None

    async def start(self, *, fast_pin=True, configure=None):
        self.worker = AriWorker(self.server)
        if configure:
            configure(self.worker)
        record_to = os.environ.get("ARI_RECORD_EVENTS")
        if record_to:  # a developer's aid: dump every real event, for handler fixtures
            original = self.worker.process_event

            async def recording(event):
                with open(record_to, "a") as fh:  # noqa: ASYNC230 (a developer's aid, never in CI)
                    fh.write(json.dumps(event) + "\n")
                await original(event)

            self.worker.process_event = recording
        if fast_pin:
            self.worker.app.pin_first_timeout = 3.0
            self.worker.app.pin_digit_timeout = 2.0
        self.task = asyncio.create_task(self.worker.run())
        await eventually(self._resynced, timeout=15, message="the worker did not connect and resync")
        return self.worker

    async def _resynced(self):
        if self.task.done():
            self.task.result()
        return self.worker.resyncs >= 1

    async def stop(self):
        if self.task is None:
            return
        self.worker.stopping.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.task, 20)
        self.task = None


@pytest.fixture
async def runner(pbx, sandbox, fresh_layer):
    runner = WorkerRunner(pbx)
    yield runner
    await runner.stop()


@pytest.fixture
async def worker(runner):
    return await runner.start()


class RoomWatcher:
    """Listens to a room's group like a browser would, keeping every frame."""

    def __init__(self, layer, conference_id):
        self.layer = layer
        self.conference_id = conference_id
        self.frames = []
        self.channel = None
        self.task = None

    async def __aenter__(self):
        self.channel = await self.layer.new_channel()
        await self.layer.group_add(broadcast.room_group(self.conference_id), self.channel)
        self.task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc):
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.layer.group_discard(broadcast.room_group(self.conference_id), self.channel)

    async def _read(self):
        while True:
            message = await self.layer.receive(self.channel)
            self.frames.extend(json.loads(event["text"]) for event in broadcast.room_events(message))

    def of_type(self, kind):
        return [frame for frame in self.frames if frame["type"] == kind]

    def assert_seq_contiguous(self):
        seqs = [frame["seq"] for frame in self.frames if "seq" in frame]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs


def present_channels(conference):
    """The channels of the room's present participants (not those waiting in its lobby or for its leader)."""
    return set(Participant.objects.present().filter(conference=conference).values_list("channel_id", flat=True))


def waiting_channels(conference):
    return dict(Participant.objects.waiting().filter(conference=conference).values_list("channel_id", "waiting_for"))


async def roster_matches_bridge(sandbox, server, conference):
    """The present participants of a room are exactly the channels in its bridge."""
    in_db = await db(present_channels)(conference)
    in_bridge = await sandbox.bridge_members(room_bridge_id(server.app_name, conference.pk))
    return in_db == in_bridge, in_db, in_bridge


async def wait_roster(sandbox, worker, conference, expected_channels, timeout=15):
    expected = set(expected_channels)

    async def check():
        same, in_db, in_bridge = await roster_matches_bridge(sandbox, worker.server, conference)
        return same and in_db == expected

    await eventually(check, timeout=timeout, message=f"roster of room {conference.number} != {len(expected)} callers")


def participant(channel_id):
    return Participant.objects.filter(channel_id=channel_id).first()


def events_of(conference, kind=None):
    queryset = ConferenceEvent.objects.filter(conference=conference).order_by("created_at", "id")
    if kind:
        queryset = queryset.filter(kind=kind)
    return list(queryset.values("kind", "actor_id", "details", "participant_id"))


class EventLog:
    """Keeps every ARI event a worker processes (a ``configure`` hook of ``WorkerRunner.start``).

    With ``channelvars=False`` the events lose their ``channelvars``, as from an
    Asterisk whose ari.conf has no ``channelvars`` line.
    """

    def __init__(self, *, channelvars=True):
        self.events = []
        self.channelvars = channelvars

    def __call__(self, worker):
        original = worker.process_event

        async def process(event):
            if not self.channelvars:
                event = copy.deepcopy(event)
                (event.get("channel") or {}).pop("channelvars", None)
            self.events.append(event)
            await original(event)

        worker.process_event = process

    def playbacks(self, channel_id):
        """``(Asterisk's timestamp, media)`` of every playback started on the channel, in order."""
        return [
            (event["timestamp"], event["playback"]["media_uri"])
            for event in self.events
            if event.get("type") == "PlaybackStarted"
            and event.get("playback", {}).get("target_uri") == f"channel:{channel_id}"
        ]

    def sounds(self, channel_id):
        return [media for _at, media in self.playbacks(channel_id)]

    def stasis_args(self, channel_id):
        starts = [e for e in self.events if e.get("type") == "StasisStart" and e["channel"]["id"] == channel_id]
        return starts[0]["args"] if starts else None


@pytest.fixture
def own_cache(settings):
    """A local-memory cache of this test's own (wrong-PIN counts from elsewhere do not count)."""
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": f"t{uuid.uuid4().hex}"}
    }


@pytest.fixture
def redis_cache(settings, redis_url):
    """Django's cache on the real Redis, as with REDIS_URL set, under a key prefix of this test's own."""
    prefix = f"test-{uuid.uuid4().hex}"
    settings.CACHES = {"default": {**env.caches_for(redis_url)["default"], "KEY_PREFIX": prefix}}
    return prefix


async def act(worker, conference, action, participant_id=None, actor=None, **arguments):
    """A moderation request to the running ``worker``, as a page sends it: ``(ok, error)``."""
    return await moderation.request(
        server_id=worker.server.pk,
        conference_id=conference.pk,
        action=action,
        participant_id=participant_id,
        actor_id=actor.pk if actor else None,
        **arguments,
    )


SANDBOX_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "asterisk-sandbox"


@pytest.fixture(scope="session")
def phones_ari():
    """The phones' ARI: $PHONES_TEST_URL, else started with scripts/asterisk-sandbox phones start."""
    url = os.environ.get("PHONES_TEST_URL")
    if not url:
        result = subprocess.run(
            [str(SANDBOX_SCRIPT), "phones", "start"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if result.returncode != 0:
            pytest.fail(f"the test phones did not start:\n{result.stdout}\n{result.stderr}")
        url = result.stdout.strip().splitlines()[-1]
    access = AriAccess(
        url.rstrip("/"),
        os.environ.get("PHONES_TEST_USERNAME", "phones"),
        os.environ.get("PHONES_TEST_PASSWORD", "phones"),
    )
    try:
        requests.get(f"{access.url}/asterisk/info", auth=access.auth, timeout=5).raise_for_status()
    except requests.RequestException as exc:
        pytest.fail(f"the phones' ARI at {access.url} does not answer: {exc}")
    return access
