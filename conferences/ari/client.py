"""A small ARI REST client for the worker.

The calls run on the event loop (aiohttp): a room's lane awaits its own
calls while other rooms' go on, and a call costs the worker a small part of
what ``requests`` in a thread pool cost (docs/performance.md, "ARI client":
about 0.14 against 0.9 ms of CPU a call, and 4 to 9 times the calls a
second). Every call has a timeout. Errors come out as ``AriError``
(``AriNotFound`` for 404, ``AriConflict`` for 409); aiohttp's types do not
leak out of this module.
"""

import asyncio
import base64
import json as jsonlib
import logging
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5.0
MAX_CONNECTIONS = 32  # to one Asterisk, all rooms together
ROOM_BRIDGE_TYPE = "mixing,dtmf_events,proxy_media"  # see create_bridge


class AriError(Exception):
    """An ARI request failed: HTTP error status, timeout or connection failure."""

    def __init__(self, message, *, status=None):
        super().__init__(message)
        self.status = status


class AriNotFound(AriError):
    """404: the channel, bridge or playback is gone (a normal race, not a fault)."""


class AriConflict(AriError):
    """409: the object is not in a state that allows the request (e.g. not in Stasis)."""


def _raise_for(status, body, method, path):
    if status < 400:
        return
    try:
        detail = jsonlib.loads(body).get("message") or body.decode("utf-8", "replace")
    except (ValueError, AttributeError):
        detail = body.decode("utf-8", "replace")
    detail = (detail or "").strip()[:200]
    message = f"{method} {path}: {status} {detail}".strip()
    if status == 404:
        raise AriNotFound(message, status=404)
    if status == 409:
        raise AriConflict(message, status=409)
    raise AriError(message, status=status)


