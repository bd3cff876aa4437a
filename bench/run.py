"""The performance benchmark of the live conference pages, side by side with a minimal direct relay.

One command sets everything up, runs every scenario, writes docs/performance.md
and stops what it started (also on an error or Ctrl-C):

    .venv/bin/python bench/run.py            # the full run (about 15 minutes)
    .venv/bin/python bench/run.py --quick    # 1 and 200 viewers and a burst, no variants (< 3 minutes)

It uses the sandbox Asterisk (scripts/asterisk-sandbox), Redis database 13 and
the PostgreSQL database ``conference_bench`` (created and migrated here), never
the test suite's. It starts: the relay (bench/relay.py, ARI app
``bench-relay`` with subscribeAll), daphne web process(es), the worker
(``manage.py ari_worker --server default`` through bench/worker_probe.py,
which only adds timing probes), and two client processes (bench/clients.py):
one with the relay's viewers and the clock, one with the project's viewers.
Every scenario is a fixed script of simulated callers (Local channels into
``conferences``, far ends ``talk`` / ``silent``). Do not run it while the test
suite runs on the same sandbox: both use its ``conference`` application. The
bench waits until no other process holds a connection to the sandbox's ARI
port, and redoes a configuration when one appeared meanwhile.
"""

import argparse
import json
import multiprocessing
import os
import shlex
import signal
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import analysis, clients, infra, report  # noqa: E402
from bench.infra import BenchError, log  # noqa: E402

WEB_PORT = 8101  # and 8102 for the second daphne
RELAY_PORT = 8190
ROOMS = 20
SESSIONS = 1100
FIRST_CALLER_NUMBER = 90000

ONE_ROOM_CALLERS = 20  # joins, then leaves; every other one talks
ROOMS_CALLERS_PER_ROOM = 2  # over 20 rooms; the first of each room talks
BURST_CALLERS = 50
BURST_SECONDS = 2.0
HOLD_SECONDS = 4.0  # between the last join and the first leave: talking events come in

CONFIGS = {
    "core-1": {"settings": "conferencesite.settings", "webs": 1, "label": "RedisChannelLayer, 1 daphne"},
    # The product's own web command (uvicorn, conferences/management/commands/serve.py): bench/busy.py's default.
    "serve-1": {
        "settings": "conferencesite.settings",
        "webs": 1,
        "label": "RedisChannelLayer, 1 manage.py serve",
        "server": "serve",
    },
    "pubsub-1": {"settings": "bench.settings_pubsub", "webs": 1, "label": "RedisPubSubChannelLayer, 1 daphne"},
    "core-2": {"settings": "conferencesite.settings", "webs": 2, "label": "RedisChannelLayer, 2 daphne"},
    "pubsub-2": {"settings": "bench.settings_pubsub", "webs": 2, "label": "RedisPubSubChannelLayer, 2 daphne"},
    # Not a variant: the default layer with capacity 10, so that a burst overflows it and viewers must resync.
    "drops": {
        "settings": "bench.settings_small_capacity",
        "webs": 1,
        "variant": False,
        "label": "RedisChannelLayer with capacity 10 (forced drops), 1 daphne",
    },
    # Not a variant: the default configuration with daphne under cProfile, for where the web process's time goes.
    "profile": {
        "settings": "conferencesite.settings",
        "webs": 1,
        "profile": True,
        "label": "RedisChannelLayer, 1 daphne under cProfile",
    },
}
QUICK_PLAN = [("core-1", ["one-1", "one-200", "burst-200"])]
# "alone": the burst again with the project's viewers only (the relay keeps its clock, no viewers), so
# the relay's own fan-out of every raw ARI frame does not compete for the cores.
FULL_PLAN = [
    ("core-1", ["one-1", "one-50", "one-200", "burst-200", "one-1000", "burst-1000", "rooms-200", "alone-200"]),
    ("pubsub-1", ["one-200", "burst-200", "one-1000", "burst-1000"]),
    ("core-2", ["one-200", "burst-200", "one-1000", "burst-1000", "alone-200"]),
    ("pubsub-2", ["one-200", "burst-200", "one-1000", "burst-1000"]),
    ("drops", ["burst-200"]),
    ("profile", ["one-200"]),
]


