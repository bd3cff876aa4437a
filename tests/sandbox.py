"""Test tools for the real Asterisk sandbox: simulated callers and an ear that hears what a caller hears.

Callers are Local channels: the ;2 half runs the [conferences] dialplan into
Stasis and is the participant; the ;1 half runs a far end of [test-farend]
(talk, silent, pin<digits>, talkpin<digits>, latepin<digits>) and is the
caller's mouth. ``straight_into_app`` skips the dialplan: a channel enters
Stasis with whatever arguments the test gives.

The ear snoops on a participant (spy=out: what Asterisk sends to that caller)
into the test application "test-ear" and runs TALK_DETECT on the snoop
channel, so "hears sound" means audio really reaches the caller.
"""

import asyncio
import base64
import contextlib
import inspect
import json
import uuid
from dataclasses import dataclass
from urllib.parse import quote

import requests
import websockets

EAR_APP = "test-ear"
# What a desk phone or a trunk offers (G.711). A Local channel originated without formats offers every
# format Asterisk has; its bridge then mixes at the highest rate on offer and resamples every caller
# (perf on the sandbox: 85 % of Asterisk's CPU in codec_resample with 80 callers), which no PBX sees.
CALLER_FORMATS = "ulaw"


class SandboxError(AssertionError):
    pass


@dataclass(frozen=True)
class Caller:
    channel_id: str  # the participant (in Stasis)
    far_id: str  # its far end
    name: str
    number: str


def _id(prefix):
    # Fixed width and distinct first letters: Asterisk refuses a channel id that is
    # a prefix of an existing one.
    return f"{prefix}{uuid.uuid4().hex}"


class Sandbox:
    """REST helpers around the sandbox's ARI, all run in threads."""

    def __init__(self, ari):
        self.ari = ari

    async def call(self, method, path, *, params=None, json=None, ok=(200, 204), timeout=5):
        response = await asyncio.to_thread(
            requests.request,
            method,
            f"{self.ari.url}{path}",
            params=params,
            json=json,
            auth=self.ari.auth,
            timeout=timeout,
        )
        if response.status_code not in ok:
            raise SandboxError(f"{method} {path} -> {response.status_code} {response.text[:200]}")
        return response.json() if response.content else None

    async def caller(
        self, room, *, far="silent", name="Caller", number="200", admin=False, context=None, variables=None
    ):
        """A caller dialling ``room`` (any string: it is the Local channel's extension) into ``context``.

        ``admin`` picks [conferences-admin]; ``variables`` are set on the far
        end's channel, and Local channels copy them to the participant half.
        """
        context = context or ("conferences-admin" if admin else "conferences")
        far_end = {"context": "test-farend", "extension": far, "priority": 1}
        return await self._dial(room, context, far_end, name, number, variables)

    async def _dial(self, room, context, far_end, name, number, variables=None):
        """A Local channel into ``room``@``context`` whose far end (the ;1 half) goes where ``far_end`` says."""
        caller = Caller(_id("p"), _id("f"), name, number)
        await self.call(
            "POST",
            "/channels",
            params={
                "endpoint": f"Local/{room}@{context}",
                **far_end,
                "channelId": caller.far_id,
                "otherChannelId": caller.channel_id,
                "callerId": f'"{name}" <{number}>',
                "formats": CALLER_FORMATS,
            },
            json={"variables": variables} if variables else None,
        )
        return caller

    async def typist(self, ears, room, *, name="Typist", number="200", talking=False, admin=False):
        """A caller whose far end is held in the ears' application: it types keys (``press``) and talks on demand.

        ``POST /channels/{id}/dtmf`` wants a channel in a Stasis application;
        the far ends of ``caller`` run dialplan. The keys and the speech the
        far end is given arrive on the participant's half, as a phone's would.
        """
        context = "conferences-admin" if admin else "conferences"
        caller = await self._dial(room, context, {"app": EAR_APP}, name, number)
        await ears.wait_in_app(caller.far_id)
        typist = Typist(self, caller)
        if talking:
            await typist.talk()
        return typist

    async def straight_into_app(self, app_args, *, app="conference", name="Direct", number="200"):
        """A channel that enters ``Stasis(app,<app_args>)`` with no dialplan in between (a silent far end)."""
        caller = Caller(_id("p"), _id("f"), name, number)
        await self.call(
            "POST",
            "/channels",
            params={
                "endpoint": "Local/silent@test-farend",
                "app": app,
                "appArgs": app_args,
                "channelId": caller.channel_id,
                "otherChannelId": caller.far_id,
                "callerId": f'"{name}" <{number}>',
                "formats": CALLER_FORMATS,
            },
        )
        return caller

    async def hangup(self, caller):
        await self.call("DELETE", f"/channels/{caller.far_id}", ok=(200, 204, 404))

    async def channel_exists(self, channel_id):
        response = await asyncio.to_thread(
            requests.get, f"{self.ari.url}/channels/{channel_id}", auth=self.ari.auth, timeout=5
        )
        return response.status_code == 200

    async def bridges(self):
        return await self.call("GET", "/bridges")

    async def bridge_members(self, bridge_id):
        for bridge in await self.bridges():
            if bridge["id"] == bridge_id:
                return set(bridge["channels"])
        return set()

    async def cleanup(self):
        """Hang up every channel, destroy every bridge and delete every stored recording: each test starts
        from an empty PBX (a recording a test left would be adopted by the next test's worker: its room ids
        start again from 1)."""
        for channel in await self.call("GET", "/channels"):
            await self.call("DELETE", f"/channels/{channel['id']}", ok=(200, 204, 404))
        for bridge in await self.bridges():
            await self.call("DELETE", f"/bridges/{bridge['id']}", ok=(200, 204, 404))

        async def no_channels():
            return not await self.call("GET", "/channels")

        await eventually(no_channels, message="sandbox channels hung up")
        for recording in await self.call("GET", "/recordings/stored"):
            await self.call("DELETE", f"/recordings/stored/{quote(recording['name'], safe='')}", ok=(200, 204, 404))


