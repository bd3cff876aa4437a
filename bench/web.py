"""The web side at scale: connect storms, fan-out against the page-needs relay, and the ASGI servers.

    .venv/bin/python bench/web.py                                  # this checkout, daphne: the full run
    .venv/bin/python bench/web.py --quick                          # 200 pages only, no report (about 2 min)
    .venv/bin/python bench/web.py --baseline 58ddf60               # that commit measured first, same run
    .venv/bin/python bench/web.py --baseline 58ddf60 --repeat 3    # the two taking turns, three runs each
    .venv/bin/python bench/web.py --server daphne,daphne+persistent,uvicorn,uvicorn-wsproto,hypercorn,granian --profile
    .venv/bin/python bench/web.py --render /tmp/conference-bench-…/web-results.json   # the sections again

The production layout (PostgreSQL ``conference_bench_web``, Redis database 15,
ports 8121-8122 / 8192-8193 -- its own, so that bench/run.py or bench/busy.py
can run beside it on another sandbox --, ``manage.py ari_worker`` through
bench/worker_probe.py, the sandbox Asterisk of scripts/asterisk-sandbox; set
ASTERISK_SANDBOX_DIR and ASTERISK_SANDBOX_PORT for another sandbox than the
default one), with the web process(es) run by the ASGI server(s) named by
``--server`` (``NAME+persistent``: the web processes keep their PostgreSQL
connections, ``conn_max_age=60``). ``--profile`` samples the web process with
py-spy during the largest one-process storm (where a connection's time goes). Beside the product, in the same run:
bench/needs_relay.py (what a page needs, as small JSON: the honest baseline)
and bench/relay.py (every raw ARI frame: the seed-style anchor).

The measuring clients are one Node.js process (bench/node/clients.mjs, ``ws``,
installed with ``npm ci`` on the first run) holding every viewer: project
pages (session cookies seeded here), page-needs clients, raw relay clients
and the raw relay's clock (Asterisk's timestamps). Its CPU share is reported.

For each server (each checkout):

1. Connect storms: V pages of one room (``--storms``, default 200, 500,
   1,000) opened within one second, evenly spaced, no jitter, no limit on
   how many are in flight; each waits at most ``--storm-timeout`` s (default
   30) for its snapshot. Reported: time from its start to its snapshot (p50 /
   p99 / max), when the last one had it, handshakes refused or dropped, close
   codes. The same storm against the page-needs relay. With ``--two-web``
   (on in the full run, first server only): 2,000 pages over two web
   processes, half each.
2. Fan-out (``--fanouts``, default 200 and 1,000 pages of one room, opened 20
   at a time): 20 callers join 0.25 s apart (every other one talking), talk
   for 4 s, leave 0.25 s apart. Latency from Asterisk's event timestamp to
   the page / relay client, delivery, web CPU per frame delivered, web RSS.
   Page-needs clients as many as pages; raw relay clients at most 200 (its
   ~1,000 frames per client would otherwise take the cores from the rest).

The sections ``connect-storm``, ``fanout-needs`` and ``asgi-servers`` of
docs/performance.md are rewritten (others kept; the text between the prose
markers survives reruns). Exits 1 when a measurement failed.
"""

import argparse
import copy
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import analysis, infra, report, run  # noqa: E402
from bench.clients import ari_time  # noqa: E402
from bench.infra import BenchError, log  # noqa: E402

NODE_DIR = ROOT / "bench" / "node"
# Its own database, Redis database and ports, so that it can run beside bench/run.py or bench/busy.py
# (on another sandbox: ASTERISK_SANDBOX_DIR / ASTERISK_SANDBOX_PORT) without either disturbing the other.
DB_NAME = "conference_bench_web"
REDIS_DB = 15
WEB_PORT = 8121  # and 8122 for the second web process
RAW_RELAY_PORT = 8192
NEEDS_PORT = 8193
APP = "conferencesite.asgi:application"
BIN = ROOT / ".venv" / "bin"
# The bench's pages are all sessions of one superuser: the per-user socket cap must not refuse them.
BENCH_SOCKET_CAP = "100000"
FANOUT_CALLERS = 20
RAW_RELAY_CLIENTS = 200
SECTIONS = ("connect-storm", "fanout-needs", "asgi-servers")


def split_server(spec):
    """``(server, variant)`` of a ``--server`` item: ``daphne`` or ``daphne+persistent``."""
    server, _, variant = spec.partition("+")
    return server, variant


