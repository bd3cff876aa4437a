"""System checks catch the costly configuration mistakes, with hints."""

import ipaddress

import pytest

from conferences import checks


def ids(messages):
    return [message.id for message in messages]


@pytest.mark.parametrize(
    "url,username,password,missing",
    [
        ("http://pbx:8088/ari", None, None, "ARI_USERNAME, ARI_PASSWORD"),
        ("http://pbx:8088/ari", "conference", None, "ARI_PASSWORD"),
        (None, "conference", "secret", "ARI_URL"),
    ],
)
def test_half_filled_ari_settings(settings, url, username, password, missing):
    settings.ARI_URL, settings.ARI_USERNAME, settings.ARI_PASSWORD = url, username, password
    messages = checks.check_ari_settings(None)
    assert ids(messages) == ["conferences.E001"]
    assert missing in messages[0].msg
    assert "ari.conf" in messages[0].hint


def test_complete_or_absent_ari_settings_pass(settings):
    settings.ARI_URL, settings.ARI_USERNAME, settings.ARI_PASSWORD = None, None, None
    assert checks.check_ari_settings(None) == []
    settings.ARI_URL, settings.ARI_USERNAME, settings.ARI_PASSWORD = "http://pbx:8088/ari", "u", "p"
    assert checks.check_ari_settings(None) == []


def test_bad_app_name(settings):
    settings.ARI_APP = "my app"
    assert ids(checks.check_ari_settings(None)) == ["conferences.E002"]


@pytest.fixture
def role():
    yield checks.set_process_role
    checks.set_process_role("web")


def test_separate_worker_on_in_memory_layer_is_an_error(settings, role):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    role("worker")
    messages = checks.check_worker_channel_layer(None)
    assert ids(messages) == ["conferences.E003"]
    assert "REDIS_URL" in messages[0].hint
    # Embedded in the web process, or with Redis, all is well.
    role("embedded")
    assert checks.check_worker_channel_layer(None) == []
    role("worker")
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer"}}
    assert checks.check_worker_channel_layer(None) == []


def test_unknown_role_refused():
    with pytest.raises(ValueError):
        checks.set_process_role("daemon")


def test_debug_with_production_database_and_public_hosts(settings, monkeypatch):
    settings.DEBUG = True
    monkeypatch.setattr(checks, "_database_engine", lambda: "django.db.backends.postgresql")
    settings.ALLOWED_HOSTS = ["127.0.0.1", "conf.example.com"]
    messages = checks.check_debug_in_production(None)
    assert ids(messages) == ["conferences.W001", "conferences.W002"]
    assert "conf.example.com" in messages[1].msg
    settings.DEBUG = False
    assert checks.check_debug_in_production(None) == []


def test_debug_on_loopback_with_sqlite_is_fine(settings, monkeypatch):
    settings.DEBUG = True
    monkeypatch.setattr(checks, "_database_engine", lambda: "django.db.backends.sqlite3")
    settings.ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
    assert checks.check_debug_in_production(None) == []


def test_the_login_throttle_must_be_the_first_backend_and_its_middleware_present(settings):
    assert checks.check_login_throttle(None) == []
    settings.AUTHENTICATION_BACKENDS = [
        "django.contrib.auth.backends.ModelBackend",
        "conferences.auth_backends.LoginThrottleBackend",
    ]
    messages = checks.check_login_throttle(None)
    assert ids(messages) == ["conferences.E004"]
    assert "first" in messages[0].hint
    settings.AUTHENTICATION_BACKENDS = ["conferences.auth_backends.LoginThrottleBackend"]
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if m != "conferencesite.middleware.LoginThrottleMiddleware"]
    assert ids(checks.check_login_throttle(None)) == ["conferences.E005"]


def test_https_behind_a_proxy_without_trusted_proxies_warns(settings):
    settings.HTTPS, settings.TRUSTED_PROXIES = True, ()
    messages = checks.check_trusted_proxies(None)
    assert ids(messages) == ["conferences.W006"]
    assert "DJANGO_TRUSTED_PROXIES" in messages[0].hint and "127.0.0.1" in messages[0].hint
    settings.TRUSTED_PROXIES = (ipaddress.ip_network("127.0.0.1"),)
    assert checks.check_trusted_proxies(None) == []
    settings.HTTPS, settings.TRUSTED_PROXIES = False, ()
    assert checks.check_trusted_proxies(None) == []


def test_trusting_every_address_warns(settings):
    settings.HTTPS = True
    settings.TRUSTED_PROXIES = (ipaddress.ip_network("127.0.0.1"), ipaddress.ip_network("::/0"))
    messages = checks.check_trusted_proxies(None)
    assert ids(messages) == ["conferences.W007"]
    assert "::/0" in messages[0].msg
