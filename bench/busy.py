"""The busy-PBX benchmark: rooms filling at once, a moderator's page per room, everyone moderating at once.

    .venv/bin/python bench/busy.py                       # 10 rooms x 8 callers, this checkout
    .venv/bin/python bench/busy.py --baseline 8427346    # ... and that commit's worker beside it, same run
    .venv/bin/python bench/busy.py --quick               # 3 rooms x 4 callers (under a minute), no report
    .venv/bin/python bench/busy.py --code /path/to/checkout --rooms 20 --callers 4
    .venv/bin/python bench/busy.py --baseline 8427346 --code HEAD --quiet-load 0.5   # the report's run

The production layout (PostgreSQL ``conference_bench``, Redis database 13,
one web process -- ``manage.py serve``, the product's uvicorn, or daphne with
``--server daphne`` --, one ``manage.py ari_worker`` through bench/worker_probe.py, the
sandbox Asterisk of scripts/asterisk-sandbox; set ASTERISK_SANDBOX_DIR and
ASTERISK_SANDBOX_PORT to use another sandbox than the default one). The
scenario, one run per checkout measured:

1. One page per room: a logged-in WebSocket of the room's moderator
   (bench/clients.py, as the page keeps ``seq`` and the roster), and for the
   raw relay (bench/relay.py, every ARI frame to every client) one client per
   room beside it, plus the relay's clock client (Asterisk's timestamps).
2. ``--rooms`` x ``--callers`` calls placed 20 ms apart, round robin over the
   rooms, every other one talking (Local channels, far ends ``talk`` and
   ``silent`` of the sandbox's dialplan). ``--pace start`` (the default): a
   call starts every 20 ms, whatever the previous one took; ``--pace gap``:
   20 ms after the previous one was placed, one at a time (a slower burst).
3. When every caller is in: each page's roster, the database's present
   callers and Asterisk's bridges (GET /ari/bridges) compared room by room.
4. Talking flows for 4 s; then every moderator clicks *mute all* and right
   after it *unmute all*, all pages at once (2 x rooms requests in flight).
5. Every caller hangs up (20 ms apart); pages, database and bridges compared
   again, and the pages' ``seq`` against the database's.

Latencies against Asterisk's own timestamps (bench/analysis.py): join =
ChannelEnteredBridge -> ``participant.joined`` on the page, talking =
ChannelTalkingStarted -> ``participant.updated`` (talking) on the page, the
relay's the same ARI events on its clients; moderation = click sent -> its
``reply``. ``--code PATH`` starts the product (web, worker, migrations)
from another checkout; ``--baseline REF`` measures a second checkout (a
folder, or a commit checked out into a temporary git worktree) first, in the
same run, and the report shows both (``--quiet-load 0.5`` waits for a quiet
machine before each). Each checkout is measured in a child
process of its own (its own Django), on a freshly created database. The
report goes into docs/performance.md as the section ``busy-pbx`` (other
sections are kept). Exits 1 when a measurement failed or a roster was not
exact.
"""

import argparse
import json
import os
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# First, always: the measuring client processes (spawned) import bench.* from here, not from --code.
sys.path.insert(0, str(ROOT))

from bench import analysis, infra, report, run  # noqa: E402
from bench.infra import BenchError, log  # noqa: E402

SPACING = 0.020  # seconds between two calls placed
HOLD_SECONDS = 4.0  # talking flows between the admission check and the moderation
MODERATION_TIMEOUT = 60.0
SECTION = "busy-pbx"
SPY_RATE = 250  # --spy: samples per second (at 1,000 py-spy's own reading took cores the run needed)
# RedisChannelLayer and one web process: the production layout, its web process run by the product's own
# command (manage.py serve: uvicorn, chosen in docs/performance.md, "ASGI servers"), or by daphne (--server).
CONFIGS = {"serve": "serve-1", "daphne": "core-1"}


