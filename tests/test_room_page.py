"""The live room page: its markup, the json config for room.js, and room.js's own Node tests."""

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conferences.models import ConferenceAccess

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent
URL = "/conferences/sales/"


def _config(response):
    pattern = r'<script id="room-config" type="application/json">(.*?)</script>'
    match = re.search(pattern, response.content.decode(), re.S)
    assert match, "the json_script config is missing"
    return json.loads(match.group(1))


@pytest.fixture
def viewer(conference, make_user, grant):
    user = make_user()
    grant(conference, user=user)
    return user


@pytest.fixture
def moderator(conference, make_user, grant):
    user = make_user()
    grant(conference, user=user, role=ConferenceAccess.Role.MODERATOR)
    return user


def test_viewer_page_has_config_and_no_controls(client, conference, viewer, make_participant):
    make_participant(conference, caller_name="Alice", caller_number="201")
    client.force_login(viewer)
    response = client.get(URL)
    assert response.status_code == 200
    content = response.content.decode()
    config = _config(response)
    assert config["ws_path"] == "/ws/conferences/sales/"
    assert config["slug"] == "sales"
    assert config["can_moderate"] is False
    assert config["strings"]["event_joined"] == "%(name)s joined"
    assert "errors" not in config  # the server sends each error in the page's language (protocol.py)
    assert response.context["can_moderate"] is False
    assert "data-action=" not in content
    assert 'data-role="count">1<' in content
    assert "Alice" in content and 'data-participant-id="' in content
    assert 'src="/static/conferences/room.js"' in content and "defer" in content
    assert 'href="/static/conferences/room.css"' in content


def test_moderator_page_has_room_controls(client, conference, moderator):
    client.force_login(moderator)
    response = client.get(URL)
    assert response.status_code == 200
    assert _config(response)["can_moderate"] is True
    content = response.content.decode()
    for action in ("mute_all", "unmute_all", "lock"):
        assert f'data-action="{action}"' in content
    assert 'data-role="room-controls"' in content


def test_locked_room_offers_unlock(client, conference, superuser):
    conference.locked = True
    conference.save()
    client.force_login(superuser)
    content = client.get(URL).content.decode()
    assert 'data-action="unlock"' in content and 'data-action="lock"' not in content
    assert re.search(r'data-role="locked"(?! hidden)', content)


def test_hooks_for_browser_tests(client, conference, superuser):
    client.force_login(superuser)
    content = client.get(URL).content.decode()
    for role in (
        "count",
        "asterisk-status",
        "socket-status",
        "timeline",
        "message",
        "room-controls",
        "roster-body",
        "announcer",
    ):
        assert f'data-role="{role}"' in content, role
    assert re.search(r'aria-live="polite"[^>]*data-role="announcer"', content)


def test_the_timeline_opens_with_the_rooms_last_stored_events(client, conference, viewer, make_participant):
    """Four people in the room: the page says what happened, not "No events yet." (newest first, escaped)."""
    from datetime import timedelta

    from django.utils import timezone

    from conferences.models import ConferenceEvent
    from conferences.views import RECENT_EVENTS

    start = timezone.now() - timedelta(hours=1)
    alice = make_participant(conference, caller_name="<b>Alice</b>", caller_number="201")
    for minute in range(RECENT_EVENTS + 5):
        kind = ConferenceEvent.Kind.JOINED if minute % 2 else ConferenceEvent.Kind.HAND_RAISED
        ConferenceEvent.objects.create(
            conference=conference, participant=alice, kind=kind, created_at=start + timedelta(minutes=minute)
        )
    client.force_login(viewer)
    content = client.get(URL).content.decode()
    items = re.findall(r'<li class="timeline-item" data-kind="(\w+)" data-stored="true">.*?</li>', content, re.S)
    assert len(items) == RECENT_EVENTS
    assert items[:2] == ["hand_raised", "joined"]  # the newest (minute 24, then 23) first
    assert "&lt;b&gt;Alice&lt;/b&gt; (201) raised the hand (keypad)" in content
    assert "<b>Alice</b>" not in content
    assert re.search(r'data-role="timeline-empty" hidden>', content)


def test_an_empty_room_history_says_so(client, conference, viewer):
    client.force_login(viewer)
    content = client.get(URL).content.decode()
    assert re.search(r'data-role="timeline-empty">No events yet.</p>', content)
    assert 'data-stored="true"' not in content