def server_command(spec, port):
    """The command line of one web process of ``spec`` on ``port`` (access logs off, one worker process)."""
    server, _variant = split_server(spec)
    host = "127.0.0.1"
    if server == "daphne":
        return [str(BIN / "daphne"), "-b", host, "-p", str(port), APP]
    if server.startswith("uvicorn"):
        ws = {"uvicorn": "websockets", "uvicorn-sansio": "websockets-sansio", "uvicorn-wsproto": "wsproto"}[server]
        return [str(BIN / "uvicorn"), APP, "--host", host, "--port", str(port), "--ws", ws] + [
            "--no-access-log",
            "--lifespan",
            "off",
            "--backlog",
            "4096",
        ]
    if server.startswith("serve"):  # the product's command (its default; -legacy, -sansio: uvicorn's two)
        serve_py = Path(infra.CODE["root"]) / "conferences" / "management" / "commands" / "serve.py"
        if "uvicorn" not in serve_py.read_text():
            raise BenchError("this checkout's manage.py serve is not the uvicorn one (measure it as daphne)")
        ws = {"serve": [], "serve-legacy": ["--ws", "websockets"], "serve-sansio": ["--ws", "websockets-sansio"]}
        return [infra.VENV_PY, "manage.py", "serve", "--no-worker", "--nostatic", *ws[server], f"{host}:{port}"]
    if server == "hypercorn":
        return [str(BIN / "hypercorn"), "-b", f"{host}:{port}", "--backlog", "4096", APP]
    if server == "granian":
        return [str(BIN / "granian"), "--interface", "asgi", "--host", host, "--port", str(port)] + [
            "--workers",
            "1",
            "--no-access-log",
            "--backlog",
            "4096",
            APP,
        ]
    raise BenchError(f"unknown server {server}")


SERVERS = (
    "serve",
    "serve-legacy",
    "serve-sansio",
    "daphne",
    "uvicorn",
    "uvicorn-sansio",
    "uvicorn-wsproto",
    "hypercorn",
    "granian",
)
# ``<server>+persistent``: the web processes keep their PostgreSQL connections (DATABASE_URL's
# ``conn_max_age=60``, conferencesite/env.py) instead of today's default of one connection per ORM hop.
VARIANTS = {"": {}, "persistent": {"conn_max_age": "60"}}


def use_own_resources():
    """Point bench/infra.py and bench/run.py at this bench's database, Redis database and ports."""
    infra.DB_NAME = DB_NAME
    infra.DATABASE_URL = f"postgres://postgres@127.0.0.1:5432/{DB_NAME}"
    infra.REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
    # Other benches share none of these with this one: only other runs of it are in the way.
    infra.FOREIGN_MARKERS = ("bench/web.py",)
    run.WEB_PORT, run.RELAY_PORT = WEB_PORT, RAW_RELAY_PORT


class NodeClients:
    """bench/node/clients.mjs driven over its stdin / stdout (one JSON object a line)."""

    name = "clients (node)"

    def __init__(self, log_dir):
        if not (NODE_DIR / "node_modules" / "ws").is_dir():
            log("bench/node: npm ci")
            infra.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, timeout=300)
        self.stderr = open(Path(log_dir) / "clients-node.log", "ab")  # noqa: SIM115 (closed in stop)
        self.popen = subprocess.Popen(
            ["node", str(NODE_DIR / "clients.mjs")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            start_new_session=True,
        )
        self.replies = queue.Queue()
        self.next_id = 0
        threading.Thread(target=self._read, daemon=True, name="node-clients").start()

    @property
    def pid(self):
        return self.popen.pid

    def _read(self):
        for line in self.popen.stdout:
            self.replies.put(json.loads(line))
        self.replies.put(None)

    def call(self, command, *args, timeout=120):
        self.next_id += 1
        self.popen.stdin.write((json.dumps({"id": self.next_id, "cmd": command, "args": args}) + "\n").encode())
        self.popen.stdin.flush()
        end = time.time() + timeout
        while True:
            try:
                reply = self.replies.get(timeout=max(0.1, end - time.time()))
            except queue.Empty:
                raise BenchError(f"the Node.js clients did not answer {command} in {timeout} s") from None
            if reply is None:
                raise BenchError(f"the Node.js clients exited ({self.popen.poll()})")
            if reply["id"] != self.next_id:
                continue
            if not reply["ok"]:
                raise BenchError(f"the Node.js clients: {command}: {reply['error']}")
            return reply["value"]

    def stop(self):
        if self.popen.poll() is None:
            try:
                self.call("quit", timeout=30)
            except (BenchError, OSError):
                pass
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)
        self.stderr.close()


