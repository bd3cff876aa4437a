"""Web-process memory and delivery under socket churn: the project's channel layer beside channels_redis's.

    .venv/bin/python bench/memory.py                  # 6,000 sockets per process (about 8 minutes)
    .venv/bin/python bench/memory.py --sockets 1000   # a quick look

Starts what it needs (Redis and PostgreSQL where missing, the sandbox Asterisk,
the database ``conference_bench``), one worker, and two daphne processes on the
same database, Redis and worker: ``project`` is the product as deployed
(conferencesite.layers.RedisChannelLayer), ``channels_redis`` the same with
channels_redis's own RedisChannelLayer (bench/settings_channels_redis.py).
Both are churned at the same time, the same way: sockets opened on the bench
rooms, each waits for its snapshot and closes; every fourth also sends mute
all and unmute all and waits for the worker's two replies (a reply that does
not come within the page's 12 s is counted as an error). Every 500 sockets
(fewer in short runs) it samples each process's RSS and the resident part of
its ``[heap]`` mapping (glibc's main heap, /proc/PID/smaps). Writes
docs/memory.md and var/bench-memory.json; stops what it started. Do not run it
beside the test suite on the same sandbox.
"""

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import websockets  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from bench import infra  # noqa: E402
from bench.infra import BenchError, log  # noqa: E402
from conferences.moderation import WORKER_DOWN  # noqa: E402

PORTS = {"project": 8111, "channels_redis": 8112}
SETTINGS = {"project": "conferencesite.settings", "channels_redis": "bench.settings_channels_redis"}
ROOMS = 3
SESSIONS = 40
LOOPS = 2  # sockets open at once per process
MODERATE_EVERY = 4
SAMPLE_EVERY = 500
TIMEOUT = 15


def heap_kb(pid):
    """Resident KiB of the process's [heap] mapping (glibc's main arena)."""
    lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.endswith("[heap]"):
            for detail in lines[i + 1 :]:
                if detail.startswith("Rss:"):
                    return int(detail.split()[1])
    return 0


def sample(pid, sockets, started):
    return {
        "sockets": sockets,
        "t": round(time.time() - started, 1),
        "rss_kb": infra.status_kb(pid, "VmRSS"),
        "heap_kb": heap_kb(pid),
    }


async def until_reply(ws, request_id):
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        if frame.get("type") == "reply" and frame.get("request_id") == request_id:
            return frame


