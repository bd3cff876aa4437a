"""A small ARI REST client for the worker.

Blocking HTTP (requests) runs in a thread pool of its own, so the event loop
that reads Asterisk's event socket never waits on the network. Errors come out
as ``AriError`` (``AriNotFound`` for 404, ``AriConflict`` for 409); requests'
types do not leak out of this module.
"""

import asyncio
import base64
import logging
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote, urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5.0
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


def _raise_for(response, method, path):
    if response.status_code < 400:
        return
    try:
        detail = response.json().get("message") or response.text
    except ValueError:
        detail = response.text
    detail = (detail or "").strip()[:200]
    message = f"{method} {path}: {response.status_code} {detail}".strip()
    if response.status_code == 404:
        raise AriNotFound(message, status=404)
    if response.status_code == 409:
        raise AriConflict(message, status=409)
    raise AriError(message, status=response.status_code)


class AriClient:
    """REST calls to one Asterisk; every call is a coroutine with a timeout."""

    def __init__(self, base_url, username, password, *, timeout=DEFAULT_TIMEOUT, max_workers=8):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._auth = (username, password)
        self._session = requests.Session()
        self._session.auth = self._auth
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=max_workers)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="ari-rest")

    def __repr__(self):
        return f"<AriClient {self.base_url}>"

    def close(self):
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._session.close()

    # --- transport -----------------------------------------------------------

    def _request_sync(self, method, path, params, json_body, timeout):
        url = f"{self.base_url}{path}"
        try:
            response = self._session.request(method, url, params=params, json=json_body, timeout=timeout)
        except requests.Timeout:
            raise AriError(f"{method} {path}: timed out after {timeout} s") from None
        except requests.RequestException as exc:
            raise AriError(f"{method} {path}: {exc.__class__.__name__}") from None
        _raise_for(response, method, path)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise AriError(f"{method} {path}: answer is not JSON", status=response.status_code) from None

    async def request(self, method, path, *, params=None, json=None, timeout=None):
        """Run one REST call in the client's thread pool and return the decoded JSON (or None)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, self._request_sync, method, path, params, json, timeout or self.timeout
        )

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

    async def asterisk_info(self):
        return await self.request("GET", "/asterisk/info")

    # --- channels ------------------------------------------------------------

    async def channels(self):
        return await self.request("GET", "/channels")

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

    async def add_channel(self, bridge_id, channel_id, role=None):
        params = {"channel": channel_id}
        if role:
            params["role"] = role
        await self.request("POST", f"/bridges/{quote(bridge_id, safe='')}/addChannel", params=params)

    async def remove_channel(self, bridge_id, channel_id):
        await self.request(
            "POST", f"/bridges/{quote(bridge_id, safe='')}/removeChannel", params={"channel": channel_id}
        )

    async def start_bridge_moh(self, bridge_id, moh_class):
        await self.request("POST", f"/bridges/{quote(bridge_id, safe='')}/moh", params={"mohClass": moh_class})

    async def stop_bridge_moh(self, bridge_id):
        await self.request("DELETE", f"/bridges/{quote(bridge_id, safe='')}/moh")
