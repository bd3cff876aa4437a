"""Settings of the conference site, read from the environment.

Every variable is listed with its meaning in ``.env.example``. A fresh checkout
works without any of them: SQLite in ``var/``, the in-memory channel layer and
web and worker in one process.
"""

from pathlib import Path

from django.core.exceptions import ImproperlyConfigured
from django.utils.translation import gettext_lazy as _

from conferencesite import env

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

DEBUG = env.env_bool("DJANGO_DEBUG", False)

_secret_key = env.env_str("DJANGO_SECRET_KEY")
SECRET_KEY_FROM_ENV = _secret_key is not None
SECRET_KEY = _secret_key or env.dev_secret_key(VAR_DIR / "secret_key")

ALLOWED_HOSTS = env.env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost"])

HTTPS = env.env_bool("DJANGO_HTTPS", False)
# Proxies whose X-Forwarded-For is believed (conferences/client_address.py);
# empty: the TCP peer is the client.
TRUSTED_PROXIES = env.env_networks("DJANGO_TRUSTED_PROXIES")

DATABASE_URL = env.env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}")
DATABASES = {"default": env.parse_database_url("DATABASE_URL", DATABASE_URL, base_dir=BASE_DIR)}
if DATABASES["default"]["ENGINE"].endswith("sqlite3") and DATABASES["default"]["NAME"] != ":memory:":
    env.ensure_private_file(DATABASES["default"]["NAME"])

_redis_url = env.env_str("REDIS_URL")
REDIS_URL = env.parse_redis_url("REDIS_URL", _redis_url) if _redis_url else None
# Redis behind Sentinel: REDIS_URL then names the master by its service name (redis://mymaster/0).
REDIS_SENTINELS = env.env_sentinels("REDIS_SENTINELS")
REDIS_SENTINEL_PASSWORD = env.env_str("REDIS_SENTINEL_PASSWORD")
if REDIS_SENTINELS:
    if not REDIS_URL:
        raise ImproperlyConfigured("REDIS_SENTINELS needs REDIS_URL naming the master: redis://<master name>/0.")
    env.check_sentinel_master_url("REDIS_URL", REDIS_URL)
CHANNEL_LAYERS = env.channel_layers_for(REDIS_URL, REDIS_SENTINELS, REDIS_SENTINEL_PASSWORD)
# Shared by all web processes when there is Redis (login throttling counts).
CACHES = env.caches_for(REDIS_URL, REDIS_SENTINELS, REDIS_SENTINEL_PASSWORD)

_ari_url = env.env_str("ARI_URL")
ARI_URL = env.parse_http_url("ARI_URL", _ari_url) if _ari_url else None
ARI_USERNAME = env.env_str("ARI_USERNAME")
ARI_PASSWORD = env.env_str("ARI_PASSWORD")
ARI_APP = env.env_str("ARI_APP", "conference")

# The bearer token a Prometheus scraper sends for /metrics (conferences/metrics.py); empty: no /metrics.
METRICS_TOKEN = env.env_str("METRICS_TOKEN", "")

# Open WebSockets one user may hold across all web processes (room pages and room lists).
MAX_SOCKETS_PER_USER = env.env_int("MAX_SOCKETS_PER_USER", 20, minimum=1)
# Bytes a WebSocket may have waiting for a client that does not read before it
# is closed (conferences/consumers.py, FanOutConsumer; under daphne also
# conferencesite/daphne_limits.py); 0 turns the limit off.
WEBSOCKET_MAX_QUEUED_BYTES = env.env_int("WEBSOCKET_MAX_QUEUED_BYTES", 1024 * 1024, minimum=0)

# The REST API (conferences/api/auth.py): requests one token (or one logged-in user) may make per window,
# all web processes together.
API_RATE_LIMIT = env.env_int("API_RATE_LIMIT", 120, minimum=1)
API_RATE_WINDOW = env.env_int("API_RATE_WINDOW", 60, minimum=1)

# Webhooks (conferences/webhooks.py): a receiver's answer is awaited this long; a failed delivery is
# tried again after WEBHOOK_RETRY_SECONDS, doubling (up to an hour, with jitter), until
# WEBHOOK_MAX_ATTEMPTS attempts or WEBHOOK_RETRY_HOURS after the event; the delivery log keeps
# delivered and failed rows WEBHOOK_RETENTION_DAYS.
WEBHOOK_TIMEOUT_SECONDS = env.env_int("WEBHOOK_TIMEOUT_SECONDS", 5, minimum=1)
WEBHOOK_RETRY_SECONDS = env.env_int("WEBHOOK_RETRY_SECONDS", 10, minimum=1)
WEBHOOK_MAX_ATTEMPTS = env.env_int("WEBHOOK_MAX_ATTEMPTS", 20, minimum=1)
WEBHOOK_RETRY_HOURS = env.env_int("WEBHOOK_RETRY_HOURS", 24, minimum=1)
WEBHOOK_RETENTION_DAYS = env.env_int("WEBHOOK_RETENTION_DAYS", 7, minimum=1)
# Webhooks may post to receivers on loopback (development, the tests); never to link-local addresses.
WEBHOOK_ALLOW_LOOPBACK = env.env_bool("WEBHOOK_ALLOW_LOOPBACK", False)