class AriClient:
    """REST calls to one Asterisk; every call is a coroutine with a timeout.

    The HTTP session belongs to the event loop of the first call (a worker
    runs on one loop); ``close()`` ends it.
    """

    def __init__(self, base_url, username, password, *, timeout=DEFAULT_TIMEOUT, guard=None):
        # guard(): raises when the caller may not act on Asterisk now (a worker without its lease).
        self.guard = guard
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._auth = (username, password)
        self._session = None
        self._session_loop = None

    def __repr__(self):
        return f"<AriClient {self.base_url}>"

    def _session_here(self):
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            self._session = aiohttp.ClientSession(
                headers=self.auth_header(),
                connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS),
                raise_for_status=False,
            )
            self._session_loop = loop
        return self._session

    async def close(self):
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    # --- transport -----------------------------------------------------------

    async def request(self, method, path, *, params=None, json=None, timeout=None):
        """One REST call; returns the decoded JSON (or None for an empty answer)."""
        if self.guard is not None:
            self.guard()
        timeout = timeout or self.timeout
        url = f"{self.base_url}{path}"
        try:
            async with self._session_here().request(
                method, url, params=params, json=json, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                status, body = response.status, await response.read()
        except TimeoutError:
            raise AriError(f"{method} {path}: timed out after {timeout} s") from None
        except aiohttp.ClientConnectorError as exc:
            raise AriError(f"{method} {path}: cannot connect ({exc.__class__.__name__})") from None
        except aiohttp.ClientError as exc:
            raise AriError(f"{method} {path}: {exc.__class__.__name__}") from None
        _raise_for(status, body, method, path)
        if status == 204 or not body:
            return None
        try:
            return jsonlib.loads(body)
        except ValueError:
            raise AriError(f"{method} {path}: answer is not JSON", status=status) from None

    def events_url(self, app):
        """The WebSocket URL of the app's event stream (no credentials in it)."""
        parts = urlsplit(self.base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        query = f"app={quote(app)}&subscribeAll=false"
        return urlunsplit((scheme, parts.netloc, parts.path + "/events", query, ""))

    def auth_header(self):
        """The Authorization header for the event socket (credentials never go in the URL)."""
        token = base64.b64encode(f"{self._auth[0]}:{self._auth[1]}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    # --- Asterisk ------------------------------------------------------------

    async def set_event_filter(self, app, event_types):
        """Only these event types reach the application (``PUT /applications/{app}/eventFilter``)."""
        body = {"allowed": [{"type": event_type} for event_type in event_types]}
        await self.request("PUT", f"/applications/{quote(app, safe='')}/eventFilter", json=body)

    async def asterisk_info(self):
        return await self.request("GET", "/asterisk/info")

    # --- channels ------------------------------------------------------------

    async def channels(self):
        return await self.request("GET", "/channels")

    async def originate(self, *, endpoint, app, app_args, channel_id, caller_id, timeout):
        """``POST /channels``: dial ``endpoint`` into ``app`` (``StasisStart`` when it answers), with the
        caller's chosen channel id; Asterisk gives up after ``timeout`` seconds of ringing."""
        params = {
            "endpoint": endpoint,
            "app": app,
            "appArgs": app_args,
            "channelId": channel_id,
            "callerId": caller_id,
            "timeout": int(timeout),
        }
        return await self.request("POST", "/channels", params=params)

    async def hangup(self, channel_id, reason="normal"):
        await self.request("DELETE", f"/channels/{quote(channel_id, safe='')}", params={"reason": reason})

    async def answer(self, channel_id):
        await self.request("POST", f"/channels/{quote(channel_id, safe='')}/answer")

    async def mute(self, channel_id, direction="in"):
        await self.request("POST", f"/channels/{quote(channel_id, safe='')}/mute", params={"direction": direction})

    async def unmute(self, channel_id, direction="in"):
        await self.request("DELETE", f"/channels/{quote(channel_id, safe='')}/mute", params={"direction": direction})

    async def set_variable(self, channel_id, variable, value=""):
        await self.request(
            "POST",
            f"/channels/{quote(channel_id, safe='')}/variable",
            params={"variable": variable, "value": value},
        )

    async def get_variable(self, channel_id, variable):
        """The value of a channel variable; None when the channel has no such variable.

        Asterisk answers 404 both for a missing variable and for a missing
        channel; a second look tells them apart, so ``AriNotFound`` still means
        the channel is gone.
        """
        path = f"/channels/{quote(channel_id, safe='')}/variable"
        try:
            answer = await self.request("GET", path, params={"variable": variable})
        except AriNotFound:
            await self.request("GET", f"/channels/{quote(channel_id, safe='')}")  # AriNotFound when it is gone
            return None
        value = answer.get("value") if isinstance(answer, dict) else None
        return value if isinstance(value, str) else None

    async def play(self, channel_id, media, playback_id=None):
        params = {"media": media}
        if playback_id:
            params["playbackId"] = playback_id
        return await self.request("POST", f"/channels/{quote(channel_id, safe='')}/play", params=params)

    async def stop_playback(self, playback_id):
        await self.request("DELETE", f"/playbacks/{quote(playback_id, safe='')}")

    # --- bridges -------------------------------------------------------------

    async def bridges(self):
        return await self.request("GET", "/bridges")

    async def create_bridge(self, bridge_id, name):
        """Create the mixing bridge ``bridge_id``, or return it when it exists already.

        The media of a room always passes through Asterisk: a plain ``mixing``
        bridge lets two SIP callers with direct media (the PJSIP default) send
        RTP to each other, and then Asterisk hears nothing (no talk detection,
        mute, DTMF or recording). ``dtmf_events`` and ``proxy_media`` take
        native bridging away; Asterisk reads the list left to right, so they
        must come after ``mixing``.
        """
        return await self.request(
            "POST", f"/bridges/{quote(bridge_id, safe='')}", params={"type": ROOM_BRIDGE_TYPE, "name": name}
        )

    async def destroy_bridge(self, bridge_id):
        await self.request("DELETE", f"/bridges/{quote(bridge_id, safe='')}")

    async def add_channel(self, bridge_id, channel_id, role=None, *, absorb_dtmf=False):
        """``absorb_dtmf``: the channel's keys do not reach the bridge's others (ChannelDtmfReceived still comes)."""
        params = {"channel": channel_id}
        if role:
            params["role"] = role
        if absorb_dtmf:
            params["absorbDTMF"] = "true"
        await self.request("POST", f"/bridges/{quote(bridge_id, safe='')}/addChannel", params=params)

    async def remove_channel(self, bridge_id, channel_id):
        await self.request(
            "POST", f"/bridges/{quote(bridge_id, safe='')}/removeChannel", params={"channel": channel_id}
        )

    async def play_to_bridge(self, bridge_id, media, playback_id=None):
        params = {"media": media}
        if playback_id:
            params["playbackId"] = playback_id
        return await self.request("POST", f"/bridges/{quote(bridge_id, safe='')}/play", params=params)

    async def record_bridge(self, bridge_id, name, fmt="wav"):
        """Record the bridge's mix: a quiet room never ends the file (maxSilenceSeconds=0), a name in use fails."""
        params = {"name": name, "format": fmt, "maxSilenceSeconds": 0, "maxDurationSeconds": 0, "ifExists": "fail"}
        return await self.request("POST", f"/bridges/{quote(bridge_id, safe='')}/record", params=params)

    async def stop_recording(self, name):
        """Stop a live recording and keep its file (``DELETE /recordings/live/{name}`` would discard it)."""
        await self.request("POST", f"/recordings/live/{quote(name, safe='')}/stop")

    async def stored_recordings(self):
        """``GET /recordings/stored``: every recording Asterisk holds a file of (``name``, ``format``)."""
        return await self.request("GET", "/recordings/stored")

    async def live_recording(self, name):
        return await self.request("GET", f"/recordings/live/{quote(name, safe='')}")

    async def stored_recording_file(self, name, destination, *, timeout=30):
        """Write a stored recording's file to ``destination`` (a binary file), in chunks; returns its size."""
        if self.guard is not None:
            self.guard()
        path = f"/recordings/stored/{quote(name, safe='')}/file"
        size = 0
        try:
            # No total limit (a large file on a slow link takes its time), but a stalled one ends.
            async with self._session_here().get(
                f"{self.base_url}{path}", timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout)
            ) as response:
                if response.status >= 400:
                    _raise_for(response.status, await response.read(), "GET", path)
                async for chunk in response.content.iter_chunked(64 * 1024):
                    await asyncio.to_thread(destination.write, chunk)
                    size += len(chunk)
        except TimeoutError:
            raise AriError(f"GET {path}: timed out after {timeout} s") from None
        except aiohttp.ClientError as exc:
            raise AriError(f"GET {path}: {exc.__class__.__name__}") from None
        return size

    async def delete_stored_recording(self, name):
        await self.request("DELETE", f"/recordings/stored/{quote(name, safe='')}")

    async def start_moh(self, channel_id, moh_class):
        """Music on hold to one channel (a caller waiting outside any bridge)."""
        await self.request("POST", f"/channels/{quote(channel_id, safe='')}/moh", params={"mohClass": moh_class})

    async def stop_moh(self, channel_id):
        await self.request("DELETE", f"/channels/{quote(channel_id, safe='')}/moh")

    async def start_bridge_moh(self, bridge_id, moh_class, *, timeout=None):
        await self.request(
            "POST", f"/bridges/{quote(bridge_id, safe='')}/moh", params={"mohClass": moh_class}, timeout=timeout
        )

    async def stop_bridge_moh(self, bridge_id, *, timeout=None):
        await self.request("DELETE", f"/bridges/{quote(bridge_id, safe='')}/moh", timeout=timeout)
