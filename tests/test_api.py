"""The REST API under /api/v1/: who may call it, what it shows, what it refuses, and its OpenAPI document.

Requests go through Django's ASGI request path (``AsyncClient``), so the async
views run as they do under ``manage.py serve``. The worker is a stand-in on
the in-memory channel layer: it answers like the real one and records what
reached it (tests/test_api_live.py does the same against the real worker).
"""

import asyncio
import json
import logging
import sys
from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import sync_to_async
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.middleware.csrf import _get_new_csrf_string, _mask_cipher_secret
from django.test import AsyncClient
from django.utils import timezone
from openapi_spec_validator import validate

from conferences import moderation, tokens
from conferences.api import rooms as api_rooms
from conferences.models import (
    ApiToken,
    ConferenceAccess,
    ConferenceEvent,
    Invite,
    Meeting,
    Participant,
    Recording,
)

pytestmark = pytest.mark.django_db(transaction=True)

db = sync_to_async
MODERATE, READ = ApiToken.Scope.MODERATE, ApiToken.Scope.READ
MODERATOR, VIEWER = ConferenceAccess.Role.MODERATOR, ConferenceAccess.Role.VIEWER


@pytest.fixture(autouse=True)
def _own_cache_and_layer(own_cache, fresh_layer):
    """Throttle counts of this test's own; a fresh in-memory channel layer."""


@pytest.fixture
def owner(make_user):
    return make_user("integrator")


@pytest.fixture
def room(conference, owner, grant):
    conference.server.connected = True
    conference.server.save(update_fields=["connected"])
    grant(conference, user=owner, role=MODERATOR)
    return conference


@pytest.fixture
def token(owner):
    def make(scope=MODERATE, **fields):
        return tokens.create(user=owner, name=fields.pop("name", "crm"), scope=scope, **fields)[1]

    return make


def bearer(raw):
    return {"Authorization": f"Bearer {raw}"}


async def get(path, raw=None, **extra):
    return await AsyncClient().get(f"/api/v1{path}", headers=bearer(raw) if raw else {}, **extra)


async def post(path, raw=None, body=None, **extra):
    data = json.dumps(body) if body is not None else ""
    return await AsyncClient().post(
        f"/api/v1{path}", data=data, content_type="application/json", headers=bearer(raw) if raw else {}, **extra
    )


class FakeWorker:
    """Listens on a server's worker channel, keeps every request and answers ``reply``."""

    def __init__(self, layer, server_id, reply=(True, None)):
        self.layer, self.channel, self.reply = layer, moderation.worker_channel(server_id), reply
        self.requests = []

    async def __aenter__(self):
        self.task = asyncio.create_task(self._serve())
        return self

    async def __aexit__(self, *exc):
        self.task.cancel()

    async def _serve(self):
        while True:
            request = await self.layer.receive(self.channel)
            self.requests.append(request)
            ok, error = self.reply
            await self.layer.send(request["reply_channel"], {"type": moderation.REPLY_TYPE, "ok": ok, "error": error})


# --- authentication -------------------------------------------------------------------


async def test_no_credentials_is_401_json(room):
    response = await get("/rooms")
    assert response.status_code == 401
    assert response.json()["error"].startswith("send an API token")
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "header",
    ["Bearer cfp_not-a-real-token", "Bearer nonsense", "Bearer " + "cfp_" + "x" * 200, "Token cfp_abc", "Bearer"],
)
async def test_a_bad_token_or_header_is_401(room, header):
    response = await AsyncClient().get("/api/v1/rooms", headers={"Authorization": header})
    assert response.status_code == 401
    assert set(response.json()) == {"error", "error_text"}


