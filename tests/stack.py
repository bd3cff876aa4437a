"""A whole deployment in processes for fault and soak tests: Redis of its own, daphne, the worker,
and protocol clients that behave like the live page (snapshot, seq, resync, reconnect)."""

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import requests
import websockets

ROOT = Path(__file__).resolve().parent.parent


def run_manage(*args, **environ):
    """``manage.py ARGS`` in a process of its own, with the project's variables only from ``environ``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "ARI_", "DATABASE_URL", "REDIS_"))}
    clean.update(environ)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=120
    )


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port):
    with socket.socket() as sock:
        sock.settimeout(0.3)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class OwnRedis:
    """A redis-server of the test's own, so it can be killed without touching anybody else's."""

    def __init__(self):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="conference-redis-")
        self.process = None

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        binary = shutil.which("redis-server")
        assert binary, "redis-server is missing (scripts/ensure-redis installs it)"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(100):
            if port_open(self.port):
                return
            import time

            time.sleep(0.05)
        raise AssertionError("own redis-server did not start")

    def kill(self):
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def close(self):
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class Processes:
    """daphne (web) and ari_worker as real processes with a given environment."""

    def __init__(self, env, server_name, log_dir):
        self.env, self.server_name = env, server_name
        self.port = free_port()
        self.web = self.worker = None
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._logs = []

    def _spawn(self, name, *args):
        log = open(self.log_dir / f"{name}-{len(self._logs)}.log", "w")  # noqa: SIM115
        self._logs.append(log)
        return subprocess.Popen(args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def start_web(self):
        self.web = self._spawn(
            "web", sys.executable, "manage.py", "serve", "--no-worker", "--insecure", f"127.0.0.1:{self.port}"
        )

    def start_worker(self, *extra):
        self.worker = self._spawn(
            "worker", sys.executable, "manage.py", "ari_worker", "--server", self.server_name, *extra
        )

    @staticmethod
    def stop(process, sig=signal.SIGTERM):
        if process is not None and process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)

    def stop_web(self):
        self.stop(self.web)

    def stop_worker(self):
        self.stop(self.worker)

    def close(self):
        self.stop(self.web)
        self.stop(self.worker)
        for log in self._logs:
            log.close()

    async def web_up(self, timeout=30):
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not await asyncio.to_thread(port_open, self.port):
            if loop.time() > end:
                raise AssertionError("the web server did not come up")
            await asyncio.sleep(0.1)


def rss_kib(pid):
    """Resident memory of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def database_url():
    """The test database's URL, for processes that share it with the test (PostgreSQL only)."""
    import pytest
    from django.db import connection

    settings = connection.settings_dict
    if connection.vendor != "postgresql":
        pytest.fail("process tests share the test database with a subprocess: run them on PostgreSQL")
    user = settings["USER"]
    password = f":{settings['PASSWORD']}" if settings["PASSWORD"] else ""
    return (
        f"postgres://{user}{password}@{settings['HOST'] or '127.0.0.1'}:{settings['PORT'] or 5432}/{settings['NAME']}"
    )


def base_env(database_url, redis_url):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "ARI_", "DATABASE_URL", "REDIS_"))}
    env.update(DATABASE_URL=database_url, REDIS_URL=redis_url, PYTHONUNBUFFERED="1")
    return env


class Viewer:
    """A protocol client like the live page: applies snapshot and events, resyncs on a gap, reconnects."""

    def __init__(self, port, slug, session_key):
        self.url = f"ws://127.0.0.1:{port}/ws/conferences/{slug}/"
        self.headers = {"Cookie": f"sessionid={session_key}", "Origin": f"http://127.0.0.1:{port}"}
        self.roster = {}
        self.seq = None
        self.snapshots = self.resyncs = self.reconnects = self.events = 0
        self.closed_codes = []
        self.task = None
        self._stop = asyncio.Event()

    def start(self):
        self.task = asyncio.create_task(self._run())
        return self

    async def stop(self):
        self._stop.set()
        if self.task:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task

    @property
    def numbers(self):
        return sorted(p["caller_number"] for p in self.roster.values())

    async def _run(self):
        delay = 0.2
        while not self._stop.is_set():
            try:
                async with websockets.connect(self.url, additional_headers=self.headers, open_timeout=5) as ws:
                    delay = 0.2
                    async for raw in ws:
                        await self._apply(ws, json.loads(raw))
                    self.closed_codes.append(ws.close_code)
            except (OSError, TimeoutError, websockets.WebSocketException):
                pass
            self.reconnects += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 3)

    async def _apply(self, ws, frame):
        kind = frame.get("type")
        if kind == "snapshot":
            self.snapshots += 1
            self.seq = frame["seq"]
            self.roster = {p["id"]: p for p in frame["participants"]}
            return
        seq = frame.get("seq")
        if seq is None or self.seq is None:
            return
        if seq <= self.seq:
            return
        if seq > self.seq + 1:
            self.resyncs += 1
            await ws.send(json.dumps({"action": "resync", "request_id": f"gap-{seq}"}))
            return
        self.seq = seq
        self.events += 1
        participant = frame.get("participant")
        if kind in ("participant.joined", "participant.updated"):
            self.roster[participant["id"]] = participant
        elif kind == "participant.left":
            self.roster.pop(participant["id"], None)


