"""A second factor for staff (issue 19 point 3): enrolment, the code step, its throttle, API tokens, the admin reset.

Codes are computed the way an authenticator app does, with django_otp.oath.totp
from the device's key (read from the enrolment page where a user would read it).
"""

import base64
import re
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django_otp import DEVICE_ID_SESSION_KEY, devices_for_user, user_has_device
from django_otp.models import DeviceManager
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

from conferences import throttle, twofactor
from conferences.models import ApiToken
from conferencesite import env
from tests.stack import run_manage

pytestmark = pytest.mark.django_db

PASSWORD = "pw-Tr0ub4dor"  # tests/conftest.py make_user
LIMIT = throttle.MAX_FAILURES_PER_ACCOUNT
WRONG = "That code is not right, or it was used already."
THROTTLED = "Too many failed attempts. Wait a few minutes and try again."
ENROL = "/accounts/two-factor/enrol/"
VERIFY = "/accounts/two-factor/"


@pytest.fixture(autouse=True)
def _clean_cache():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def required(settings):
    settings.REQUIRE_STAFF_2FA = True


@pytest.fixture
def staffer(make_user):
    return make_user("staffer", is_staff=True)


def code(key, *, later=0):
    """The code an app shows for ``key`` (raw bytes) now, or ``later`` steps ahead (its next code)."""
    return f"{totp(key, drift=later):06d}"


def enrolled(user):
    return TOTPDevice.objects.create(user=user, name="phone", confirmed=True)


def password_login(client, username="staffer"):
    response = client.post("/accounts/login/", {"username": username, "password": PASSWORD})
    assert response.status_code == 302, response.content.decode()
    return response


def send_code(client, value, *, next_url="/admin/", address="127.0.0.1"):
    return client.post(VERIFY, {"code": value, "next": next_url}, REMOTE_ADDR=address)


def verified_client(user, device):
    """A client logged in as ``user`` whose session passed the code step."""
    client = Client()
    client.force_login(user)
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = device.persistent_id
    session.save()
    return client


# --- REQUIRE_STAFF_2FA=True: enrol, then the admin ---------------------------------------------