async def test_expired_revoked_and_disabled_owners_tokens_are_401(room, owner, token):
    expired = await db(token)(expires_at=timezone.now() - timedelta(seconds=1))
    revoked = await db(token)(name="revoked")
    await db(ApiToken.objects.filter(name="revoked").update)(revoked=True)
    assert (await get("/rooms", expired)).status_code == 401
    assert (await get("/rooms", revoked)).status_code == 401

    live = await db(token)()
    assert (await get("/rooms", live)).status_code == 200
    owner.is_active = False
    await db(owner.save)()
    response = await get("/rooms", live)
    assert response.status_code == 401 and "not valid" in response.json()["error"]


async def test_a_token_is_noted_as_used(room, token):
    raw = await db(token)()
    await get("/rooms", raw)
    assert (await db(ApiToken.objects.get)()).last_used_at is not None


async def test_tokens_never_reach_the_logs(room, token, settings, caplog):
    settings.DEBUG = True  # ninja's own bearer auth logs a bad header in DEBUG
    raw = await db(token)()
    with caplog.at_level(logging.DEBUG):
        await get("/rooms", raw)
        await AsyncClient().get("/api/v1/rooms", headers={"Authorization": f"Token {raw}"})
        await get("/rooms", raw + "x")
        await post(f"/rooms/{room.slug}/actions/kick", raw, {"participant": 10**6})
    assert raw not in caplog.text and raw[:12] not in caplog.text


# --- sessions and CSRF ----------------------------------------------------------------


async def _logged_in(owner, *, csrf=True):
    client = AsyncClient(enforce_csrf_checks=True)
    await client.aforce_login(owner)
    headers = {}
    if csrf:
        secret = _get_new_csrf_string()
        client.cookies["csrftoken"] = secret
        headers["X-CSRFToken"] = _mask_cipher_secret(secret)
    return client, headers


async def test_a_logged_in_browser_reads_without_a_token(room, owner):
    client, _headers = await _logged_in(owner, csrf=False)
    response = await client.get("/api/v1/rooms")
    assert response.status_code == 200 and [r["slug"] for r in response.json()] == [room.slug]


async def test_a_session_post_without_csrf_is_403_and_reaches_no_worker(room, owner, fresh_layer):
    client, _headers = await _logged_in(owner, csrf=False)
    async with FakeWorker(fresh_layer, room.server_id) as worker:
        response = await client.post(f"/api/v1/rooms/{room.slug}/actions/lock", content_type="application/json")
        await asyncio.sleep(0.1)
    assert response.status_code == 403 and response.json()["error"].startswith("CSRF check failed")
    assert worker.requests == []


async def test_a_session_post_with_csrf_acts_as_the_user(room, owner, fresh_layer):
    client, headers = await _logged_in(owner)
    async with FakeWorker(fresh_layer, room.server_id) as worker:
        response = await client.post(
            f"/api/v1/rooms/{room.slug}/actions/lock", content_type="application/json", headers=headers
        )
    assert response.status_code == 200 and response.json() == {"ok": True}
    [request] = worker.requests
    assert (request["action"], request["actor_id"], request["via"]) == ("lock", owner.pk, None)


async def test_a_token_request_needs_no_csrf_even_with_a_session_cookie(room, owner, token, fresh_layer):
    raw = await db(token)()
    client, _headers = await _logged_in(owner, csrf=False)
    async with FakeWorker(fresh_layer, room.server_id) as worker:
        response = await client.post(
            f"/api/v1/rooms/{room.slug}/actions/lock", content_type="application/json", headers=bearer(raw)
        )
    assert response.status_code == 200
    assert worker.requests[0]["via"] == "crm"


# --- scope and rooms ------------------------------------------------------------------


async def test_a_read_only_token_cannot_kick_and_nothing_reaches_the_worker(room, token, make_participant, fresh_layer):
    raw = await db(token)(scope=READ)
    caller = await db(make_participant)(room)
    async with FakeWorker(fresh_layer, room.server_id) as worker:
        response = await post(f"/rooms/{room.slug}/actions/kick", raw, {"participant": caller.pk})
        await asyncio.sleep(0.1)
    assert response.status_code == 403
    assert response.json()["error"] == "you may not moderate this room"
    assert worker.requests == []
    # It still reads the room, and is told it may not moderate.
    detail = await get(f"/rooms/{room.slug}", raw)
    assert detail.status_code == 200 and detail.json()["can_moderate"] is False


