"""A second factor for staff: TOTP devices of django-otp, enrolled and checked after the password.

Who is asked (``pending_step``): a staff account that has a confirmed device
is asked for a code after every password login; with ``REQUIRE_STAFF_2FA`` a
staff account without one must enrol first. Everybody else is unaffected.
Rules:

- Until the step is done, ``TwoFactorMiddleware`` sends a staff session's
  every page (the admin, room pages, the tokens page) to the enrolment or
  verification page; only those pages, logout and the language switch stay
  open. So the admin is unreachable without the code, and no page of the
  site is reachable half logged in.
- A code is checked under the login throttle's rules (conferences/throttle.py):
  the attempt is counted before the check, per (address, account) and per
  address, so a few wrong codes lock the code step out for a while, as a few
  wrong passwords do; the account's code counter is apart from its password
  counter. On top of it django-otp's own per-device back-off (1, 2, 4 … s
  after each failure, whatever the address) and its ``last_t``: a code, once
  accepted, is never accepted again.
- A device is reset by deleting it in the admin (django-otp's TOTP device
  admin; its secret is never shown there: ``OTP_ADMIN_HIDE_SENSITIVE_DATA``).
- Room sockets (conferences/consumers.py) have no request for the
  middleware: their session check (conferences/sessions.py) asks
  ``session_is_pending``, the same test, at the handshake and periodically.
"""

import base64
import logging

import qrcode
import qrcode.image.svg
from asgiref.sync import sync_to_async
from django import forms
from django.conf import settings
from django.contrib.auth import REDIRECT_FIELD_NAME
from django.db import connection, transaction
from django.db.models import QuerySet
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import Resolver404, resolve, reverse
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.utils.translation import gettext_lazy as _
from django.views.decorators.cache import never_cache
from django_otp import DEVICE_ID_SESSION_KEY, device_classes, devices_for_user, user_has_device
from django_otp import login as otp_login
from django_otp.models import DeviceManager
from django_otp.plugins.otp_totp.models import TOTPDevice

from conferences import auth_backends, throttle
from conferences.client_address import client_address
from conferencesite.middleware import BothModes

logger = logging.getLogger(__name__)

ENROL = "twofactor-enrol"
VERIFY = "twofactor-verify"
# Pages an unverified staff session may still open (URL names).
API_PREFIX = "/api/"  # the REST API: JSON answers of its own, never a redirect to a page
OPEN_TO_PENDING = {ENROL, VERIFY, "logout", "set_language", "healthz", "readyz", "metrics"}

BACKING_OFF_MESSAGE = _("Wrong codes were tried for this account: wait a little and try again.")
TOKEN_REFUSED_MESSAGE = _(
    "Staff accounts need a second factor before they get an API token: set up an authenticator app first."
)
OWNER_REFUSED_MESSAGE = _(
    "This staff account has no second factor yet: it gets an API token once it has set up an authenticator app."
)


def required():
    """REQUIRE_STAFF_2FA: must every staff account have a second factor?"""
    return settings.REQUIRE_STAFF_2FA


def is_verified(user):
    """True when this request's session passed the code step (django-otp's OTPMiddleware sets it)."""
    check = getattr(user, "is_verified", None)
    return bool(check and check())


def needs_factor(user):
    """Who a second factor is for: staff, and superusers (one need not be staff to moderate every room)."""
    return bool(user.is_staff or user.is_superuser)


def pending_step(user):
    """The URL name of the step ``user``'s session still owes (ENROL or VERIFY), or None."""
    if not (user.is_authenticated and needs_factor(user)) or is_verified(user):
        return None
    if user_has_device(user):
        return VERIFY
    return ENROL if required() else None


def session_is_pending(user, session_data):
    """The same question for a socket: its user and its session's data, without a request.

    django-otp's answer (the session's device among ``devices_for_user(user)``,
    else ``user_has_device(user)`` or REQUIRE_STAFF_2FA) from one read of the
    user's confirmed devices (``confirmed_device_ids``).
    """
    if not needs_factor(user):
        return False
    device_ids = confirmed_device_ids(user)
    device_id = session_data.get(DEVICE_ID_SESSION_KEY)
    if isinstance(device_id, str) and device_id in device_ids:
        return False
    return bool(device_ids) or required()


