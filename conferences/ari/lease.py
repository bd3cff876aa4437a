"""One active worker per Asterisk server, enforced through a lease on the server row.

A worker takes the lease at start and renews it while it runs. A second worker
finds the lease held and refuses to start, or with ``--standby`` waits and
takes it over. The lease frees itself when it is not renewed (a crashed or
frozen worker, on this host or another), and at once when its holder is a
process of this host that no longer exists (a worker killed with SIGKILL and
restarted), so a restart never waits.

**Fencing**: a worker that lost the lease (it froze, the lease lapsed, a
standby took over, then it woke up) must not act. Every database write of a
worker runs in a transaction that first checks that the server's
``worker_owner`` is still that worker (``check``: a shared lock on the
server's row, so a takeover, which locks the row for update, waits until the
write is committed and every write after it sees the new owner). Every ARI
call first checks that the lease was confirmed within ``ACT_SECONDS``
(conferences/ari/worker.py, ``may_act``): a lease not renewed for that long
may have lapsed, since a standby can take it LEASE_SECONDS after the last
renewal. The worker's database connections end a transaction left idle for
IDLE_IN_TRANSACTION_MS (a worker frozen in the middle of one would otherwise
hold its lock, and the standby, forever).
"""

import os
import socket
import uuid
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from conferences.models import AsteriskServer

LEASE_SECONDS = 20
# A worker acts on Asterisk only while its last confirmed renewal is younger than this: well
# inside LEASE_SECONDS, before any standby may take the lease over.
ACT_SECONDS = LEASE_SECONDS - 6
IDLE_IN_TRANSACTION_MS = 10_000


class LeaseLost(Exception):
    """This worker no longer holds its server's lease: it must stop without acting."""


def new_owner():
    """A token naming this process: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _holder_alive(owner):
    try:
        host, pid, _token = owner.rsplit(":", 2)
        pid = int(pid)
    except ValueError:
        return True
    if host != socket.gethostname():
        return True  # cannot look; the lease's expiry decides
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid):
    """A process that died and was not reaped yet (its parent has not waited for it) acts no more."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def acquire(server_id, owner):
    """Take the lease; returns ``(True, owner)`` or ``(False, current holder)``."""
    now = timezone.now()
    with transaction.atomic():
        server = AsteriskServer.objects.select_for_update().get(pk=server_id)
        held = (
            server.worker_owner
            and server.worker_owner != owner
            and server.worker_lease_until
            and server.worker_lease_until > now
            and _holder_alive(server.worker_owner)
        )
        if held:
            return False, server.worker_owner
        AsteriskServer.objects.filter(pk=server_id).update(
            worker_owner=owner, worker_lease_until=now + timedelta(seconds=LEASE_SECONDS)
        )
    return True, owner


def renew(server_id, owner):
    """Extend the lease; False when another worker has taken it."""
    until = timezone.now() + timedelta(seconds=LEASE_SECONDS)
    return AsteriskServer.objects.filter(pk=server_id, worker_owner=owner).update(worker_lease_until=until) == 1


def check(server_id, owner):
    """Inside a transaction: raise LeaseLost unless ``owner`` holds the server's lease (locks the row shared)."""
    from django.db import connection

    lock = " FOR SHARE" if connection.vendor == "postgresql" else ""
    table = AsteriskServer._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT 1 FROM {table} WHERE id = %s AND worker_owner = %s{lock}", [server_id, owner])  # noqa: S608
        if cursor.fetchone() is None:
            raise LeaseLost(f"server {server_id}: another worker holds the lease")


def holds(server_id, owner):
    """Whether ``owner`` is the lease's holder now (a plain read)."""
    return AsteriskServer.objects.filter(pk=server_id, worker_owner=owner).exists()


def release(server_id, owner):
    AsteriskServer.objects.filter(pk=server_id, worker_owner=owner).update(worker_owner="", worker_lease_until=None)