async def test_a_moderate_token_of_a_viewer_only_views(room, owner, token, make_conference, grant, fresh_layer):
    other = await db(make_conference)("200", slug="support")
    await db(grant)(other, user=owner, role=VIEWER)
    raw = await db(token)(scope=MODERATE)
    async with FakeWorker(fresh_layer, room.server_id) as worker:
        response = await post(f"/rooms/{other.slug}/actions/lock", raw)
    assert response.status_code == 403 and worker.requests == []


async def test_a_token_limited_to_one_room_gets_404_for_the_others(room, owner, token, make_conference, grant):
    other = await db(make_conference)("200", slug="support")
    await db(grant)(other, user=owner, role=MODERATOR)
    raw = await db(token)(conferences=[room])
    listed = await get("/rooms", raw)
    assert [r["slug"] for r in listed.json()] == [room.slug]
    for path in ("", "/participants", "/invites", "/history", "/attendance", "/recordings"):
        response = await get(f"/rooms/{other.slug}{path}", raw)
        assert response.status_code == 404 and response.json()["error"] == "no such room", path
    refused = await post(f"/rooms/{other.slug}/actions/lock", raw)
    assert refused.status_code == 404
    # The same answer as for a room that does not exist: nothing is leaked.
    assert (await get("/rooms/no-such-room", raw)).json() == (await get(f"/rooms/{other.slug}", raw)).json()


async def test_a_room_the_owner_may_not_see_is_404(room, token, make_conference):
    hidden = await db(make_conference)("300", slug="board")
    raw = await db(token)()
    assert (await get(f"/rooms/{hidden.slug}", raw)).status_code == 404


# --- what is read -------------------------------------------------------------------------


async def test_room_detail_is_the_sockets_snapshot(room, token, make_participant):
    raw = await db(token)()
    present = await db(make_participant)(room, caller_name="Alice", caller_number="201", muted=True)
    waiting = await db(make_participant)(
        room, caller_name="Bob", status=Participant.Status.WAITING, waiting_for=Participant.WaitingFor.LOBBY
    )
    await db(make_participant)(room, caller_name="Gone", left_at=timezone.now(), left_reason="hangup")
    await db(Invite.objects.create)(
        conference=room, number="7001", status=Invite.Status.RINGING, created_at=timezone.now()
    )
    detail = (await get(f"/rooms/{room.slug}", raw)).json()
    assert detail["conference"]["slug"] == room.slug
    assert detail["conference"]["participant_count"] == 1 and detail["conference"]["waiting_count"] == 1
    assert {p["id"]: p["status"] for p in detail["participants"]} == {present.pk: "present", waiting.pk: "waiting"}
    alice = next(p for p in detail["participants"] if p["id"] == present.pk)
    assert alice["muted"] is True and alice["caller_name"] == "Alice" and "channel_id" not in alice
    assert [i["number"] for i in detail["invites"]] == ["7001"]
    assert detail["asterisk"] == {"connected": True} and detail["can_moderate"] is True
    assert isinstance(detail["seq"], int)

    rooms = (await get("/rooms", raw)).json()
    assert rooms[0]["participant_count"] == 1 and rooms[0]["waiting_count"] == 1
    everyone = (await get(f"/rooms/{room.slug}/participants", raw)).json()["participants"]
    assert len(everyone) == 2
    only_waiting = (await get(f"/rooms/{room.slug}/participants?status=waiting", raw)).json()["participants"]
    assert [p["id"] for p in only_waiting] == [waiting.pk]
    invites = (await get(f"/rooms/{room.slug}/invites", raw)).json()["invites"]
    assert [i["status"] for i in invites] == ["ringing"]


