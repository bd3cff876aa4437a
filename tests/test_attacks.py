"""The attacks of the security review, tried again against a running stack as an attacker would.

Real processes: daphne (``manage.py serve``, as the tests start it) and the ARI
worker, on this test's PostgreSQL database and the real Redis, with the
sandbox Asterisk for the phone side. Each attack below worked before; each
is now refused. Attacks with their own tests against real processes:
logins (tests/test_login_throttle.py, real daphne), clients that do not read
and the per-user socket cap (tests/test_slow_clients.py), hostile callers in
the worker (tests/test_worker_live.py).
"""

import asyncio
import json

import pytest
import websockets
from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import User
from django.db import connection

from conferences.models import AsteriskServer, Conference, ConferenceAccess
from tests.live import db
from tests.sockets import error_frame, refused
from tests.stack import Processes, base_env, database_url, make_sessions

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

# The web process checks every open socket this often (consumers.SESSION_CHECK_SECONDS).
CHECK_PERIOD = 30


def _raw(sql, params):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


class Page:
    """A browser tab on a room, over a real WebSocket to daphne."""

    def __init__(self, port, slug, session_key, path=None):
        self.url = f"ws://127.0.0.1:{port}{path or f'/ws/conferences/{slug}/'}"
        self.headers = {"Cookie": f"sessionid={session_key}", "Origin": f"http://127.0.0.1:{port}"}
        self.ws = None

    async def open(self):
        self.ws = await websockets.connect(self.url, additional_headers=self.headers, max_size=2**24)
        return self

    async def frame(self, timeout=5):
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout))

    async def ask(self, payload):
        await self.ws.send(payload if isinstance(payload, str) else json.dumps(payload))
        return await self.frame()

    async def closed_with(self, timeout):
        """The close code the server sends within ``timeout`` seconds (frames before it are skipped)."""
        try:
            async with asyncio.timeout(timeout):
                async for _ in self.ws:
                    pass
        except TimeoutError:
            return None
        except websockets.ConnectionClosed:
            pass  # any code but 1000
        return self.ws.close_code


@pytest.fixture
async def stack(tmp_path, redis_url):
    processes = Processes(base_env(database_url(), redis_url), "attack-pbx", tmp_path)
    processes.start_web()
    await processes.web_up()
    yield processes
    processes.close()


def web_log(tmp_path):
    return "".join(path.read_text() for path in tmp_path.glob("web-*.log"))


def seed():
    server = AsteriskServer.objects.create(
        name="attack-pbx", ari_url="http://127.0.0.1:9/ari", username="u", password="p", connected=True
    )
    room = Conference.objects.create(server=server, number="800", slug="attacked", name="Attacked")
    users = {}
    for name, role in (("viewer", "viewer"), ("moderator", "moderator"), ("revoked", "viewer"), ("target", "viewer")):
        users[name] = User.objects.create_user(username=f"attack-{name}", password="pw-Tr0ub4dor")
        ConferenceAccess.objects.create(conference=room, user=users[name], role=role)
    sessions = {name: make_sessions(user, 1)[0] for name, user in users.items()}
    return room, users, sessions


async def test_hostile_frames_and_unknown_paths_do_not_kill_sockets(stack, tmp_path):
    room, _users, sessions = await db(seed)()
    page = await Page(stack.port, room.slug, sessions["moderator"]).open()
    assert (await page.frame())["type"] == "snapshot"
    # The 4 KB frame that raised RecursionError and ended the socket with 1011.
    assert await page.ask("[" * 2048 + "]" * 2048) == error_frame("message too deeply nested")
    assert await page.ask('{"action": "mute", "request_id": "\\ud800", "participant": 1}') == error_frame(
        "request_id missing or invalid"
    )
    reply = await page.ask('{"action": "kick", "request_id": "k", "participant": ' + "9" * 300 + "}")
    assert reply == refused("k", "participant missing or invalid")
    assert (await page.ask({"action": "resync", "request_id": "still-here"}))["type"] == "snapshot"
    # A path that is no socket of ours: closed with 4404, no traceback in the web log.
    stray = await Page(stack.port, None, sessions["viewer"], path="/ws/nothing-here/").open()
    assert await stray.closed_with(5) == 4404
    await page.ws.close()
    log = web_log(tmp_path)
    assert "Traceback" not in log and "Exception inside application" not in log


async def test_revocations_without_signals_end_open_sockets_within_the_check_period(stack):
    room, users, sessions = await db(seed)()
    victim_page = await Page(stack.port, room.slug, sessions["viewer"]).open()
    revoked_page = await Page(stack.port, room.slug, sessions["revoked"]).open()
    moderator_page = await Page(stack.port, room.slug, sessions["moderator"]).open()
    untouched = await Page(stack.port, room.slug, sessions["target"]).open()
    for page in (victim_page, revoked_page, moderator_page, untouched):
        assert (await page.frame())["type"] == "snapshot"
    # A password set by a script; a grant deleted by a sync job; a role lowered by an import.
    await db(User.objects.filter(pk=users["viewer"].pk).update)(password=make_password("changed-Pa55"))
    table = ConferenceAccess._meta.db_table
    await db(_raw)(f"DELETE FROM {table} WHERE user_id = %s", [users["revoked"].pk])  # noqa: S608
    await db(ConferenceAccess.objects.filter(user=users["moderator"]).update)(role="viewer")
    # At once: the lowered moderator may no longer act.
    reply = await moderator_page.ask({"action": "lock", "request_id": "l"})
    assert reply == refused("l", "you may not moderate this room")
    codes = await asyncio.gather(victim_page.closed_with(CHECK_PERIOD + 5), revoked_page.closed_with(CHECK_PERIOD + 5))
    assert codes == [4401, 4403]
    # The lowered moderator's page got a snapshot without its controls, and stays open.
    snapshot = await moderator_page.frame(timeout=CHECK_PERIOD + 5)
    assert snapshot["type"] == "snapshot" and snapshot["can_moderate"] is False
    # Nobody else was touched.
    assert (await untouched.ask({"action": "resync", "request_id": "ok"}))["type"] == "snapshot"
    for page in (moderator_page, untouched):
        await page.ws.close()