def test_hostile_caller_name_is_escaped(client, conference, superuser, make_participant):
    make_participant(conference, caller_name='<img src=x onerror="alert(1)">', caller_number='"><script>x</script>')
    client.force_login(superuser)
    content = client.get(URL).content.decode()
    assert "<img src=x" not in content
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in content
    assert "<script>x</script>" not in content


def test_no_inline_script_or_handlers(client, conference, superuser, make_participant):
    make_participant(conference, caller_name="Bob")
    client.force_login(superuser)
    content = client.get(URL).content.decode()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", content, re.S)
    assert scripts
    for attributes, body in scripts:
        if 'id="room-config"' in attributes:
            assert 'type="application/json"' in attributes
            json.loads(body)
        else:
            assert "src=" in attributes and body.strip() == "", attributes
    assert not re.search(r"\son[a-z]+\s*=", content, re.I)
    assert "javascript:" not in content.lower()


def test_history_link_only_when_the_url_exists(client, conference, superuser):
    from django.urls import NoReverseMatch, reverse

    client.force_login(superuser)
    content = client.get(URL).content.decode()
    try:
        history = reverse("conference-history", args=["sales"])
    except NoReverseMatch:
        assert 'data-role="history-link"' not in content
    else:
        assert f'href="{history}"' in content


def test_access_rules_unchanged(client, conference, make_user):
    client.force_login(make_user())
    assert client.get(URL).status_code == 403
    assert client.get("/conferences/nope/").status_code == 404


def test_russian_page_sends_translated_config(client, conference, superuser):
    client.force_login(superuser)
    response = client.get(URL, headers={"accept-language": "ru"})
    assert response.status_code == 200
    assert '<html lang="ru">' in response.content.decode()
    config = _config(response)
    assert config["strings"]["muted"] != "muted"  # an existing catalogue entry


def test_no_protocol_error_text_or_close_code_is_typed_under_static(client, conference, viewer):
    """Every error a page shows comes from the server, translated (conferences/protocol.py); close codes too."""
    from conferences import protocol

    scripts = "\n".join(path.read_text() for path in (ROOT / "static").rglob("*.js"))
    for error in protocol.ERRORS:
        assert error not in scripts, error
    assert "could not be changed" not in scripts
    for name in dir(protocol):
        code = getattr(protocol, name)
        if isinstance(code, int) and 3000 <= code <= 4999:
            assert str(code) not in scripts, name
    client.force_login(viewer)
    assert _config(client.get(URL))["close_codes"] == {
        "refusals": [4401, 4403, 4404, 4429],
        "retry_after_ms": {"4429": 30000},
        "not_logged_in": 4401,
    }
    listed = re.search(r'data-close-codes="([^"]*)"', client.get("/").content.decode()).group(1)
    assert json.loads(html.unescape(listed)) == protocol.close_codes_config()


def test_every_action_a_script_sends_is_one_the_server_names(client, conference, moderator):
    """The page's action names come from the server (config.actions); a script reads only keys it has."""
    from conferences import moderation

    client.force_login(moderator)
    actions = _config(client.get(URL))["actions"]
    assert actions == {**{name.upper(): name for name in moderation.ACTIONS}, "RESYNC": "resync"}
    scripts = "\n".join(path.read_text() for path in (ROOT / "static").rglob("*.js"))
    used = set(re.findall(r"\bactions\.([A-Z][A-Z_]*)\b", scripts))
    assert {"MUTE", "KICK", "ADMIT", "DENY", "LOBBY_ON", "RESYNC"} <= used  # the scan sees the controls
    assert used <= set(actions), sorted(used - set(actions))


def test_room_js_node_tests():
    node = shutil.which("node")
    assert node, "Node.js is needed for tests/js (room.js helpers)"
    files = sorted(str(path) for path in (ROOT / "tests" / "js").glob("*.test.js"))
    assert files
    for script in sorted((ROOT / "static" / "conferences").glob("*.js")):
        check = subprocess.run([node, "--check", str(script)], capture_output=True, cwd=ROOT)
        assert check.returncode == 0, (script.name, check.stderr.decode())
    result = subprocess.run([node, "--test", *files], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_page_script_hands_every_room_frame_type_to_its_state():
    """A room frame the page's switch leaves out is dropped, and the next one looks like a gap (a resync
    for nothing): recording.finished was, until this test."""
    from conferences import protocol

    script = (Path(__file__).resolve().parent.parent / "static" / "conferences" / "room.js").read_text()
    cases = set(re.findall(r'case "([a-z.]+)":', script))
    room_frames = set(protocol.FRAME_TYPES) - {protocol.ROOMS}  # the room list socket's, not a room's
    assert room_frames <= cases, room_frames - cases
