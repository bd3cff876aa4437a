"""System checks for the configuration mistakes that cost an afternoon."""

import re

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

from conferences import throttle

# Which kind of process is running the checks. The ARI worker command sets it
# to "worker" (or "embedded" when it runs inside the web process) before it
# runs the checks, so that a worker started on its own can be refused when it
# could not reach any browser.
_process_role = {"role": "web"}

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


def set_process_role(role):
    """Declare this process a ``"web"``, ``"worker"`` or ``"embedded"`` process."""
    if role not in {"web", "worker", "embedded"}:
        raise ValueError(f"unknown process role {role!r}")
    _process_role["role"] = role


def _database_engine():
    return settings.DATABASES["default"]["ENGINE"]


def _in_memory_layer():
    backend = settings.CHANNEL_LAYERS.get("default", {}).get("BACKEND", "")
    return backend.endswith("InMemoryChannelLayer")


@register()
def check_ari_settings(app_configs, **kwargs):
    messages = []
    given = {
        "ARI_URL": bool(settings.ARI_URL),
        "ARI_USERNAME": bool(settings.ARI_USERNAME),
        "ARI_PASSWORD": bool(settings.ARI_PASSWORD),
    }
    if any(given.values()) and not all(given.values()):
        missing = ", ".join(name for name, present in given.items() if not present)
        messages.append(
            Error(
                f"The ARI settings are half filled: {missing} missing.",
                hint="Set ARI_URL, ARI_USERNAME and ARI_PASSWORD together (the user of "
                "Asterisk's ari.conf), or none of them and add servers in the admin.",
                id="conferences.E001",
            )
        )
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", settings.ARI_APP or ""):
        messages.append(
            Error(
                f"ARI_APP {settings.ARI_APP!r} is not a valid Stasis application name.",
                hint="Use letters, digits, dot, dash and underscore, the name the dialplan passes to Stasis().",
                id="conferences.E002",
            )
        )
    return messages


@register()
def check_worker_channel_layer(app_configs, **kwargs):
    if _process_role["role"] == "worker" and _in_memory_layer():
        return [
            Error(
                "The ARI worker runs as a separate process on the in-memory channel layer.",
                hint="The in-memory layer cannot cross processes: no browser would see "
                "what the worker does. Set REDIS_URL for web and worker, or run the "
                "embedded default where the web process runs the worker.",
                id="conferences.E003",
            )
        ]
    return []


@register()
def check_debug_in_production(app_configs, **kwargs):
    if not settings.DEBUG:
        return []
    messages = []
    if "postgresql" in _database_engine():
        messages.append(
            Warning(
                "DJANGO_DEBUG is on with a PostgreSQL database.",
                hint="A production database suggests a production site: DEBUG shows "
                "settings and stack traces to anyone who hits an error. Set DJANGO_DEBUG=False.",
                id="conferences.W001",
            )
        )
    exposed = [host for host in settings.ALLOWED_HOSTS if host not in LOOPBACK_HOSTS]
    if exposed:
        messages.append(
            Warning(
                f"DJANGO_DEBUG is on while the site answers for {', '.join(exposed)}.",
                hint="Debug pages reach every visitor of those hosts. Set DJANGO_DEBUG=False.",
                id="conferences.W002",
            )
        )
    return messages


@register(Tags.security, deploy=True)
def check_deploy(app_configs, **kwargs):
    messages = []
    if not getattr(settings, "SECRET_KEY_FROM_ENV", True):
        messages.append(
            Warning(
                "The secret key comes from the development file var/secret_key.",
                hint="Set DJANGO_SECRET_KEY in the environment of every web and worker process.",
                id="conferences.W003",
            )
        )
    if _in_memory_layer():
        messages.append(
            Warning(
                "No REDIS_URL: the in-memory channel layer serves one process only.",
                hint="That is the embedded mode (web and worker in one process). With several "
                "web processes or a separate `manage.py ari_worker`, set REDIS_URL.",
                id="conferences.W004",
            )
        )
    if "sqlite3" in _database_engine():
        messages.append(
            Warning(
                "The database is SQLite.",
                hint="Fine for one small site in the embedded mode; use PostgreSQL "
                "(DATABASE_URL=postgres://...) with a separate worker or several web processes.",
                id="conferences.W005",
            )
        )
    return messages


THROTTLE_BACKEND = "conferences.auth_backends.LoginThrottleBackend"
THROTTLE_MIDDLEWARE = "conferencesite.middleware.LoginThrottleMiddleware"


@register(Tags.security)
def check_login_throttle(app_configs, **kwargs):
    messages = []
    backends = list(settings.AUTHENTICATION_BACKENDS)
    if not backends or backends[0] != THROTTLE_BACKEND:
        messages.append(
            Error(
                f"{THROTTLE_BACKEND} is not the first of AUTHENTICATION_BACKENDS.",
                hint="A backend before it checks passwords without the login throttle: "
                "keep the throttle first and add other backends after it.",
                id="conferences.E004",
            )
        )
    if THROTTLE_MIDDLEWARE not in settings.MIDDLEWARE:
        messages.append(
            Error(
                f"{THROTTLE_MIDDLEWARE} is missing from MIDDLEWARE.",
                hint="Without it a refused login is answered like a wrong password and "
                "successful logins are not given their attempt back.",
                id="conferences.E005",
            )
        )
    return messages


@register(Tags.security)
def check_trusted_proxies(app_configs, **kwargs):
    messages = []
    proxies = tuple(settings.TRUSTED_PROXIES)
    if settings.HTTPS and not proxies:
        messages.append(
            Warning(
                "DJANGO_HTTPS is on (the site is behind a TLS proxy) but DJANGO_TRUSTED_PROXIES is empty.",
                hint=f"Every client then has the proxy's address: {throttle.MAX_FAILURES_PER_ACCOUNT} wrong "
                f"passwords for an account lock it for everyone, {throttle.MAX_FAILURES_PER_ADDRESS} failed "
                "logins lock the whole site. Set DJANGO_TRUSTED_PROXIES to the proxy's address "
                "(127.0.0.1 behind the shipped nginx).",
                id="conferences.W006",
            )
        )
    everything = [str(network) for network in proxies if network.prefixlen == 0]
    if everything:
        messages.append(
            Warning(
                f"DJANGO_TRUSTED_PROXIES trusts every address ({', '.join(everything)}).",
                hint="Any client could then choose its address with X-Forwarded-For and escape the "
                "login throttle. List only the reverse proxies' own addresses.",
                id="conferences.W007",
            )
        )
    return messages
