"""Test SIP phones: callers that dial the sandbox over PJSIP, with RTP audio on loopback.

The phones are a second Asterisk (``scripts/asterisk-sandbox phones start``,
configs in ``tests/phones/``), driven through its own ARI (application
``phones``). One call is one PJSIP channel there:
``POST /channels?endpoint=PJSIP/<user part>@<line>`` sends an INVITE to
``sip:<user part>@<sandbox>`` whose From header carries the caller ID
(``CONNECTEDLINE`` of the new channel: any string, unparsed). The line picks
the phones' source port, and so the sandbox endpoint and context
(``deploy/asterisk/pjsip.conf``):

  phones      ->  [conferences]
  trusted     ->  [conferences-admin]
  unfiltered  ->  [test-unfiltered] (the old dialplan, for attack tests)
  stranger    ->  no endpoint: an address the sandbox does not know

When the sandbox answers, the phone's channel enters the ``phones``
application. Then:

- its mouth: ``far="talk"`` plays speech (``demo-congrats``, a 30 s prompt,
  twenty times over); ``far="silent"`` sends silence. Either way RTP flows
  all the time, as from a desk phone: a channel that receives no RTP reads
  no frames, and talk detection never sees the silence that would end a
  talking stretch;
- its ear: a snoop on the phone's channel (``spy=in``: what the channel
  reads, i.e. what arrived from the sandbox over RTP) with ``TALK_DETECT``
  on it, so "hears sound" means audio crossed the network to the phone. A
  phone never hears its own mouth. The snoop, not the phone's channel,
  carries the talk detection: a channel that receives no RTP at all reads no
  frames, so its own talk detection would never see the silence; a snoop
  reads on a timer;
- DTMF: ``POST /channels/{id}/dtmf``, as RFC 4733 events (the phones'
  default) or as SIP INFO (``PJSIP_DTMF_MODE()=info`` first). ARI queues
  DTMF behind a playback on the same channel: a talking phone does not type;
- hanging up sends a BYE.

Both Asterisks give the SIP Call-ID as the channel's ``protocol_id``: that
is how a phone finds its call's channel on the sandbox (the participant).
"""

import asyncio
import base64
import contextlib
import json
import uuid
from dataclasses import dataclass

import requests
import websockets

from tests.sandbox import SandboxError

PHONES_APP = "phones"
LINES = {"phones": "pbx", "trusted": "pbx-trusted", "unfiltered": "pbx-unfiltered", "stranger": "pbx-stranger"}
TALK_MEDIA = ",".join(["sound:demo-congrats"] * 20)  # ten minutes of speech: longer than any test
EAR_SILENCE_MS = "1000"  # the ear calls it silence after 1 s without sound (default energy threshold)


@dataclass(frozen=True)
class AriAccess:
    url: str
    username: str
    password: str

    @property
    def auth(self):
        return (self.username, self.password)


def _rest(access, method, path, *, params=None, json_body=None, ok=(200, 204), timeout=5):
    response = requests.request(
        method, f"{access.url}{path}", params=params, json=json_body, auth=access.auth, timeout=timeout
    )
    if response.status_code not in ok:
        raise SandboxError(f"{method} {access.url}{path} -> {response.status_code} {response.text[:200]}")
    return response.json() if response.content else None


async def rest(access, method, path, **kwargs):
    """One ARI request to ``access`` in a thread (the event loop never waits on the network)."""
    return await asyncio.to_thread(_rest, access, method, path, **kwargs)


async def channel_variable(access, channel_id, variable):
    answer = await rest(access, "GET", f"/channels/{channel_id}/variable", params={"variable": variable})
    return answer.get("value")


class AppSocket:
    """The event WebSocket of one ARI application; keeps every event and wakes waiters."""

    def __init__(self, access, app):
        self.access = access
        self.app = app
        self.events = []
        self.changed = asyncio.Event()
        self.handlers = []  # called with each event, in the reader (must not block)
        self._socket = None
        self._reader = None

    async def __aenter__(self):
        token = base64.b64encode(f"{self.access.username}:{self.access.password}".encode()).decode()
        url = self.access.url.replace("http", "ws", 1) + f"/events?app={self.app}&subscribeAll=false"
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
            self.events.append(event)
            for handler in self.handlers:
                handler(event)
            self.changed.set()

    def of(self, kind, channel_id=None):
        return [
            event
            for event in self.events
            if event["type"] == kind and (channel_id is None or (event.get("channel") or {}).get("id") == channel_id)
        ]

    async def wait_for(self, predicate, timeout=10, message="event not seen"):
        """Wait until ``predicate()`` is truthy (checked after each event); returns its value."""
        try:
            async with asyncio.timeout(timeout):
                while not (value := predicate()):
                    self.changed.clear()
                    await self.changed.wait()
                return value
        except TimeoutError:
            raise SandboxError(f"{message} within {timeout} s") from None