def _events(room, days):
    made = []
    for day in days:
        for minute in range(3):
            made.append(
                ConferenceEvent.objects.create(
                    conference=room, kind=ConferenceEvent.Kind.LOCKED, created_at=day + timedelta(minutes=minute)
                )
            )
    return made


async def test_history_is_paged_by_cursor_and_filtered_by_date(room, token):
    raw = await db(token)()
    first, second, third = (datetime(2026, 11, day, 12, tzinfo=UTC) for day in (1, 2, 3))
    made = await db(_events)(room, [first, second, third])

    page = (await get(f"/rooms/{room.slug}/history?limit=4", raw)).json()
    assert [e["id"] for e in page["events"]] == [e.pk for e in made[::-1][:4]]
    assert page["newer"] is None and page["older"]
    assert page["events"][0]["kind"] == "locked" and page["events"][0]["text"]
    rest = (await get(f"/rooms/{room.slug}/history?limit=4&before={page['older']}", raw)).json()
    assert [e["id"] for e in rest["events"]] == [e.pk for e in made[::-1][4:8]]
    back = (await get(f"/rooms/{room.slug}/history?limit=4&after={rest['newer']}", raw)).json()
    assert [e["id"] for e in back["events"]] == [e["id"] for e in page["events"]]

    one_day = (await get(f"/rooms/{room.slug}/history?from=2026-11-02&to=2026-11-02", raw)).json()
    assert [e["id"] for e in one_day["events"]] == [e.pk for e in made[3:6][::-1]]
    since = (await get(f"/rooms/{room.slug}/history?from=2026-11-03", raw)).json()
    assert len(since["events"]) == 3 and since["older"] is None


async def test_history_refuses_bad_cursors_dates_and_limits(room, token):
    raw = await db(token)()
    for query, status in [
        ("before=nonsense", 400),
        ("before=1.1&after=1.1", 400),
        ("from=2026-11-03&to=2026-11-01", 400),
        ("from=yesterday", 422),
        ("limit=0", 422),
        ("limit=100000", 422),
    ]:
        response = await get(f"/rooms/{room.slug}/history?{query}", raw)
        assert response.status_code == status, query
        assert "error" in response.json(), query


async def test_history_names_the_actor_and_the_token(room, owner, token, make_participant):
    raw = await db(token)()
    caller = await db(make_participant)(room, caller_name="Alice")
    await db(ConferenceEvent.objects.create)(
        conference=room,
        participant=caller,
        actor=owner,
        kind=ConferenceEvent.Kind.MUTED,
        created_at=timezone.now(),
        details={"token": "crm"},
    )
    [event] = (await get(f"/rooms/{room.slug}/history", raw)).json()["events"]
    assert event["actor"] == owner.username and event["details"] == {"token": "crm"}
    assert event["participant"]["caller_name"] == "Alice"


def _meetings(room, make_participant):
    made = []
    for day in (1, 2, 3):
        start = datetime(2026, 11, day, 12, tzinfo=UTC)
        meeting = Meeting.objects.create(conference=room, started_at=start, ended_at=start + timedelta(hours=1))
        for number, minutes in (("201", 60), ("202", 30)):
            make_participant(
                room,
                meeting=meeting,
                caller_number=number,
                caller_name=f"Caller {number}",
                joined_at=start,
                left_at=start + timedelta(minutes=minutes),
                left_reason="hangup",
                talk_seconds=12.5,
            )
        made.append(meeting)
    return made