def confirmed_device_ids(user):
    """The persistent ids of ``user``'s confirmed devices: ``{d.persistent_id for d in devices_for_user(user)}``.

    Each device class's rows are read with one plain statement instead of a
    QuerySet: every staff socket's handshake and periodic check asks this,
    and in a connect storm of staff pages the QuerySets' building was a third
    of a handshake's database hop (docs/performance.md, "Connect storm"). A
    device class with a manager of its own (which may filter) is asked
    through django-otp as before. tests/test_twofactor.py compares the two.
    """
    ids = set()
    for model in device_classes():
        if type(model.objects) is not DeviceManager or type(model.objects.get_queryset()) is not QuerySet:
            ids.update(device.persistent_id for device in model.objects.devices_for_user(user, confirmed=True))
            continue
        meta = model._meta
        quote = connection.ops.quote_name
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT {quote(meta.pk.column)} FROM {quote(meta.db_table)} "  # noqa: S608 (names from the model)
                f"WHERE {quote(meta.get_field('user').column)} = %s AND {quote(meta.get_field('confirmed').column)}",
                [user.pk],
            )
            ids.update(f"{model.model_label()}/{pk}" for (pk,) in cursor.fetchall())
    return ids


def may_own_token(user, *, request=None):
    """May an API token be made for ``user``? Always, unless REQUIRE_STAFF_2FA holds and ``user`` is staff.

    Then the owner needs a confirmed device, and when the owner makes it
    themselves (``request`` given), a session that passed the code step.
    """
    if not (required() and needs_factor(user)):
        return True
    if request is not None:
        return is_verified(request.user)
    return user_has_device(user)


class TwoFactorMiddleware(BothModes):
    """Sends a staff session that still owes its code (or its enrolment) to that step, from any page.

    Install after django-otp's OTPMiddleware, which tells whether the session
    is verified.
    """

    def handle(self, request):
        return self._redirect(request, pending_step(request.user)) or self.get_response(request)

    async def _acall(self, request):
        # The REST API answers a session that owes its code itself (401, JSON: conferences/sessions.py's
        # session_user refuses it), and a token request has no second step.
        if not request.path_info.startswith(API_PREFIX):
            user = await request.auser()
            if user.is_authenticated and needs_factor(user):
                redirect_to = self._redirect(request, await sync_to_async(pending_step)(user))
                if redirect_to is not None:
                    return redirect_to
        return await self.get_response(request)

    @staticmethod
    def _redirect(request, step):
        if step is not None and not request.path_info.startswith(API_PREFIX):
            if _url_name(request.path_info) not in OPEN_TO_PENDING:
                query = urlencode({REDIRECT_FIELD_NAME: request.get_full_path()})
                return redirect(f"{reverse(step)}?{query}")
        return None


def _url_name(path):
    try:
        return resolve(path).url_name
    except Resolver404:
        return None


class CodeForm(forms.Form):
    code = forms.CharField(
        label=_("Code from your authenticator app"),
        max_length=8,
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric", "autofocus": True}),
    )

    def clean_code(self):
        code = "".join(self.cleaned_data["code"].split())
        if not code.isdigit():
            raise forms.ValidationError(_("The code is the 6 digits your app shows."))
        return code


@never_cache
def verify(request):
    """The code step after the password, for staff with a device."""
    user = request.user
    if not user.is_authenticated:
        return redirect(settings.LOGIN_URL)
    devices = list(devices_for_user(user))
    if not devices:
        if needs_factor(user) and required():
            return redirect(f"{reverse(ENROL)}?{request.GET.urlencode()}")
        return _next(request)
    if is_verified(user):
        return _next(request)
    form = CodeForm(request.POST or None)
    status = 200
    if form.is_valid():
        ok, status, message = _check_code(request, devices, form.cleaned_data["code"])
        if ok:
            return _next(request)
        form.add_error(None, message)
    return render(request, "registration/twofactor_verify.html", _context(request, form), status=status)


