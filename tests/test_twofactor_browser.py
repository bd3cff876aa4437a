"""A staff member's second factor in real headless Chromium, against the web process with REQUIRE_STAFF_2FA=True.

Log in with the password, get sent to enrolment, read the secret off the page
as one types it into an app, confirm with a code, reach the admin; log out,
log in again and give the code.
"""

import asyncio
import base64

import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.contrib.auth.models import User
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

from tests.live import db
from tests.stack import ROOT, Processes, base_env, database_url

pytestmark = [pytest.mark.integration, pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
async def web(redis_url):
    """The web process alone (no worker: no room is live here), sharing the test database."""
    environ = {**base_env(database_url(), redis_url), "REQUIRE_STAFF_2FA": "True"}
    services = Processes(environ, "none", ROOT / "var" / "e2e-twofactor")
    services.start_web()
    await services.web_up()
    yield f"http://127.0.0.1:{services.port}"
    await asyncio.to_thread(services.close)


def make_staff():
    # The web process knows the production hashers only (tests use MD5 for speed).
    password = PBKDF2PasswordHasher().encode("pw-Tr0ub4dor", "e2e-salt-123456", iterations=100_000)
    return User.objects.create(username="boss", password=password, is_staff=True, is_superuser=True)


async def log_in(page, base, next_path="/admin/"):
    await page.goto(f"{base}/accounts/login/?next={next_path}")
    await page.fill("input[name=username]", "boss")
    await page.fill("input[name=password]", "pw-Tr0ub4dor")
    await page.click("main button[type=submit]")


async def test_staff_enrol_an_authenticator_reach_the_admin_and_log_in_again_with_a_code(web, browser):
    await db(make_staff)()
    context = await browser.new_context(locale="en-US")
    page = await context.new_page()

    await log_in(page, web)
    await page.wait_for_url(f"{web}/accounts/two-factor/enrol/?next=%2Fadmin%2F")
    assert await page.locator("figure.qr svg").count() == 1
    secret = (await page.locator("[data-role=totp-secret]").inner_text()).replace(" ", "")
    key = base64.b32decode(secret)
    # The admin stays shut until the first code confirms the app.
    await page.goto(f"{web}/admin/")
    await page.wait_for_url(f"{web}/accounts/two-factor/enrol/?next=%2Fadmin%2F")
    await page.fill("input[name=code]", f"{totp(key):06d}")
    await page.click("main button[type=submit]")
    await page.wait_for_url(f"{web}/admin/")
    assert await page.locator("#site-name").count() == 1  # the admin's own page
    device = await db(lambda: TOTPDevice.objects.get(user__username="boss"))()
    assert device.confirmed

    await page.goto(f"{web}/")
    await page.click("header form[action='/accounts/logout/'] button")
    await page.wait_for_url(f"{web}/accounts/login/")

    await log_in(page, web)
    await page.wait_for_url(f"{web}/accounts/two-factor/?next=%2Fadmin%2F")
    await page.goto(f"{web}/admin/")  # still shut before the code
    await page.wait_for_url(f"{web}/accounts/two-factor/?next=%2Fadmin%2F")
    await page.fill("input[name=code]", f"{totp(key, drift=1):06d}")  # the first code is used: the app's next one
    await page.click("main button[type=submit]")
    await page.wait_for_url(f"{web}/admin/")
    assert await page.locator("#site-name").count() == 1
    await context.close()