class BusyBench(run.Bench):
    """bench/run.py's set-up and processes, with the busy-PBX scenario as its one phase."""

    def __init__(self, args):
        super().__init__(args)
        self.room_count, self.per_room, self.pace = args.rooms, args.callers, args.pace
        self.spy = args.spy
        self.plan = [(CONFIGS[args.server], ["busy"])]
        self.results.update(
            plan=self.plan,
            rooms=self.room_count,
            callers=self.per_room,
            spacing_ms=SPACING * 1000,
            pace=args.pace,
            hold_seconds=HOLD_SECONDS,
        )

    def seed(self):
        self.rooms, self.sessions = infra.seed(self.room_count, self.room_count)
        self.clear_rooms()
        log(f"seeded {self.room_count} rooms, user 'bench' and {self.room_count} sessions")

    def machine_info(self):
        return {**super().machine_info(), "code": str(infra.CODE["root"])}

    def start_spies(self):
        """``--spy``: py-spy on the web process and the worker (every thread, not pausing them), attached now."""
        from bench.web import Profiler

        targets = {"web process": self.web_names[0], "worker": self.worker_name}
        return {
            process: Profiler(
                self.procs.procs[name].pid, self.log_dir / f"spy-{name}.pyspy", rate=SPY_RATE, nonblocking=True
            )
            for process, name in targets.items()
        }

    # --- the pages -----------------------------------------------------------------------

    def connect_pages(self):
        """The clock, a relay client per room, and a moderator's page per room."""
        relay_client, project_client = self.clients
        relay_client.call("connect", [self.relay_spec("clock")], 1, 20, timeout=60)
        port = self.ports[0]
        pages = [
            {
                "kind": "project",
                "id": f"m{i}",
                "room": room.slug,
                "url": f"ws://127.0.0.1:{port}/ws/conferences/{room.slug}/",
                "cookie": f"sessionid={self.sessions[i]}",
                "origin": f"http://127.0.0.1:{port}",
            }
            for i, room in enumerate(self.rooms)
        ]
        relays = [self.relay_spec("relay", f"r{i}") for i in range(len(self.rooms))]
        replies = run.both(
            [(relay_client, ("connect", relays, 50, 30)), (project_client, ("connect", pages, 20, 60))], 120
        )
        failed = [f for reply in replies for f in reply["failed"]]
        if failed:
            raise BenchError(f"{len(failed)} page(s) could not connect, e.g. {failed[0]}")

    # --- the truth ---------------------------------------------------------------------

    def bridges_by_room(self, callers):
        """Asterisk's view: the bench callers in each bridge, by the room they dialled ('mixed': a shared bridge)."""
        by_channel = {c["channel"]: c for c in callers}
        found = defaultdict(list)
        for bridge in self.ari.call("GET", "/bridges"):
            ours = [by_channel[cid] for cid in bridge.get("channels") or [] if cid in by_channel]
            rooms = {c["room"] for c in ours}
            for caller in ours:
                found[caller["room"] if len(rooms) == 1 else "mixed"].append(caller["number"])
        return {room: sorted(numbers) for room, numbers in found.items()}

    def check(self, callers, expected, *, final):
        """Pages = database = Asterisk's bridges, room by room (and ``seq`` at the end)."""
        if final:
            seqs, truth = self.wait_rooms(self.rooms, expected, stable=1.0, timeout=60)
            caught_up = self.clients[1].call("settle", seqs, 0.5, 60, timeout=90)["seconds"]
        else:
            hold = self.hold_check(self.rooms, expected)
            seqs, truth, caught_up = None, hold["truth"], hold["caught_up_seconds"]
        pages = self.clients[1].call("rosters", timeout=60)
        bridges = self.bridges_by_room(callers)
        rooms = []
        for room in self.rooms:
            page = next((r for r in pages.values() if r["room"] == room.slug), None)
            rooms.append(
                {
                    "room": room.slug,
                    "page": page["numbers"] if page and page["closed"] is None else None,
                    "database": truth.get(room.slug, []),
                    "bridge": bridges.get(room.slug, []),
                    "seq_ok": page is not None and (seqs is None or page["seq"] == seqs.get(room.slug)),
                }
            )
        for room in rooms:
            room["exact"] = room["page"] == room["database"] == room["bridge"] and room["seq_ok"]
        return {
            "rooms": rooms,
            "mixed": bridges.get("mixed", []),
            "caught_up_seconds": caught_up,
            "truth": truth,
            "rosters": pages,
            "seqs": seqs,
        }

    # --- the scenario ------------------------------------------------------------------

    def place(self, item):
        caller = self.new_caller(*item)
        caller["placed_at"] = time.time()
        return caller

    def place_all(self, calls):
        """Place the calls ``SPACING`` apart: ``start`` (a call starts every SPACING, whatever the last one
        took) or ``gap`` (SPACING between one placement's answer and the next call, one at a time)."""
        if self.pace == "start":
            return self.spaced(calls, SPACING, self.place)
        t0, callers = time.time(), []
        for item in calls:
            callers.append(self.place(item))
            time.sleep(SPACING)
        return callers, t0, time.time() - t0

    def run_phase(self, config_name, phase_name):
        self.check_alive()
        self.notes_for_phase = []
        if self.ari.channels():
            self.ari.cleanup()
        self.connect_pages()
        start_seqs, _ = self.room_state(self.rooms)
        relay_client, project_client = self.clients
        run.both([(relay_client, ("phase",)), (project_client, ("phase",))], 60)
        cpu_before = self.cpu_snapshot()
        t_start = time.time()
        calls = [(room, "talk" if r % 2 == 0 else "silent") for r in range(self.per_room) for room in self.rooms]
        log(f"{len(calls)} calls into {len(self.rooms)} rooms, {SPACING * 1000:.0f} ms apart")
        callers, t0, _took = self.place_all(calls)
        expected = {room.slug: self.per_room for room in self.rooms}
        held = self.check(callers, expected, final=False)
        log(
            f"held: {sum(r['exact'] for r in held['rooms'])}/{len(self.rooms)} rooms exact; "
            f"talking for {HOLD_SECONDS} s"
        )
        time.sleep(HOLD_SECONDS)
        clicks = []
        for i, _room in enumerate(self.rooms):
            clicks += [[f"m{i}", "mute_all", f"mute-all-{i}"], [f"m{i}", "unmute_all", f"unmute-all-{i}"]]
        spies = self.start_spies() if self.spy else {}
        t_moderation = time.time()
        moderation = project_client.call("moderate", clicks, MODERATION_TIMEOUT, timeout=MODERATION_TIMEOUT + 30)
        spied = {process: spy.stop() for process, spy in spies.items()}
        log(f"moderation: {moderation['sent']} clicks, {moderation['unanswered']} unanswered")
        time.sleep(1.0)
        self.spaced(callers, SPACING, lambda caller: self.ari.hangup(caller["far"]))
        final = self.check(callers, {room.slug: 0 for room in self.rooms}, final=True)
        relay_client.call("settle", {}, 0.5, 120, [c["channel"] for c in callers], timeout=180)
        t_end = time.time()
        cpu_after = self.cpu_snapshot()
        relay_results, project_results = run.both([(relay_client, ("collect",)), (project_client, ("collect",))], 300)
        phase = {
            "config": config_name,
            "name": phase_name,
            "kind": "busy",
            "count": len(self.rooms),
            "rooms": [room.slug for room in self.rooms],
            "callers": callers,
            "hold": {
                "truth": held["truth"],
                "rosters": held["rosters"],
                "caught_up_seconds": held["caught_up_seconds"],
            },
            "final": {"truth": final["truth"], "rosters": final["rosters"], "seqs": final["seqs"]},
            "burst": None,
            "start_seqs": start_seqs,
            "final_seqs": final["seqs"],
            "t_start": t_start,
            "t_end": t_end,
            "relay": relay_results,
            "project": project_results,
            "spy": {process: {**prof, "rate": SPY_RATE} for process, prof in spied.items()},
        }
        metrics = analysis.analyze_phase(phase)
        metrics.update(
            name=phase_name,
            kind="busy",
            count=len(self.rooms),
            rooms=len(self.rooms),
            seconds=t_end - t_start,
            cpu=self.cpu_delta(cpu_before, cpu_after),
            notes=list(self.notes_for_phase),
            busy=busy_figures(phase, t0, t_moderation, held, final, moderation),
            spy=phase["spy"],
        )
        return phase, metrics