# Staff must set up and use a second factor (TOTP) before the admin or any page is reachable
# (conferences/twofactor.py); off: staff may still set one up, and are then always asked for a code.
REQUIRE_STAFF_2FA = env.env_bool("REQUIRE_STAFF_2FA", False)
# The name an authenticator app shows beside the account; the TOTP admin never shows a device's secret.
OTP_TOTP_ISSUER = "Conferences"
OTP_ADMIN_HIDE_SENSITIVE_DATA = True

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "ninja",  # the API's docs page from its own static files, not a CDN (the CSP allows 'self' only)
    "django_otp",
    "django_otp.plugins.otp_totp",
    "conferences",
]

MIDDLEWARE = [
    "conferencesite.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "conferencesite.middleware.SecurityHeadersMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "conferencesite.middleware.LoginThrottleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "conferences.twofactor.TwoFactorMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "conferencesite.urls"
ASGI_APPLICATION = "conferencesite.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "conferences.oidc.login_context",
            ],
        },
    },
]

# The throttle first, so that every authenticate() passes it before a password is checked.
AUTHENTICATION_BACKENDS = [
    "conferences.auth_backends.LoginThrottleBackend",
    "django.contrib.auth.backends.ModelBackend",
]

# LDAP / Active Directory (django-auth-ldap; conferences/directory.py; docs/operations.md, "LDAP and
# Active Directory"): off while LDAP_SERVER_URI is unset. On, the LDAP_* variables become
# django-auth-ldap's AUTH_LDAP_* settings (and LDAP_SYNC_MINUTES, the period of manage.py ldap_sync
# --loop), and the directory is the last way in: after the throttle and the local accounts.
_ldap = env.ldap_settings()
LDAP_ENABLED = _ldap is not None
if LDAP_ENABLED:
    globals().update(_ldap)
    AUTHENTICATION_BACKENDS.append("conferences.directory.DirectoryBackend")

# Single sign-on with OpenID Connect (mozilla-django-oidc; conferences/oidc.py; docs/operations.md, "Single
# sign-on (OpenID Connect)"): off while OIDC_PROVIDER_URL is unset. On, the OIDC_* variables become the
# library's settings (the provider's endpoints come from its discovery document, when first needed), and the
# provider is the last way in, after the throttle; the login page shows "Sign in with OIDC_PROVIDER_NAME".
_oidc = env.oidc_settings()
OIDC_ENABLED = _oidc is not None
if OIDC_ENABLED:
    globals().update(_oidc)
    AUTHENTICATION_BACKENDS.append("conferences.oidc.OIDCBackend")

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "conference-list"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en"
LANGUAGES = [("en", _("English")), ("ru", _("Russian"))]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "static"
# Recordings (and any other file the site keeps) go through Django's default storage: files under
# var/media by default; never served as static files (downloads check access on every request).
MEDIA_ROOT = Path(env.env_str("MEDIA_ROOT", str(VAR_DIR / "media")))
# ... or, with S3_BUCKET, in an S3-compatible store through django-storages (docs/operations.md).
STORAGES = env.storages_for()

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Security headers that hold with or without TLS.
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
# Messages wait in the session (the database), not in a cookie: one shows a webhook's new secret once
# (conferences/admin.py), which a cookie would carry through proxies and browser storage.
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"

if HTTPS:
    # Served behind a TLS-terminating reverse proxy that sets X-Forwarded-Proto.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    # Load balancers and systemd probe the backend over plain HTTP (conferencesite/health.py).
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = 60 * 60 * 24 * 365
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    CSRF_TRUSTED_ORIGINS = [f"https://{host}" for host in ALLOWED_HOSTS if host != "*"]

# HSTS preloading is a commitment for the whole domain that only its owner can make.
SILENCED_SYSTEM_CHECKS = ["security.W021"]

# LOG_FORMAT=json: JSON lines with the room, channel and request ids (conferencesite/logformat.py).
LOG_FORMAT = env.env_choice("LOG_FORMAT", "text", ("text", "json"))
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        "json": {"()": "conferencesite.logformat.JsonFormatter"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "json" if LOG_FORMAT == "json" else "plain"},
    },
    "root": {"handlers": ["console"], "level": "INFO"},
    "loggers": {
        "django": {"level": "INFO"},
        "daphne": {"level": "WARNING"},
        # uvicorn logs every WebSocket's opening and closing at INFO; manage.py serve prints its address itself.
        "uvicorn": {"level": "WARNING"},
    },
}