async def test_attendance_lists_meetings_with_their_attendees_paged_and_by_date(room, token, make_participant):
    raw = await db(token)()
    first, second, third = await db(_meetings)(room, make_participant)
    page = (await get(f"/rooms/{room.slug}/attendance?limit=2", raw)).json()
    assert [m["id"] for m in page["meetings"]] == [third.pk, second.pk] and page["older"]
    meeting = page["meetings"][0]
    assert meeting["duration_seconds"] == 3600 and meeting["ongoing"] is False
    assert [(a["caller_number"], a["present_seconds"], a["talked_seconds"]) for a in meeting["attendees"]] == [
        ("201", 3600, 12.5),
        ("202", 1800, 12.5),
    ]
    older = (await get(f"/rooms/{room.slug}/attendance?limit=2&before={page['older']}", raw)).json()
    assert [m["id"] for m in older["meetings"]] == [first.pk]
    one_day = (await get(f"/rooms/{room.slug}/attendance?from=2026-11-02&to=2026-11-02", raw)).json()
    assert [m["id"] for m in one_day["meetings"]] == [second.pk]


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path)
    return tmp_path


def _stored(room, body):
    name = default_storage.save("recordings/2026/12/api-test.wav", ContentFile(body))
    return Recording.objects.create(
        conference=room,
        name=f"api-{room.pk}",
        started_at=timezone.now(),
        state=Recording.State.STORED,
        file=name,
        size=len(body),
        duration=3.0,
    )


async def test_recordings_are_listed_and_downloaded_by_who_may(room, owner, token, media):
    body = bytes(range(256)) * 8
    recording = await db(_stored)(room, body)
    raw = await db(token)()
    listed = (await get(f"/rooms/{room.slug}/recordings", raw)).json()["recordings"]
    assert [r["id"] for r in listed] == [recording.pk]
    url = listed[0]["download_url"]
    assert url == f"/api/v1/rooms/{room.slug}/recordings/{recording.pk}/download"
    whole = await AsyncClient().get(url, headers=bearer(raw))
    assert whole.status_code == 200 and b"".join([c async for c in whole.streaming_content]) == body
    part = await AsyncClient().get(url, headers={**bearer(raw), "Range": "bytes=10-19"})
    assert part.status_code == 206 and b"".join([c async for c in part.streaming_content]) == body[10:20]

    # A read-only token is at most a viewer: moderators-only downloads are refused to it.
    reader = await db(token)(scope=READ, name="reader")
    listed = (await get(f"/rooms/{room.slug}/recordings", reader)).json()["recordings"]
    assert listed[0]["download_url"] is None
    refused = await AsyncClient().get(url, headers=bearer(reader))
    assert refused.status_code == 403 and refused.json()["error"] == "you may not download this room's recordings"
    missing = await get(f"/rooms/{room.slug}/recordings/{recording.pk + 1}/download", raw)
    assert missing.status_code == 404 and missing.json()["error"] == "no such recording"


# --- actions ----------------------------------------------------------------------------------


async def test_a_moderate_token_acts_through_the_worker_with_its_name(
    room, owner, token, make_participant, fresh_layer
):
    raw = await db(token)()
    caller = await db(make_participant)(room)
    async with FakeWorker(fresh_layer, room.server_id) as worker:
        muted = await post(f"/rooms/{room.slug}/actions/mute", raw, {"participant": caller.pk})
        invited = await post(f"/rooms/{room.slug}/actions/invite", raw, {"number": "7001"})
        locked = await post(f"/rooms/{room.slug}/actions/lock", raw)
    assert [r.status_code for r in (muted, invited, locked)] == [200, 200, 200]
    mute, invite, lock = worker.requests
    assert (mute["action"], mute["participant_id"], mute["actor_id"], mute["via"]) == (
        "mute",
        caller.pk,
        owner.pk,
        "crm",
    )
    assert (mute["conference_id"], invite["number"], lock["participant_id"]) == (room.pk, "7001", None)


async def test_a_participant_of_another_room_is_refused_as_on_the_page(
    room, token, make_conference, make_participant, fresh_layer
):
    other = await db(make_conference)("200", slug="support")
    stranger = await db(make_participant)(other)
    raw = await db(token)()
    async with FakeWorker(fresh_layer, room.server_id) as worker:
        response = await post(f"/rooms/{room.slug}/actions/kick", raw, {"participant": stranger.pk})
        waiting = await post(f"/rooms/{room.slug}/actions/admit", raw, {"participant": stranger.pk})
        await asyncio.sleep(0.1)
    assert response.status_code == 404 and response.json()["error"] == "no such participant in this room"
    assert waiting.status_code == 404 and waiting.json()["error"] == "no such waiting caller in this room"
    assert worker.requests == []