def to_stamps(results):
    """Raw and needs clients' records carry Asterisk's time as text: as epoch seconds, for bench/analysis.py."""
    for result in results:
        if result["kind"] in ("relay", "clock", "needs"):
            result["recs"] = [(t, kind, ch, br, ari_time(stamp)) for t, kind, ch, br, stamp in result["recs"]]
    return results


def storm_figures(opened, count):
    """One storm's figures from the clients' per-viewer times."""
    t0 = opened["t0"]
    ready, refused, dropped, waiting = [], 0, 0, 0
    codes, errors = Counter(), Counter()
    dropped_after = []  # ms from a dropped page's start to its close
    last = None
    for _id, _kind, started, handshake, ready_at, closed, status, error, closed_at in opened["viewers"]:
        if ready_at is not None:
            ready.append((ready_at - started) * 1000)
            last = max(last or 0.0, ready_at)
            if closed is not None:
                codes[closed] += 1
            continue
        if status is not None or (handshake is None and error == "ECONNREFUSED"):
            refused += 1  # the handshake was answered with an HTTP status, or the connection refused
            codes[f"HTTP {status}" if status else error] += 1
        elif closed is not None:
            # Closed by the server before a snapshot: a close code (4401, 4429, 1011), or 1006 for a
            # connection dropped without a close frame (before or after the handshake).
            dropped += 1
            codes[f"{closed} {'after' if handshake else 'before'} the handshake"] += 1
            if closed_at is not None:
                dropped_after.append((closed_at - started) * 1000)
        else:
            waiting += 1
        if error:
            errors[error] += 1
    return {
        "pages": count,
        "ready": len(ready),
        "per_page": analysis.summary(ready),
        "all_ms": (last - t0) * 1000 if last is not None and len(ready) == count else None,
        "last_ms": (last - t0) * 1000 if last is not None else None,
        "refused": refused,
        "dropped": dropped,
        "waiting": waiting,
        "dropped_after": analysis.summary(dropped_after),
        "codes": {str(k): v for k, v in codes.most_common()},
        "errors": dict(errors.most_common(5)),
    }


# The inclusive figures are shown for the product's and its libraries' code, not the servers' main loops.
INCLUSIVE_OF = ("conferences/", "channels/", "channels_redis/", "django/", "asgiref/", "psycopg/", "redis/")


def profile_summary(path, top=15):
    """Where a profiled web process's time went, from py-spy's collapsed stacks (``--format raw``).

    Threads apart (``--threads``: each stack starts with its thread); per function its own samples
    (the stack's last frame) and its inclusive samples (anywhere in the stack, once per stack).
    """
    own, inclusive, threads = Counter(), Counter(), Counter()
    total = 0
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        return {"error": str(exc)}
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        # With --subprocesses each stack starts with its process, then its thread.
        heads = [f for f in frames[:2] if f.startswith(("process ", "thread "))]
        pid = heads[0].split(":")[0] if heads and heads[0].startswith("process ") else ""
        thread = next((h for h in heads if h.startswith("thread ")), "?")
        total += n
        threads[f"{pid} {thread}".strip()] += n
        own[frames[-1]] += n
        for frame in set(frames[len(heads) :]):
            if any(part in frame for part in INCLUSIVE_OF):
                inclusive[frame] += n
    return {
        "samples": total,
        "threads": threads.most_common(6),
        "own": own.most_common(top),
        "inclusive": inclusive.most_common(top * 2),
    }


class Profiler:
    """py-spy recording one process (all its threads) until stopped."""

    def __init__(self, pid, out, rate=200, nonblocking=False):
        """``nonblocking``: sample without pausing the process (its latencies are what is measured)."""
        self.out = out
        spy = BIN / "py-spy"
        if not spy.exists():
            raise BenchError("profiling needs py-spy in .venv (pip install -r requirements-dev.txt)")
        cmd = [str(spy), "record", "-p", str(pid), "--format", "raw", "--threads", "--subprocesses"]
        cmd += ["-r", str(rate), "-o", str(out)] + (["--nonblocking"] if nonblocking else [])
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
        time.sleep(1.0)  # attached before the storm starts

    def stop(self):
        self.proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        return profile_summary(self.out)