MAX_ATTEMPTS = 3  # per configuration, when another sandbox user disturbed it
WAIT_LIMIT = 10 * 60  # seconds to wait for the sandbox to be free


class TimeLimit(BenchError):
    pass


class Disturbed(BenchError):
    """Another sandbox user (the test suite, a worker) ran meanwhile: the configuration is redone."""


class ClientProcess:
    """One measuring process (bench/clients.py) driven over a pipe."""

    def __init__(self, name):
        context = multiprocessing.get_context("spawn")
        self.name = name
        self.conn, child = context.Pipe()
        self.proc = context.Process(target=clients.main, args=(child,), name=name, daemon=True)
        self.proc.start()
        child.close()

    @property
    def pid(self):
        return self.proc.pid

    def send(self, *command):
        self.conn.send(command)

    def reply(self, timeout):
        if not self.conn.poll(timeout):
            raise BenchError(f"client process {self.name} did not answer in {timeout} s")
        status, value = self.conn.recv()
        if status != "ok":
            raise BenchError(f"client process {self.name}: {value}")
        return value

    def call(self, *command, timeout=120):
        self.send(*command)
        return self.reply(timeout)

    def stop(self):
        try:
            if self.proc.is_alive():
                self.call("quit", timeout=40)
        except (BenchError, OSError, EOFError):
            pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


def both(calls, timeout):
    """Send to several client processes at once, then wait for all replies."""
    for client, command in calls:
        client.send(*command)
    return [client.reply(timeout) for client, _command in calls]


