"""The admin: every page renders for a superuser; the ARI password is write-only."""

import logging

import pytest
from django.contrib import admin
from django.urls import reverse
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice

from conferences import tokens
from conferences.models import (
    AsteriskServer,
    Conference,
    ConferenceEvent,
    Invite,
    Participant,
    Recording,
    Webhook,
    WebhookDelivery,
)

pytestmark = pytest.mark.django_db

PASSWORD = "s3cret-ari-password"


@pytest.fixture
def populated(conference, make_participant, superuser, group, grant, make_user):
    participant = make_participant(conference, caller_name="Alice", caller_number="201")
    make_participant(conference, caller_name="Gone", left_at=timezone.now(), left_reason="hangup")
    ConferenceEvent.objects.create(
        conference=conference, participant=participant, kind="muted", created_at=timezone.now(), actor=superuser
    )
    grant(conference, group=group, role="moderator")
    grant(conference, user=make_user())
    Recording.objects.create(conference=conference, name="conference-1-x", started_at=timezone.now())
    Invite.objects.create(
        conference=conference, number="7001", actor=superuser, channel_id="invite-1-x", created_at=timezone.now()
    )
    tokens.create(user=superuser, name="crm", conferences=[conference])
    hook = Webhook.objects.create(name="crm", url="http://127.0.0.1:9/hook", secret="s")
    WebhookDelivery.objects.create(
        webhook=hook,
        event_id="d-1",
        event_type="participant.joined",
        conference=conference,
        created_at=timezone.now(),
        next_attempt_at=timezone.now(),
    )
    # Another staff member's authenticator (the superuser of admin_client has none: no code step).
    TOTPDevice.objects.create(user=make_user(is_staff=True), name="phone")
    return conference


@pytest.fixture
def admin_client(client, superuser):
    client.force_login(superuser)
    return client


def registered_models():
    return [(model._meta.app_label, model._meta.model_name, model) for model in admin.site._registry]


@pytest.mark.parametrize("app_label,model_name,model", registered_models(), ids=lambda v: getattr(v, "__name__", v))
def test_every_admin_page_renders(admin_client, populated, app_label, model_name, model):
    changelist = admin_client.get(reverse(f"admin:{app_label}_{model_name}_changelist"))
    assert changelist.status_code == 200
    # Search and filters render too.
    assert admin_client.get(reverse(f"admin:{app_label}_{model_name}_changelist"), {"q": "a"}).status_code == 200
    model_admin = admin.site._registry[model]
    add = admin_client.get(reverse(f"admin:{app_label}_{model_name}_add"))
    if model_admin.has_add_permission(changelist.wsgi_request):
        assert add.status_code == 200
    else:
        assert add.status_code == 403
    obj = model.objects.first()
    assert obj is not None, f"no {model_name} row to open"
    change = admin_client.get(reverse(f"admin:{app_label}_{model_name}_change", args=[obj.pk]))
    assert change.status_code == 200
    assert admin_client.get(reverse(f"admin:{app_label}_{model_name}_history", args=[obj.pk])).status_code == 200


def test_admin_index_renders(admin_client, populated):
    assert admin_client.get(reverse("admin:index")).status_code == 200