# --- figures (pure) -------------------------------------------------------------------------


def busy_figures(phase, t0, t_moderation, held, final, moderation):
    """What the busy-PBX table shows, from one run's records."""
    callers = phase["callers"]
    last_placed = max(c["placed_at"] for c in callers)
    numbers_of = defaultdict(set)
    for caller in callers:
        numbers_of[caller["room"]].add(caller["number"])
    on_page = {}
    for viewer in phase["project"]:
        on_page[viewer["room"]] = analysis.completion_project(viewer, numbers_of[viewer["room"]])
    all_in = None if None in on_page.values() or not on_page else max(on_page.values())
    clicks = defaultdict(list)
    failed = []
    click_times = {}  # request id -> [sent, reply received]
    for viewer in phase["project"]:
        for request_id, (action, sent, received, ok, error) in viewer.get("actions", {}).items():
            click_times[request_id] = [sent, received]
            if received is None:
                failed.append(f"{request_id}: no reply")
                continue
            clicks[action].append((received - sent) * 1000)
            if not ok:
                failed.append(f"{request_id}: {error}")
    return {
        "calls": len(callers),
        "placing_ms": (last_placed - t0) * 1000,
        "all_on_pages_after_first_ms": None if all_in is None else (all_in - t0) * 1000,
        "all_on_pages_after_last_ms": None if all_in is None else (all_in - last_placed) * 1000,
        "rooms_incomplete": sum(1 for t in on_page.values() if t is None),
        "moderation": analysis.summary([ms for values in clicks.values() for ms in values]),
        "moderation_by_action": {action: analysis.summary(values) for action, values in sorted(clicks.items())},
        "moderation_failed": failed[:10],
        "moderation_unanswered": moderation["unanswered"],
        "moderation_started": t_moderation,
        "click_times": click_times,
        "held": [r["exact"] for r in held["rooms"]],
        "final": [r["exact"] for r in final["rooms"]],
        "held_rooms": held["rooms"],
        "final_rooms": final["rooms"],
        "mixed": held["mixed"] + final["mixed"],
        "held_caught_up_ms": held["caught_up_seconds"] * 1000,
    }


