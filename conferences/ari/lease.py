"""One active worker per Asterisk server, enforced through a lease on the server row.

A worker takes the lease at start and renews it while it runs. A second worker
finds the lease held and refuses to start. The lease frees itself when it is
not renewed (a crashed worker on another host), and at once when its holder is
a process of this host that no longer exists (a worker killed with SIGKILL and
restarted), so a restart never waits.
"""

import os
import socket
import uuid
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from conferences.models import AsteriskServer

LEASE_SECONDS = 20


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
    return True


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


def release(server_id, owner):
    AsteriskServer.objects.filter(pk=server_id, worker_owner=owner).update(worker_owner="", worker_lease_until=None)
