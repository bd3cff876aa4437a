"""The worker's capacity without Asterisk's limits: a stand-in ARI replays recorded events at rising rates.

    .venv/bin/python bench/capacity.py                      # 100 ... 1,200 handled events/s, this checkout
    .venv/bin/python bench/capacity.py --baseline 8427346   # that commit's worker first, in the same run
    .venv/bin/python bench/capacity.py --baseline 8427346 --repeat 3   # the two taking turns, three runs each
    .venv/bin/python bench/capacity.py --quick              # 100, 200, 500 for 3 s each (under a minute)
    .venv/bin/python bench/capacity.py --rates 200,400 --seconds 10 --code /path/to/checkout

One real ``manage.py ari_worker`` (through bench/worker_probe.py; PostgreSQL
``conference_bench``, Redis database 13 as its channel layer) is pointed, by
its ``default`` AsteriskServer row (ARI_URL), at a stand-in ARI on
127.0.0.1:8195: an aiohttp server with the event WebSocket at /ari/events
and the REST API beside it on the same port (keep-alive, as Asterisk's),
answering every call at once with plausible JSON (channels, bridges,
variables, playbacks). No Asterisk, no web process: every room's group has
one member that nobody reads (so ``group_send`` writes to Redis as it does
with viewers; the layer drops what exceeds the member's capacity).

The stand-in keeps ``--rooms`` rooms of ``--population`` callers each and
sends recorded ARI events (tests/fixtures/ari/*.json, ids, names, numbers and
times put in) the way Asterisk would: a call's StasisStart; its
ChannelEnteredBridge when the worker calls addChannel; talking started and
finished of callers in the bridge; a hang-up's ChannelLeftBridge and
StasisEnd; the unhandled events that come along (ChannelVarset, ...). Each
rate step sends that mix at a fixed rate of *handled* events (events the
worker has a handler for) for ``--seconds``, ``--churn`` of them joins and
leaves, the rest talking; then one more call per room leaves and joins, and
the step ends when every room's new caller was added to its bridge (the
worker is drained), before the next rate.

Measured per step: the events per second the worker handled (handled events
of the step / time from its first event to the end of the last one's
processing, bench/worker_probe.py), the worker's queue wait (Asterisk's
timestamp -> processing starts) and service time p50 / p99, and from the
stand-in's side, for the events that cause a REST call, StasisStart -> the
first REST call about that channel and StasisStart -> its addChannel. The
report (section ``capacity`` of docs/performance.md) gives the highest rate
whose wait p99 stays under 50 ms and the peak handled rate. ``--code`` and
``--baseline`` as in bench/busy.py (each checkout in a child process of its
own, on a fresh database).
"""

import argparse
import asyncio
import base64
import copy
import functools
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import analysis, infra, report  # noqa: E402
from bench.clients import ari_time  # noqa: E402
from bench.infra import BenchError, log  # noqa: E402
from bench.worker_probe import HANDLED  # noqa: E402

PORT = 8195
SECTION = "capacity"
FIXTURES = ROOT / "tests" / "fixtures" / "ari"
RATES = [100, 200, 300, 500, 800, 1200]
QUICK_RATES = [100, 200, 500]
WAIT_TARGET_MS = 50
DRAIN_TIMEOUT = 120.0