async def test_the_workers_refusal_is_the_pages_error(room, token, fresh_layer):
    raw = await db(token)()
    async with FakeWorker(fresh_layer, room.server_id, reply=(False, "the room is not being recorded")):
        response = await post(f"/rooms/{room.slug}/actions/record_stop", raw)
    assert response.status_code == 409
    assert response.json()["error"] == "the room is not being recorded"


async def test_asterisk_down_is_503(room, token):
    room.server.connected = False
    await db(room.server.save)()
    raw = await db(token)()
    response = await post(f"/rooms/{room.slug}/actions/lock", raw)
    assert response.status_code == 503 and response.json()["error"] == "the link to Asterisk is down"


async def test_a_worker_that_does_not_answer_is_503(room, token, monkeypatch):
    raw = await db(token)()
    original = moderation.request

    async def quick(**fields):
        return await original(**fields, timeout=0.2)

    monkeypatch.setattr(moderation, "request", quick)
    response = await post(f"/rooms/{room.slug}/actions/lock", raw)
    assert response.status_code == 503 and response.json()["error"] == moderation.WORKER_DOWN


async def test_bad_input_is_answered_with_json_errors(room, token, make_participant):
    raw = await db(token)()
    caller = await db(make_participant)(room)
    client = AsyncClient()
    path = f"/api/v1/rooms/{room.slug}/actions"
    headers = bearer(raw)
    cases = [
        ("mute", "{not json", 400, "the body is not a JSON object"),
        ("mute", "[1, 2]", 422, None),
        ("mute", json.dumps({"participant": str(caller.pk)}), 422, "invalid input"),
        ("mute", json.dumps({"participant": True}), 422, "invalid input"),
        ("mute", json.dumps({"participant": 1.5}), 422, "invalid input"),
        ("mute", json.dumps({"participant": 2**70}), 422, "invalid input"),
        ("mute", json.dumps({"participant": caller.pk, "extra": 1}), 422, "invalid input"),
        ("mute", json.dumps({}), 400, "participant missing or invalid"),
        ("invite", json.dumps({"number": "1" * 65}), 422, "invalid input"),
        ("explode", json.dumps({}), 404, "unknown action"),
    ]
    for action, data, status, error in cases:
        response = await client.post(f"{path}/{action}", data=data, content_type="application/json", headers=headers)
        answer = response.json()
        assert response.status_code == status, (action, data, answer)
        assert "error" in answer and "Traceback" not in response.content.decode(), data
        if error:
            assert answer["error"] == error, data
    assert (await client.get("/api/v1/no/such/path", headers=headers)).json()["error"] == "no such API path"
    huge = await client.post(
        f"{path}/invite", data=json.dumps({"number": "1" * 3_000_000}), content_type="application/json", headers=headers
    )
    assert (huge.status_code, huge.json()["error"]) == (413, "the body is too large")


async def test_a_failure_is_a_json_500_without_a_stack_trace(room, token, settings, monkeypatch):
    settings.DEBUG = True  # ninja answers a stack trace in DEBUG unless told otherwise
    raw = await db(token)()

    def broken(caller):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(api_rooms, "_rooms", broken)
    response = await get("/rooms", raw)
    assert response.status_code == 500
    assert response.json()["error"] == "the request failed; try again"
    assert "secret internals" not in response.content.decode()


# --- throttle ---------------------------------------------------------------------------------


