"""The close codes of the sockets: the one home of these numbers (docs/protocol.md explains them).

A server may send only 1000 or a code from 3000–4999 in its own close frame:
autobahn (under daphne) refuses the rest with an exception, so a server
error is 4011, not the protocol's 1011 (daphne sends 1011 itself only for an
exception that escapes the application, which ours never let happen).
"""

NOT_LOGGED_IN = 4401
FORBIDDEN = 4403
NOT_FOUND = 4404
TOO_MANY_SOCKETS = 4429
# The server failed while handling the socket (an error, the channel layer gone): the page reconnects.
SERVER_ERROR = 4011
# The page did not take its frames: more than WEBSOCKET_MAX_QUEUED_BYTES waited for it
# (conferences/consumers.py, FanOutConsumer). The page reconnects and gets a fresh snapshot.
TOO_SLOW = 4008

# Refusals: the page says why and does not reconnect by itself, except after the delay given
# here (ms: too many pages open passes when others close). The page gets both from the server
# (conferences/views.py, the room config): no close code is typed under static/.
REFUSALS = (NOT_LOGGED_IN, FORBIDDEN, NOT_FOUND, TOO_MANY_SOCKETS)
RETRY_AFTER_MS = {TOO_MANY_SOCKETS: 30000}


def page_config():
    """The close codes as the page script reads them (JSON keys are strings)."""
    return {
        "refusals": list(REFUSALS),
        "retry_after_ms": {str(code): ms for code, ms in RETRY_AFTER_MS.items()},
        "not_logged_in": NOT_LOGGED_IN,
    }