class WebBench(run.Bench):
    """bench/run.py's set-up (services, database, worker), with the servers, relays and clients of this bench."""

    def __init__(self, args):
        args.quick = False  # run.py's own plans do not apply
        super().__init__(args)
        self.plan = []
        self.pending_breakdowns = []  # (fan-out figures, phase) waiting for the worker probe
        self.node = None
        self.server = None
        pages = max([*args.storms, *args.fanouts, 2000 if args.two_web else 0])
        self.session_count = pages + 10
        self.results.update(
            servers=args.servers,
            storms=args.storms,
            fanouts=args.fanouts,
            storm_timeout=args.storm_timeout,
            two_web=args.two_web,
            configs=[],
        )

    def seed(self):
        self.rooms, self.sessions = infra.seed(2, self.session_count)
        self.clear_rooms()
        log(f"seeded 2 rooms, user 'bench' and {self.session_count} sessions")

    def setup(self):
        super().setup()
        needs = self.procs.start(
            "needs-relay",
            [infra.VENV_PY, str(ROOT / "bench" / "needs_relay.py"), "--port", str(NEEDS_PORT)]
            + ["--ari-url", self.ari_url, "--user", infra.ARI_USER, "--password", infra.ARI_PASSWORD],
            infra.base_env(),
        )
        infra.wait_port(NEEDS_PORT, 20, needs)

    def machine_info(self):
        asterisk = ((self.ari.info() or {}).get("system") or {}).get("version", "?")
        packages = ("Django", "channels", "channels_redis", "daphne", "uvicorn", "hypercorn", "granian", "websockets")
        info = infra.machine_versions(packages, asterisk=asterisk)
        info["node"] = infra.run(["node", "--version"], timeout=10).stdout.strip()
        info["code"] = str(infra.CODE["root"])
        return info

    # --- processes ------------------------------------------------------------------------

    def start_web(self, server, webs):
        infra.flush_redis()
        self.clear_rooms()
        if self.ari.channels():
            self.ari.cleanup()
        self.server = server
        self.web_names, self.ports = [], []
        env = {**infra.base_env(), "MAX_SOCKETS_PER_USER": BENCH_SOCKET_CAP, **self.variant_env(server)}
        for i in range(webs):
            port = run.WEB_PORT + i
            if infra.port_open(port):
                raise BenchError(f"port {port} is taken")
            name = f"web{i + 1}-{server}"
            proc = self.procs.start(name, server_command(server, port), env)
            self.web_names.append(name)
            self.ports.append(port)
            infra.wait_port(port, 60, proc)
        self.probe_path = self.log_dir / f"probe-{server}-{webs}.json"
        worker_env = {**infra.worker_env(self.ari_url), "BENCH_PROBE_OUT": str(self.probe_path)}
        self.worker_name = f"worker-{server}-{webs}"
        worker = self.procs.start(
            self.worker_name,
            [infra.VENV_PY, str(ROOT / "bench" / "worker_probe.py"), "--server", "default"],
            worker_env,
        )
        end = time.time() + 60
        while "resync done" not in self.procs.log_text(self.worker_name):
            if worker.poll() is not None:
                raise BenchError(f"the worker exited ({worker.returncode}): {self.tail(self.worker_name)}")
            if time.time() > end:
                raise BenchError(f"the worker did not connect to ARI in 60 s: {self.tail(self.worker_name)}")
            time.sleep(0.2)
        self.node = NodeClients(self.log_dir)
        self.clients = [self.node, self.node]  # run.Bench's hold_check asks clients[1]

    def stop_web(self):
        if self.node is not None:
            self.node.stop()
        self.node, self.clients = None, []
        if self.worker_name:
            self.procs.stop(self.worker_name, timeout=30)
            self.worker_name = None
        for name in self.web_names:
            self.procs.stop(name)
        self.web_names = []

    def web_pids(self):
        """The web processes and their children (hypercorn and granian serve from a worker process)."""
        pids = [self.procs.procs[n].pid for n in self.web_names]
        return pids + [child for pid in pids for child in infra.descendants(pid)]

    def wait_web_quiet(self, timeout=60.0):
        pids = self.web_pids()
        end = time.time() + timeout
        while time.time() < end:
            before = sum(infra.cpu_seconds(pid) or 0.0 for pid in pids)
            time.sleep(1.0)
            if sum(infra.cpu_seconds(pid) or 0.0 for pid in pids) - before < 0.05 * len(self.web_names):
                return

    @staticmethod
    def variant_env(server):
        options = VARIANTS[split_server(server)[1]]
        if not options:
            return {}
        return {"DATABASE_URL": infra.DATABASE_URL + "?" + "&".join(f"{k}={v}" for k, v in options.items())}

    def processes(self):
        return {
            "web": self.web_pids(),
            "worker": [self.procs.procs[self.worker_name].pid],
            "needs relay": [self.procs.procs["needs-relay"].pid],
            "raw relay": [self.procs.procs["relay"].pid],
            "clients (node)": [self.node.pid],
            "asterisk": infra.sandbox_asterisk_pids(),
            "redis": infra.pids_named("redis-server"),
            "postgresql": infra.pids_named("postgres"),
        }

    def alive(self):
        for name, proc in self.procs.procs.items():
            if proc.poll() is not None:
                raise BenchError(f"{name} exited ({proc.returncode}): {self.tail(name)}")
        if self.node is not None and self.node.popen.poll() is not None:
            raise BenchError("the Node.js clients exited")

    def memory(self, group):
        return [
            {
                "rss_mb": (infra.status_kb(pid, "VmRSS") or 0) / 1024,
                "hwm_mb": (infra.status_kb(pid, "VmHWM") or 0) / 1024,
            }
            for pid in self.processes()[group]
        ]

    def page_specs(self, count, prefix="p"):
        room = self.rooms[0]
        specs = []
        for i in range(count):
            port = self.ports[i % len(self.ports)]
            specs.append(
                {
                    "kind": "project",
                    "id": f"{prefix}{i}",
                    "room": room.slug,
                    "url": f"ws://127.0.0.1:{port}/ws/conferences/{room.slug}/",
                    "cookie": f"sessionid={self.sessions[i]}",
                    "origin": f"http://127.0.0.1:{port}",
                }
            )
        return specs

    def needs_specs(self, count):
        return [{"kind": "needs", "id": f"n{i}", "url": f"ws://127.0.0.1:{NEEDS_PORT}/"} for i in range(count)]

    def raw_specs(self, count, kind="relay"):
        return [{"kind": kind, "id": f"{kind}{i}", "url": f"ws://127.0.0.1:{run.RELAY_PORT}/"} for i in range(count)]

    def closed_all(self):
        self.node.call("close", timeout=120)
        self.wait_web_quiet()

    # --- scenarios ---------------------------------------------------------------------------

    def storm(self, count, target):
        """``count`` pages (or page-needs clients) opened within one second; their times to the snapshot."""
        specs = self.page_specs(count) if target == "project" else self.needs_specs(count)
        profiler = None
        if self.args.profile and target == "project" and len(self.ports) == 1 and count == max(self.args.storms):
            out = self.log_dir / f"storm-{self.server}-{count}.pyspy"
            profiler = Profiler(self.procs.procs[self.web_names[0]].pid, out)
        cpu_before = self.cpu_snapshot()
        started = time.time()
        opened = self.node.call(
            "open", specs, 1000, self.args.storm_timeout * 1000, 0, timeout=self.args.storm_timeout + 120
        )
        seconds = time.time() - started
        cpu = self.cpu_delta(cpu_before, self.cpu_snapshot())
        figures = storm_figures(opened, count)
        figures.update(target=target, webs=len(self.ports), seconds=seconds, cpu=cpu)
        if profiler is not None:
            figures["profile"] = profiler.stop()
            figures["profile_file"] = str(profiler.out)
        if target == "project":
            figures["web_rss_mb"] = sum(m["rss_mb"] for m in self.memory("web"))
        log(
            f"{self.server} storm {count} {target} ({len(self.ports)} web): {figures['ready']}/{count} ready, "
            f"per page p50/p99/max {report.trio(figures['per_page'])} ms, all in "
            f"{report.fmt(figures['all_ms'])} ms, refused {figures['refused']}, dropped {figures['dropped']}, "
            f"waiting {figures['waiting']}, codes {figures['codes']}"
        )
        self.closed_all()
        return figures

    def fanout(self, count):
        """``count`` pages, as many page-needs clients, raw relay clients: 20 joins + talking + 20 leaves."""
        self.notes_for_phase = []
        raw = min(count, RAW_RELAY_CLIENTS)
        self.node.call("open", self.raw_specs(1, "clock"), 0, 20000, 0, timeout=60)
        connect = {}
        for name, specs, concurrency in (
            ("project", self.page_specs(count), 20),
            ("needs", self.needs_specs(count), 50),
            ("raw", self.raw_specs(raw), 50),
        ):
            opened = self.node.call("open", specs, 0, 120000, concurrency, timeout=900)
            connect[name] = storm_figures(opened, len(specs))
            if connect[name]["ready"] < len(specs):
                self.notes_for_phase.append(f"{name}: {len(specs) - connect[name]['ready']} client(s) not connected")
        log(f"{self.server} fan-out {count}: connected { ({k: v['ready'] for k, v in connect.items()}) }")
        self.wait_web_quiet()
        rooms = [self.rooms[0]]
        start_seqs, _ = self.room_state(rooms)
        self.node.call("phase")
        cpu_before = self.cpu_snapshot()
        t_start = time.time()
        callers, hold, _burst = self.script_calls(rooms, FANOUT_CALLERS)
        final_seqs, final_present = self.wait_rooms(rooms, {r.slug: 0 for r in rooms}, stable=1.0, timeout=60)
        settle = self.node.call("settle", final_seqs, 0.5, 120, [c["channel"] for c in callers], timeout=180)
        final_rosters = self.node.call("rosters", timeout=60)
        t_end = time.time()
        cpu = self.cpu_delta(cpu_before, self.cpu_snapshot())
        memory = {group: self.memory(group) for group in ("web", "worker", "needs relay", "raw relay")}
        results = to_stamps(self.node.call("collect", timeout=300))
        self.closed_all()
        by_kind = {kind: [r for r in results if r["kind"] == kind] for kind in ("project", "needs", "relay", "clock")}
        phase = {
            "callers": callers,
            "hold": hold,
            "final": {"truth": final_present, "rosters": final_rosters, "seqs": final_seqs},
            "burst": None,
            "start_seqs": start_seqs,
            "final_seqs": final_seqs,
            "t_start": t_start,
            "t_end": t_end,
            "project": by_kind["project"],
        }
        # bench/analysis.py reads relay clients as kind "relay": the page-needs clients' records have its shape.
        as_relay = [{**r, "kind": "relay"} for r in by_kind["needs"]]
        needs = analysis.analyze_phase({**phase, "relay": as_relay + by_kind["clock"]})
        raw_metrics = analysis.analyze_phase({**phase, "relay": by_kind["relay"] + by_kind["clock"]})
        frames = {kind: sum(r["frames"] for r in rs) for kind, rs in by_kind.items()}
        seconds = t_end - t_start
        figures = {
            "pages": count,
            "raw_clients": raw,
            "connect": connect,
            "project": needs["project"],
            "needs": needs["relay"],
            "raw": raw_metrics["relay"],
            "ratio": needs["ratio"],
            "raw_ratio": raw_metrics["ratio"],
            "hold_exact": needs.get("hold_exact"),
            "final_exact": needs.get("final_exact"),
            "room_events": needs["room_events"],
            "frames": frames,
            "cpu": cpu,
            "seconds": seconds,
            "memory": memory,
            "settle": settle,
            "web_us_per_frame": 1e6 * cpu["web"] / frames["project"] if frames["project"] else None,
            "needs_us_per_frame": 1e6 * cpu["needs relay"] / frames["needs"] if frames["needs"] else None,
            "clients_cpu_pct": 100 * cpu["clients (node)"] / seconds,
            "web_cpu_pct": 100 * cpu["web"] / seconds,
            "notes": list(self.notes_for_phase),
        }
        # Where the time of a join goes (Asterisk -> worker -> commit -> Redis -> pages): from the
        # worker's probe, which is written when the worker exits (see breakdowns()).
        self.pending_breakdowns.append((figures, phase))
        p, n = figures["project"], figures["needs"]
        log(
            f"{self.server} fan-out {count}: project p50/p99 {report.fmt(p['p50'])}/{report.fmt(p['p99'])} ms, "
            f"needs relay {report.fmt(n['p50'])}/{report.fmt(n['p99'])} ms, delivered "
            f"{report.fmt(p['delivered_pct'], 1)} %, web {report.fmt(figures['web_us_per_frame'])} µs/frame, "
            f"clients {figures['clients_cpu_pct']:.0f} % of a core"
        )
        return figures

    def breakdowns(self):
        """The fan-out phases' join breakdown, from the probe the worker wrote at its exit."""
        pending, self.pending_breakdowns = self.pending_breakdowns, []
        try:
            probe = json.loads(Path(self.probe_path).read_text())
        except (OSError, ValueError, AttributeError) as exc:
            log(f"no worker probe to break the fan-out down ({exc})")
            return
        for figures, phase in pending:
            worker = analysis.analyze_worker(probe, phase, project_viewers=phase["project"])
            if worker is None:
                continue
            figures["breakdown"] = worker.get("join_breakdown")
            figures["worker_service"] = worker.get("service")
            parts = ", ".join(
                f"{name} {report.fmt(values.get('p50'))}" for name, values in (figures["breakdown"] or {}).items()
            )
            log(f"{self.server} fan-out {figures['pages']}: join p50 ms by stage: {parts}")

    # --- the whole run -------------------------------------------------------------------------

    def run(self):
        self.setup()
        for index, server in enumerate(self.args.servers):
            self.waited += infra.wait_for_sandbox_free(self.own_pids(), timeout=run.WAIT_LIMIT)
            config = {"server": server, "storms": [], "fanouts": [], "error": None}
            self.results["configs"].append(config)
            try:
                try:
                    self.start_web(server, 1)
                    for count in self.args.storms:
                        self.alive()
                        config["storms"].append(self.storm(count, "project"))
                        config["storms"].append(self.storm(count, "needs"))
                    for count in self.args.fanouts:
                        self.alive()
                        config["fanouts"].append(self.fanout(count))
                    self.alive()
                finally:
                    self.stop_web()
                    self.breakdowns()
                if self.args.two_web and index == 0:
                    try:
                        self.start_web(server, 2)
                        config["storms"].append(self.storm(2000, "project"))
                        self.alive()
                    finally:
                        self.stop_web()
            except BenchError as exc:
                # One server that fails (does not start, crashes) is reported; the others are still measured.
                log(f"{server}: FAILED: {exc}")
                config["error"] = str(exc)[:300]
                if self.ari.channels():
                    self.ari.cleanup()
        self.results["seconds"] = time.time() - self.started_at


