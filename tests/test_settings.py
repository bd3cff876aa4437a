"""Settings come from the environment and refuse malformed values by name."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from conferencesite import env
from tests.stack import run_manage

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("value,expected", [("True", True), ("false", False), ("1", True), ("off", False)])
def test_bool_accepts_true_and_false(value, expected):
    assert env.env_bool("X", None, environ={"X": value}) is expected


def test_bool_default_when_unset_or_empty():
    assert env.env_bool("X", True, environ={}) is True
    assert env.env_bool("X", False, environ={"X": "  "}) is False


@pytest.mark.parametrize("value", ["maybe", "Tru", "2", "yes please"])
def test_bool_refuses_anything_else_naming_the_variable(value):
    with pytest.raises(ImproperlyConfigured, match="DJANGO_DEBUG"):
        env.env_bool("DJANGO_DEBUG", False, environ={"DJANGO_DEBUG": value})


def test_list_parsing():
    assert env.env_list("H", ["a"], environ={}) == ["a"]
    assert env.env_list("H", [], environ={"H": "a.example, b.example"}) == ["a.example", "b.example"]
    with pytest.raises(ImproperlyConfigured, match="H must be"):
        env.env_list("H", [], environ={"H": "a,,b"})


def test_trusted_proxies_parse_addresses_and_networks():
    assert env.env_networks("P", environ={}) == ()
    assert env.env_networks("P", environ={"P": "  "}) == ()
    networks = env.env_networks("P", environ={"P": "127.0.0.1, 10.0.0.0/8,::1 , 2001:db8::/32"})
    assert [str(network) for network in networks] == ["127.0.0.1/32", "10.0.0.0/8", "::1/128", "2001:db8::/32"]


@pytest.mark.parametrize(
    "value,message",
    [
        ("localhost", "'localhost' is not an IP address or network"),
        ("10.0.0.1/8", "host bits set"),
        ("127.0.0.1,,10.0.0.1", "without empty items"),
        ("127.0.0.1;10.0.0.1", "is not an IP address or network"),
        ("300.1.2.3", "is not an IP address or network"),
        ("10.0.0.0/33", "is not an IP address or network"),
    ],
)
def test_trusted_proxies_refuse_anything_else_naming_the_variable(value, message):
    with pytest.raises(ImproperlyConfigured, match=message) as info:
        env.env_networks("DJANGO_TRUSTED_PROXIES", environ={"DJANGO_TRUSTED_PROXIES": value})
    assert str(info.value).startswith("DJANGO_TRUSTED_PROXIES")


def test_sqlite_urls(tmp_path):
    relative = env.parse_database_url("DATABASE_URL", "sqlite:///var/x.sqlite3", base_dir=tmp_path)
    assert relative["ENGINE"] == "django.db.backends.sqlite3"
    assert relative["NAME"] == str(tmp_path / "var/x.sqlite3")
    absolute = env.parse_database_url("DATABASE_URL", "sqlite:////srv/db.sqlite3", base_dir=tmp_path)
    assert absolute["NAME"] == "/srv/db.sqlite3"


def test_postgres_url():
    db = env.parse_database_url(
        "DATABASE_URL",
        "postgres://conf:p%40ss%3Aword@db.internal:6543/conferences?sslmode=require&conn_max_age=60",
        base_dir=ROOT,
    )
    assert db["ENGINE"] == "django.db.backends.postgresql"
    assert (db["USER"], db["PASSWORD"], db["HOST"], db["PORT"], db["NAME"]) == (
        "conf",
        "p@ss:word",
        "db.internal",
        "6543",
        "conferences",
    )
    assert db["OPTIONS"] == {"sslmode": "require"}
    assert db["CONN_MAX_AGE"] == 60


@pytest.mark.parametrize(
    "url,message",
    [
        ("mysql://u@h/db", "must start with sqlite:/// or postgres://"),
        ("postgres://u@h:port/db", "port is not a number"),
        ("postgres://u@h:5432/", "names no database"),
        ("sqlite://host/x.db", "has no host"),
        ("sqlite:///", "names no file"),
        ("postgres://u@h/db?conn_max_age=soon", "conn_max_age"),
    ],
)
def test_bad_database_urls(url, message):
    with pytest.raises(ImproperlyConfigured, match=message) as info:
        env.parse_database_url("DATABASE_URL", url, base_dir=ROOT)
    assert "DATABASE_URL" in str(info.value)


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "redis://:99999999x/0", "redis:///0"])
def test_bad_redis_urls(url):
    with pytest.raises(ImproperlyConfigured, match="REDIS_URL"):
        env.parse_redis_url("REDIS_URL", url)


@pytest.mark.parametrize("url", ["127.0.0.1:8088/ari", "ws://127.0.0.1:8088/ari", "http://:8088/ari", "http://h:x/ari"])
def test_bad_ari_urls(url):
    with pytest.raises(ImproperlyConfigured, match="ARI_URL"):
        env.parse_http_url("ARI_URL", url)


def test_ari_url_trailing_slash_removed():
    assert env.parse_http_url("ARI_URL", "http://pbx:8088/ari/") == "http://pbx:8088/ari"


def test_channel_layers():
    assert env.channel_layers_for(None)["default"]["BACKEND"] == "channels.layers.InMemoryChannelLayer"
    redis = env.channel_layers_for("redis://127.0.0.1:6379/3")["default"]
    assert redis["BACKEND"] == "conferencesite.layers.RedisChannelLayer"
    assert redis["CONFIG"]["hosts"] == [{"address": "redis://127.0.0.1:6379/3", **env.LAYER_SOCKET}]
    # Above channels_redis's blocking read (5 s): a quiet room's read is never cut (channels_redis#422).
    assert env.LAYER_SOCKET["socket_timeout"] > 5


def test_sentinels_parse_hosts_and_ports():
    environ = {"REDIS_SENTINELS": " 10.0.0.1:26379, sentinel-b:26380,[::1]:26381 "}
    assert env.env_sentinels("REDIS_SENTINELS", environ=environ) == [
        ("10.0.0.1", 26379),
        ("sentinel-b", 26380),
        ("::1", 26381),
    ]
    assert env.env_sentinels("REDIS_SENTINELS", environ={}) == []


@pytest.mark.parametrize("value", ["10.0.0.1", "10.0.0.1:x", "a:26379,,b:26379", "redis://a:26379", "u:p@a:26379"])
def test_bad_sentinel_lists_name_the_variable(value):
    with pytest.raises(ImproperlyConfigured, match="REDIS_SENTINELS"):
        env.env_sentinels("REDIS_SENTINELS", environ={"REDIS_SENTINELS": value})


def test_with_sentinels_the_layer_and_the_cache_find_the_master_by_name():
    sentinels = [("127.0.0.1", 26379), ("127.0.0.1", 26380)]
    layer = env.channel_layers_for("redis://:pw@conference/2", sentinels, "sentinel-pw")["default"]
    assert layer["CONFIG"]["hosts"] == [
        {
            "sentinels": sentinels,
            "master_url": "redis://:pw@conference/2",
            "sentinel_kwargs": {"password": "sentinel-pw"},
            **env.LAYER_SOCKET,
        }
    ]
    cache = env.caches_for("redis://:pw@conference/2", sentinels, "sentinel-pw")["default"]
    assert cache["BACKEND"] == "django_redis.cache.RedisCache"
    assert cache["LOCATION"] == ["redis://:pw@conference/2"]  # one URL: reads go to the master too
    assert cache["OPTIONS"]["CONNECTION_FACTORY"] == "django_redis.pool.SentinelConnectionFactory"
    assert cache["OPTIONS"]["SENTINELS"] == sentinels
    assert cache["OPTIONS"]["SENTINEL_KWARGS"]["password"] == "sentinel-pw"
    assert "CONNECTION_FACTORY" not in env.caches_for("redis://127.0.0.1:6379/0")["default"]["OPTIONS"]


@pytest.mark.parametrize(
    "scheme,connection", [("redis", "SentinelManagedConnection"), ("rediss", "SentinelManagedSSLConnection")]
)
def test_the_cache_through_sentinel_connects_to_the_master_it_names(settings, scheme, connection):
    """Built as the settings build it (no connection made yet): the pool asks the Sentinels, TLS kept."""
    from django.core.cache import caches
    from redis.sentinel import SentinelConnectionPool

    settings.CACHES = env.caches_for(f"{scheme}://:pw@conference/2", [("127.0.0.1", 26379)], None)
    pool = caches["default"].client.get_client(write=True).connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "conference"
    assert pool.connection_class.__name__ == connection
    assert pool.connection_kwargs["db"] == 2 and pool.connection_kwargs["password"] == "pw"


def test_the_sentinel_pool_connects_to_the_named_master_with_its_database_and_password():
    from conferencesite import redis_pools

    pool = redis_pools.pool_for(
        env.sentinel_host("rediss://:pw@conference/2", [("127.0.0.1", 26379)], None, socket_timeout=None),
        max_connections=4,
        timeout=1,
    )
    assert isinstance(pool, redis_pools.BlockingSentinelConnectionPool)
    assert pool.service_name == "conference" and pool.max_connections == 4
    assert pool.connection_kwargs["db"] == 2 and pool.connection_kwargs["password"] == "pw"
    assert pool.connection_class.__name__ == "SentinelManagedSSLConnection"


@pytest.mark.parametrize(
    "environ,message",
    [
        ({"REDIS_SENTINELS": "127.0.0.1:26379"}, "REDIS_SENTINELS needs REDIS_URL"),
        ({"REDIS_SENTINELS": "127.0.0.1:26379", "REDIS_URL": "redis://conference:6379/0"}, "REDIS_URL names the"),
        ({"REDIS_SENTINELS": "127.0.0.1:26379", "REDIS_URL": "unix:///run/redis.sock"}, "REDIS_URL must be redis"),
        ({"REDIS_SENTINELS": "127.0.0.1", "REDIS_URL": "redis://conference/0"}, "REDIS_SENTINELS must list"),
    ],
)
def test_sentinel_settings_are_checked_at_start_up(environ, message):
    result = run_manage("check", **environ)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_dev_secret_key_is_created_once_and_private(tmp_path):
    path = tmp_path / "var" / "secret_key"
    first = env.dev_secret_key(path)
    assert len(first) >= 50
    assert env.dev_secret_key(path) == first
    assert oct(path.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize(
    "variable,value",
    [
        ("DJANGO_DEBUG", "maybe"),
        ("DJANGO_HTTPS", "sometimes"),
        ("DJANGO_ALLOWED_HOSTS", "a,,b"),
        ("DJANGO_TRUSTED_PROXIES", "nginx.internal"),
        ("DATABASE_URL", "mysql://x/y"),
        ("REDIS_URL", "localhost:6379"),
        ("ARI_URL", "pbx:8088"),
        ("LOG_FORMAT", "xml"),
        ("S3_BUCKET", "Recordings_2026"),
    ],
)
def test_malformed_variable_stops_start_up_with_its_name(variable, value):
    result = run_manage("check", **{variable: value})
    assert result.returncode == 2
    assert variable in result.stderr
    assert "Traceback" not in result.stderr


def test_asgi_application_refuses_bad_settings_too():
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    clean["DJANGO_DEBUG"] = "perhaps"
    result = subprocess.run(
        [sys.executable, "-c", "import conferencesite.asgi"], cwd=ROOT, env=clean, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "DJANGO_DEBUG must be True or False" in result.stderr


def test_check_deploy_is_clean_with_production_values(tmp_path):
    result = run_manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DJANGO_SECRET_KEY="x" * 20 + "production-like-secret-key-with-enough-entropy-3f9a8b7c",
        DJANGO_DEBUG="False",
        DJANGO_ALLOWED_HOSTS="conferences.example.com",
        DJANGO_HTTPS="True",
        DJANGO_TRUSTED_PROXIES="127.0.0.1",
        DATABASE_URL="postgres://conferences@127.0.0.1:5432/conferences",
        REDIS_URL="redis://127.0.0.1:6379/0",
        ARI_URL="http://127.0.0.1:8088/ari",
        ARI_USERNAME="conference",
        ARI_PASSWORD="conference",
    )
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_https_without_trusted_proxies_warns_at_start_up():
    result = run_manage("check", DJANGO_HTTPS="True", DJANGO_ALLOWED_HOSTS="conferences.example.com")
    assert result.returncode == 0, result.stderr
    assert "conferences.W006" in result.stdout + result.stderr
    result = run_manage(
        "check", DJANGO_HTTPS="True", DJANGO_ALLOWED_HOSTS="conferences.example.com", DJANGO_TRUSTED_PROXIES="127.0.0.1"
    )
    assert "conferences.W006" not in result.stdout + result.stderr


def test_check_deploy_warns_on_embedded_defaults():
    result = run_manage("check", "--deploy")
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    for check_id in ("conferences.W003", "conferences.W004", "conferences.W005", "security.W004"):
        assert check_id in output


@pytest.mark.parametrize(
    "variable,value,message",
    [
        ("MAX_SOCKETS_PER_USER", "0", "MAX_SOCKETS_PER_USER must be at least 1"),
        ("MAX_SOCKETS_PER_USER", "twenty", "MAX_SOCKETS_PER_USER must be a whole number"),
        ("WEBSOCKET_MAX_QUEUED_BYTES", "-1", "WEBSOCKET_MAX_QUEUED_BYTES must be at least 0"),
        ("WEBSOCKET_MAX_QUEUED_BYTES", "1MiB", "WEBSOCKET_MAX_QUEUED_BYTES must be a whole number"),
        ("ARI_URL", "http://conference:s3cret@127.0.0.1:8088/ari", "ARI_URL must not contain a user name or password"),
    ],
)
def test_socket_limits_and_ari_credentials_are_checked_at_start_up(variable, value, message):
    result = run_manage("check", **{variable: value})
    assert result.returncode == 2
    assert message in result.stderr
    assert "s3cret" not in result.stderr and "Traceback" not in result.stderr


def test_int_parsing():
    assert env.env_int("N", 20, minimum=1, environ={}) == 20
    assert env.env_int("N", 20, minimum=1, environ={"N": " 7 "}) == 7
    for bad in ("7.5", "0x10", "1e3", "-"):
        with pytest.raises(ImproperlyConfigured, match="N must be a whole number"):
            env.env_int("N", 20, environ={"N": bad})


def test_the_sqlite_database_is_created_readable_by_its_owner_only(tmp_path):
    """It holds sessions, ARI passwords and callers' numbers: not for other local users to read."""
    database = tmp_path / "var" / "db.sqlite3"
    old_umask = os.umask(0o022)
    try:
        result = run_manage("migrate", "--noinput", "-v0", DATABASE_URL=f"sqlite:///{database}")
    finally:
        os.umask(old_umask)
    assert result.returncode == 0, result.stderr
    assert database.stat().st_mode & 0o777 == 0o600
    for companion in (tmp_path / "var").glob("db.sqlite3-*"):  # WAL and shared-memory files follow the database
        assert companion.stat().st_mode & 0o077 == 0, companion
    # An existing file keeps the mode its owner gave it.
    database.chmod(0o640)
    assert run_manage("check", DATABASE_URL=f"sqlite:///{database}").returncode == 0
    assert database.stat().st_mode & 0o777 == 0o640


