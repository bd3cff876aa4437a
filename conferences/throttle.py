"""Login throttling: a few wrong passwords per account and address, then a pause.

Counts failed logins in the cache (Redis when REDIS_URL is set, so all web
processes share them; else process memory) per (address, username) and per
address. Over the limit, the login form is refused before any password is
checked, so guessing gets nowhere and costs nothing.
"""

import hashlib

from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.core.cache import cache
from django.dispatch import receiver

WINDOW_SECONDS = 15 * 60
MAX_FAILURES_PER_ACCOUNT = 5
MAX_FAILURES_PER_ADDRESS = 50


def client_address(request):
    return request.META.get("REMOTE_ADDR", "") if request is not None else ""


def _keys(address, username):
    account = hashlib.sha256(f"{address}\0{(username or '').strip().lower()}".encode()).hexdigest()[:40]
    return f"login-fail:acct:{account}", f"login-fail:addr:{address}"


def is_throttled(address, username):
    account_key, address_key = _keys(address, username)
    return (cache.get(account_key, 0) >= MAX_FAILURES_PER_ACCOUNT) or (
        cache.get(address_key, 0) >= MAX_FAILURES_PER_ADDRESS
    )


def _increment(key):
    if cache.add(key, 1, WINDOW_SECONDS):
        return
    try:
        cache.incr(key)
    except ValueError:  # expired in between
        cache.set(key, 1, WINDOW_SECONDS)


@receiver(user_login_failed)
def _count_failure(sender, credentials, request=None, **kwargs):
    account_key, address_key = _keys(client_address(request), credentials.get("username"))
    _increment(account_key)
    _increment(address_key)


@receiver(user_logged_in)
def _forget_failures(sender, request, user, **kwargs):
    account_key, _address_key = _keys(client_address(request), user.get_username())
    cache.delete(account_key)