# --- one checkout, in a child process ----------------------------------------------------------


def measure(args):
    use_own_resources()
    infra.use_code(args.code)
    if infra.CODE["root"] != ROOT:
        sys.path.insert(0, str(infra.CODE["root"]))
    bench = WebBench(args)
    try:
        bench.run()
    finally:
        bench.teardown()
    bench.results["log_dir"] = str(bench.log_dir)
    return bench.results


def child_main(args):
    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        results = measure(args)
    except (BenchError, KeyboardInterrupt) as exc:
        log(f"FAILED: {exc or 'interrupted'}")
        return 1
    Path(args.child).write_text(json.dumps(results, default=str))
    return 0


def run_child(args, code, label, workdir):
    out = Path(workdir) / f"{label}.json"
    cmd = [infra.VENV_PY, str(Path(__file__).resolve()), "--child", str(out), "--code", str(code)]
    cmd += ["--server", ",".join(args.servers), "--storms", ",".join(map(str, args.storms))]
    cmd += ["--fanouts", ",".join(map(str, args.fanouts)), "--storm-timeout", str(args.storm_timeout)]
    flags = (("--two-web", args.two_web), ("--keep-asterisk", args.keep_asterisk), ("--profile", args.profile))
    cmd += [flag for flag, on in flags if on]
    return infra.run_measurement(cmd, out, label, args.limit, quiet_load=args.quiet_load)


