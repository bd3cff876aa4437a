"""Prometheus metrics (prometheus_client): what an operator graphs and alerts on.

Every process has its own: a web process serves them at ``/metrics`` when
``METRICS_TOKEN`` is set (``Authorization: Bearer <token>``; without a token
the path does not exist), a worker at ``ari_worker --metrics ADDRESS`` (a
plain HTTP listener: bind it to loopback or a monitoring network; the address
is its guard). The embedded ``serve`` has both sides in one registry.

The worker's side: the ARI link per server, ARI events received and handled,
the wait of an event in its room's lane, moderation commands handled. The
web side: open sockets, frames sent and dropped, moderation reply time as a
moderator sees it, channel-layer failures. Labels stay bounded: server names
(configured by staff), moderation actions and outcomes from fixed sets.

Frames are counted with plain integers read at scrape time (``FRAMES``), not
a prometheus_client Counter, whose lock would be taken once per frame and
socket on the fan-out's hot path. Nothing here carries a secret: servers are
named, never their URLs or credentials.
"""

import hmac

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily

from conferences import moderation

# Seconds, from a lane's 1 ms to a stalled worker's 10 s.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

ARI_LINK_UP = Gauge("conference_ari_link_up", "1 while the worker's ARI link to the server is up.", ["server"])
ARI_EVENTS_RECEIVED = Counter(
    "conference_ari_events_received", "ARI events the worker received (before filtering).", ["server"]
)
ARI_EVENTS_HANDLED = Counter(
    "conference_ari_events_handled", "ARI events the worker handled in a room's lane.", ["server"]
)
QUEUE_WAIT = Histogram(
    "conference_worker_queue_wait_seconds",
    "From an ARI event's receipt to its handling starting in its room's lane.",
    ["server"],
    buckets=LATENCY_BUCKETS,
)
COMMANDS = Histogram(
    "conference_worker_command_seconds",
    "Moderation commands the worker carried out, and how long each took.",
    ["server", "action"],
    buckets=LATENCY_BUCKETS,
)
MODERATION_REPLY = Histogram(
    "conference_moderation_reply_seconds",
    "From a moderator's request reaching the web process to its reply (ok, error or timeout).",
    ["action", "outcome"],
    buckets=LATENCY_BUCKETS,
)
OPEN_SOCKETS = Gauge("conference_open_sockets", "WebSockets open in this process.", ["kind"])
LAYER_FAILURES = Counter(
    "conference_channel_layer_failures",
    "Channel-layer calls that failed (Redis unreachable): broadcasts kept for later, hub receives, group changes.",
    ["where"],
)
LAYER_WHERE = ("broadcast", "hub", "group", "receive")
ACTIONS = frozenset(moderation.ACTIONS)


def action_label(action):
    return action if action in ACTIONS else "other"


class _Frames:
    """Frames handed to the ASGI server and frames dropped with an overflowing outbox (plain integers)."""

    def __init__(self):
        self.sent = 0
        self.dropped = 0

    def collect(self):
        sent = CounterMetricFamily("conference_frames_sent", "Frames handed to this process's sockets.")
        sent.add_metric([], self.sent)
        dropped = CounterMetricFamily(
            "conference_frames_dropped", "Frames dropped with the outbox of a socket that did not read."
        )
        dropped.add_metric([], self.dropped)
        return [sent, dropped]

    def describe(self):
        return self.collect()


FRAMES = _Frames()
REGISTRY.register(FRAMES)
for _where in LAYER_WHERE:
    LAYER_FAILURES.labels(_where)  # present at 0 from the start: rate() needs a first sample
for _kind in ("room", "rooms"):
    OPEN_SOCKETS.labels(_kind)


def token_matches(header, token):
    """Whether an ``Authorization`` header carries ``Bearer <token>`` (constant-time)."""
    scheme, _, given = (header or "").partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
