"""Login throttling: a few wrong passwords per account and address, then a pause.

Counts login attempts in the cache (Redis when REDIS_URL is set, so all web
processes share them; else process memory) per (address, username) and per
address, over a fixed window from the first attempt. Rules:

- An attempt is counted *before* any password is checked (``reserve``), with
  conferences/counters.py (atomic, and a count always ends with its window),
  so of N guesses sent at once at most the limit reach a password check.
  Over a limit, nothing is counted and the caller is refused.
- A failed attempt keeps its count. A successful one gives its count back and
  clears the account's failures (``release``).
- Usernames are counted the way Django normalises them (NFKC, what
  ``UsernameField`` and ``normalize_username`` do) and also case-folded and
  stripped, so look-alikes of one name share one counter.
- An IPv6 client is counted by its /64: one host usually holds a whole /64.

Where attempts are reserved and settled: conferences/auth_backends.py.
"""

import hashlib
import ipaddress
import unicodedata
from dataclasses import dataclass

from django.core.cache import cache

from conferences import counters

WINDOW_SECONDS = 15 * 60
MAX_FAILURES_PER_ACCOUNT = 5
MAX_FAILURES_PER_ADDRESS = 50


@dataclass(frozen=True)
class Attempt:
    """One login attempt holding a count on its account key and, with an address, its address key."""

    account_key: str
    address_key: str | None


def normalize_username(username):
    """Return the form of ``username`` under which look-alikes are counted together."""
    text = unicodedata.normalize("NFKC", str(username or ""))
    return unicodedata.normalize("NFKC", text.casefold()).strip()


def address_bucket(address):
    """Return what an address is counted as: itself, or its /64 for IPv6."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def keys(address, username):
    """Return the (account key, address key) of an attempt; no address key without an address."""
    bucket = address_bucket(address) if address else ""
    digest = hashlib.sha256(f"{bucket}\0{normalize_username(username)}".encode()).hexdigest()[:40]
    return f"login-attempts:acct:{digest}", (f"login-attempts:addr:{bucket}" if bucket else None)


def reserve(address, username):
    """Count one attempt for ``username`` from ``address``; return it, or None when over a limit."""
    account_key, address_key = keys(address, username)
    if not _take(account_key, MAX_FAILURES_PER_ACCOUNT):
        return None
    if address_key is not None and not _take(address_key, MAX_FAILURES_PER_ADDRESS):
        _give_back(account_key)
        return None
    return Attempt(account_key, address_key)


def release(attempt):
    """Settle ``attempt`` as a success: clear the account's failures and give the address its count back."""
    cache.delete(attempt.account_key)
    if attempt.address_key is not None:
        _give_back(attempt.address_key)


def forget_account(address, username):
    """Clear the failures of ``username`` from ``address`` (after a successful login)."""
    cache.delete(keys(address, username)[0])


def _take(key, limit):
    count = counters.incr(key, WINDOW_SECONDS)
    if count > limit:
        _give_back(key)
        return False
    return True


def _give_back(key):
    counters.decr(key)