def command_figures(probe, phase_start, phase_end):
    """Moderation requests inside the worker (bench/worker_probe.py): service time by action."""
    by_action = defaultdict(list)
    for action, _room, _request, started, seconds, *_rest in probe.get("commands", []):
        if phase_start <= started <= phase_end:
            by_action[action].append(seconds * 1000)
    return {action: analysis.summary(values) for action, values in sorted(by_action.items())}


# A moderation request's time to live (conferences/moderation.py's REQUEST_TTL): the web process sent it to
# the worker at its expires_at minus this.
REQUEST_TTL = 10.0


def click_steps(probe, click_times):
    """Where each click's time went: ``{step: summary}`` over every answered click the worker's probe saw.

    *web*: the click sent → the web process handed it to the channel layer (the socket's checks);
    *to the worker*: → the worker started it (the channel layer, the worker's queue, its room's lane);
    *in the worker*: its ``handle_command``; *back*: → the reply reached the page.
    """
    seen = {}
    for _action, _room, request_id, started, seconds, *rest in probe.get("commands", []):
        if rest and rest[0]:
            seen[request_id] = (rest[0] - REQUEST_TTL, started, started + seconds)
    steps = defaultdict(list)
    for request_id, (sent, received) in click_times.items():
        if received is None or request_id not in seen:
            continue
        forwarded, started, ended = seen[request_id]
        steps["web"].append((forwarded - sent) * 1000)
        steps["to the worker"].append((started - forwarded) * 1000)
        steps["in the worker"].append((ended - started) * 1000)
        steps["back"].append((received - ended) * 1000)
    return {step: analysis.summary(values) for step, values in steps.items()}


# --- one checkout, in this process -----------------------------------------------------------


def measure(args):
    """Measure the checkout ``args.code`` (in this process); returns the results, raises BenchError."""
    infra.use_code(args.code)
    if infra.CODE["root"] != ROOT:
        # The orchestrator's own ORM calls (seed, room state) use the measured checkout's models.
        sys.path.insert(0, str(infra.CODE["root"]))
    bench = BusyBench(args)
    profile = bench.log_dir / "worker.prof"
    if args.profile:
        os.environ["BENCH_PROFILE_OUT"] = str(profile)  # the worker's environment comes from this one
    try:
        bench.run()
        config = bench.results["configs"][0]
        phase = config["phases"][0]
        probe = json.loads(bench.probe_path.read_text()) if bench.probe_path.exists() else {}
        phase["commands"] = command_figures(probe, phase["busy"]["moderation_started"] - 1, time.time())
        phase["click_steps"] = click_steps(probe, phase["busy"]["click_times"])
    finally:
        bench.teardown()
    bench.results["log_dir"] = str(bench.log_dir)
    if args.profile:
        bench.results["profile"] = analysis.web_profile(profile if profile.exists() else None)
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


# --- the parent: checkouts, report ---------------------------------------------------------


def run_child(args, code, name, workdir):
    """One measurement of a checkout (``name``: its label, with ``-N`` for the Nth of ``--repeat``)."""
    out = Path(workdir) / f"{name}.json"
    cmd = [infra.VENV_PY, str(Path(__file__).resolve()), "--child", str(out), "--code", str(code)]
    cmd += ["--rooms", str(args.rooms), "--callers", str(args.callers), "--pace", args.pace, "--server", args.server]
    flags = (("--keep-asterisk", args.keep_asterisk), ("--profile", args.profile), ("--spy", args.spy))
    cmd += [flag for flag, on in flags if on]
    return infra.run_measurement(cmd, out, name, args.limit, quiet_load=args.quiet_load)