def write_sections(measured, out, command, seconds, write=True):
    from bench import web_report

    for section in SECTIONS:
        text = web_report.render(
            section, measured, command=command, seconds=seconds, previous=report.previous_section(out, section)
        )
        print(text)
        if write:
            report.write_section(out, section, text)
    if write:
        log(f"wrote the sections {', '.join(SECTIONS)} of {out}")


def render_again(path, out):
    """The sections from a finished run's results (after a change of wording or of the profile's summary)."""
    saved = json.loads(path.read_text())
    for _label, results in saved["measured"]:
        for config in results["configs"]:
            for storm in config["storms"]:
                if storm.get("profile") and storm.get("profile_file") and Path(storm["profile_file"]).exists():
                    storm["profile"] = profile_summary(storm["profile_file"])
    write_sections(saved["measured"], out, saved["command"], saved["seconds"])
    return 0


def _storm_figure(storm):
    return storm["all_ms"] if storm.get("all_ms") is not None else float("inf")


def _fanout_figure(fanout):
    p50 = (fanout.get("project") or {}).get("p50")
    return p50 if p50 is not None else float("inf")


def median_runs(runs):
    """A checkout's runs of ``--repeat N`` (taken in turns with the other checkout's): per server and scenario,
    the run whose headline figure is the median (a storm's time until every page had its snapshot, a fan-out's
    project p50), with every run's figures beside it (``runs``). A server whose runs differ in shape (one
    failed) is reported from its first run."""
    chosen = copy.deepcopy(runs[0])
    for index, config in enumerate(chosen["configs"]):
        others = [run["configs"][index] for run in runs]
        for kind, figure in (("storms", _storm_figure), ("fanouts", _fanout_figure)):
            if len({len(other.get(kind) or ()) for other in others}) != 1:
                continue
            for position in range(len(config.get(kind) or ())):
                items = [other[kind][position] for other in others]
                pick = dict(report.median_by(items, figure))
                if kind == "storms":
                    pick["runs"] = [item.get("all_ms") for item in items]
                else:
                    pick["runs"] = [
                        {"p50": item["project"].get("p50"), "p99": item["project"].get("p99"), "ratio": item["ratio"]}
                        for item in items
                    ]
                config[kind][position] = pick
    return chosen


