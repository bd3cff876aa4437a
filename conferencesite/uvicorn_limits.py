"""What uvicorn's sans-I/O WebSocket protocol lacks: a client that does not read is dropped, not kept.

uvicorn 0.54's ``websockets-sansio`` implementation waits for the transport
to be writable before every ASGI send, the close included (write flow
control, Kludex/uvicorn#3048), and ends a connection only with
``transport.close()``, which asyncio completes once the buffered bytes are
written. A client that stopped reading is never writable again, so:

- the product's close of such a socket (4008, conferences/consumers.py: more
  than 1 MiB waited for it) never goes out, and the fallback timer that
  would end the connection (Kludex/uvicorn#3053) is never set;
- the keepalive ping timeout closes the transport the same way, which never
  finishes either, and the application is never told.

The socket, its consumer and its place under the per-user cap would stay
for as long as the client keeps the TCP connection open. Here the close of
a socket whose transport is not writable is written at once (behind what
the client never took: it is the last thing it would read) and the
connection aborted ABORT_SECONDS later unless the client answered; a
keepalive timeout aborts the connection (the application gets its
disconnect). Everything else is uvicorn's.

This uses the protocol's attributes (``writable``, ``conn``, ``queue``,
``close_sent``, ``close_timer``, ``transport``), so ``check_version()``
refuses any uvicorn but the pinned one. Upstream: not reported as of 0.54.0;
tests/test_slow_clients.py shows it against a real process.
"""

import uvicorn
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

PINNED_UVICORN = "0.54.0"
ABORT_SECONDS = 5.0


def check_version():
    if uvicorn.__version__ != PINNED_UVICORN:
        raise RuntimeError(
            f"conferencesite/uvicorn_limits.py was written for uvicorn {PINNED_UVICORN}, found {uvicorn.__version__}: "
            "check whether a close to a client that does not read still waits for it, then update PINNED_UVICORN"
        )


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, with a client that does not read dropped (see the module)."""

    async def send(self, message):
        if (
            message.get("type") == "websocket.close"
            and self.handshake_complete
            and not self.writable.is_set()
            and not self.close_sent
            and not self.disconnected
            and not self.transport.is_closing()
        ):
            self._close_unread(message.get("code", 1000), message.get("reason", "") or "")
            return
        await super().send(message)

    def _close_unread(self, code, reason):
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.conn.send_close(code, reason)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.close_timer is not None:
            self.close_timer.cancel()
        self.close_timer = self.loop.call_later(ABORT_SECONDS, self.transport.abort)

    def keepalive_timeout(self):
        super().keepalive_timeout()  # the close frame, then transport.close(), which waits for the client
        if not self.disconnected:
            self.transport.abort()  # connection_lost() tells the application