async def test_requests_over_the_limit_get_429_with_retry_after(room, owner, token, settings):
    settings.API_RATE_LIMIT, settings.API_RATE_WINDOW = 3, 3600
    raw, other = await db(token)(), await db(token)(name="other")
    assert [(await get("/rooms", raw)).status_code for _ in range(3)] == [200, 200, 200]
    refused = await get("/rooms", raw)
    assert refused.status_code == 429 and refused.json()["error"] == "too many requests; slow down"
    assert 1 <= int(refused["Retry-After"]) <= 3600 and refused.json()["retry_after"] == int(refused["Retry-After"])
    # Per token: another token of the same owner has its own count; a session user too.
    assert (await get("/rooms", other)).status_code == 200
    client, _headers = await _logged_in(owner, csrf=False)
    assert (await client.get("/api/v1/rooms")).status_code == 200


def test_the_throttle_window_ends_on_the_clock(settings, own_cache):
    from conferences.api import auth

    settings.API_RATE_LIMIT, settings.API_RATE_WINDOW = 2, 60
    assert auth.take("k", now=120.0) is None and auth.take("k", now=130.0) is None
    assert auth.take("k", now=150.5) == 30  # the window is [120, 180)
    assert auth.take("k", now=180.0) is None  # a new window


# --- the document -----------------------------------------------------------------------------


async def test_the_openapi_document_validates_and_names_every_action(db):
    response = await AsyncClient().get("/api/v1/openapi.json")
    assert response.status_code == 200
    document = response.json()
    validate(document)
    action = document["paths"]["/api/v1/rooms/{slug}/actions/{action}"]["post"]
    [parameter] = [p for p in action["parameters"] if p["name"] == "action"]
    assert parameter["schema"]["enum"] == list(moderation.ACTIONS)
    assert set(document["components"]["securitySchemes"]) == {"TokenAuth", "SessionAuth"}
    docs = await AsyncClient().get("/api/v1/docs")
    assert docs.status_code == 200 and b"cdn" not in docs.content.lower()


# --- no thread waits for the worker -----------------------------------------------------------


def _http_scope(path, raw):
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"localhost"), (b"authorization", f"Bearer {raw}".encode())],
        "server": ("localhost", 80),
        "client": ("127.0.0.1", 40000),
    }


def _threads_waiting_in_async_to_sync():
    """How many threads are blocked in asgiref's ``AsyncToSync`` (sync code waiting for a coroutine)."""
    count = 0
    for frame in sys._current_frames().values():
        while frame is not None:
            code = frame.f_code
            if code.co_name == "__call__" and type(frame.f_locals.get("self")).__name__ == "AsyncToSync":
                count += 1
                break
            frame = frame.f_back
    return count


async def test_actions_waiting_for_the_worker_hold_no_thread(room, token, fresh_layer):
    from asgiref.testing import ApplicationCommunicator
    from django.core.handlers.asgi import ASGIHandler

    raw = await db(token)()
    threads_while_waiting = []

    async def slow_worker():
        channel = moderation.worker_channel(room.server_id)
        while True:
            request = await fresh_layer.receive(channel)
            threads_while_waiting.append(_threads_waiting_in_async_to_sync())

            async def answer(request=request):
                await asyncio.sleep(1)
                await fresh_layer.send(request["reply_channel"], {"type": moderation.REPLY_TYPE, "ok": True})

            asyncio.create_task(answer())

    async def one(app):
        communicator = ApplicationCommunicator(app, _http_scope(f"/api/v1/rooms/{room.slug}/actions/lock", raw))
        await communicator.send_input({"type": "http.request", "body": b""})
        start = await communicator.receive_output(20)
        await communicator.receive_output(20)
        return start["status"]

    worker = asyncio.create_task(slow_worker())
    try:
        statuses = await asyncio.gather(*(one(ASGIHandler()) for _ in range(10)))
    finally:
        worker.cancel()
    assert statuses == [200] * 10
    # Ten requests waited for the worker at once, and no thread waited with them.
    assert max(threads_while_waiting) == 0, threads_while_waiting