def test_storage_is_the_media_folder_unless_a_bucket_is_named():
    assert env.storages_for({})["default"] == {"BACKEND": "django.core.files.storage.FileSystemStorage"}
    s3 = env.storages_for(
        {
            "S3_BUCKET": "pbx-recordings",
            "S3_ENDPOINT_URL": "https://minio.example.com:9000/",
            "S3_ACCESS_KEY_ID": "k",
            "S3_SECRET_ACCESS_KEY": "s",
            "S3_PREFIX": "/conference/",
        }
    )["default"]
    assert s3["BACKEND"] == "storages.backends.s3.S3Storage"
    assert s3["OPTIONS"] == {
        "bucket_name": "pbx-recordings",
        "file_overwrite": False,
        "default_acl": None,
        "querystring_auth": True,
        "addressing_style": "auto",
        "endpoint_url": "https://minio.example.com:9000",
        "access_key": "k",
        "secret_key": "s",
        "location": "conference",
    }
    # No keys: boto3 finds its own (AWS_* variables, ~/.aws, an instance role).
    assert "access_key" not in env.storages_for({"S3_BUCKET": "pbx-recordings"})["default"]["OPTIONS"]


@pytest.mark.parametrize(
    "environ,message",
    [
        ({"S3_ENDPOINT_URL": "http://minio:9000"}, "S3_ENDPOINT_URL is set but S3_BUCKET is not"),
        ({"S3_BUCKET": "Not_A_Bucket"}, "S3_BUCKET must be an S3 bucket name"),
        ({"S3_BUCKET": "ab"}, "S3_BUCKET must be"),
        ({"S3_BUCKET": "b" * 64}, "S3_BUCKET must be"),
        ({"S3_BUCKET": "rec", "S3_ENDPOINT_URL": "minio:9000"}, "S3_ENDPOINT_URL must be an http"),
        ({"S3_BUCKET": "rec", "S3_ENDPOINT_URL": "ftp://minio"}, "S3_ENDPOINT_URL must be an http"),
        ({"S3_BUCKET": "rec", "S3_ACCESS_KEY_ID": "k"}, "S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY go together"),
        ({"S3_BUCKET": "rec", "S3_SECRET_ACCESS_KEY": "s"}, "go together"),
        ({"S3_BUCKET": "rec", "S3_PREFIX": "a/../b"}, "S3_PREFIX must be a key prefix"),
        ({"S3_BUCKET": "rec", "S3_ADDRESSING_STYLE": "sideways"}, "S3_ADDRESSING_STYLE must be one of"),
    ],
)
def test_bad_storage_settings_are_refused_by_name(environ, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        env.storages_for(environ)


def test_a_bucket_without_django_storages_installed_names_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "storages.backends.s3", None)  # as if not installed
    with pytest.raises(ImproperlyConfigured, match="pip install -r requirements-s3.txt"):
        env.storages_for({"S3_BUCKET": "rec"})