def numbers(text):
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--server",
        default="serve",
        help=f"comma list of ASGI servers: {', '.join(SERVERS)}; NAME+persistent: with conn_max_age=60",
    )
    parser.add_argument("--storms", default="200,500,1000", help="pages per connect storm (comma list)")
    parser.add_argument("--fanouts", default="200,1000", help="pages per fan-out scenario (comma list)")
    parser.add_argument("--storm-timeout", type=float, default=30.0, help="seconds a storm's page waits (30)")
    parser.add_argument("--two-web", action="store_true", help="also 2,000 pages over two web processes")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy on the web process during the largest one-process storm"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="measure each checkout N times, the checkouts taking turns; each scenario's median run is reported, "
        "every run's figure beside it",
    )
    parser.add_argument("--quick", action="store_true", help="storm and fan-out of 200 pages, no report")
    parser.add_argument("--code", default=str(ROOT), help="the checkout whose product is measured (default: this)")
    parser.add_argument("--baseline", metavar="REF", help="a checkout or commit measured first, in the same run")
    parser.add_argument("--out", default=str(ROOT / "docs" / "performance.md"), help="the report to write into")
    parser.add_argument("--no-report", action="store_true", help="print the figures, write no report")
    parser.add_argument("--keep-asterisk", action="store_true", help="leave a sandbox this run started running")
    parser.add_argument("--quiet-load", type=float, metavar="LOAD", help="wait for the load average under LOAD")
    parser.add_argument("--child", metavar="RESULTS_JSON", help=argparse.SUPPRESS)
    parser.add_argument(
        "--render",
        metavar="WEB_RESULTS_JSON",
        help="write the sections again from a finished run's web-results.json (profiles re-read from their files)",
    )
    args = parser.parse_args(argv)
    if args.render:
        return render_again(Path(args.render), Path(args.out))
    args.servers = [s.strip() for s in args.server.split(",") if s.strip()]
    unknown = [s for s in args.servers if split_server(s)[0] not in SERVERS or split_server(s)[1] not in VARIANTS]
    if unknown:
        parser.error(f"unknown server(s) {unknown}; known: {', '.join(SERVERS)}")
    args.storms, args.fanouts = numbers(args.storms), numbers(args.fanouts)
    if args.quick and not args.child:
        args.storms, args.fanouts, args.no_report = [200], [200], True
    if not args.child and not args.quick and "--two-web" not in (argv or sys.argv[1:]):
        args.two_web = True  # the full run has the two-process storm
    args.limit = 60 * 60
    if args.child:
        return child_main(args)

    started = time.time()
    try:
        measured = infra.measure_checkouts(
            [("baseline", args.baseline), ("measured", args.code)],
            lambda tree, label, workdir: run_child(args, tree, label, workdir),
            "bench-web-",
            rounds=args.repeat,
            combine=median_runs,
        )
    except BenchError as exc:
        log(f"FAILED: {exc}")
        return 1
    out = Path(args.out)
    command = report.command_line("bench/web.py", argv)
    seconds = time.time() - started
    write_sections(measured, out, command, seconds, write=not args.no_report)
    dump = Path(measured[-1][1]["log_dir"]) / "web-results.json"
    dump.write_text(json.dumps({"measured": measured, "command": command, "seconds": seconds}, default=str))
    log(f"results in {dump}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