async def churn(name, pid, slugs, sessions, target, started):
    port = PORTS[name]
    every = max(50, min(SAMPLE_EVERY, target // 12))
    state = {"opened": 0, "errors": 0, "moderated": 0, "lost_replies": 0, "samples": [sample(pid, 0, started)]}

    async def client():
        while state["opened"] < target:
            state["opened"] += 1
            n = state["opened"]
            url = f"ws://127.0.0.1:{port}/ws/conferences/{slugs[n % len(slugs)]}/"
            headers = {"Cookie": f"sessionid={sessions[n % len(sessions)]}"}
            try:
                async with connect(url, origin=f"http://127.0.0.1:{port}", additional_headers=headers) as ws:
                    first = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
                    if first.get("type") != "snapshot":
                        raise BenchError(f"expected a snapshot, got {first}")
                    if n % MODERATE_EVERY == 0:
                        for action in ("mute_all", "unmute_all"):
                            await ws.send(json.dumps({"action": action, "request_id": f"{action}-{n}"}))
                            reply = await until_reply(ws, f"{action}-{n}")
                            if reply.get("error") == WORKER_DOWN:  # the page's timeout: the reply never came
                                state["lost_replies"] += 1
                            elif not reply.get("ok"):
                                raise BenchError(f"moderation refused: {reply}")
                        state["moderated"] += 1
            except (OSError, TimeoutError, ValueError, websockets.WebSocketException, BenchError) as exc:
                state["errors"] += 1
                log(f"{name}: socket {n}: {type(exc).__name__}: {exc}")
                await asyncio.sleep(1)
            if n % every == 0 and n < target:
                state["samples"].append(sample(pid, n, started))

    await asyncio.gather(*(client() for _ in range(LOOPS)))
    state["samples"].append(sample(pid, target, started))
    return state


class MemoryBench:
    def __init__(self, args):
        self.args = args
        self.log_dir = Path(tempfile.mkdtemp(prefix="bench-memory-"))
        self.procs = infra.Processes(self.log_dir)
        self.started_asterisk = False

    def run(self):
        try:
            return self._run()
        finally:
            self.procs.stop_all()
            if self.started_asterisk and not self.args.keep_asterisk:
                infra.stop_sandbox()

    def _run(self):
        log(f"logs in {self.log_dir}")
        ari_url, self.started_asterisk = infra.start_services()
        infra.wait_for_sandbox_free(self.procs.pids(), timeout=600)
        infra.create_and_migrate_db()
        os.environ.update(infra.worker_env(ari_url))
        import django

        django.setup()
        rooms, sessions = infra.seed(ROOMS, SESSIONS)
        infra.flush_redis()
        worker = self.procs.start(
            "worker", [infra.VENV_PY, "manage.py", "ari_worker", "--server", "default"], infra.worker_env(ari_url)
        )
        end = time.time() + 60
        while "resync done" not in self.procs.log_text("worker"):
            if worker.poll() is not None or time.time() > end:
                raise BenchError(f"the worker did not connect: {self.procs.log_text('worker')[-800:]}")
            time.sleep(0.2)
        pids = {}
        for name, port in PORTS.items():
            if infra.port_open(port):
                raise BenchError(f"port {port} is taken")
            command = [infra.DAPHNE, "-b", "127.0.0.1", "-p", str(port), "conferencesite.asgi:application"]
            proc = self.procs.start(name, command, infra.base_env(SETTINGS[name]))
            infra.wait_port(port, 60, proc)
            pids[name] = proc.pid
        started = time.time()
        slugs = [room.slug for room in rooms]

        async def both():
            return await asyncio.gather(
                *(churn(name, pids[name], slugs, sessions, self.args.sockets, started) for name in PORTS)
            )

        states = dict(zip(PORTS, asyncio.run(both()), strict=True))
        for name in PORTS:
            if self.procs.procs[name].poll() is not None:
                raise BenchError(f"{name} exited during the run")
        commit = infra.run(["git", "rev-parse", "--short", "HEAD"], check=False, timeout=10).stdout.strip()
        return {
            "commit": commit,
            "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "seconds": round(time.time() - started),
            "machine": infra.machine(),
            "sockets_per_process": self.args.sockets,
            "processes": states,
        }


def growth_per_thousand(samples, key, warm):
    """KiB per 1,000 sockets from the first sample at or after ``warm`` sockets to the last."""
    later = [s for s in samples if s["sockets"] >= warm]
    if len(later) < 2 or later[-1]["sockets"] == later[0]["sockets"]:
        return None
    return (later[-1][key] - later[0][key]) * 1000 / (later[-1]["sockets"] - later[0]["sockets"])


def render(results):
    names = list(results["processes"])
    warm = min(1000, results["sockets_per_process"] // 2)
    rows = []
    by_name = {name: {s["sockets"]: s for s in results["processes"][name]["samples"]} for name in names}
    for count in sorted(set().union(*by_name.values())):
        cells = []
        for name in names:
            s = by_name[name].get(count)
            cells += [f"{s['rss_kb'] / 1024:.1f}", f"{s['heap_kb'] / 1024:.1f}"] if s else ["-", "-"]
        rows.append(f"| {count:,} | " + " | ".join(cells) + " |")
    summary = []
    for name in names:
        state = results["processes"][name]
        rss = growth_per_thousand(state["samples"], "rss_kb", warm)
        heap = growth_per_thousand(state["samples"], "heap_kb", warm)
        summary.append(
            f"| {name} | {state['opened']:,} | {state['moderated']:,} | {state['lost_replies']} | {state['errors']} | "
            f"{'-' if rss is None else f'{rss:+.0f}'} | {'-' if heap is None else f'{heap:+.0f}'} |"
        )
    machine = results["machine"]
    header = " | ".join(f"{name} RSS | {name} [heap]" for name in names)
    return "\n".join(
        [
            "# Memory and delivery under socket churn",
            "",
            "Written by `.venv/bin/python bench/memory.py` (see its docstring for what it starts and does).",
            f"Run finished {results['finished']} on commit `{results['commit']}`, {results['seconds']} s; "
            f"{machine['nproc']} cores, {machine['memory_gb']} GB, {machine['cpu']}.",
            "",
            "Two daphne processes serve the same rooms, database, Redis and worker, and are churned at the",
            "same time, the same way. `project` is the product as deployed (`conferencesite/layers.py`);",
            "`channels_redis` runs channels_redis's own RedisChannelLayer instead. Every fourth socket",
            "also sends mute all and unmute all and waits for the worker's replies; a reply lost is one the",
            "page gave up on after 12 s (the worker answers every request: it was lost on the way).",
            "",
            "| process | sockets | with moderation | replies lost | other errors "
            "| RSS, KiB / 1,000 sockets | [heap], KiB / 1,000 |",
            "|---|---|---|---|---|---|---|",
            *summary,
            "",
            f"Growth per 1,000 sockets is from the sample at {warm:,} sockets (after the start-up ramp) to the",
            "last. RSS and the resident part of glibc's main heap, MB, by sockets opened:",
            "",
            f"| sockets | {header} |",
            "|---" * (1 + 2 * len(names)) + "|",
            *rows,
            "",
        ]
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description="Web-process memory under socket churn.")
    parser.add_argument("--sockets", type=int, default=6000, help="sockets to open per process (default 6000)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "memory.md"), help="the report to write")
    parser.add_argument("--keep-asterisk", action="store_true", help="leave a sandbox this run started running")
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "conferencesite.settings")
    results = MemoryBench(args).run()
    out_json = ROOT / "var" / "bench-memory.json"
    out_json.parent.mkdir(exist_ok=True)
    out_json.write_text(json.dumps(results, indent=1))
    Path(args.out).write_text(render(results))
    log(f"wrote {args.out} and {out_json}")
    for name, state in results["processes"].items():
        first, last = state["samples"][0], state["samples"][-1]
        log(
            f"{name}: RSS {first['rss_kb'] / 1024:.1f} -> {last['rss_kb'] / 1024:.1f} MB, "
            f"replies lost {state['lost_replies']}, other errors {state['errors']}"
        )


if __name__ == "__main__":
    main()
