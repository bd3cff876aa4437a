"""Strict parsing of the environment variables that configure the site.

Every helper raises ``ImproperlyConfigured`` with the variable's name, so a
typo in a deployment stops start-up with a message instead of a surprise.
"""

import ipaddress
import os
import re
import secrets
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

from conferences.ari import address

TRUE_VALUES = {"true", "1", "yes", "on"}
FALSE_VALUES = {"false", "0", "no", "off"}


def env_str(name, default=None, environ=None):
    """Return the variable's value stripped, or ``default`` when unset or empty."""
    environ = os.environ if environ is None else environ
    value = environ.get(name, "").strip()
    return value if value else default


def env_bool(name, default, environ=None):
    """Parse ``True``/``False`` (also 1/0, yes/no, on/off); anything else is an error."""
    value = env_str(name, environ=environ)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in TRUE_VALUES:
        return True
    if lowered in FALSE_VALUES:
        return False
    raise ImproperlyConfigured(f"{name} must be True or False, got {value!r}.")


def env_choice(name, default, choices, environ=None):
    """One of ``choices`` (case-insensitive); anything else is an error naming them."""
    value = env_str(name, environ=environ)
    if value is None:
        return default
    if value.lower() not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}, got {value!r}.")
    return value.lower()


def env_list(name, default, environ=None):
    """Parse a comma-separated list; empty items are an error (a stray comma)."""
    value = env_str(name, environ=environ)
    if value is None:
        return list(default)
    items = [item.strip() for item in value.split(",")]
    if any(not item for item in items):
        raise ImproperlyConfigured(f"{name} must be a comma-separated list without empty items, got {value!r}.")
    return items


def env_int(name, default, *, minimum=None, environ=None):
    """Parse a whole number (at least ``minimum`` when given); anything else is an error."""
    value = env_str(name, environ=environ)
    if value is None:
        return default
    try:
        number = int(value, 10)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number, got {value!r}.") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {number}.")
    return number


def env_networks(name, environ=None):
    """Parse a comma-separated list of IP addresses and CIDR networks into a tuple of networks.

    Unset or empty is an empty tuple. Host names are refused (they would be
    resolved behind the operator's back), and so is a network with host bits
    set (``10.0.0.1/8``: a typo for ``10.0.0.0/8`` or for ``10.0.0.1``?).
    """
    value = env_str(name, environ=environ)
    if value is None:
        return ()
    networks = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            raise ImproperlyConfigured(f"{name} must be a comma-separated list without empty items, got {value!r}.")
        try:
            networks.append(ipaddress.ip_network(item, strict=True))
        except ValueError as exc:
            raise ImproperlyConfigured(
                f"{name}: {item!r} is not an IP address or network such as 127.0.0.1, 10.0.0.0/8 or ::1 ({exc})."
            ) from None
    return tuple(networks)


def parse_database_url(name, url, *, base_dir):
    """Turn ``sqlite:///path`` or ``postgres://user:pass@host:port/db`` into a DATABASES entry."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    if scheme == "sqlite":
        if parts.netloc:
            raise ImproperlyConfigured(
                f"{name}: a SQLite URL has no host; use sqlite:///relative/path "
                f"or sqlite:////absolute/path, got {url!r}."
            )
        path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
        if not path:
            raise ImproperlyConfigured(f"{name}: the SQLite URL names no file, got {url!r}.")
        db_path = Path(path)
        if not db_path.is_absolute() and path != ":memory:":
            db_path = base_dir / db_path
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(db_path) if path != ":memory:" else ":memory:",
            "OPTIONS": {
                "timeout": 20,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    if scheme in {"postgres", "postgresql", "pgsql"}:
        name_part = unquote(parts.path.lstrip("/"))
        if not name_part:
            raise ImproperlyConfigured(f"{name}: the PostgreSQL URL names no database, got {url!r}.")
        port = _check_port(name, url, parts)
        conn_max_age = options.pop("conn_max_age", "0")
        if not conn_max_age.isdigit():
            raise ImproperlyConfigured(f"{name}: conn_max_age must be a whole number of seconds.")
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name_part,
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": unquote(parts.hostname or ""),
            "PORT": str(port or ""),
            "CONN_MAX_AGE": int(conn_max_age),
            "CONN_HEALTH_CHECKS": True,
            "OPTIONS": options,
        }
    raise ImproperlyConfigured(f"{name} must start with sqlite:/// or postgres://, got scheme {parts.scheme!r}.")


def _check_port(name, url, parts):
    try:
        return parts.port
    except ValueError:
        raise ImproperlyConfigured(f"{name}: the port is not a number in {url!r}.") from None


def parse_redis_url(name, url):
    """Check that ``url`` is a redis:// or rediss:// URL and return it unchanged."""
    parts = urlsplit(url)
    if parts.scheme not in {"redis", "rediss", "unix"}:
        raise ImproperlyConfigured(f"{name} must start with redis://, rediss:// or unix://, got {url!r}.")
    _check_port(name, url, parts)
    if parts.scheme != "unix" and not parts.hostname:
        raise ImproperlyConfigured(f"{name} names no host, got {url!r}.")
    return url