def test_required_staff_without_a_device_is_sent_to_enrolment_enrols_and_then_reaches_the_admin(
    required, staffer, settings
):
    settings.OTP_TOTP_THROTTLE_FACTOR = 0  # no second's wait after the wrong code below
    client = Client()
    password_login(client)
    for path in ("/admin/", "/", reverse("api-tokens")):
        response = client.get(path)
        assert response.status_code == 302
        assert response["Location"].startswith(ENROL), path

    page = client.get(f"{ENROL}?next=/admin/")
    html = page.content.decode()
    assert page.status_code == 200 and "<svg" in html
    secret = re.search(r'data-role="totp-secret">([A-Z2-7 ]+)<', html).group(1).replace(" ", "")
    key = base64.b32decode(secret)
    # Reloading the page keeps the secret the app was just given.
    assert secret in client.get(ENROL).content.decode().replace(" ", "")
    assert client.get("/admin/").status_code == 302  # nothing confirmed yet

    wrong = client.post(ENROL, {"code": f"{(int(code(key)) + 1) % 1_000_000:06d}", "next": "/admin/"})
    assert wrong.status_code == 200 and WRONG in wrong.content.decode()
    done = client.post(ENROL, {"code": code(key), "next": "/admin/"})
    assert done.status_code == 302 and done["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200
    device = TOTPDevice.objects.get(user=staffer)
    assert device.confirmed and device.bin_key == key


def test_a_new_login_needs_the_code_on_the_site_login_and_on_the_admin_login(required, staffer):
    device = enrolled(staffer)
    client = Client()
    password_login(client)
    response = client.get("/admin/")
    assert response.status_code == 302 and response["Location"] == f"{VERIFY}?next=%2Fadmin%2F"
    assert client.get("/").status_code == 302
    assert client.get(VERIFY).status_code == 200
    verified = send_code(client, code(device.bin_key))
    assert verified.status_code == 302 and verified["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200
    assert client.get("/").status_code == 200

    client.post("/accounts/logout/")
    other = Client()
    response = other.post("/admin/login/?next=/admin/", {"username": "staffer", "password": PASSWORD})
    assert response.status_code == 302
    assert other.get("/admin/")["Location"].startswith(VERIFY)
    assert send_code(other, code(device.bin_key, later=1)).status_code == 302  # the app's next code
    assert other.get("/admin/").status_code == 200


def test_a_session_that_logged_out_must_give_the_code_again(required, staffer):
    device = enrolled(staffer)
    client = Client()
    password_login(client)
    send_code(client, code(device.bin_key))
    client.post("/accounts/logout/")
    password_login(client)
    assert client.get("/admin/")["Location"].startswith(VERIFY)


def test_wrong_codes_are_refused_and_after_a_few_even_the_right_code_gets_nowhere(required, staffer, settings):
    settings.OTP_TOTP_THROTTLE_FACTOR = 0  # django-otp's own back-off apart: this is the login throttle's
    device = enrolled(staffer)
    client = Client()
    password_login(client)
    right = code(device.bin_key)
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    for _ in range(LIMIT):
        response = send_code(client, wrong)
        assert response.status_code == 200 and WRONG in response.content.decode()
    response = send_code(client, right)
    assert response.status_code == 429 and THROTTLED in response.content.decode()
    assert client.get("/admin/").status_code == 302
    # The code step's count is its own: the password of the account is not locked out by it.
    password_login(Client())
    # From another address the code step is open again, the right code works.
    assert send_code(client, right, address="192.0.2.7").status_code == 302
    assert client.get("/admin/").status_code == 200


def test_django_otp_backs_off_per_device_whatever_the_address(required, staffer, settings):
    settings.OTP_TOTP_THROTTLE_FACTOR = 600  # a wait after each failure long enough to see
    device = enrolled(staffer)
    client = Client()
    password_login(client)
    right = code(device.bin_key)
    send_code(client, f"{(int(right) + 1) % 1_000_000:06d}", address="192.0.2.1")
    response = send_code(client, right, address="198.51.100.1")
    assert response.status_code == 429 and "wait a little" in response.content.decode()
    assert client.get("/admin/").status_code == 302


def test_a_code_once_used_is_refused_the_next_time(required, staffer, settings):
    settings.OTP_TOTP_THROTTLE_FACTOR = 0  # no second's wait after the refused code
    device = enrolled(staffer)
    client = Client()
    password_login(client)
    used = code(device.bin_key)
    assert send_code(client, used).status_code == 302
    client.post("/accounts/logout/")
    password_login(client)
    response = send_code(client, used)
    assert response.status_code == 200 and WRONG in response.content.decode()
    assert client.get("/admin/").status_code == 302
    assert send_code(client, code(device.bin_key, later=1)).status_code == 302


def test_counts_out_of_reach_refuse_the_code_with_a_clear_503(required, staffer, settings):
    """As for passwords: no code is checked uncounted when Redis cannot be reached."""
    device = enrolled(staffer)
    client = Client()
    client.force_login(staffer)
    working = settings.CACHES
    settings.CACHES = env.caches_for("redis://127.0.0.1:1/0")  # nothing listens on port 1
    try:
        response = send_code(client, code(device.bin_key))  # waits out the cache's retries (3.4 s)
        assert response.status_code == 503 and "cannot reach its store" in response.content.decode()
    finally:
        settings.CACHES = working  # before _clean_cache clears it
    assert client.get("/admin/").status_code == 302


def test_a_code_is_digits_only(required, staffer):
    enrolled(staffer)
    client = Client()
    password_login(client)
    response = send_code(client, "12ab56")
    assert response.status_code == 200 and "6 digits" in response.content.decode()


def test_non_staff_are_not_asked_and_cannot_enrol(required, make_user):
    make_user("viewer")
    client = Client()
    password_login(client, "viewer")
    assert client.get("/").status_code == 200
    assert client.get(ENROL).status_code == 404


# --- REQUIRE_STAFF_2FA=False: as before, unless a staff member enrolled ---------------------------


def test_not_required_staff_without_a_device_reach_the_admin_as_before(staffer):
    client = Client()
    password_login(client)
    assert client.get("/admin/").status_code == 200
    assert client.get(VERIFY).status_code == 302  # nothing to verify: on to the site


def test_not_required_staff_may_enrol_and_are_then_always_asked_for_the_code(staffer):
    client = Client()
    password_login(client)
    html = client.get(ENROL).content.decode()
    key = base64.b32decode(re.search(r'data-role="totp-secret">([A-Z2-7 ]+)<', html).group(1).replace(" ", ""))
    assert client.post(ENROL, {"code": code(key)}).status_code == 302
    assert client.get("/admin/").status_code == 200
    client.post("/accounts/logout/")
    password_login(client)
    assert client.get("/admin/")["Location"].startswith(VERIFY)


# --- API tokens for staff ------------------------------------------------------------------------

TOKEN_FIELDS = {"name": "bot", "scope": "read", "days": "30", "every_room": "on"}


def test_required_staff_without_the_code_step_get_no_api_token(required, staffer, settings):
    client = Client()
    client.force_login(staffer)
    response = client.post(reverse("api-tokens"), TOKEN_FIELDS)
    assert response.status_code == 302 and response["Location"].startswith(ENROL)
    # The tokens page refuses on its own too, whatever sits in front of it.
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if m != "conferences.twofactor.TwoFactorMiddleware"]
    client = Client()
    client.force_login(staffer)
    response = client.post(reverse("api-tokens"), TOKEN_FIELDS)
    assert response.status_code == 200
    assert "Staff accounts need a second factor" in response.content.decode()
    assert not ApiToken.objects.exists()


def test_required_staff_who_passed_the_code_step_get_their_token(required, staffer):
    client = verified_client(staffer, enrolled(staffer))
    response = client.post(reverse("api-tokens"), TOKEN_FIELDS)
    assert response.status_code == 200
    assert ApiToken.objects.filter(user=staffer).count() == 1


def test_in_the_admin_no_token_is_made_for_a_staff_owner_without_a_device(required, superuser, staffer, make_user):
    admin = verified_client(superuser, enrolled(superuser))
    add = reverse("admin:conferences_apitoken_add")
    soon = (timezone.now() + timedelta(days=10)).strftime("%Y-%m-%d")
    fields = {
        "name": "ticket-bot",
        "scope": "read",
        "every_room": "on",
        "expires_at_0": soon,
        "expires_at_1": "12:00:00",
    }
    refused = admin.post(add, {**fields, "user": staffer.pk})
    assert refused.status_code == 200
    assert "This staff account has no second factor yet" in refused.content.decode()
    assert not ApiToken.objects.exists()
    viewer = make_user("viewer")
    assert admin.post(add, {**fields, "user": viewer.pk}).status_code == 200
    enrolled(staffer)
    assert admin.post(add, {**fields, "user": staffer.pk}).status_code == 200
    assert set(ApiToken.objects.values_list("user__username", flat=True)) == {"viewer", "staffer"}


# --- The admin: a superuser resets a device; secrets stay hidden --------------------------------


def test_a_superuser_resets_a_staff_members_device_in_the_admin(required, superuser, staffer):
    device = enrolled(staffer)
    admin = verified_client(superuser, enrolled(superuser))
    listing = admin.get(reverse("admin:otp_totp_totpdevice_changelist"))
    assert listing.status_code == 200 and "staffer" in listing.content.decode()
    change = admin.get(reverse("admin:otp_totp_totpdevice_change", args=[device.pk])).content.decode()
    assert device.key not in change
    delete = reverse("admin:otp_totp_totpdevice_delete", args=[device.pk])
    assert admin.post(delete, {"post": "yes"}).status_code == 302
    assert not TOTPDevice.objects.filter(user=staffer).exists()
    client = Client()
    password_login(client)
    assert client.get("/admin/")["Location"].startswith(ENROL)


# --- Sockets and settings ------------------------------------------------------------------------


def test_session_is_pending_answers_for_a_socket_as_the_middleware_does_for_a_page(
    required, staffer, make_user, settings
):
    device = enrolled(staffer)
    assert twofactor.session_is_pending(staffer, {})
    assert not twofactor.session_is_pending(staffer, {DEVICE_ID_SESSION_KEY: device.persistent_id})
    assert not twofactor.session_is_pending(make_user("viewer"), {})
    device.delete()
    assert twofactor.session_is_pending(staffer, {})
    settings.REQUIRE_STAFF_2FA = False
    assert not twofactor.session_is_pending(staffer, {})


def _pending_as_django_otp_answers(user, session_data):
    """session_is_pending as it was written with django-otp's own helpers: the reference for the plain read."""
    if not twofactor.needs_factor(user):
        return False
    device_id = session_data.get(DEVICE_ID_SESSION_KEY)
    if device_id and any(device.persistent_id == device_id for device in devices_for_user(user)):
        return False
    return user_has_device(user) or twofactor.required()


@pytest.mark.parametrize("require", [False, True])
def test_the_sockets_device_check_answers_as_django_otps_own_helpers_in_one_statement(
    require, staffer, make_user, settings
):
    """Every kind of account, device and session device id a socket can come with, hostile ids included."""
    settings.REQUIRE_STAFF_2FA = require
    viewer, superuser_only = make_user("viewer"), make_user("root", is_superuser=True)
    other = make_user("other", is_staff=True)
    others_device = enrolled(other)
    gone = enrolled(staffer)
    gone_id = gone.persistent_id
    gone.delete()
    session_ids = [None, "", gone_id, others_device.persistent_id, "otp_totp.totpdevice/x", "nope", "a/b/c", 5, ["x"]]
    for user in (viewer, superuser_only, staffer):
        for devices in ("none", "unconfirmed", "confirmed", "two"):
            TOTPDevice.objects.filter(user=user).delete()
            own = []
            if devices != "none":
                own.append(TOTPDevice.objects.create(user=user, name="phone", confirmed=devices != "unconfirmed"))
            if devices == "two":
                own.append(TOTPDevice.objects.create(user=user, name="spare", confirmed=True))
            for device_id in session_ids + [device.persistent_id for device in own]:
                data = {} if device_id is None else {DEVICE_ID_SESSION_KEY: device_id}
                expected = _pending_as_django_otp_answers(user, data)
                with CaptureQueriesContext(connection) as queries:
                    answer = twofactor.session_is_pending(user, data)
                assert answer is expected, (user.username, devices, device_id)
                assert len(queries) == (1 if twofactor.needs_factor(user) else 0), queries.captured_queries
    # The cases where the answer turns on the device: a verified session of a confirmed device is not pending.
    mine = TOTPDevice.objects.filter(user=staffer, confirmed=True).first()
    assert not twofactor.session_is_pending(staffer, {DEVICE_ID_SESSION_KEY: mine.persistent_id})
    assert twofactor.session_is_pending(staffer, {DEVICE_ID_SESSION_KEY: others_device.persistent_id})


def test_a_device_class_with_a_manager_of_its_own_is_asked_through_django_otp(required, staffer, monkeypatch):
    """A plugin's manager may leave devices out: those are not read past it (its session stays pending)."""

    class WithoutSpares(DeviceManager):
        def get_queryset(self):
            return super().get_queryset().exclude(name="spare")

    manager = WithoutSpares()
    manager.model, manager.name = TOTPDevice, "objects"
    spare = TOTPDevice.objects.create(user=staffer, name="spare", confirmed=True)
    data = {DEVICE_ID_SESSION_KEY: spare.persistent_id}
    monkeypatch.setattr(TOTPDevice, "objects", manager)
    assert twofactor.confirmed_device_ids(staffer) == set()
    assert twofactor.session_is_pending(staffer, data) is _pending_as_django_otp_answers(staffer, data) is True
    monkeypatch.undo()
    assert twofactor.confirmed_device_ids(staffer) == {spare.persistent_id}
    assert twofactor.session_is_pending(staffer, data) is _pending_as_django_otp_answers(staffer, data) is False


def test_a_socket_of_a_staff_session_that_owes_its_code_is_not_logged_in(required, staffer, client):
    """The room sockets check sessions with sessions.session_user: a password alone opens no socket."""
    from conferences.sessions import session_user

    device = enrolled(staffer)
    client.force_login(staffer)
    key = client.session.session_key
    assert session_user(key) is None
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = device.persistent_id  # what the code step stores
    session.save()
    assert session_user(key) == staffer


def test_malformed_require_staff_2fa_stops_start_up_with_its_name():
    result = run_manage("check", REQUIRE_STAFF_2FA="sometimes")
    assert result.returncode == 2
    assert "REQUIRE_STAFF_2FA must be True or False" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_api_answers_a_session_that_owes_its_code_with_json_not_a_redirect(required, staffer, client):
    enrolled(staffer)
    password_login(client)
    response = client.get("/api/v1/rooms")
    assert response.status_code == 401 and response["Content-Type"].startswith("application/json")
    assert "error" in response.json()


@pytest.mark.django_db(transaction=True)
async def test_under_asgi_a_session_that_owes_its_code_is_sent_to_the_code_step(required, staffer):
    """The middleware's async path (the ASGI handler runs it, not the sync one the test Client runs)."""
    from asgiref.sync import sync_to_async
    from django.test import AsyncClient

    await sync_to_async(enrolled)(staffer)
    client = AsyncClient()
    await client.aforce_login(staffer)
    response = await client.get("/admin/")
    assert response.status_code == 302 and response["Location"].startswith(VERIFY)
    api = await client.get("/api/v1/rooms")
    assert api.status_code == 401
