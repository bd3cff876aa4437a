"""A limit daphne lacks: a WebSocket whose client does not read is dropped, not buffered forever.

What the application sends goes straight into the connection's Twisted
transport (``WebSocketProtocol.serverSend`` → autobahn's ``sendMessage`` →
``transport.write``), which buffers without bound while the client does not
read: a page left open on a stalled laptop, or a client that never reads on
purpose and asks for snapshots, grows the web process by every frame of its
room. ASGI gives the application no way to see that buffer, so the limit
lives where the buffer is: after every send, a connection with more than
``settings.WEBSOCKET_MAX_QUEUED_BYTES`` waiting to be written is aborted
(no close frame: it would wait behind the same backlog). The page of such a
client, should it wake up, reconnects and gets a fresh snapshot.

This reaches into daphne and Twisted internals (``serverSend``; a
``FileDescriptor``'s ``dataBuffer``, ``offset`` and ``_tempDataLen``), so it is
checked: ``install()`` refuses to run on a daphne other than the pinned one,
and on a transport without those attributes the limit is off with an error in
the log rather than guessing. Upstream: daphne has no per-connection write
limit (django/daphne has no option for it as of 4.2.3).
"""

import logging

logger = logging.getLogger(__name__)

PINNED_DAPHNE = "4.2.3"

# The limit in force; None until install() ran.
_limit = {"bytes": None}


def queued_bytes(transport):
    """Bytes a Twisted TCP transport holds that the peer has not taken yet, or None when unknown."""
    try:
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    except (AttributeError, TypeError):
        return None


def install(limit):
    """Patch daphne's WebSocket protocol to abort connections with more than ``limit`` bytes queued (0: off)."""
    import daphne
    from daphne.ws_protocol import WebSocketProtocol

    if daphne.__version__ != PINNED_DAPHNE:
        raise RuntimeError(
            f"conferencesite/daphne_limits.py was written for daphne {PINNED_DAPHNE}, found {daphne.__version__}: "
            "check that WebSocketProtocol.serverSend still writes to a Twisted transport, then update PINNED_DAPHNE"
        )
    first = _limit["bytes"] is None
    _limit["bytes"] = limit
    if not first:
        return
    original = WebSocketProtocol.serverSend

    def serverSend(self, content, binary=False):  # noqa: N802 (daphne's name)
        original(self, content, binary)
        limit = _limit["bytes"]
        if not limit:
            return
        queued = queued_bytes(self.transport)
        if queued is None:
            logger.error("daphne_limits: unknown transport %r; no send limit for it", type(self.transport))
            return
        if queued > limit:
            logger.warning(
                "websocket %s: %s bytes wait for a client that does not read (limit %s); dropping the connection",
                self.client_addr,
                queued,
                limit,
            )
            self.dropConnection(abort=True)

    WebSocketProtocol.serverSend = serverSend


def installed_limit():
    """The limit in force, or None when ``install()`` has not run."""
    return _limit["bytes"]