def test_participants_and_events_are_read_only(admin_client, populated):
    participant = Participant.objects.get(caller_name="Alice")
    url = reverse("admin:conferences_participant_change", args=[participant.pk])
    admin_client.post(url, {"caller_name": "Mallory"})
    participant.refresh_from_db()
    assert participant.caller_name == "Alice"
    assert admin_client.get(reverse("admin:conferences_participant_add")).status_code == 403
    assert admin_client.get(reverse("admin:conferences_conferenceevent_add")).status_code == 403
    delete = reverse("admin:conferences_participant_delete", args=[participant.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403


def test_participants_show_hands_and_who_muted_and_offer_lower_hand(admin_client, populated):
    response = admin_client.get(reverse("admin:conferences_participant_changelist"))
    assert response.status_code == 200
    content = response.content.decode()
    assert 'value="lower_hand"' in content  # through the same moderation path as the page's
    assert "column-mute_source" in content and "column-hand_raised" in content


def test_room_list_shows_people_present(admin_client, populated):
    response = admin_client.get(reverse("admin:conferences_conference_changelist"))
    row = response.context["cl"].result_list[0]
    assert row._present_count == 1


def test_ari_password_never_shown(admin_client, server, caplog):
    caplog.set_level(logging.DEBUG)
    pages = [
        reverse("admin:conferences_asteriskserver_changelist"),
        reverse("admin:conferences_asteriskserver_change", args=[server.pk]),
        reverse("admin:conferences_asteriskserver_history", args=[server.pk]),
        reverse("admin:conferences_asteriskserver_delete", args=[server.pk]),
    ]
    for url in pages:
        response = admin_client.get(url)
        assert response.status_code == 200
        assert PASSWORD not in response.content.decode(), url
    assert PASSWORD not in caplog.text


# The server's sound list (an inline), left empty.
SOUNDS_NONE = {
    "sounds-TOTAL_FORMS": "0",
    "sounds-INITIAL_FORMS": "0",
    "sounds-MIN_NUM_FORMS": "0",
    "sounds-MAX_NUM_FORMS": "1000",
}


def server_form(**overrides):
    data = {
        "name": "pbx",
        "ari_url": "http://127.0.0.1:8088/ari",
        "username": "conference",
        "password": "",
        "app_name": "conference",
        "enabled": "on",
        "dial_template": "",
        "invite_pattern": "[0-9]{2,6}",
        **SOUNDS_NONE,
    }
    data.update(overrides)
    return data


def test_blank_password_on_change_keeps_the_stored_one(admin_client, server):
    url = reverse("admin:conferences_asteriskserver_change", args=[server.pk])
    response = admin_client.post(url, server_form(username="asterisk"))
    assert response.status_code == 302
    server.refresh_from_db()
    assert server.username == "asterisk"
    assert server.password == PASSWORD


def test_staff_set_how_invites_are_dialled_and_what_may_be_dialled(admin_client, server):
    url = reverse("admin:conferences_asteriskserver_change", args=[server.pk])
    for field, value in [("dial_template", "PJSIP/trunk"), ("invite_pattern", r"(?!112)\d+"), ("invite_pattern", "(")]:
        response = admin_client.post(url, server_form(**{field: value}))
        assert response.status_code == 200 and field in response.context["adminform"].form.errors, (field, value)
    response = admin_client.post(
        url, server_form(dial_template="PJSIP/{number}@trunk", invite_pattern=r"[0-9]{3,4}|\+49[0-9]{6,12}")
    )
    assert response.status_code == 302
    server.refresh_from_db()
    assert (server.dial_template, server.invite_pattern) == ("PJSIP/{number}@trunk", r"[0-9]{3,4}|\+49[0-9]{6,12}")


def test_new_password_replaces_the_stored_one_and_is_not_echoed(admin_client, server):
    url = reverse("admin:conferences_asteriskserver_change", args=[server.pk])
    response = admin_client.post(url, server_form(password="brand-new-pw"))
    assert response.status_code == 302
    server.refresh_from_db()
    assert server.password == "brand-new-pw"
    # The change message in the history names the field, never the value.
    history = admin_client.get(reverse("admin:conferences_asteriskserver_history", args=[server.pk]))
    assert "brand-new-pw" not in history.content.decode()


def test_adding_a_server_needs_a_password_and_errors_do_not_echo_it(admin_client):
    url = reverse("admin:conferences_asteriskserver_add")
    response = admin_client.post(url, server_form(name="new"))
    assert response.status_code == 200
    assert "Enter the ARI password." in response.content.decode()
    response = admin_client.post(url, server_form(name="new", ari_url="ftp://x", password="typed-pw"))
    assert response.status_code == 200
    assert "typed-pw" not in response.content.decode()
    response = admin_client.post(url, server_form(name="new", ari_url="http://pbx:8088/ari", password="typed-pw"))
    assert response.status_code == 302
    assert AsteriskServer.objects.get(name="new").password == "typed-pw"


def test_adding_a_room_with_access_rows_inline(admin_client, server, make_user, group):
    user = make_user()
    data = {
        "server": server.pk,
        "number": "555",
        "slug": "support",
        "name": "Support",
        "moh_class": "default",
        "max_participants": "",
        "pin": "",
        "keypad_hand": "*1",
        "keypad_mute": "*6",
        "when_leader_leaves": "stay",
        "record_mode": "on_demand",
        "record_announcement": "conf-now-recording",
        "record_download": "moderators",
        "record_retention_days": "90",
        "invite_caller_id": "",
        "invite_ring_seconds": "30",
        "max_open_invites": "5",
        "access-TOTAL_FORMS": "2",
        "access-INITIAL_FORMS": "0",
        "access-MIN_NUM_FORMS": "0",
        "access-MAX_NUM_FORMS": "1000",
        "access-0-user": user.pk,
        "access-0-role": "viewer",
        "access-1-group": group.pk,
        "access-1-role": "moderator",
    }
    response = admin_client.post(reverse("admin:conferences_conference_add"), data)
    assert response.status_code == 302, response.context["errors"] if response.context else response
    room = Conference.objects.get(slug="support")
    assert {(a.user_id, a.group_id, a.role) for a in room.access.all()} == {
        (user.pk, None, "viewer"),
        (None, group.pk, "moderator"),
    }


def test_access_row_with_both_user_and_group_is_refused_in_the_form(admin_client, conference, make_user, group):
    data = {
        "server": conference.server_id,
        "number": conference.number,
        "slug": conference.slug,
        "name": conference.name,
        "moh_class": "default",
        "access-TOTAL_FORMS": "1",
        "access-INITIAL_FORMS": "0",
        "access-MIN_NUM_FORMS": "0",
        "access-MAX_NUM_FORMS": "1000",
        "access-0-user": make_user().pk,
        "access-0-group": group.pk,
        "access-0-role": "viewer",
    }
    response = admin_client.post(reverse("admin:conferences_conference_change", args=[conference.pk]), data)
    assert response.status_code == 200
    assert "Name either a user or a group, not both." in response.content.decode()
    assert not conference.access.exists()


def _room_form(conference, **overrides):
    data = {
        "server": conference.server_id,
        "number": conference.number,
        "slug": conference.slug,
        "name": conference.name,
        "moh_class": conference.moh_class,
        "max_participants": conference.max_participants or "",
        "pin": conference.pin,
        "keypad_hand": conference.keypad_hand,
        "keypad_mute": conference.keypad_mute,
        "when_leader_leaves": conference.when_leader_leaves,
        "record_mode": conference.record_mode,
        "record_announcement": conference.record_announcement,
        "record_download": conference.record_download,
        "record_retention_days": conference.record_retention_days,
        "invite_caller_id": conference.invite_caller_id,
        "invite_ring_seconds": conference.invite_ring_seconds,
        "max_open_invites": conference.max_open_invites,
        "access-TOTAL_FORMS": "0",
        "access-INITIAL_FORMS": "0",
        "access-MIN_NUM_FORMS": "0",
        "access-MAX_NUM_FORMS": "1000",
    }
    if conference.locked:
        data["locked"] = "on"
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not None}


def test_locking_a_room_in_its_form_is_audited_and_broadcast(
    admin_client, conference, superuser, monkeypatch, django_capture_on_commit_callbacks
):
    """An edit of room state in the admin goes through the services, like the page's lock button."""
    from conferences import broadcast

    sent = []
    monkeypatch.setattr(broadcast, "send_to_room", lambda conference_id, frame: sent.append(frame))
    url = reverse("admin:conferences_conference_change", args=[conference.pk])
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(url, _room_form(conference, locked="on", name="Sales (locked)"))
    assert response.status_code == 302
    conference.refresh_from_db()
    assert conference.locked and conference.name == "Sales (locked)"
    [event] = ConferenceEvent.objects.filter(conference=conference, kind="locked")
    assert event.actor == superuser
    [frame] = sent
    assert frame["type"] == "conference.updated" and frame["seq"] == conference.seq
    assert frame["conference"]["locked"] is True and frame["conference"]["name"] == "Sales (locked)"

    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(url, _room_form(conference, locked=None))
    assert ConferenceEvent.objects.filter(conference=conference, kind="unlocked", actor=superuser).count() == 1
    assert sent[-1]["conference"]["locked"] is False


def test_a_setting_pages_do_not_show_changes_quietly(
    admin_client, conference, monkeypatch, django_capture_on_commit_callbacks
):
    from conferences import broadcast

    sent = []
    monkeypatch.setattr(broadcast, "send_to_room", lambda conference_id, frame: sent.append(frame))
    url = reverse("admin:conferences_conference_change", args=[conference.pk])
    seq = conference.seq
    with django_capture_on_commit_callbacks(execute=True):
        assert admin_client.post(url, _room_form(conference, pin="4321")).status_code == 302
    conference.refresh_from_db()
    assert conference.pin == "4321" and conference.seq == seq and sent == []


@pytest.mark.parametrize(
    "hand,mute,field,message",
    [
        ("*1", "*1", "keypad_mute", "neither may contain the other"),
        ("1", "*12", "keypad_mute", "neither may contain the other"),  # "1" would fire inside "*12"
        ("*1", "*A", "keypad_mute", "Use 1 to 4 of the keys"),
        ("*1234", "*6", "keypad_hand", "at most 4 characters"),
        ("", "*6", "keypad_hand", "This field is required"),
    ],
)
def test_keypad_keys_that_could_not_work_are_refused(admin_client, conference, hand, mute, field, message):
    url = reverse("admin:conferences_conference_change", args=[conference.pk])
    response = admin_client.post(url, _room_form(conference, keypad_hand=hand, keypad_mute=mute))
    assert response.status_code == 200
    assert any(message in error for error in response.context["adminform"].form.errors[field])
    conference.refresh_from_db()
    assert (conference.keypad_hand, conference.keypad_mute) == ("*1", "*6")


@pytest.mark.parametrize(
    "url",
    ["http://conference:secret@127.0.0.1:8088/ari", "http://admin@pbx/ari", "https://:pw@pbx.example/ari"],
)
def test_an_ari_url_with_credentials_in_it_is_refused(admin_client, url):
    data = {
        "name": "pbx2",
        "ari_url": url,
        "username": "u",
        "password": "p",
        "app_name": "conference",
        "invite_pattern": "[0-9]{2,6}",
        **SOUNDS_NONE,
    }
    response = admin_client.post(reverse("admin:conferences_asteriskserver_add"), data)
    assert response.status_code == 200
    [error] = response.context["adminform"].form.errors["ari_url"]
    assert "must not contain a user name or password" in error
    assert "secret" not in error and "pw@" not in error  # the message does not repeat the credentials
    assert not AsteriskServer.objects.filter(name="pbx2").exists()