@never_cache
def enrol(request):
    """Set up an authenticator app: the secret as a QR code and as text, confirmed by a first code."""
    user = request.user
    if not user.is_authenticated:
        return redirect(settings.LOGIN_URL)
    if not needs_factor(user):
        raise Http404
    if user_has_device(user):
        return _next(request) if is_verified(user) else redirect(f"{reverse(VERIFY)}?{request.GET.urlencode()}")
    # The same secret until it is confirmed: reloading the page must not invalidate the app just set up.
    device = TOTPDevice.objects.filter(user=user, confirmed=False).order_by("pk").first()
    if device is None:
        device = TOTPDevice.objects.create(user=user, name="authenticator", confirmed=False)
    form = CodeForm(request.POST or None)
    status = 200
    if form.is_valid():
        ok, status, message = _check_code(request, [device], form.cleaned_data["code"], confirm=True)
        if ok:
            logger.info("two-factor: user %s enrolled an authenticator app", user.pk)
            return _next(request)
        form.add_error(None, message)
    context = {
        **_context(request, form),
        "secret": _spaced(base64.b32encode(device.bin_key).decode()),
        "qr_svg": _qr_svg(device.config_url),
    }
    return render(request, "registration/twofactor_enrol.html", context, status=status)


def _check_code(request, devices, code, *, confirm=False):
    """``(accepted, status, message)`` for ``code`` of one of ``devices``; counted by the login throttle first."""
    address = client_address(request)
    try:
        attempt = throttle.reserve(address, _throttle_name(request.user))
    except auth_backends.CACHE_DOWN as exc:
        logger.error("two-factor: the throttle's counts cannot be reached (%s); refusing the code", exc)
        return False, 503, auth_backends.UNAVAILABLE_MESSAGE
    if attempt is None:
        logger.warning("two-factor: user %s: code step throttled", request.user.pk)
        return False, 429, auth_backends.THROTTLED_MESSAGE
    accepted = None
    with transaction.atomic():
        locked = list(TOTPDevice.objects.select_for_update().filter(pk__in=[d.pk for d in devices]))
        backing_off = bool(locked) and all(not device.verify_is_allowed()[0] for device in locked)
        for device in locked:
            if device.verify_token(code):
                accepted = device
                break
    if backing_off:  # django-otp's per-device wait after failures, from any address
        logger.warning("two-factor: user %s: code step backing off after failures", request.user.pk)
        return False, 429, BACKING_OFF_MESSAGE
    if accepted is None:
        logger.info("two-factor: user %s: wrong or reused code", request.user.pk)
        return False, 200, _("That code is not right, or it was used already. Wait for the next code and try again.")
    try:
        throttle.release(attempt)
    except auth_backends.CACHE_DOWN as exc:  # the count stays until its window ends
        logger.warning("two-factor: giving an attempt back failed (%s)", exc)
    if confirm:
        accepted.confirmed = True
        accepted.save(update_fields=["confirmed"])
    otp_login(request, accepted)
    return True, 200, None


def _throttle_name(user):
    # Apart from the password counter of the same name: a code guessed wrong does not lock the password out.
    return f"\0totp\0{user.pk}"


def _next(request):
    target = request.POST.get(REDIRECT_FIELD_NAME) or request.GET.get(REDIRECT_FIELD_NAME)
    allowed = url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    )
    return redirect(target if target and allowed else settings.LOGIN_REDIRECT_URL)


def _context(request, form):
    return {"form": form, "next": request.POST.get(REDIRECT_FIELD_NAME) or request.GET.get(REDIRECT_FIELD_NAME, "")}


def _spaced(secret):
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


def _qr_svg(data):
    # SVG: no Pillow; inline, so the strict CSP needs no exception for an image URL. Only paths, no text:
    # nothing of the user's (the username is in ``data``) reaches the page as markup.
    return qrcode.make(data, image_factory=qrcode.image.svg.SvgPathFillImage).to_string(encoding="unicode")
