"""The honest baseline: a relay that sends each client only what a page needs, as small JSON.

One ARI events WebSocket (its own application name, ``subscribeAll=true``, so
it sees every channel and bridge without taking the project's ``conference``
application) and a WebSocket server. Of the ARI events it keeps four:
a channel entering or leaving a bridge, and talking started / finished. Each
becomes one small frame sent to every client:

    {"type": "enter", "room": <bridge id>, "id": <channel id>, "number": "…", "name": "…", "at": "<ARI time>"}
    {"type": "leave", "room": …, "id": …, "at": …}
    {"type": "talk", "room": …, "id": …, "talking": true|false, "at": …}

A client that connects first gets ``{"type": "snapshot", "rooms": {bridge id:
[participant, …]}}`` from the relay's memory, so a connect storm has a
baseline too. No authentication, no database, no channel layer, no seq, no
resync, no reconnect: the least a live page can be fed, as fast as Python
serves it (websockets' ``broadcast``: one encoding of each frame, written to
every client without a task per client). ``at`` is Asterisk's own timestamp,
which the bench matches its latencies to (a page shows the join time).

    .venv/bin/python bench/needs_relay.py --port 8191 --ari-url http://127.0.0.1:8088/ari \\
        --user conference --password conference [--app bench-needs]
"""

import argparse
import asyncio
import base64
import json
import signal
import sys

from websockets.asyncio.client import connect
from websockets.asyncio.server import broadcast, serve

try:
    from bench.relay import events_url
except ImportError:  # run as a script: bench/ is this file's folder
    from relay import events_url

# ARI frames start with '{"type":"<name>"': the type is read without parsing the frame.
TYPE_AT = len('{"type":"')
KEPT = ("ChannelEnteredBridge", "ChannelLeftBridge", "ChannelTalkingStarted", "ChannelTalkingFinished")


class Rooms:
    """Who is in which bridge, and the frame each kept ARI event becomes."""

    def __init__(self):
        self.bridges = {}  # bridge id -> {channel id -> participant}
        self.bridge_of = {}  # channel id -> bridge id

    def frame(self, raw):
        """The client frame for one ARI frame (text), or None for an event a page does not need."""
        if not raw.startswith(KEPT, TYPE_AT):
            return None
        event = json.loads(raw)
        kind = event["type"]
        channel = event.get("channel") or {}
        cid = channel.get("id")
        at = event.get("timestamp")
        if kind == "ChannelEnteredBridge":
            room = (event.get("bridge") or {}).get("id")
            caller = channel.get("caller") or {}
            person = {"id": cid, "number": caller.get("number"), "name": caller.get("name"), "talking": False}
            self.bridges.setdefault(room, {})[cid] = person
            self.bridge_of[cid] = room
            return json.dumps({"type": "enter", "room": room, **person, "at": at})
        if kind == "ChannelLeftBridge":
            room = (event.get("bridge") or {}).get("id")
            self.bridges.get(room, {}).pop(cid, None)
            if not self.bridges.get(room, True):
                del self.bridges[room]
            self.bridge_of.pop(cid, None)
            return json.dumps({"type": "leave", "room": room, "id": cid, "at": at})
        room = self.bridge_of.get(cid)
        if room is None:
            return None  # talking outside any bridge: no page shows it
        talking = kind == "ChannelTalkingStarted"
        person = self.bridges.get(room, {}).get(cid)
        if person is not None:
            person["talking"] = talking
        return json.dumps({"type": "talk", "room": room, "id": cid, "talking": talking, "at": at})

    def snapshot(self):
        return json.dumps(
            {"type": "snapshot", "rooms": {room: list(people.values()) for room, people in self.bridges.items()}}
        )


async def relay(args):
    clients = set()
    rooms = Rooms()

    async def handler(websocket):
        await websocket.send(rooms.snapshot())
        clients.add(websocket)
        try:
            await websocket.wait_closed()
        finally:
            clients.discard(websocket)

    token = base64.b64encode(f"{args.user}:{args.password}".encode()).decode()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    async with (
        serve(handler, "127.0.0.1", args.port, ping_interval=None, max_size=2**16, compression=None, backlog=4096),
        connect(
            events_url(args.ari_url, args.app),
            additional_headers={"Authorization": f"Basic {token}"},
            ping_interval=None,
            max_size=2**24,
            open_timeout=10,
        ) as ari,
    ):
        print(f"needs relay: ws://127.0.0.1:{args.port}/ <- ARI app {args.app}", flush=True)

        async def pump():
            async for raw in ari:
                frame = rooms.frame(raw)
                if frame is not None:
                    broadcast(clients, frame)

        pumping = asyncio.create_task(pump())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({pumping, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if pumping.done() and not stop.is_set():
            print("needs relay: the ARI event socket closed", file=sys.stderr, flush=True)
            return 1
        pumping.cancel()
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8191)
    parser.add_argument("--ari-url", default="http://127.0.0.1:8088/ari")
    parser.add_argument("--user", default="conference")
    parser.add_argument("--password", default="conference")
    parser.add_argument("--app", default="bench-needs", help="ARI application name (never the project's)")
    args = parser.parse_args(argv)
    if args.app == "conference":
        parser.error("the app name 'conference' belongs to the project's worker")
    return asyncio.run(relay(args))


if __name__ == "__main__":
    sys.exit(main())