def median_run(runs):
    """A checkout's runs of ``--repeat N`` (taken in turns with the other checkout's): the run whose
    moderation p50 is the median, with every run's headline figures beside it (``results["runs"]``)."""
    chosen = report.median_by(runs, lambda results: _busy(results)["moderation"]["p50"] or 0)
    chosen["runs"] = [headline(results) for results in runs]
    return chosen


def _busy(results):
    return results["configs"][0]["phases"][0]["busy"]


def headline(results):
    """One run's figures that the targets are about, for the row of every run."""
    phase = results["configs"][0]["phases"][0]
    kinds = {side: phase[side].get("by_kind") or {} for side in ("project", "relay")}
    talk, relay_talk = kinds["project"].get("talk") or {}, kinds["relay"].get("talk") or {}
    return {
        "moderation": _busy(results)["moderation"],
        "join": kinds["project"].get("join") or {},
        "talk_ratio": talk["p99"] / relay_talk["p99"] if talk.get("p99") and relay_talk.get("p99") else None,
        "after_last_ms": _busy(results)["all_on_pages_after_last_ms"],
        "exact": exact(results, every_run=False),
    }


def exact(results, every_run=True):
    busy = _busy(results)
    if every_run and not all(run["exact"] for run in results.get("runs", ())):
        return False
    return all(busy["held"]) and all(busy["final"]) and not busy["mixed"] and not busy["moderation_failed"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rooms", type=int, default=10, help="rooms (default 10)")
    parser.add_argument("--callers", type=int, default=8, help="callers per room (default 8)")
    parser.add_argument(
        "--pace",
        choices=("start", "gap"),
        default="start",
        help="calls start 20 ms apart (start, the default) or 20 ms after the previous one was placed (gap)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="measure each checkout N times, the checkouts taking turns, and report each one's median run by "
        "moderation p50 (runs vary a lot)",
    )
    parser.add_argument(
        "--server",
        choices=sorted(CONFIGS),
        default="serve",
        help="the web process: the product's manage.py serve (uvicorn, the default) or daphne",
    )
    parser.add_argument("--quick", action="store_true", help="3 rooms x 4 callers, no report (for CI)")
    parser.add_argument("--code", default=str(ROOT), help="the checkout whose product is measured (default: this)")
    parser.add_argument("--baseline", metavar="REF", help="a checkout or commit measured first, in the same run")
    parser.add_argument("--out", default=str(ROOT / "docs" / "performance.md"), help="the report to write into")
    parser.add_argument("--no-report", action="store_true", help="print the figures, write no report")
    parser.add_argument("--keep-asterisk", action="store_true", help="leave a sandbox this run started running")
    parser.add_argument(
        "--profile", action="store_true", help="run the worker under cProfile (slower: its figures too)"
    )
    parser.add_argument(
        "--spy",
        action="store_true",
        help="py-spy on the web process and the worker from the first click to the last reply (not pausing them)",
    )
    parser.add_argument(
        "--quiet-load",
        type=float,
        metavar="LOAD",
        help="before each checkout's measurement wait (at most 10 min) for the load average to fall under LOAD",
    )
    parser.add_argument("--child", metavar="RESULTS_JSON", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.rooms, args.callers, args.no_report = 3, 4, True
    if not 1 <= args.rooms <= 50 or not 1 <= args.callers <= 30:
        parser.error("--rooms must be 1..50 and --callers 1..30")
    if not 1 <= args.repeat <= 9:
        parser.error("--repeat must be 1..9")
    args.quick = False  # bench/run.py's own quick plan does not apply
    args.limit = 15 * 60
    if args.child:
        return child_main(args)

    try:
        measured = report.compare_and_write(
            args=args,
            argv=argv,
            script="bench/busy.py",
            section=SECTION,
            measure=lambda tree, label, workdir: run_child(args, tree, label, workdir),
            render=report.render_busy,
            prefix="bench-busy-",
            rounds=args.repeat,
            combine=median_run,
        )
    except BenchError as exc:
        log(f"FAILED: {exc}")
        return 1
    return 0 if all(exact(results) for _label, results in measured) else 1


if __name__ == "__main__":
    sys.exit(main())