def channel_layer(redis_url, sentinels=()):
    """A channel layer on ``redis_url`` configured as the processes' (to send room events as the worker does)."""
    from django.utils.module_loading import import_string

    from conferencesite import env

    config = env.channel_layers_for(redis_url, sentinels)["default"]
    return import_string(config["BACKEND"])(**config.get("CONFIG", {}))


async def send_room_events(redis_url, conference_id, first_seq, count, gap=0.01):
    """``count`` numbered room frames (``conference.updated``) to a room's group, ``gap`` seconds apart."""
    from conferences import broadcast

    layer = channel_layer(redis_url)
    for seq in range(first_seq, first_seq + count):
        frame = {"type": "conference.updated", "seq": seq, "conference": {"slug": "x", "participant_count": seq}}
        await layer.group_send(broadcast.room_group(conference_id), broadcast.room_message(frame, conference_id))
        await asyncio.sleep(gap)
    close = getattr(layer, "close_pools", None)
    if close is not None:
        await close()


def make_sessions(user, count):
    """Logged-in session keys for ``user`` (as if it had logged in ``count`` times)."""
    from django.contrib.sessions.backends.db import SessionStore

    keys = []
    for _ in range(count):
        session = SessionStore()
        session["_auth_user_id"] = str(user.pk)
        session["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
        session["_auth_user_hash"] = user.get_session_auth_hash()
        session.create()
        keys.append(session.session_key)
    return keys


class NonReadingClient:
    """A WebSocket client that sends and never reads: a stalled page, or one that wants the server to buffer.

    A raw socket with a small receive buffer, so what the server sends piles
    up on the server's side. After the handshake nothing is ever read; a send
    that fails (the server aborted the connection) marks it ``dropped``.
    """

    def __init__(self, port, path, session_key, *, rcvbuf=4096, authorization=None):
        self.port, self.path, self.session_key, self.rcvbuf = port, path, session_key, rcvbuf
        self.authorization = authorization  # a program's "Bearer <token>" instead of the page's cookie and Origin
        self.sock = None
        self.dropped_after = None  # seconds from connect to the failed send
        self.sent = 0
        self._connected_at = None

    async def connect(self):
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", self.port))
        key = base64.b64encode(os.urandom(16)).decode()
        credentials = (
            f"Authorization: {self.authorization}\r\n"
            if self.authorization
            else f"Origin: http://127.0.0.1:{self.port}\r\nCookie: sessionid={self.session_key}\r\n"
        )
        request = (
            f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"{credentials}\r\n"
        )
        await loop.sock_sendall(sock, request.encode())
        head = b""
        while b"\r\n\r\n" not in head:  # the handshake's answer is the only thing ever read
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 1), 10)
            if not chunk:
                raise AssertionError("the server closed during the handshake")
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            raise AssertionError(f"handshake refused: {head[:80]!r}")
        self.sock, self._connected_at = sock, loop.time()

    @staticmethod
    def frame(text):
        """A masked text frame, as a browser sends it."""
        payload = text.encode()
        mask = os.urandom(4)
        header = bytes([0x81])
        if len(payload) < 126:
            header += bytes([0x80 | len(payload)])
        elif len(payload) < 65536:
            header += bytes([0x80 | 126]) + len(payload).to_bytes(2, "big")
        else:
            header += bytes([0x80 | 127]) + len(payload).to_bytes(8, "big")
        return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

    async def send(self, text):
        """Send one frame; False once the server has dropped the connection."""
        if self.dropped_after is not None:
            return False
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.sock_sendall(self.sock, self.frame(text)), 5)
        except (OSError, TimeoutError):
            self.dropped_after = loop.time() - self._connected_at
            return False
        self.sent += 1
        return True

    def close(self):
        if self.sock is not None:
            self.sock.close()


def http_login(base, login_path, username, password, forwarded_for=None):
    """A login through the real web process's login page (its CSRF token first): the response."""
    session = requests.Session()
    page = session.get(f"{base}{login_path}", timeout=10)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    return session.post(
        f"{base}{login_path}",
        data={"csrfmiddlewaretoken": token, "username": username, "password": password},
        headers={"X-Forwarded-For": forwarded_for} if forwarded_for else {},
        allow_redirects=False,
        timeout=30,
    )
