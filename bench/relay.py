"""The baseline: a minimal direct ARI relay, like the classic Node.js one.

One ARI events WebSocket (its own application name, ``subscribeAll=true``, so
it sees every channel and bridge without taking the project's ``conference``
application) and a WebSocket server that broadcasts every ARI frame, raw, to
all its clients. No authentication, no database, no room filtering, no
reconnect: exactly what the project replaces, kept only for comparison.

    .venv/bin/python bench/relay.py --port 8190 --ari-url http://127.0.0.1:8088/ari \\
        --user conference --password conference [--app bench-relay]
"""

import argparse
import asyncio
import base64
import signal
import sys
from urllib.parse import quote

from websockets.asyncio.client import connect
from websockets.asyncio.server import broadcast, serve


def events_url(ari_url, app):
    base = ari_url.rstrip("/").replace("http", "ws", 1)
    return f"{base}/events?app={quote(app)}&subscribeAll=true"


async def relay(args):
    clients = set()

    async def handler(websocket):
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

    async with serve(handler, "127.0.0.1", args.port, ping_interval=None, max_size=2**16):
        async with connect(
            events_url(args.ari_url, args.app),
            additional_headers={"Authorization": f"Basic {token}"},
            ping_interval=None,
            max_size=2**24,
            open_timeout=10,
        ) as ari:
            print(f"relay: ws://127.0.0.1:{args.port}/ <- ARI app {args.app}", flush=True)

            async def pump():
                async for frame in ari:  # every ARI event, as is, to every client
                    broadcast(clients, frame)

            pumping = asyncio.create_task(pump())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({pumping, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if pumping.done() and not stop.is_set():
                print("relay: the ARI event socket closed", file=sys.stderr, flush=True)
                return 1
            pumping.cancel()
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8190)
    parser.add_argument("--ari-url", default="http://127.0.0.1:8088/ari")
    parser.add_argument("--user", default="conference")
    parser.add_argument("--password", default="conference")
    parser.add_argument("--app", default="bench-relay", help="ARI application name (never the project's)")
    args = parser.parse_args(argv)
    if args.app == "conference":
        parser.error("the app name 'conference' belongs to the project's worker")
    return asyncio.run(relay(args))


if __name__ == "__main__":
    sys.exit(main())
