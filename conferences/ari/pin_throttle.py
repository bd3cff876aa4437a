"""Wrong PINs across calls: counted per room and per caller number, then a pause before each try.

A caller may try ``PIN_TRIES`` PINs per call (``handlers``); without more, a
script could simply call again. So every wrong PIN is also counted in
Django's cache — Redis when ``REDIS_URL`` is set, so the counts survive a
worker restart — once for the (room, caller number) pair and once for the
room. Counts live in buckets of ``PIN_FAIL_WINDOW`` seconds; the current and
the previous bucket count, so a wrong PIN weighs for one to two windows.
Over either limit, a caller waits ``PIN_PAUSE`` seconds before each PIN
prompt.

Never a lock-out: the caller chooses the caller number it presents, so
locking a number out would let anyone lock out a victim; a pause slows a
guesser and only delays an honest caller. The counts end one to two windows
after the last wrong PIN, and the right PIN clears the caller's own count.

Buckets rather than one key per count: a key lives two windows, longer than
its bucket is written to, so ``incr()`` never meets an expired key (which
Redis would re-create without an expiry: a count that never ends). The
decision (``pause_for``) is a plain function; the cache calls run in a
pool thread, so the worker's event loop never waits on Redis. A cache that
cannot be reached is logged and counts as no failures: the per-call limit
still holds.
"""

import hashlib
import logging
import time

from asgiref.sync import sync_to_async
from django.core.cache import cache

logger = logging.getLogger(__name__)

# Module-level so that tests (and operators patching a deployment) can change them;
# they are read at every call.
PIN_FAIL_WINDOW = 10 * 60  # seconds; a wrong PIN is remembered for one to two of these
PIN_FAILS_PER_CALLER = 5  # wrong PINs from one caller number to one room before the pause
PIN_FAILS_PER_ROOM = 20  # wrong PINs to one room from all numbers before every caller pauses
PIN_PAUSE = 30.0  # seconds a throttled caller waits before each PIN prompt
PIN_PAUSE_SOUND = "one-moment-please"  # played at the start of the pause (Asterisk core sounds)


def pause_for(caller_failures, room_failures):
    """Seconds to wait before the next PIN prompt, given the wrong PINs of the window (0: none)."""
    if caller_failures >= PIN_FAILS_PER_CALLER or room_failures >= PIN_FAILS_PER_ROOM:
        return float(PIN_PAUSE)
    return 0.0


def room_key(conference_id, bucket):
    return f"pin-fail:room:{conference_id}:{bucket}"


def caller_key(conference_id, caller_number, bucket):
    # The caller number is whatever the caller sent: hashed, it is a safe key of fixed length.
    digest = hashlib.sha256((caller_number or "").encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"pin-fail:caller:{conference_id}:{digest}:{bucket}"


def _bucket(now=None):
    return int((time.time() if now is None else now) // PIN_FAIL_WINDOW)


async def failures(conference_id, caller_number):
    """``(wrong PINs of this caller number, wrong PINs of the room)`` in the current window."""
    return await _in_thread(_failures)(conference_id, caller_number)


async def record_failure(conference_id, caller_number):
    """Count one wrong PIN for the caller number and for the room."""
    await _in_thread(_record_failure)(conference_id, caller_number)


async def forget_caller(conference_id, caller_number):
    """The right PIN: this caller number starts afresh (the room's count stays)."""
    await _in_thread(_forget_caller)(conference_id, caller_number)


def _in_thread(func):
    # Not Django's async cache API: BaseCache.aincr() is a get followed by a set,
    # neither atomic nor keeping the expiry (a count would outlive its window).
    # The sync calls run in a pool thread, not the ORM's thread: a slow Redis
    # holds back neither the event loop nor the database calls.
    return sync_to_async(func, thread_sensitive=False)


def _failures(conference_id, caller_number):
    now = _bucket()
    callers = [caller_key(conference_id, caller_number, bucket) for bucket in (now, now - 1)]
    rooms = [room_key(conference_id, bucket) for bucket in (now, now - 1)]
    try:
        values = cache.get_many(callers + rooms)
    except Exception as exc:  # any cache backend's connection error
        logger.warning("conference %s: PIN failure counts unavailable (%s); no pause", conference_id, exc)
        return 0, 0
    return sum(_count(values.get(key)) for key in callers), sum(_count(values.get(key)) for key in rooms)


def _record_failure(conference_id, caller_number):
    now = _bucket()
    for key in (caller_key(conference_id, caller_number, now), room_key(conference_id, now)):
        try:
            _increment(key)
        except Exception as exc:
            logger.warning("conference %s: could not count a wrong PIN (%s)", conference_id, exc)


def _forget_caller(conference_id, caller_number):
    now = _bucket()
    try:
        cache.delete_many([caller_key(conference_id, caller_number, bucket) for bucket in (now, now - 1)])
    except Exception as exc:
        logger.warning("conference %s: could not clear a caller's PIN failures (%s)", conference_id, exc)


def _increment(key):
    # incr() is atomic in Redis (INCR) and in the local-memory cache (a lock):
    # concurrent workers lose no count.
    if cache.add(key, 1, 2 * PIN_FAIL_WINDOW):
        return
    try:
        cache.incr(key)
    except ValueError:  # evicted between add() and incr()
        cache.add(key, 1, 2 * PIN_FAIL_WINDOW)


def _count(value):
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