class Typist:
    """A caller that presses keys and talks (see ``Sandbox.typist``)."""

    def __init__(self, sandbox, caller):
        self.sandbox, self.caller = sandbox, caller
        self.channel_id, self.far_id, self.number = caller.channel_id, caller.far_id, caller.number
        self.mouth = None

    async def talk(self):
        self.mouth = _id("m")
        media = ",".join(["sound:demo-congrats"] * 20)  # ten minutes of speech
        await self.sandbox.call(
            "POST", f"/channels/{self.far_id}/play", params={"media": media, "playbackId": self.mouth}, ok=(201,)
        )

    async def press(self, keys, *, between=150):
        """Type ``keys`` (100 ms tones ``between`` ms apart); a talking typist stops talking meanwhile, as people do."""
        talking = self.mouth is not None
        if talking:
            await self.sandbox.call("DELETE", f"/playbacks/{self.mouth}", ok=(200, 204, 404))
            self.mouth = None
        await self.sandbox.call(
            "POST", f"/channels/{self.far_id}/dtmf", params={"dtmf": keys, "duration": 100, "between": between}
        )
        # Asterisk answers at once and sends the tones after: returns once they are out.
        await asyncio.sleep(len(keys) * (100 + between) / 1000 + 0.2)
        if talking:
            await self.talk()


class Ears:
    """Snoops on participants and tells whether each one hears sound right now."""

    def __init__(self, sandbox):
        self.sandbox = sandbox
        self.hearing: dict[str, bool] = {}  # snoop id -> sound heard now
        self.in_app: set[str] = set()  # snoops that entered the ear's application
        self.changed = asyncio.Event()
        self._socket = None
        self._reader = None

    async def __aenter__(self):
        ari = self.sandbox.ari
        token = base64.b64encode(f"{ari.username}:{ari.password}".encode()).decode()
        url = ari.url.replace("http", "ws", 1) + f"/events?app={EAR_APP}&subscribeAll=false"
        self._socket = await websockets.connect(url, additional_headers={"Authorization": f"Basic {token}"})
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc):
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._socket.close()

    async def _read(self):
        async for raw in self._socket:
            event = json.loads(raw)
            snoop_id = (event.get("channel") or {}).get("id")
            if event["type"] == "StasisStart":
                self.in_app.add(snoop_id)
            elif event["type"] == "ChannelTalkingStarted":
                self.hearing[snoop_id] = True
            elif event["type"] == "ChannelTalkingFinished":
                self.hearing[snoop_id] = False
            else:
                continue
            self.changed.set()

    async def wait_in_app(self, channel_id, timeout=10):
        """Wait until ``channel_id`` has entered the ears' application."""
        try:
            async with asyncio.timeout(timeout):
                while channel_id not in self.in_app:
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise SandboxError(f"{channel_id} did not enter the ears' application in {timeout} s") from None

    async def listen(self, caller):
        """Start hearing what ``caller`` hears; returns the snoop id."""
        snoop_id = _id("s")
        self.hearing[snoop_id] = False
        await self.sandbox.call(
            "POST",
            f"/channels/{caller.channel_id}/snoop",
            params={"spy": "out", "app": EAR_APP, "snoopId": snoop_id},
        )
        # A variable can be set once the snoop is in the application (409 before).
        try:
            async with asyncio.timeout(5):
                while snoop_id not in self.in_app:
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise SandboxError("the ear's snoop channel did not enter its application in 5 s") from None
        # 1 s of silence ends "talking"; the energy threshold is the default.
        await self.sandbox.call(
            "POST", f"/channels/{snoop_id}/variable", params={"variable": "TALK_DETECT(set)", "value": "1000"}
        )
        return snoop_id

    async def wait(self, snoop_id, hears, timeout=15):
        """Wait until the snooped caller hears sound (True) or silence (False)."""
        try:
            async with asyncio.timeout(timeout):
                while self.hearing.get(snoop_id) != hears:
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise SandboxError(
                f"the caller did not {'hear sound' if hears else 'fall silent'} in {timeout} s"
            ) from None

    async def stop_music(self, caller):
        """Stop the music on hold a waiting caller hears: what else it hears is then plain to the ear."""
        await self.sandbox.call("DELETE", f"/channels/{caller.channel_id}/moh")

    async def steady(self, snoop_id, hears, seconds):
        """Assert the caller keeps hearing sound / silence for ``seconds``."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:
            if self.hearing.get(snoop_id) != hears:
                raise SandboxError(f"the caller's audio changed to {'sound' if not hears else 'silence'}")
            await asyncio.sleep(0.1)


async def eventually(predicate, timeout=10, interval=0.1, message="condition not met"):
    """Wait until ``predicate()`` (plain or awaitable) is truthy; returns its value."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() > end:
            raise SandboxError(f"{message} within {timeout} s (last: {value!r})")
        await asyncio.sleep(interval)