def parse_http_url(name, url):
    """Check that ``url`` is an ARI base URL (conferences/ari/address.py); return it without a trailing slash."""
    problem = address.http_url_problem(url)
    if problem is not None:
        raise ImproperlyConfigured(f"{name} {problem}")
    return url.rstrip("/")


def ensure_private_file(path):
    """Create ``path`` readable and writable by its owner only (0600) if it does not exist yet.

    For the SQLite database: SQLite would create it with the process's umask
    (often world-readable), and it holds sessions, ARI passwords and callers'
    numbers. SQLite gives its -wal and -shm files the database file's mode.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def env_sentinels(name, environ=None):
    """Parse ``host:port,host:port`` (Redis Sentinels); ``[]`` when unset. IPv6 hosts in brackets."""
    value = env_str(name, environ=environ)
    if value is None:
        return []
    sentinels = []
    for item in env_list(name, [], environ=environ):
        parts = urlsplit(f"//{item}")
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None or parts.path or parts.username or parts.password:
            raise ImproperlyConfigured(f"{name} must list Sentinels as host:port, comma-separated; got {item!r}.")
        sentinels.append((parts.hostname, port))
    return sentinels


def check_sentinel_master_url(name, url):
    """With Sentinels, ``url`` names the master by its Sentinel service name: ``redis://[:password@]mymaster/0``."""
    parts = urlsplit(url)
    if parts.scheme not in {"redis", "rediss"}:
        raise ImproperlyConfigured(
            f"{name} must be redis://[:password@]<master name>/<db> when REDIS_SENTINELS is set, got {url!r}."
        )
    if parts.port is not None:
        raise ImproperlyConfigured(
            f"{name} names the Sentinel master (its service name, no port) when REDIS_SENTINELS is set, got {url!r}."
        )
    return url


def sentinel_host(redis_url, sentinels, sentinel_password, **extra):
    """A channels_redis host entry for a master found through Sentinels (conferencesite/redis_pools.py)."""
    return {
        "sentinels": list(sentinels),
        "master_url": redis_url,
        "sentinel_kwargs": {"password": sentinel_password} if sentinel_password else {},
        **extra,
    }


# The channel layer's connections. A read of channels_redis blocks for up to its brpop_timeout
# (5 s) and is then sent again, so a quiet room never waits longer than that for an answer: a
# socket timeout above it never cuts a healthy read (redis-py 8's default of 5 s, equal to it,
# did: django/channels_redis#422), and ends a read from a Redis that froze or whose host
# vanished without a reset (a connection without a timeout would wait for it for ever, and never
# follow a Sentinel failover). Keepalive finds dead peers of idle pooled connections.
LAYER_SOCKET = {"socket_timeout": 10, "socket_connect_timeout": 3, "socket_keepalive": True}