class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.plan = QUICK_PLAN if args.quick else FULL_PLAN
        if getattr(args, "only", None):
            self.plan = [(item.split(":")[0], item.split(":")[1].split(",")) for item in args.only]
        self.log_dir = Path(tempfile.mkdtemp(prefix="conference-bench-"))
        self.procs = infra.Processes(self.log_dir)
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="bench-ari")
        self.clients = []
        self.next_number = FIRST_CALLER_NUMBER
        self.started_asterisk = False
        self.ari = None
        self.results = {"configs": [], "notes": [], "plan": self.plan, "quick": self.quick}
        self.started_at = time.time()
        self.waited = 0.0
        self.watcher = None
        self.web_names, self.ports, self.worker_name = [], [], None
        self.profile_path = None

    def own_pids(self):
        return self.procs.pids() | {client.pid for client in self.clients if client.pid}

    # --- set-up ---------------------------------------------------------------------------

    def setup(self):
        log(f"logs in {self.log_dir}")
        ari_url, self.started_asterisk = infra.start_services()
        self.ari_url = ari_url
        self.ari = infra.Ari(ari_url)
        self.waited += infra.wait_for_sandbox_free(self.own_pids(), timeout=WAIT_LIMIT)
        log("database conference_bench: create + migrate")
        infra.create_and_migrate_db()
        os.environ.update(infra.worker_env(ari_url))
        import django

        django.setup()
        self.seed()
        self.ari.cleanup()
        infra.flush_redis()
        relay = self.procs.start(
            "relay",
            [
                infra.VENV_PY,
                str(ROOT / "bench" / "relay.py"),
                "--port",
                str(RELAY_PORT),
                "--ari-url",
                ari_url,
                "--user",
                infra.ARI_USER,
                "--password",
                infra.ARI_PASSWORD,
            ],
            infra.base_env(),
        )
        infra.wait_port(RELAY_PORT, 20, relay)
        self.results["machine"] = self.machine_info()

    def seed(self):
        self.rooms, self.sessions = infra.seed(ROOMS, SESSIONS)
        self.clear_rooms()
        log(f"seeded {ROOMS} rooms, user 'bench' and {SESSIONS} sessions")

    def clear_rooms(self):
        from conferences.models import ConferenceEvent, Participant

        pks = [room.pk for room in self.rooms]
        ConferenceEvent.objects.filter(conference_id__in=pks).delete()
        Participant.objects.filter(conference_id__in=pks).delete()

    def machine_info(self):
        asterisk = ((self.ari.info() or {}).get("system") or {}).get("version", "?")
        packages = ("Django", "channels", "channels_redis", "daphne", "websockets", "redis")
        return infra.machine_versions(packages, asterisk=asterisk)

    # --- a configuration (layer, web processes) -------------------------------------------------

    def start_config(self, name):
        config = CONFIGS[name]
        infra.flush_redis()
        self.clear_rooms()
        self.ari.cleanup()
        self.web_names, self.ports = [], []
        for i in range(config["webs"]):
            port = WEB_PORT + i
            if infra.port_open(port):
                raise BenchError(f"port {port} is taken")
            command = [infra.DAPHNE, "-b", "127.0.0.1", "-p", str(port), "conferencesite.asgi:application"]
            if config.get("server") == "serve":
                command = [infra.VENV_PY, "manage.py", "serve", "--no-worker", "--nostatic", f"127.0.0.1:{port}"]
            if config.get("profile"):
                self.profile_path = self.log_dir / f"web{i + 1}-{name}.prof"
                command = [infra.VENV_PY, "-m", "cProfile", "-o", str(self.profile_path), "-m", "daphne", *command[1:]]
            proc = self.procs.start(f"web{i + 1}-{name}", command, infra.base_env(config["settings"]))
            self.web_names.append(f"web{i + 1}-{name}")
            self.ports.append(port)
            infra.wait_port(port, 60, proc)
        self.probe_path = self.log_dir / f"probe-{name}.json"
        env = infra.worker_env(self.ari_url, config["settings"])
        env["BENCH_PROBE_OUT"] = str(self.probe_path)
        self.worker_name = f"worker-{name}"
        worker = self.procs.start(
            self.worker_name, [infra.VENV_PY, str(ROOT / "bench" / "worker_probe.py"), "--server", "default"], env
        )
        end = time.time() + 60
        while "resync done" not in self.procs.log_text(self.worker_name):
            if worker.poll() is not None:
                raise BenchError(f"the worker exited ({worker.returncode}): {self.tail(self.worker_name)}")
            if time.time() > end:
                raise BenchError(f"the worker did not connect to ARI in 60 s: {self.tail(self.worker_name)}")
            time.sleep(0.2)
        self.clients = [ClientProcess("clients-relay"), ClientProcess("clients-project")]
        self.layout = None
        self.connected = 0

    def stop_config(self):
        for client in self.clients:
            client.stop()
        self.clients = []
        code = self.procs.stop(self.worker_name, timeout=30) if self.worker_name else None
        if code not in (0, None):
            self.results["notes"].append(f"{self.worker_name} exited with status {code}")
        for name in self.web_names:
            self.procs.stop(name)
        self.web_names = []
        try:
            probe = json.loads(self.probe_path.read_text())
        except (OSError, ValueError):
            probe = {}
            self.results["notes"].append(f"{self.worker_name}: no probe data")
        return probe

    def tail(self, name, lines=15):
        return "\n".join(self.procs.log_text(name).splitlines()[-lines:])

    def check_alive(self):
        self.check_disturbed()
        for name, proc in self.procs.procs.items():
            if proc.poll() is not None:
                if name == self.worker_name and proc.returncode == 3:
                    raise Disturbed("another client took the ARI application 'conference' from the worker")
                raise BenchError(f"{name} exited ({proc.returncode}): {self.tail(name)}")
        for client in self.clients:
            if not client.proc.is_alive():
                raise BenchError(f"client process {client.name} died")

    def check_disturbed(self):
        if self.watcher is not None and self.watcher.seen:
            raise Disturbed(f"another sandbox user ran meanwhile ({self.watcher.seen[:100]})")

    # --- viewers --------------------------------------------------------------------------

    def ensure_viewers(self, layout, count):
        relay_client, project_client = self.clients
        if self.layout != layout:
            if self.layout is not None:
                both([(relay_client, ("close",)), (project_client, ("close",))], 120)
                self.wait_web_quiet()
            relay_client.call("connect", [self.relay_spec("clock")], 1, 20, timeout=60)
            self.layout, self.connected = layout, 0
        if count <= self.connected:
            return None
        project_specs, relay_specs = [], []
        for i in range(self.connected, count):
            room = self.rooms[i % ROOMS] if layout == "rooms" else self.rooms[0]
            port = self.ports[i % len(self.ports)]
            project_specs.append(
                {
                    "kind": "project",
                    "id": f"p{i}",
                    "room": room.slug,
                    "url": f"ws://127.0.0.1:{port}/ws/conferences/{room.slug}/",
                    "cookie": f"sessionid={self.sessions[i]}",
                    "origin": f"http://127.0.0.1:{port}",
                }
            )
            if layout != "alone":
                relay_specs.append(self.relay_spec("relay", f"r{i}"))
        started = time.time()
        relay_reply, project_reply = both(
            [
                (relay_client, ("connect", relay_specs, 50, 30)),
                (project_client, ("connect", project_specs, 20, 60)),
            ],
            600,
        )
        for side, reply in (("relay", relay_reply), ("project", project_reply)):
            if reply["failed"]:
                self.results["notes"].append(
                    f"{len(reply['failed'])} {side} viewer(s) failed to connect, e.g. {reply['failed'][0]}"
                )
        log(
            f"viewers: {self.connected} -> {count} ({layout}) in {time.time() - started:.1f} s "
            f"(project {project_reply['seconds']:.1f} s, relay {relay_reply['seconds']:.1f} s)"
        )
        self.connected = count
        return project_reply

    def wait_web_quiet(self, timeout=60.0):
        """Let the web processes finish closing the sockets of the previous layout before new ones connect."""
        pids = [self.procs.procs[n].pid for n in self.web_names]
        end = time.time() + timeout
        while time.time() < end:
            before = sum(infra.cpu_seconds(pid) or 0.0 for pid in pids)
            time.sleep(1.0)
            if sum(infra.cpu_seconds(pid) or 0.0 for pid in pids) - before < 0.05 * len(pids):
                return

    def relay_spec(self, kind, ident="clock"):
        return {"kind": kind, "id": ident, "url": f"ws://127.0.0.1:{RELAY_PORT}/"}

    # --- the database's truth ---------------------------------------------------------------

    def room_state(self, rooms):
        from conferences.models import Conference, Participant

        pks = [room.pk for room in rooms]
        seqs = dict(Conference.objects.filter(pk__in=pks).values_list("slug", "seq"))
        present = {room.slug: [] for room in rooms}
        for slug, number in Participant.objects.filter(conference_id__in=pks, left_at__isnull=True).values_list(
            "conference__slug", "caller_number"
        ):
            present[slug].append(number)
        return seqs, {slug: sorted(numbers) for slug, numbers in present.items()}

    def wait_rooms(self, rooms, expected, *, stable, timeout):
        """Wait until each room has ``expected[slug]`` present callers and its seq held still ``stable`` s."""
        end = time.time() + timeout
        last, since = None, time.time()
        while True:
            seqs, present = self.room_state(rooms)
            counts = {slug: len(numbers) for slug, numbers in present.items()}
            if (seqs, counts) != last:
                last, since = (seqs, counts), time.time()
            if counts == expected and time.time() - since >= stable:
                return seqs, present
            if time.time() > end:
                self.notes_for_phase.append(f"rooms not settled in {timeout} s: {counts} != {expected}")
                return seqs, present
            time.sleep(0.1)

    # --- calls -------------------------------------------------------------------------------------

    def new_caller(self, room, far):
        self.next_number += 1
        number = str(self.next_number)
        participant, far_id = self.ari.caller(room.number, far=far, name=f"Bench {number}", number=number)
        return {
            "number": number,
            "channel": participant,
            "far": far_id,
            "room": room.slug,
            "room_pk": room.pk,
            "talk": far == "talk",
        }

    def spaced(self, items, spacing, fn):
        """Call ``fn(item)`` in the pool at t0 + i * spacing; returns (results, t0, seconds until the last returned)."""
        t0 = time.time()
        futures = []
        for i, item in enumerate(items):
            delay = t0 + i * spacing - time.time()
            if delay > 0:
                time.sleep(delay)
            futures.append(self.pool.submit(fn, item))
        results = [future.result(timeout=20) for future in futures]
        return results, t0, time.time() - t0

    def hold_check(self, rooms, expected):
        """When the callers are in: every viewer's roster against the database's (after it caught up)."""
        seqs, present = self.wait_rooms(rooms, expected, stable=0.3, timeout=60)
        settle = self.clients[1].call("settle", seqs, 0.0, 60, timeout=90)
        rosters = self.clients[1].call("rosters", timeout=60)
        return {"truth": present, "rosters": rosters, "caught_up_seconds": settle["seconds"]}

    def script_calls(self, rooms, per_room):
        plan = [
            (room, "talk" if r == 0 or (len(rooms) == 1 and r % 2 == 0) else "silent")
            for r in range(per_room)
            for room in rooms
        ]
        spacing = 0.25 if len(rooms) == 1 else 0.15
        callers, _t0, _took = self.spaced(plan, spacing, lambda item: self.new_caller(*item))
        joined_at = time.time()
        hold = self.hold_check(rooms, {room.slug: per_room for room in rooms})
        time.sleep(max(0.0, joined_at + HOLD_SECONDS - time.time()))
        self.spaced(callers, spacing, lambda caller: self.ari.hangup(caller["far"]))
        return callers, hold, None

    def script_burst(self, room):
        plan = [(room, "silent")] * BURST_CALLERS
        callers, t0, took = self.spaced(plan, BURST_SECONDS / BURST_CALLERS, lambda item: self.new_caller(*item))
        burst = {"t0": t0, "originate_seconds": took, "numbers": [c["number"] for c in callers]}
        hold = self.hold_check([room], {room.slug: BURST_CALLERS})
        time.sleep(1.0)
        self.spaced(callers, BURST_SECONDS / BURST_CALLERS, lambda caller: self.ari.hangup(caller["far"]))
        return callers, hold, burst

    # --- a phase (one scenario) --------------------------------------------------------------------

    def processes(self):
        groups = {
            "web": [self.procs.procs[n].pid for n in self.web_names],
            "worker": [self.procs.procs[self.worker_name].pid],
            "relay": [self.procs.procs["relay"].pid],
            "clients (relay)": [self.clients[0].pid],
            "clients (project)": [self.clients[1].pid],
            "asterisk": infra.sandbox_asterisk_pids(),
            "redis": infra.pids_named("redis-server"),
            "postgresql": infra.pids_named("postgres"),
        }
        return groups

    def cpu_snapshot(self):
        snapshot = {group: {pid: infra.cpu_seconds(pid) for pid in pids} for group, pids in self.processes().items()}
        snapshot["machine"] = {0: infra.busy_seconds()}
        return snapshot

    def run_phase(self, config_name, phase_name):
        kind, count = phase_name.split("-")
        count = int(count)
        self.check_alive()
        self.notes_for_phase = []
        if self.ari.channels():
            self.ari.cleanup()
        layout = kind if kind in ("rooms", "alone") else "one"
        connect = self.ensure_viewers(layout, count)
        rooms = self.rooms if kind == "rooms" else [self.rooms[0]]
        start_seqs, _ = self.room_state(rooms)
        relay_client, project_client = self.clients
        both([(relay_client, ("phase",)), (project_client, ("phase",))], 60)
        cpu_before = self.cpu_snapshot()
        t_start = time.time()
        log(f"{config_name} {phase_name}: calls")
        if kind in ("burst", "alone"):
            callers, hold, burst = self.script_burst(rooms[0])
        else:
            callers, hold, burst = self.script_calls(
                rooms, ONE_ROOM_CALLERS if kind == "one" else ROOMS_CALLERS_PER_ROOM
            )
        final_seqs, final_present = self.wait_rooms(rooms, {room.slug: 0 for room in rooms}, stable=1.0, timeout=60)
        settle = both(
            [
                (relay_client, ("settle", {}, 0.5, 120, [c["channel"] for c in callers])),
                (project_client, ("settle", final_seqs, 0.5, 120)),
            ],
            180,
        )
        final_rosters = project_client.call("rosters", timeout=60)
        t_end = time.time()
        cpu_after = self.cpu_snapshot()
        memory = {
            group: [
                {
                    "hwm_mb": (infra.status_kb(pid, "VmHWM") or 0) / 1024,
                    "rss_mb": (infra.status_kb(pid, "VmRSS") or 0) / 1024,
                }
                for pid in pids
            ]
            for group, pids in self.processes().items()
            if group in ("web", "worker", "relay")
        }
        relay_results, project_results = both([(relay_client, ("collect",)), (project_client, ("collect",))], 300)
        phase = {
            "config": config_name,
            "name": phase_name,
            "kind": kind,
            "count": count,
            "rooms": [room.slug for room in rooms],
            "callers": callers,
            "hold": hold,
            "final": {"truth": final_present, "rosters": final_rosters, "seqs": final_seqs},
            "burst": burst,
            "start_seqs": start_seqs,
            "final_seqs": final_seqs,
            "t_start": t_start,
            "t_end": t_end,
            "relay": relay_results,
            "project": project_results,
        }
        if os.environ.get("BENCH_DUMP_PHASES"):
            (self.log_dir / f"phase-{config_name}-{phase_name}.json").write_text(json.dumps(phase, default=str))
        metrics = analysis.analyze_phase(phase)
        metrics.update(
            name=phase_name,
            kind=kind,
            count=count,
            rooms=len(rooms),
            seconds=t_end - t_start,
            settle=[s["seconds"] for s in settle],
            settle_timed_out=any(s["timed_out"] for s in settle),
            cpu=self.cpu_delta(cpu_before, cpu_after),
            memory=memory,
            connect_seconds=connect["seconds"] if connect else None,
            notes=list(self.notes_for_phase),
        )
        p, r = metrics["project"], metrics["relay"]
        log(
            f"{config_name} {phase_name}: {metrics['viewers']} viewers, {metrics['room_events']} room events; "
            f"relay p50/p99 {fmt(r['p50'])}/{fmt(r['p99'])} ms, project p50/p99 {fmt(p['p50'])}/{fmt(p['p99'])} ms, "
            f"delivered {fmt(p['delivered_pct'], 1)} %, gaps {p['gaps']}"
        )
        return phase, metrics

    def cpu_delta(self, before, after):
        delta = {}
        for group, pids in after.items():
            total = 0.0
            for pid, seconds in pids.items():
                if seconds is not None:
                    total += seconds - (before.get(group, {}).get(pid) or 0.0)
            delta[group] = total
        machine = delta.pop("machine")
        delta["other"] = max(0.0, machine - sum(delta.values()))
        return delta

    # --- the whole run ---------------------------------------------------------------------------------

    def run(self):
        self.setup()
        for config_name, phases in self.plan:
            for attempt in range(1, MAX_ATTEMPTS + 1):
                self.waited += infra.wait_for_sandbox_free(self.own_pids(), timeout=WAIT_LIMIT)
                try:
                    config = self.run_config(config_name, phases)
                    break
                except Disturbed as exc:
                    note = f"`{config_name}`: attempt {attempt} abandoned and redone: {exc}"
                    log(note)
                    self.results["notes"].append(note)
            else:
                raise BenchError(f"{config_name}: disturbed {MAX_ATTEMPTS} times by other sandbox users")
            if CONFIGS[config_name].get("profile"):
                config["profile"] = analysis.web_profile(self.profile_path)
                self.results["profile"] = config
            else:
                self.results["configs"].append(config)
        self.results["seconds"] = time.time() - self.started_at
        self.results["finished_at"] = time.time()
        self.results["waited"] = self.waited

    def run_config(self, config_name, phases):
        log(f"configuration {config_name}: {CONFIGS[config_name]['label']}")
        self.watcher = infra.Watcher(self.own_pids)
        try:
            config = {"name": config_name, **CONFIGS[config_name], "phases": []}
            raw = []
            try:
                self.start_config(config_name)
                for phase_name in phases:
                    phase, metrics = self.run_phase(config_name, phase_name)
                    self.check_alive()
                    config["phases"].append(metrics)
                    raw.append(phase)
            finally:
                probe = self.stop_config()
        finally:
            self.watcher.stop()
            self.watcher = None
        for phase, metrics in zip(raw, config["phases"], strict=True):
            metrics["worker"] = analysis.analyze_worker(probe, phase, phase["project"])
        config["probes"] = probe.get("probes", [])
        return config

    def teardown(self):
        for client in self.clients:
            client.stop()
        self.clients = []
        self.procs.stop_all()
        if self.ari is not None:
            try:
                self.ari.cleanup()
            except Exception as exc:  # noqa: BLE001 (best effort at the end)
                log(f"clean-up of the sandbox failed: {exc}")
        try:
            infra.flush_redis()
        except Exception as exc:  # noqa: BLE001
            log(f"flushing Redis db 13 failed: {exc}")
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self.started_asterisk and not self.args.keep_asterisk:
            infra.stop_sandbox()