@dataclass
class Phone:
    id: str  # the phone's channel on the phones' Asterisk
    call_id: str  # the SIP Call-ID
    name: str
    number: str
    line: str
    far: str
    channel_id: str | None = None  # the call's channel on the sandbox (the participant), once found


class Phones:
    """Places SIP calls from the phones into the sandbox, and listens with their ears."""

    def __init__(self, access, sandbox):
        self.access = access
        self.sandbox = sandbox  # tests.sandbox.Sandbox: the PBX they call
        self.socket = AppSocket(access, PHONES_APP)
        self.socket.handlers.append(self._on_event)
        self.hearing: dict[str, bool] = {}  # phone channel id -> sound heard now
        self.ears: dict[str, str] = {}  # snoop channel id -> the phone it listens to
        self.answered: dict[str, asyncio.Event] = {}
        self.errors: dict[str, Exception] = {}  # what went wrong opening a phone's ear or mouth
        self.talks: dict[str, str] = {}  # phone channel id -> its mouth's playback id
        self.phones: dict[str, Phone] = {}
        self._tasks = set()

    async def __aenter__(self):
        await self.socket.__aenter__()
        return self

    async def __aexit__(self, *exc):
        await self.cleanup()
        for task in list(self._tasks):
            task.cancel()
        await self.socket.__aexit__(*exc)

    # --- events (in the socket's reader: start tasks, never wait) --------------------

    def _on_event(self, event):
        channel_id = (event.get("channel") or {}).get("id")
        if channel_id in self.ears:
            if event["type"] == "ChannelTalkingStarted":
                self.hearing[self.ears[channel_id]] = True
            elif event["type"] == "ChannelTalkingFinished":
                self.hearing[self.ears[channel_id]] = False
            return
        phone = self.phones.get(channel_id)
        if phone is not None and event["type"] == "StasisStart":
            task = asyncio.create_task(self._answered(phone))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _answered(self, phone):
        """The sandbox answered: open the phone's ear, then its mouth."""
        try:
            ear_id = f"ear-{uuid.uuid4().hex}"
            self.ears[ear_id] = phone.id
            await rest(
                self.access,
                "POST",
                f"/channels/{phone.id}/snoop",
                params={"spy": "in", "app": PHONES_APP, "snoopId": ear_id},
            )
            # A channel variable can be set once the snoop is in the application.
            await self.socket.wait_for(lambda: self.socket.of("StasisStart", ear_id), message="the ear in Stasis")
            await rest(
                self.access,
                "POST",
                f"/channels/{ear_id}/variable",
                params={"variable": "TALK_DETECT(set)", "value": EAR_SILENCE_MS},
            )
            if phone.far == "talk":
                await self.talk(phone)
            else:
                await self._silence(phone)
        except SandboxError as exc:
            # Hung up at once (a refused caller) is no fault: nothing to hear.
            if await self.exists(phone):
                self.errors[phone.id] = exc
        finally:
            self.answered[phone.id].set()

    # --- calls ------------------------------------------------------------------------

    async def call(self, user, *, name="SIP caller", number="200", far="silent", line="phones", answer=True):
        """Dial ``user`` (the SIP user part: a room number, or anything) on ``line``.

        With ``answer`` (the default), wait until the sandbox answered and its
        channel of this call is known (``phone.channel_id``).
        """
        phone_id = f"phone-{uuid.uuid4().hex}"
        phone = Phone(phone_id, "", name, number, line, far)
        self.phones[phone_id] = phone
        self.hearing[phone_id] = False
        self.answered[phone_id] = asyncio.Event()
        created = await rest(
            self.access,
            "POST",
            "/channels",
            params={
                "endpoint": f"PJSIP/{user}@{LINES[line]}",
                "app": PHONES_APP,
                "appArgs": far,
                "channelId": phone_id,
            },
            # The From header is built from the new channel's connected line;
            # set as a function, the name is not parsed (quotes and all).
            json_body={"variables": {"CONNECTEDLINE(name,i)": name, "CONNECTEDLINE(num,i)": number}},
        )
        phone.call_id = created["protocol_id"]
        if answer:
            await self.wait_answered(phone)
            await self.find_on_sandbox(phone)
        return phone

    async def wait_answered(self, phone, timeout=10):
        try:
            async with asyncio.timeout(timeout):
                await self.answered[phone.id].wait()
            if phone.id in self.errors:
                raise SandboxError(f"phone {phone.name!r} answered, but: {self.errors[phone.id]}")
        except TimeoutError:
            raise SandboxError(
                f"the sandbox did not answer the phone's call within {timeout} s (do the phones dial this "
                "sandbox? they follow ASTERISK_SANDBOX_PORT / ASTERISK_SANDBOX_SIP_PORT when started)"
            ) from None

    async def find_on_sandbox(self, phone, timeout=10):
        """The sandbox's channel of this call: the one with the same SIP Call-ID."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            for channel in await self.sandbox.call("GET", "/channels"):
                if channel.get("protocol_id") == phone.call_id:
                    phone.channel_id = channel["id"]
                    return channel
            if loop.time() > end:
                raise SandboxError(f"no channel with Call-ID {phone.call_id} on the sandbox within {timeout} s")
            await asyncio.sleep(0.05)

    async def exists(self, phone):
        response = await asyncio.to_thread(
            requests.get, f"{self.access.url}/channels/{phone.id}", auth=self.access.auth, timeout=5
        )
        return response.status_code == 200

    async def hangup(self, phone):
        """The phone hangs up (BYE)."""
        await rest(self.access, "DELETE", f"/channels/{phone.id}", ok=(200, 204, 404))

    async def wait_hung_up(self, phone, timeout=20):
        """Wait until the call ended on the phone (the PBX hung up); returns the hangup cause."""
        destroyed = await self.socket.wait_for(
            lambda: self.socket.of("ChannelDestroyed", phone.id),
            timeout=timeout,
            message="the phone's call did not end",
        )
        return destroyed[0].get("cause_txt")

    # --- mouth and keypad ---------------------------------------------------------------

    async def talk(self, phone):
        playback_id = f"talk-{uuid.uuid4().hex}"
        await rest(
            self.access, "POST", f"/channels/{phone.id}/play/{playback_id}", params={"media": TALK_MEDIA}, ok=(200, 201)
        )
        self.talks[phone.id] = playback_id

    async def quiet(self, phone):
        """Stop talking; the phone goes on sending silence."""
        playback_id = self.talks.pop(phone.id, None)
        if playback_id:
            await rest(self.access, "DELETE", f"/playbacks/{playback_id}", ok=(200, 204, 404))
        await self._silence(phone)

    async def _silence(self, phone):
        # A playback suspends the silence generator for good: start it again after one.
        await rest(self.access, "POST", f"/channels/{phone.id}/silence")

    async def dtmf(self, phone, digits, *, mode="rfc4733"):
        """Type ``digits`` on the phone, sent as RFC 4733 events or as SIP INFO requests."""
        if mode not in ("rfc4733", "info"):
            raise ValueError(mode)
        await rest(
            self.access,
            "POST",
            f"/channels/{phone.id}/variable",
            params={"variable": "PJSIP_DTMF_MODE()", "value": mode},
        )
        # Read back: the phone really sends this way now (PJSIP re-INVITEs on a change).
        sent_as = await channel_variable(self.access, phone.id, "PJSIP_DTMF_MODE()")
        if sent_as != mode:
            raise SandboxError(f"the phone's DTMF mode is {sent_as!r}, not {mode!r}")
        await rest(self.access, "POST", f"/channels/{phone.id}/dtmf", params={"dtmf": digits})

    # --- ear ------------------------------------------------------------------------------

    async def hears(self, phone, sound, timeout=15):
        """Wait until the phone hears sound (True) or silence (False) over RTP."""
        try:
            await self.socket.wait_for(lambda: self.hearing.get(phone.id) == sound, timeout=timeout)
        except SandboxError:
            raise SandboxError(
                f"phone {phone.name!r} did not {'hear sound' if sound else 'fall silent'} in {timeout} s"
            ) from None

    async def steady(self, phone, sound, seconds):
        """Assert the phone keeps hearing sound / silence for ``seconds``."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:
            if self.hearing.get(phone.id) != sound:
                raise SandboxError(f"phone {phone.name!r} heard {'silence' if sound else 'sound'}")
            await asyncio.sleep(0.1)

    # --- media path -------------------------------------------------------------------------

    async def rtp(self, phone):
        """``(its own RTP address, where it sends RTP)`` of the phone, as ``host:port``."""
        return (
            await channel_variable(self.access, phone.id, "CHANNEL(rtp,src)"),
            await channel_variable(self.access, phone.id, "CHANNEL(rtp,dest)"),
        )

    async def cleanup(self):
        """Hang up every call of the phones."""
        for channel in await rest(self.access, "GET", "/channels"):
            await rest(self.access, "DELETE", f"/channels/{channel['id']}", ok=(200, 204, 404))