def channel_layers_for(redis_url, sentinels=(), sentinel_password=None):
    """Return CHANNEL_LAYERS: Redis when a URL is given, else the in-process layer.

    The Redis layer is channels_redis's with reads a closing socket cannot cut
    and that ride out a Redis outage or a Sentinel failover
    (conferencesite/layers.py). With ``sentinels``, ``redis_url`` names the
    master by its Sentinel service name.
    """
    if not redis_url:
        return {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    if sentinels:
        host = sentinel_host(redis_url, sentinels, sentinel_password, **LAYER_SOCKET)
    else:
        host = {"address": redis_url, **LAYER_SOCKET}
    return {
        "default": {
            "BACKEND": "conferencesite.layers.RedisChannelLayer",
            "CONFIG": {
                "hosts": [host],
                # Messages one channel may have waiting: a web process's room
                # hub receives every event of the rooms it serves on one. The
                # default of 100 dropped events when 50 callers joined a room
                # watched by 1,000 sockets of one slow process
                # (docs/performance.md); a drop costs a resync.
                "capacity": 1000,
            },
        }
    }


# The cache's Redis commands: how long one may wait, and how a dropped connection is retried
# (a Redis restart, a Sentinel failover) before the request gets the error.
CACHE_SOCKET_TIMEOUT = 3
CACHE_RETRIES = 5  # 0.2, 0.4, 0.8, 1 and 1 s apart: about 3.4 s


def caches_for(redis_url, sentinels=(), sentinel_password=None):
    """Return CACHES: Redis when a URL is given (django-redis), else process memory.

    django-redis, not Django's own RedisCache: it can find the master through
    Redis Sentinel. Reads go to the master too (one URL), so a throttle never
    reads a count a replica has not received yet.
    """
    if not redis_url:
        return {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError, ReadOnlyError
    from redis.retry import Retry

    options = {
        "CLIENT_CLASS": "django_redis.client.DefaultClient",
        "SOCKET_CONNECT_TIMEOUT": CACHE_SOCKET_TIMEOUT,
        "SOCKET_TIMEOUT": CACHE_SOCKET_TIMEOUT,
        "CONNECTION_POOL_KWARGS": {
            "retry": Retry(ExponentialBackoff(cap=1.0, base=0.1), CACHE_RETRIES),
            # Errors of a command Redis did not carry out: no connection (ConnectionError
            # almost always means that), a master Sentinel has demoted (READONLY). Not a
            # timeout: Redis may have run the command (a throttle's count) already.
            "retry_on_error": [ConnectionError, ReadOnlyError],
        },
    }
    if sentinels:
        options["CONNECTION_FACTORY"] = "django_redis.pool.SentinelConnectionFactory"
        if urlsplit(redis_url).scheme == "rediss":
            # redis-py's from_url would pick a plain SSLConnection to the service name as host.
            from redis.sentinel import SentinelManagedSSLConnection

            options["CONNECTION_POOL_KWARGS"]["connection_class"] = SentinelManagedSSLConnection
        options["SENTINELS"] = list(sentinels)
        sentinel_kwargs = {"socket_connect_timeout": CACHE_SOCKET_TIMEOUT, "socket_timeout": CACHE_SOCKET_TIMEOUT}
        if sentinel_password:
            sentinel_kwargs["password"] = sentinel_password
        options["SENTINEL_KWARGS"] = sentinel_kwargs
    return {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": [redis_url],
            "KEY_PREFIX": "conferences",
            "OPTIONS": options,
        }
    }


def dev_secret_key(path):
    """Return the development secret key kept in ``path``, creating it once."""
    path = Path(path)
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(50)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it meanwhile
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key


S3_VARIABLES = (
    "S3_BUCKET",
    "S3_ENDPOINT_URL",
    "S3_REGION",
    "S3_ACCESS_KEY_ID",
    "S3_SECRET_ACCESS_KEY",
    "S3_PREFIX",
    "S3_ADDRESSING_STYLE",
)
S3_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def storages_for(environ=None):
    """Django's ``STORAGES``: the site's files (recordings) under ``MEDIA_ROOT``, or, with ``S3_BUCKET``, in an
    S3-compatible store through django-storages (AWS S3, MinIO, Ceph, Wasabi…; docs/operations.md)."""
    static = {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}
    bucket = env_str("S3_BUCKET", environ=environ)
    if bucket is None:
        others = [name for name in S3_VARIABLES if env_str(name, environ=environ) is not None]
        if others:
            raise ImproperlyConfigured(f"{others[0]} is set but S3_BUCKET is not: set S3_BUCKET or unset the S3_*.")
        # (no location: FileSystemStorage follows MEDIA_ROOT, also where a test changes it)
        return {"default": {"BACKEND": "django.core.files.storage.FileSystemStorage"}, "staticfiles": static}
    if not S3_BUCKET_NAME.match(bucket):
        raise ImproperlyConfigured(f"S3_BUCKET must be an S3 bucket name (3-63 of a-z 0-9 . -), got {bucket!r}.")
    try:
        import storages.backends.s3  # noqa: F401
    except ImportError:
        raise ImproperlyConfigured(
            "S3_BUCKET is set but django-storages is not installed: pip install -r requirements-s3.txt"
        ) from None
    key, secret = env_str("S3_ACCESS_KEY_ID", environ=environ), env_str("S3_SECRET_ACCESS_KEY", environ=environ)
    if (key is None) != (secret is None):
        raise ImproperlyConfigured("S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY go together: set both or neither.")
    options = {
        "bucket_name": bucket,
        "file_overwrite": False,  # a name taken gets another: no recording ever replaces another
        "default_acl": None,  # the bucket's own policy (keep it private: the site streams every download)
        "querystring_auth": True,
        "addressing_style": env_choice("S3_ADDRESSING_STYLE", "auto", ("auto", "path", "virtual"), environ),
    }
    endpoint = env_str("S3_ENDPOINT_URL", environ=environ)
    if endpoint is not None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ImproperlyConfigured(f"S3_ENDPOINT_URL must be an http:// or https:// URL, got {endpoint!r}.")
        options["endpoint_url"] = endpoint.rstrip("/")
    if key is not None:  # else boto3's own chain: AWS_* variables, ~/.aws, an instance role
        options["access_key"], options["secret_key"] = key, secret
    region = env_str("S3_REGION", environ=environ)
    if region is not None:
        options["region_name"] = region
    prefix = env_str("S3_PREFIX", environ=environ)
    if prefix is not None:
        if ".." in prefix.split("/") or not prefix.strip("/"):
            raise ImproperlyConfigured(f"S3_PREFIX must be a key prefix like site/media, got {prefix!r}.")
        options["location"] = prefix.strip("/")
    return {"default": {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": options}, "staticfiles": static}


# LDAP / Active Directory (conferences/directory.py; docs/operations.md, "LDAP and Active Directory").
LDAP_VARIABLES = (
    "LDAP_SERVER_URI",
    "LDAP_BIND_DN",
    "LDAP_BIND_PASSWORD",
    "LDAP_START_TLS",
    "LDAP_CA_FILE",
    "LDAP_TIMEOUT",
    "LDAP_USER_SEARCH_BASE",
    "LDAP_USER_FILTER",
    "LDAP_DISABLED_FILTER",
    "LDAP_GROUP_SEARCH_BASE",
    "LDAP_GROUP_TYPE",
    "LDAP_GROUP_FILTER",
    "LDAP_MIRROR_GROUPS",
    "LDAP_STAFF_GROUP",
    "LDAP_SUPERUSER_GROUP",
    "LDAP_SYNC_MINUTES",
)
# LDAP_GROUP_TYPE: django-auth-ldap's group type and the default LDAP_GROUP_FILTER that goes with it.
LDAP_GROUP_TYPES = {
    "groupofnames": ("GroupOfNamesType", "(objectClass=groupOfNames)"),
    "nestedgroupofnames": ("NestedGroupOfNamesType", "(objectClass=groupOfNames)"),
    "groupofuniquenames": ("GroupOfUniqueNamesType", "(objectClass=groupOfUniqueNames)"),
    "posixgroup": ("PosixGroupType", "(objectClass=posixGroup)"),
    # Nested: a member of a group inside a group is a member too, as Windows sees it.
    "activedirectory": ("NestedActiveDirectoryGroupType", "(objectClass=group)"),
}


LDAP_USER_PRINCIPAL_NAME = re.compile(r"^[^@\s=,]+@[^@\s=,]+$")


def _ldap_uris(name, value):
    uris = []
    for item in env_list(name, [], environ={name: value}):
        parts = urlsplit(item)
        if parts.scheme.lower() not in ("ldap", "ldaps") or not parts.hostname or parts.path not in ("", "/"):
            raise ImproperlyConfigured(f"{name} must be ldap://host[:port] or ldaps://host[:port], got {item!r}.")
        _check_port(name, item, parts)
        uris.append(item)
    return " ".join(uris)  # libldap tries them in turn


def _ldap_dn(name, value):
    import ldap.dn

    if value is not None and (not value or not ldap.dn.is_dn(value)):
        raise ImproperlyConfigured(f"{name} must be a distinguished name such as dc=example,dc=com, got {value!r}.")
    return value


def _ldap_filter(name, value, *, needs_user):
    """A search filter in parentheses, balanced; with ``needs_user``, holding ``%(user)s`` for the login name."""
    depth = 0
    for char in value:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            break
    if not (value.startswith("(") and value.endswith(")")) or depth != 0:
        raise ImproperlyConfigured(f"{name} must be an LDAP filter in balanced parentheses, got {value!r}.")
    if needs_user:
        try:
            expanded = value % {"user": "x"}
        except (KeyError, ValueError, TypeError):
            expanded = None
        if expanded is None or "%(user)s" not in value:
            raise ImproperlyConfigured(
                f"{name} must hold %(user)s where the login name goes, e.g. (uid=%(user)s), got {value!r}."
            )
    elif "%" in value:
        raise ImproperlyConfigured(f"{name} must not contain %, got {value!r}.")
    return value


def _ldap_mirror(name, value):
    if value is None or value.lower() in TRUE_VALUES:
        return True
    if value.lower() in FALSE_VALUES:
        return False
    return env_list(name, [], environ={name: value})


def ldap_settings(environ=None):
    """django-auth-ldap's ``AUTH_LDAP_*`` settings from the ``LDAP_*`` variables; None without LDAP_SERVER_URI.

    Directory calls wait at most LDAP_TIMEOUT seconds for a connection and for each operation, so a
    directory that is down or hangs costs a login that long, never a hung web process. Referrals
    are not chased (Active Directory sends them for searches from the domain's root; following them
    hangs on unreachable servers and binds anonymously).
    """
    uri = env_str("LDAP_SERVER_URI", environ=environ)
    if uri is None:
        others = [name for name in LDAP_VARIABLES if env_str(name, environ=environ) is not None]
        if others:
            raise ImproperlyConfigured(
                f"{others[0]} is set but LDAP_SERVER_URI is not: set LDAP_SERVER_URI or unset the LDAP_*."
            )
        return None
    import ldap
    from django_auth_ldap import config

    uri = _ldap_uris("LDAP_SERVER_URI", uri)
    bind_dn = env_str("LDAP_BIND_DN", environ=environ)
    if bind_dn is not None and not LDAP_USER_PRINCIPAL_NAME.match(bind_dn):  # (AD binds with name@domain too)
        _ldap_dn("LDAP_BIND_DN", bind_dn)
    bind_password = env_str("LDAP_BIND_PASSWORD", environ=environ)
    if (bind_dn is None) != (bind_password is None):
        raise ImproperlyConfigured("LDAP_BIND_DN and LDAP_BIND_PASSWORD go together: set both, or neither (anonymous).")
    user_base = _ldap_dn("LDAP_USER_SEARCH_BASE", env_str("LDAP_USER_SEARCH_BASE", environ=environ))
    if user_base is None:
        raise ImproperlyConfigured("LDAP_USER_SEARCH_BASE must be set with LDAP_SERVER_URI: where the accounts are.")
    user_filter = _ldap_filter(
        "LDAP_USER_FILTER", env_str("LDAP_USER_FILTER", "(uid=%(user)s)", environ=environ), needs_user=True
    )
    disabled = env_str("LDAP_DISABLED_FILTER", environ=environ)
    if disabled is not None:
        # A disabled account is not found: it cannot log in, and the sync treats it as gone.
        user_filter = f"(&{user_filter}(!{_ldap_filter('LDAP_DISABLED_FILTER', disabled, needs_user=False)}))"
    timeout = env_int("LDAP_TIMEOUT", 5, minimum=1, environ=environ)
    options = {ldap.OPT_NETWORK_TIMEOUT: timeout, ldap.OPT_TIMEOUT: timeout, ldap.OPT_REFERRALS: 0}
    ca_file = env_str("LDAP_CA_FILE", environ=environ)
    if ca_file is not None:
        if not os.access(ca_file, os.R_OK) or not Path(ca_file).is_file():
            raise ImproperlyConfigured(f"LDAP_CA_FILE must be a readable file of CA certificates, got {ca_file!r}.")
        options[ldap.OPT_X_TLS_CACERTFILE] = ca_file
        options[ldap.OPT_X_TLS_NEWCTX] = 0  # (last: makes the options above take effect)
    group_type_name = env_choice("LDAP_GROUP_TYPE", "groupofnames", tuple(LDAP_GROUP_TYPES), environ)
    group_class, default_group_filter = LDAP_GROUP_TYPES[group_type_name]
    result = {
        "AUTH_LDAP_SERVER_URI": uri,
        "AUTH_LDAP_BIND_DN": bind_dn or "",
        "AUTH_LDAP_BIND_PASSWORD": bind_password or "",
        "AUTH_LDAP_START_TLS": env_bool("LDAP_START_TLS", False, environ=environ),
        "AUTH_LDAP_CONNECTION_OPTIONS": options,
        "AUTH_LDAP_USER_SEARCH": config.LDAPSearch(user_base, ldap.SCOPE_SUBTREE, user_filter),
        "AUTH_LDAP_USER_ATTR_MAP": {"first_name": "givenName", "last_name": "sn", "email": "mail"},
        "AUTH_LDAP_GROUP_TYPE": getattr(config, group_class)(),
        "AUTH_LDAP_MIRROR_GROUPS": False,
        "AUTH_LDAP_USER_FLAGS_BY_GROUP": {},
        # Memberships are read afresh at every login and sync: no cache.
        "AUTH_LDAP_CACHE_TIMEOUT": 0,
        "LDAP_SYNC_MINUTES": env_int("LDAP_SYNC_MINUTES", 5, minimum=1, environ=environ),
    }
    group_base = _ldap_dn("LDAP_GROUP_SEARCH_BASE", env_str("LDAP_GROUP_SEARCH_BASE", environ=environ))
    group_names = ("LDAP_GROUP_FILTER", "LDAP_MIRROR_GROUPS", "LDAP_STAFF_GROUP", "LDAP_SUPERUSER_GROUP")
    if group_base is None:
        for name in group_names:
            if env_str(name, environ=environ) is not None:
                raise ImproperlyConfigured(f"{name} needs LDAP_GROUP_SEARCH_BASE: where the groups are.")
        return result
    group_filter = _ldap_filter(
        "LDAP_GROUP_FILTER", env_str("LDAP_GROUP_FILTER", default_group_filter, environ=environ), needs_user=False
    )
    result["AUTH_LDAP_GROUP_SEARCH"] = config.LDAPSearch(group_base, ldap.SCOPE_SUBTREE, group_filter)
    mirror = _ldap_mirror("LDAP_MIRROR_GROUPS", env_str("LDAP_MIRROR_GROUPS", environ=environ))
    result["AUTH_LDAP_MIRROR_GROUPS"] = mirror
    flags = {}
    for flag, name in (("is_staff", "LDAP_STAFF_GROUP"), ("is_superuser", "LDAP_SUPERUSER_GROUP")):
        dn = _ldap_dn(name, env_str(name, environ=environ))
        if dn is not None:
            flags[flag] = dn
    result["AUTH_LDAP_USER_FLAGS_BY_GROUP"] = flags
    return result


# Single sign-on with OpenID Connect (conferences/oidc.py; docs/operations.md, "Single sign-on (OpenID Connect)").
OIDC_VARIABLES = (
    "OIDC_PROVIDER_URL",
    "OIDC_CLIENT_ID",
    "OIDC_CLIENT_SECRET",
    "OIDC_SCOPES",
    "OIDC_USERNAME_CLAIM",
    "OIDC_GROUPS_CLAIM",
    "OIDC_MIRROR_GROUPS",
    "OIDC_STAFF_GROUP",
    "OIDC_SUPERUSER_GROUP",
    "OIDC_PROVIDER_NAME",
    "OIDC_TIMEOUT",
)
OIDC_CLAIM_NAME = re.compile(r"^[A-Za-z0-9_.:/-]+$")


def _oidc_claim(name, value):
    if not OIDC_CLAIM_NAME.match(value):
        raise ImproperlyConfigured(f"{name} must be a claim name such as preferred_username or groups, got {value!r}.")
    return value


def oidc_settings(environ=None):
    """mozilla-django-oidc's settings from the ``OIDC_*`` variables; None without OIDC_PROVIDER_URL.

    The provider's endpoints are not settings: conferences/oidc.py reads them from its discovery
    document when first needed (a provider that is down never stops start-up). ID tokens must be
    RS256-signed, checked against the provider's JWKS; every call to the provider waits at most
    OIDC_TIMEOUT seconds.
    """
    issuer = env_str("OIDC_PROVIDER_URL", environ=environ)
    if issuer is None:
        others = [name for name in OIDC_VARIABLES if env_str(name, environ=environ) is not None]
        if others:
            raise ImproperlyConfigured(
                f"{others[0]} is set but OIDC_PROVIDER_URL is not: set OIDC_PROVIDER_URL or unset the OIDC_*."
            )
        return None
    parts = urlsplit(issuer)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ImproperlyConfigured(
            f"OIDC_PROVIDER_URL must be the provider's issuer, an https:// URL such as "
            f"https://sso.example.com/realms/company, got {issuer!r}."
        )
    _check_port("OIDC_PROVIDER_URL", issuer, parts)
    client_id = env_str("OIDC_CLIENT_ID", environ=environ)
    client_secret = env_str("OIDC_CLIENT_SECRET", environ=environ)
    if client_id is None or client_secret is None:
        raise ImproperlyConfigured(
            "OIDC_CLIENT_ID and OIDC_CLIENT_SECRET must be set with OIDC_PROVIDER_URL: the site's confidential client."
        )
    scopes = env_str("OIDC_SCOPES", "openid email profile", environ=environ).split()
    if "openid" not in scopes:
        raise ImproperlyConfigured(f"OIDC_SCOPES must include openid, got {' '.join(scopes)!r}.")
    staff = env_str("OIDC_STAFF_GROUP", environ=environ)
    superuser = env_str("OIDC_SUPERUSER_GROUP", environ=environ)
    return {
        "OIDC_PROVIDER_URL": issuer.rstrip("/"),
        "OIDC_RP_CLIENT_ID": client_id,
        "OIDC_RP_CLIENT_SECRET": client_secret,
        "OIDC_RP_SCOPES": " ".join(scopes),
        # Signed by the provider's key (its JWKS), never HS256 with the client's secret.
        "OIDC_RP_SIGN_ALGO": "RS256",
        "OIDC_USE_NONCE": True,
        "OIDC_USE_PKCE": True,
        "OIDC_STORE_ID_TOKEN": True,  # for the provider's logout (id_token_hint)
        "OIDC_TIMEOUT": env_int("OIDC_TIMEOUT", 5, minimum=1, environ=environ),
        "OIDC_USERNAME_CLAIM": _oidc_claim(
            "OIDC_USERNAME_CLAIM", env_str("OIDC_USERNAME_CLAIM", "preferred_username", environ=environ)
        ),
        "OIDC_GROUPS_CLAIM": _oidc_claim("OIDC_GROUPS_CLAIM", env_str("OIDC_GROUPS_CLAIM", "groups", environ=environ)),
        "OIDC_MIRROR_GROUPS": _ldap_mirror("OIDC_MIRROR_GROUPS", env_str("OIDC_MIRROR_GROUPS", environ=environ)),
        "OIDC_USER_FLAGS_BY_GROUP": {
            flag: group for flag, group in (("is_staff", staff), ("is_superuser", superuser)) if group is not None
        },
        "OIDC_PROVIDER_NAME": env_str("OIDC_PROVIDER_NAME", environ=environ),
    }