def fmt(value, digits=0):
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description="Benchmark the live pages against a minimal direct ARI relay.")
    parser.add_argument("--quick", action="store_true", help="1 and 200 viewers and a burst, no variants (< 3 min)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "performance.md"), help="the report to write")
    parser.add_argument("--keep-asterisk", action="store_true", help="leave a sandbox this run started running")
    parser.add_argument(
        "--render",
        metavar="RESULTS_JSON",
        help="write the report again from a finished run's results.json (after changing only its wording)",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="CONFIG:PHASE,PHASE",
        help="run just these phases (repeatable), e.g. --only core-1:one-200,alone-200 --only profile:one-1000; "
        "for trying changes, not for the report",
    )
    args = parser.parse_args(argv)

    if args.render:
        results = json.loads(Path(args.render).read_text())
        out = Path(args.out)
        command = results.get("command") or ".venv/bin/python bench/run.py"
        out.write_text(report.render(results, command=command, previous=out.read_text() if out.exists() else ""))
        log(f"wrote {out} from {args.render}")
        return 0

    # Waiting for other sandbox users included: the run itself takes < 3 (quick) or ~15 minutes.
    limit = 15 * 60 if args.quick else 40 * 60

    def on_alarm(signum, frame):
        raise TimeLimit(f"the run took longer than {limit // 60} minutes")

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    signal.alarm(limit)
    bench = Bench(args)
    command = ".venv/bin/python bench/run.py" + (" --quick" if args.quick else "")
    if args.only:
        command += "".join(f" --only {item}" for item in args.only)
    bench.results["command"] = command
    ok = False
    try:
        bench.run()
        ok = True
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
    except BenchError as exc:
        log(f"FAILED: {exc}")
    finally:
        signal.alarm(0)
        try:
            bench.teardown()
        finally:
            (bench.log_dir / "results.json").write_text(json.dumps(bench.results, indent=1, default=str))
    if not ok:
        log(f"no report written; logs and partial results in {bench.log_dir}")
        return 1
    out = Path(args.out)
    previous = out.read_text() if out.exists() else ""
    out.write_text(report.render(bench.results, command=command, previous=previous))
    log(f"wrote {out} ({bench.results['seconds'] / 60:.1f} min); logs in {bench.log_dir}")
    log("command: " + shlex.join(sys.argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
