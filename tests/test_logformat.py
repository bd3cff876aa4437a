"""LOG_FORMAT=json (conferencesite/logformat.py) and request ids (conferencesite/middleware.py)."""

import json
import logging
import sys
from pathlib import Path

import pytest

from conferences.ari.lanes import Lanes
from conferencesite import logformat

ROOT = Path(__file__).resolve().parent.parent


def record(message, *args, exc_info=None, **extra):
    logger = logging.getLogger("conferences.test")
    made = logger.makeRecord(logger.name, logging.WARNING, __file__, 1, message, args, exc_info, extra=extra)
    return made


def test_a_record_is_one_line_of_json_with_its_fields():
    formatter = logformat.JsonFormatter()
    line = formatter.format(record("caller %s joined", 'Evil"\nINFO forged line\x1b[2J', room=7, channel="ch-1"))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == 'caller Evil"\nINFO forged line\x1b[2J joined'
    assert (entry["level"], entry["logger"], entry["room"], entry["channel"]) == (
        "WARNING",
        "conferences.test",
        7,
        "ch-1",
    )
    assert entry["time"].endswith("+00:00") and "request_id" not in entry


def test_fields_come_from_the_context_when_the_call_gives_none():
    formatter = logformat.JsonFormatter()
    tokens = [logformat.room.set(3), logformat.channel.set("ch-9"), logformat.request_id.set("abc")]
    try:
        entry = json.loads(formatter.format(record("x")))
        assert (entry["room"], entry["channel"], entry["request_id"]) == (3, "ch-9", "abc")
        assert json.loads(formatter.format(record("x", room=4)))["room"] == 4  # extra= wins
    finally:
        for variable, token in zip((logformat.room, logformat.channel, logformat.request_id), tokens, strict=True):
            variable.reset(token)
    try:
        raise ValueError("boom")
    except ValueError:
        entry = json.loads(formatter.format(record("failed", exc_info=sys.exc_info())))
    assert "ValueError: boom" in entry["exception"]


async def test_a_rooms_lane_names_its_room_in_every_log_line():
    seen = []

    async def handle(item):
        seen.append((item, logformat.room.get()))

    lanes = Lanes(handle)
    lanes.submit(42, "a")
    lanes.submit("server", "b")
    await lanes.drain()
    await lanes.close(1)
    assert sorted(seen, key=str) == [("a", 42), ("b", None)]
    assert logformat.room.get() is None  # set in the lane's task only


def test_log_format_json_makes_the_processes_log_json_lines(tmp_path, monkeypatch):
    from tests.stack import run_manage

    monkeypatch.delenv("LOG_FORMAT", raising=False)
    database = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    code = "import logging; logging.getLogger('conferences').warning('two\\nlines %s', 'here', extra={'room': 5})"
    result = run_manage("shell", "-c", code, LOG_FORMAT="json", DATABASE_URL=database)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert {"message": "two\nlines here", "room": 5, "level": "WARNING"}.items() <= lines[-1].items()
    # Plain text stays the default.
    result = run_manage("shell", "-c", code, DATABASE_URL=database)
    assert "WARNING conferences: two" in result.stderr


@pytest.mark.django_db
def test_every_response_carries_a_request_id_and_a_proxys_is_kept_when_it_looks_like_one(client):
    first, second = client.get("/accounts/login/"), client.get("/accounts/login/")
    assert len(first["X-Request-ID"]) == 32 and first["X-Request-ID"] != second["X-Request-ID"]
    assert client.get("/healthz", HTTP_X_REQUEST_ID="nginx-1234.5")["X-Request-ID"] == "nginx-1234.5"
    for hostile in ("a b", "x" * 65, "id\r\nSet-Cookie: a=b", "<script>"):
        assert client.get("/healthz", HTTP_X_REQUEST_ID=hostile)["X-Request-ID"] != hostile


async def test_what_a_request_does_carries_its_id_async_and_sync():
    from asgiref.sync import sync_to_async
    from django.http import HttpResponse
    from django.test import RequestFactory

    from conferencesite.middleware import RequestIdMiddleware

    seen = []

    async def async_view(request):
        seen.append(logformat.request_id.get())
        return HttpResponse("ok")

    def sync_view(request):
        seen.append(logformat.request_id.get())
        return HttpResponse("ok")

    response = await RequestIdMiddleware(async_view)(RequestFactory().get("/", HTTP_X_REQUEST_ID="req-77"))
    assert response["X-Request-ID"] == "req-77"
    sync_response = await sync_to_async(RequestIdMiddleware(sync_view))(RequestFactory().get("/"))
    assert seen == ["req-77", sync_response["X-Request-ID"]]
    assert logformat.request_id.get() is None  # not left behind for the next request
