"""Recorded real ARI events (tests/fixtures/ari/) and a fake REST side, for tests of the worker without Asterisk.

Fixtures were recorded from the sandbox (README: ``ARI_RECORD_EVENTS``);
``{conference}`` in them stands for the room's id.
"""

import copy
import json
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures" / "ari"


class FakeAri:
    """Records REST calls; answers like Asterisk does; can be told to fail."""

    def __init__(self, channels=(), bridges=()):
        self.calls = []
        self.fail = {}  # method name -> exception
        self.variables = {}  # (channel id, name) -> value, for get_variable
        self._channels = list(channels)
        self._bridges = list(bridges)

    def __getattr__(self, name):
        async def call(*args, **kwargs):
            self.calls.append((name, *args))
            if name in self.fail:
                raise self.fail[name]
            if name == "create_bridge":
                return {"id": args[0], "channels": []}
            if name == "channels":
                return self._channels
            if name == "bridges":
                return self._bridges
            if name == "get_variable":
                return self.variables.get((args[0], args[1]))
            return None

        return call

    def called(self, name):
        return [call[1:] for call in self.calls if call[0] == name]


def load(name, conference):
    text = (FIXTURES / f"{name}.json").read_text().replace("{conference}", str(conference.pk))
    return json.loads(text)


def caller_events(room, channel_id, number, *, fixture="right_pin"):
    """A recorded PIN caller's StasisStart, as another channel, and its DTMF events."""
    events = load(fixture, room)
    start = copy.deepcopy(next(e for e in events if e["type"] == "StasisStart"))
    start["channel"]["id"] = channel_id
    start["channel"]["caller"] = {"name": f"Caller {number}", "number": number}
    start["args"] = [room.number]
    dtmf = next((e for e in events if e["type"] == "ChannelDtmfReceived"), None)

    def keys(digits):
        for digit in digits:
            event = copy.deepcopy(dtmf)
            event["channel"]["id"] = channel_id
            event["digit"] = digit
            yield event

    return start, keys


class Timers:
    """The worker's schedule(): keeps the timers so a test fires them when it likes."""

    def __init__(self):
        self.pending = []

    def __call__(self, delay, event):
        self.pending.append((delay, event))

    def of_type(self, kind):
        return [(delay, event) for delay, event in self.pending if event["type"] == kind]