def ari_timestamp(now=None):
    """Asterisk's event timestamp format: 2026-11-26T10:44:10.060+0000."""
    moment = datetime.fromtimestamp(now if now is not None else time.time(), UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


# --- recorded events as templates ---------------------------------------------------------------


def load_templates(folder=FIXTURES):
    """The first recorded event of each type (the conference app's own events), by type."""
    templates = {}
    for path in sorted(folder.glob("*.json")):
        for event in json.loads(path.read_text()):
            if event.get("type", "").startswith("_"):
                continue  # the worker's own timers
            templates.setdefault(event["type"], event)
    missing = {"StasisStart", "ChannelEnteredBridge", "ChannelLeftBridge", "StasisEnd", "ChannelTalkingStarted"}
    missing -= set(templates)
    if missing:
        raise BenchError(f"no recorded {', '.join(sorted(missing))} in {folder}")
    if "ChannelTalkingFinished" not in templates:
        finished = copy.deepcopy(templates["ChannelTalkingStarted"])
        finished.update(type="ChannelTalkingFinished", duration=1200)
        templates["ChannelTalkingFinished"] = finished
    return templates


class Call:
    def __init__(self, channel_id, room, number, serial):
        self.id = channel_id
        self.room = room
        self.number = number
        self.serial = serial
        self.in_bridge = False
        self.talking = False
        self.created = ari_timestamp()


class Room:
    def __init__(self, pk, number, app):
        self.pk = pk
        self.number = number
        self.bridge_id = f"{app}-conference-{pk}"
        self.calls = {}  # channel id -> Call
        self.bridge = None  # the bridge's channel ids once the worker created it
        self.moh = False


# --- the stand-in ARI ----------------------------------------------------------------------


class StandIn:
    """ARI's event WebSocket and REST API, answering at once and sending what Asterisk would."""

    def __init__(self, config):
        self.config = config
        self.app = config["app"]
        self.auth = "Basic " + base64.b64encode(f"{config['user']}:{config['password']}".encode()).decode()
        self.templates = load_templates()
        self.rooms = {r["pk"]: Room(r["pk"], r["number"], self.app) for r in config["rooms"]}
        self.by_bridge = {room.bridge_id: room for room in self.rooms.values()}
        self.calls = {}  # channel id -> Call
        self.rng = random.Random(config.get("seed", 12))
        self.serial = 0
        self.outbox = asyncio.Queue()
        self.socket = None
        self.connected = asyncio.Event()
        self.resynced = False
        self.started_at = ari_timestamp()
        # Measurements, reset per step.
        self.sent = Counter()
        self.stasis_sent = {}  # channel id -> when its StasisStart was written
        self.first_rest = {}  # channel id -> when the first REST call about it came
        self.added = {}  # channel id -> when its addChannel came
        self.rest_calls = 0
        self.waiting_for = set()  # channel ids whose addChannel ends the drain
        self.drained = asyncio.Event()
        self.pids = {}  # process group -> pids whose CPU time each step reports

    # --- events out ---------------------------------------------------------------

    def channel_json(self, call):
        channel = copy.deepcopy(self.templates["StasisStart"]["channel"])
        channel.update(
            id=call.id,
            name=f"Local/{call.room.number}@conferences-{call.serial:08x};2",
            state="Up",
            caller={"name": f"Caller {call.number}", "number": call.number},
            connected={"name": f"Caller {call.number}", "number": call.number},
            creationtime=call.created,
        )
        channel["dialplan"].update(exten=call.room.number, app_data=f"{self.app},{call.room.number}")
        return channel

    def bridge_json(self, room):
        bridge = copy.deepcopy(self.templates["ChannelEnteredBridge"]["bridge"])
        bridge.update(id=room.bridge_id, name=f"conference {room.number}", channels=list(room.bridge or []))
        return bridge

    def emit(self, kind, call=None, room=None, **fields):
        event = copy.deepcopy({k: v for k, v in self.templates[kind].items() if k not in ("channel", "bridge")})
        event.update(fields, type=kind, application=self.app)
        if call is not None:
            event["channel"] = self.channel_json(call)
        if room is not None:
            event["bridge"] = self.bridge_json(room)
        self.outbox.put_nowait((event, call.id if call is not None else None))

    async def sender(self):
        """One writer for the socket: stamps each event as it goes out, as Asterisk's timestamp would."""
        while True:
            event, channel_id = await self.outbox.get()
            try:
                await self.send(event, channel_id)
            finally:
                self.outbox.task_done()

    async def send(self, event, channel_id):
        if self.socket is None or self.socket.closed:
            return
        now = time.time()
        event["timestamp"] = ari_timestamp(now)
        try:
            await self.socket.send_str(json.dumps(event))
        except (ConnectionError, RuntimeError):
            return
        self.sent[event["type"]] += 1
        if event["type"] == "StasisStart":
            self.stasis_sent[channel_id] = now

    # --- what callers do ------------------------------------------------------------

    def join(self, room):
        """A new caller dials the room: StasisStart (the worker's addChannel brings ChannelEnteredBridge)."""
        self.serial += 1
        call = Call(f"cap{self.serial:07d}x{self.rng.getrandbits(32):08x}", room, f"7{self.serial:06d}", self.serial)
        room.calls[call.id] = call
        self.calls[call.id] = call
        self.emit("StasisStart", call, args=[room.number])
        return call

    def leave(self, call):
        """A caller hangs up: what Asterisk sends the app, in its order."""
        room = call.room
        if "ChannelHangupRequest" in self.templates:
            self.emit("ChannelHangupRequest", call, cause=16, soft=False)
        if call.in_bridge and room.bridge is not None and call.id in room.bridge:
            room.bridge.remove(call.id)
            self.emit("ChannelLeftBridge", call, room)
            self.bridge_peers(room)
        self.emit("StasisEnd", call)
        room.calls.pop(call.id, None)
        self.calls.pop(call.id, None)

    def bridge_peers(self, room):
        """Asterisk sets BRIDGEPEER on every channel of a bridge whose members changed (recorded: busy_room.json)."""
        if "ChannelVarset" not in self.templates:
            return
        for channel_id in room.bridge or []:
            call = self.calls.get(channel_id)
            if call is not None:
                others = ",".join(c for c in room.bridge if c != channel_id)
                self.emit("ChannelVarset", call, variable="BRIDGEPEER", value=others)

    def toggle_talking(self, call):
        call.talking = not call.talking
        if call.talking:
            self.emit("ChannelTalkingStarted", call)
        else:
            self.emit("ChannelTalkingFinished", call, duration=self.rng.randint(400, 4000))

    def pick_room(self, rooms, tries=20):
        """A random room with callers in its bridge, and those callers; (None, []) when none was found."""
        for _ in range(tries):
            room = rooms[self.rng.randrange(len(rooms))]
            present = self.present(room)
            if present:
                return room, present
        return None, []

    def present(self, room):
        return [call for call in room.calls.values() if call.in_bridge]

    # --- REST ---------------------------------------------------------------------------

    def note_rest(self, channel_id):
        self.rest_calls += 1
        if channel_id and channel_id not in self.first_rest and channel_id in self.stasis_sent:
            self.first_rest[channel_id] = time.time()

    async def handle(self, request):
        from aiohttp import web

        if request.headers.get("Authorization") != self.auth:
            return web.json_response({"message": "Authentication required"}, status=401)
        parts = [unquote(p) for p in request.path.split("/")[2:]]  # after /ari/
        method, query = request.method, request.query
        if parts[:1] == ["events"]:
            return await self.events(request)
        if parts[:1] == ["channels"] and len(parts) >= 2:
            self.note_rest(parts[1])
        elif parts[:1] == ["bridges"] and len(parts) >= 3:
            self.note_rest(query.get("channel"))
        else:
            self.note_rest(None)
        status, body = self.answer(method, parts, query)
        if body is None:
            return web.Response(status=status)
        return web.json_response(body, status=status)

    def answer(self, method, parts, query):
        """(status, JSON body or None) for one REST call; side effects as Asterisk's."""
        gone = (404, {"message": "Channel not found"})
        if parts == ["asterisk", "info"]:
            return 200, {"status": {"startup_time": self.started_at}, "system": {"version": "stand-in"}}
        if parts == ["channels"] and method == "GET":
            self.resynced = True
            return 200, [self.channel_json(call) for call in self.calls.values()]
        if parts == ["bridges"] and method == "GET":
            return 200, [self.bridge_json(room) for room in self.rooms.values() if room.bridge is not None]
        if parts[:1] == ["channels"] and len(parts) >= 2:
            call = self.calls.get(parts[1])
            if call is None:
                return gone
            action = parts[2] if len(parts) > 2 else None
            if action is None and method == "DELETE":
                self.leave(call)
                return 204, None
            if action is None:
                return 200, self.channel_json(call)
            if action == "variable" and method == "GET":
                if query.get("variable") == "CONFERENCE_ROLE":
                    return 200, {"value": "participant"}
                return 404, {"message": "Provided variable was not found"}
            if action == "play":
                playback = query.get("playbackId") or f"pb-{call.id}"
                return 201, {"id": playback, "media_uri": query.get("media", ""), "state": "queued"}
            return 204, None  # answer, variable (POST), mute, unmute, ...
        if parts[:1] == ["bridges"] and len(parts) >= 2:
            room = self.by_bridge.get(parts[1])
            if room is None:
                return 404, {"message": "Bridge not found"}
            action = parts[2] if len(parts) > 2 else None
            if action is None and method == "POST":
                room.bridge = room.bridge if room.bridge is not None else []
                return 200, self.bridge_json(room)
            if action is None and method == "DELETE":
                room.bridge = None
                return 204, None
            if room.bridge is None:
                return 404, {"message": "Bridge not found"}
            if action == "addChannel":
                call = self.calls.get(query.get("channel", ""))
                if call is None:
                    return 400, {"message": "Channel not found"}
                self.added.setdefault(call.id, time.time())
                if call.id not in room.bridge:
                    room.bridge.append(call.id)
                    call.in_bridge = True
                    self.emit("ChannelEnteredBridge", call, room)
                    self.bridge_peers(room)
                if call.id in self.waiting_for:
                    self.waiting_for.discard(call.id)
                    if not self.waiting_for:
                        self.drained.set()
                return 204, None
            if action == "removeChannel":
                call = self.calls.get(query.get("channel", ""))
                if call is None or call.id not in room.bridge:
                    return 422, {"message": "Channel not in bridge"}
                room.bridge.remove(call.id)
                call.in_bridge = False
                self.emit("ChannelLeftBridge", call, room)
                return 204, None
            if action == "moh":
                room.moh = method == "POST"
                return 204, None
            return 204, None
        return 404, {"message": "Resource not found"}

    async def events(self, request):
        from aiohttp import WSMsgType, web

        if request.query.get("app") != self.app:
            return web.json_response({"message": "no such application"}, status=400)
        socket = web.WebSocketResponse(autoping=True)
        await socket.prepare(request)
        self.socket = socket
        self.connected.set()
        async for message in socket:
            if message.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                break
        if self.socket is socket:
            self.socket = None
        return socket

    # --- the plan ---------------------------------------------------------------------------

    def reset_measurements(self):
        self.sent = Counter()
        self.stasis_sent, self.first_rest, self.added = {}, {}, {}
        self.rest_calls = 0

    async def populate(self, per_room, rate):
        """Fill every room to ``per_room`` callers in its bridge."""
        rooms = list(self.rooms.values())
        wanted = []
        for _ in range(per_room):
            for room in rooms:
                wanted.append(self.join(room))
                await asyncio.sleep(1 / rate)
        end = time.time() + DRAIN_TIMEOUT
        while any(not call.in_bridge for call in wanted):
            if time.time() > end:
                raise BenchError("the worker did not add the first callers to their bridges in time")
            await asyncio.sleep(0.05)

    async def step(self, rate, seconds, churn):
        """Send the mix at ``rate`` handled events/s for ``seconds``, then wait until the worker drained."""
        self.reset_measurements()
        rooms = list(self.rooms.values())
        # A churn (a leave and a join) is 4 handled events (ChannelLeftBridge, StasisEnd, StasisStart,
        # ChannelEnteredBridge), a talking toggle 1: pick churns so that they are ``churn`` of the handled events.
        churn_p = churn / (4 - 3 * churn)
        cpu_before = cpu_snapshot(self.pids)
        t_start = time.time()
        budget, offered, last = 0.0, 0, t_start
        while True:
            now = time.time()
            if now - t_start >= seconds:
                break
            budget += (now - last) * rate
            last = now
            while budget >= 1:
                room, present = self.pick_room(rooms)
                if room is None:
                    break  # no caller in any bridge yet: the worker is behind with every room
                # A room churns only when all its callers are in: joins then follow the worker's pace,
                # and talking keeps the offered rate.
                if self.rng.random() < churn_p and len(present) == len(room.calls):
                    self.leave(present[self.rng.randrange(len(present))])
                    self.join(room)
                    budget -= 4
                    offered += 4
                else:
                    self.toggle_talking(present[self.rng.randrange(len(present))])
                    budget -= 1
                    offered += 1
            await asyncio.sleep(0.002)
        t_end = time.time()
        await self.wait_outbox()
        t_sent = time.time()
        sent = dict(self.sent)
        # The drain: one more churn per room; the step ends when every room's new caller is in its bridge.
        self.drained.clear()
        self.waiting_for = set()
        for room in rooms:
            present = self.present(room)
            if present:
                self.leave(present[0])
            self.waiting_for.add(self.join(room).id)
        try:
            await asyncio.wait_for(self.drained.wait(), DRAIN_TIMEOUT)
            drained = True
        except TimeoutError:
            drained = False
        t_drained = time.time()
        cpu_after = cpu_snapshot(self.pids)
        first_rest, to_added = [], []
        for channel_id, sent_at in self.stasis_sent.items():
            if channel_id in self.waiting_for or sent_at > t_sent:
                continue
            if channel_id in self.first_rest:
                first_rest.append((self.first_rest[channel_id] - sent_at) * 1000)
            if channel_id in self.added:
                to_added.append((self.added[channel_id] - sent_at) * 1000)
        return {
            "rate": rate,
            "seconds": seconds,
            "t_start": t_start,
            "t_end": t_end,
            "t_sent": t_sent,
            "t_drained": t_drained,
            "drained": drained,
            "offered_handled": offered,
            "sent": sent,
            "sent_handled": sum(n for kind, n in sent.items() if kind in HANDLED),
            "sent_all": sum(sent.values()),
            "rest_calls": self.rest_calls,
            "stasis_to_first_rest": analysis.summary(first_rest),
            "stasis_to_add": analysis.summary(to_added),
            "cpu": {name: cpu_after[name] - cpu_before[name] for name in cpu_after},
        }

    async def wait_outbox(self):
        await self.outbox.join()

    async def run_plan(self, plan):
        self.pids = plan["pids"]
        log(f"stand-in: {len(self.rooms)} rooms of {plan['population']} callers")
        await self.populate(plan["population"], plan.get("populate_rate", 100))
        await asyncio.sleep(1.0)
        steps = []
        for rate in plan["rates"]:
            result = await self.step(rate, plan["seconds"], plan["churn"])
            steps.append(result)
            log(
                f"stand-in: {rate}/s: sent {result['sent_handled']:,} handled events in "
                f"{result['t_sent'] - result['t_start']:.1f} s, drained after "
                f"{result['t_drained'] - result['t_start']:.1f} s"
            )
            await asyncio.sleep(plan.get("pause", 1.0))
        for call in list(self.calls.values()):
            self.leave(call)
        await self.wait_outbox()
        return steps


def cpu_snapshot(pids):
    return {name: sum(infra.cpu_seconds(pid) or 0.0 for pid in group) for name, group in pids.items()}


async def serve_standin(config, port):
    from aiohttp import web

    standin = StandIn(config)

    async def run_handler(request):
        plan = await request.json()
        steps = await standin.run_plan(plan)
        return web.json_response({"steps": steps})

    async def status_handler(request):
        return web.json_response({"connected": standin.socket is not None, "resynced": standin.resynced})

    app = web.Application()
    app.router.add_post("/_bench/run", run_handler)
    app.router.add_get("/_bench/status", status_handler)
    app.router.add_route("*", "/ari/{tail:.*}", standin.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    sender = asyncio.create_task(standin.sender())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"stand-in ARI on http://127.0.0.1:{port}/ari", flush=True)
    await stop.wait()
    sender.cancel()
    await runner.cleanup()


# --- one checkout (a child process) ------------------------------------------------------------


class Capacity:
    def __init__(self, args):
        self.args = args
        self.log_dir = Path(tempfile.mkdtemp(prefix="conference-capacity-"))
        self.procs = infra.Processes(self.log_dir)
        self.url = f"http://127.0.0.1:{args.port}/ari"

    def setup(self):
        log(f"logs in {self.log_dir}")
        infra.run([str(ROOT / "scripts" / "ensure-redis")], env={**os.environ, "REDIS_URL": infra.REDIS_URL})
        infra.run([str(ROOT / "scripts" / "ensure-postgres")])
        if infra.port_open(self.args.port):
            raise BenchError(f"port {self.args.port} is taken")
        log("database conference_bench: create + migrate")
        infra.create_and_migrate_db()
        os.environ.update(infra.worker_env(self.url))
        import django

        django.setup()
        self.rooms, _sessions = infra.seed(self.args.rooms, 0)
        infra.flush_redis()
        self.sinks()

    def sinks(self):
        """One member per room group that nobody reads: group_send then writes to Redis as with viewers."""
        from asgiref.sync import async_to_sync
        from channels.layers import get_channel_layer

        from conferences import broadcast

        layer = get_channel_layer()
        for room in self.rooms:
            async_to_sync(layer.group_add)(broadcast.room_group(room.pk), f"bench-capacity-sink-{room.pk}")

    def machine_info(self):
        return infra.machine_versions(("Django", "channels", "channels_redis", "aiohttp", "requests"))

    def run(self):
        import requests

        self.setup()
        results = {"machine": self.machine_info(), "config": vars(self.args).copy()}
        config = {
            "app": infra.PROJECT_APP,
            "user": infra.ARI_USER,
            "password": infra.ARI_PASSWORD,
            "rooms": [{"pk": room.pk, "number": room.number} for room in self.rooms],
        }
        config_path = self.log_dir / "standin.json"
        config_path.write_text(json.dumps(config))
        standin = self.procs.start(
            "standin",
            [
                infra.VENV_PY,
                str(Path(__file__).resolve()),
                "--standin",
                str(config_path),
                "--port",
                str(self.args.port),
            ],
            infra.base_env(),
        )
        infra.wait_port(self.args.port, 30, standin)
        probe_path = self.log_dir / "probe.json"
        env = infra.worker_env(self.url)
        env["BENCH_PROBE_OUT"] = str(probe_path)
        profile = self.log_dir / "worker.prof"
        if self.args.profile:
            env["BENCH_PROFILE_OUT"] = str(profile)
        worker_cmd = [infra.VENV_PY, str(ROOT / "bench" / "worker_probe.py"), "--server", "default"]
        worker = self.procs.start("worker", worker_cmd, env)
        base = f"http://127.0.0.1:{self.args.port}/_bench"
        end = time.time() + 60
        while not requests.get(f"{base}/status", timeout=5).json()["resynced"]:
            if worker.poll() is not None:
                raise BenchError(f"the worker exited ({worker.returncode}): {self.procs.log_text('worker')[-800:]}")
            if time.time() > end:
                tail = self.procs.log_text("worker")[-800:]
                raise BenchError(f"the worker did not connect to the stand-in in 60 s: {tail}")
            time.sleep(0.2)
        time.sleep(1.0)  # the resync's database work
        plan = {
            "pids": {
                "worker": [worker.pid],
                "stand-in": [standin.pid],
                "postgresql": infra.pids_named("postgres"),
                "redis": infra.pids_named("redis-server"),
            },
            "rates": self.args.rate_list,
            "seconds": self.args.seconds,
            "churn": self.args.churn,
            "population": self.args.population,
        }
        limit = 60 + len(plan["rates"]) * (plan["seconds"] + DRAIN_TIMEOUT + 5)
        steps = requests.post(f"{base}/run", json=plan, timeout=limit).json()["steps"]
        time.sleep(2.0)
        self.procs.stop("worker", timeout=30)
        self.procs.stop("standin")
        probe = json.loads(probe_path.read_text()) if probe_path.exists() else {}
        results["probes"] = probe.get("probes", [])
        results["steps"] = [dict(step, worker=worker_figures(probe, step)) for step in steps]
        results["log_dir"] = str(self.log_dir)
        if self.args.profile:
            results["profile"] = analysis.web_profile(profile if profile.exists() else None)
        return results

    def teardown(self):
        self.procs.stop_all()
        try:
            infra.flush_redis()
        except Exception as exc:  # noqa: BLE001 (best effort at the end)
            log(f"flushing Redis db 13 failed: {exc}")


def worker_figures(probe, step):
    """The worker's side of one step (bench/worker_probe.py): events of the step by their timestamp."""
    start, end = step["t_start"] - 0.001, step["t_sent"]
    events = []
    for kind, _channel, stamp, started, seconds, handled in probe.get("events", []):
        if not stamp or not handled:
            continue
        sent = ari_time(stamp)
        if start <= sent <= end:
            events.append((kind, sent, started, seconds))
    if not events:
        return None
    done = max(started + seconds for _k, _sent, started, seconds in events)
    first = min(sent for _k, sent, _s, _d in events)
    by_kind = defaultdict(list)
    for kind, _sent, _started, seconds in events:
        by_kind[kind].append(seconds * 1000)
    return {
        "handled": len(events),
        "handled_per_s": len(events) / max(done - first, end - first, 1e-6),
        "done_after_s": done - first,
        "wait": analysis.summary([(started - sent) * 1000 for _k, sent, started, _d in events]),
        "service": analysis.summary([seconds * 1000 for *_rest, seconds in events]),
        "by_kind": {kind: analysis.summary(values) for kind, values in sorted(by_kind.items())},
    }


def child_main(args):
    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    infra.use_code(args.code)
    if infra.CODE["root"] != ROOT:
        sys.path.insert(0, str(infra.CODE["root"]))
    bench = Capacity(args)
    try:
        results = bench.run()
    except (BenchError, KeyboardInterrupt, OSError, ValueError) as exc:
        log(f"FAILED: {exc!r}; logs in {bench.log_dir}")
        return 1
    finally:
        bench.teardown()
    Path(args.child).write_text(json.dumps(results, default=str))
    return 0


# --- the parent -------------------------------------------------------------------------------


def run_child(args, code, label, workdir):
    out = Path(workdir) / f"{label}.json"
    cmd = [infra.VENV_PY, str(Path(__file__).resolve()), "--child", str(out), "--code", str(code)]
    cmd += ["--rates", ",".join(str(r) for r in args.rate_list), "--seconds", str(args.seconds)]
    cmd += ["--rooms", str(args.rooms), "--population", str(args.population), "--churn", str(args.churn)]
    cmd += ["--port", str(args.port), *(["--profile"] if args.profile else [])]
    return infra.run_measurement(cmd, out, label, args.limit, quiet_load=args.quiet_load)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default=",".join(map(str, RATES)), help="handled events per second, rising")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per rate (default 10)")
    parser.add_argument("--rooms", type=int, default=40, help="rooms (default 40)")
    parser.add_argument("--population", type=int, default=5, help="callers per room (default 5)")
    parser.add_argument("--churn", type=float, default=0.3, help="share of handled events that are joins/leaves")
    parser.add_argument("--quick", action="store_true", help="100, 200, 500 events/s for 3 s each, no report")
    parser.add_argument("--code", default=str(ROOT), help="the checkout whose worker is measured (default: this)")
    parser.add_argument("--baseline", metavar="REF", help="a checkout or commit measured first, in the same run")
    parser.add_argument("--port", type=int, default=PORT, help=f"the stand-in's port (default {PORT})")
    parser.add_argument("--out", default=str(ROOT / "docs" / "performance.md"), help="the report to write into")
    parser.add_argument("--no-report", action="store_true", help="print the figures, write no report")
    parser.add_argument(
        "--profile", action="store_true", help="run the worker under cProfile (slower: its figures too)"
    )
    parser.add_argument(
        "--quiet-load",
        type=float,
        metavar="LOAD",
        help="before each checkout's measurement wait (at most 10 min) for the load average to fall under LOAD",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="measure each checkout N times, the checkouts taking turns; each one's median run by peak is reported",
    )
    parser.add_argument("--child", metavar="RESULTS_JSON", help=argparse.SUPPRESS)
    parser.add_argument("--standin", metavar="CONFIG_JSON", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.standin:
        asyncio.run(serve_standin(json.loads(Path(args.standin).read_text()), args.port))
        return 0
    if args.quick:
        args.rates, args.seconds, args.no_report = ",".join(map(str, QUICK_RATES)), 3.0, True
    try:
        args.rate_list = [int(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        parser.error("--rates takes whole numbers separated by commas, e.g. 100,200,500")
    if not args.rate_list or min(args.rate_list) <= 0 or not 1 <= args.rooms <= 200 or not 0 <= args.churn <= 1:
        parser.error("--rates must be positive, --rooms 1..200, --churn 0..1")
    if not 1 <= args.population <= 50 or not 0.5 <= args.seconds <= 120:
        parser.error("--population must be 1..50 and --seconds 0.5..120")
    if not 1 <= args.repeat <= 9:
        parser.error("--repeat must be 1..9")
    args.limit = int(120 + len(args.rate_list) * (args.seconds + DRAIN_TIMEOUT + 10))
    if args.child:
        return child_main(args)

    try:
        measured = report.compare_and_write(
            args=args,
            argv=argv,
            script="bench/capacity.py",
            section=SECTION,
            measure=lambda tree, label, workdir: run_child(args, tree, label, workdir),
            render=functools.partial(report.render_capacity, target_ms=WAIT_TARGET_MS),
            prefix="bench-capacity-",
            rounds=args.repeat,
            combine=functools.partial(report.capacity_median_run, target_ms=WAIT_TARGET_MS),
        )
    except BenchError as exc:
        log(f"FAILED: {exc}")
        return 1
    unmeasured = [
        f"{label} {step['rate']}/s"
        for label, results in measured
        for step in results["steps"]
        if not step.get("worker") or not step["drained"]
    ]
    if unmeasured:
        log(f"not measured or not drained: {', '.join(unmeasured)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
