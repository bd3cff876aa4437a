"""Web-process memory under clients that do not read, with and without the send limit, beside readers.

    .venv/bin/python bench/greedy.py                 # 10 minutes (the figure of docs/slow-clients.md)
    .venv/bin/python bench/greedy.py --seconds 60    # a quick look

Starts Redis and PostgreSQL where missing (no Asterisk: nothing here needs a
worker), the database ``conference_bench`` with one room of 300 present callers
(a snapshot of about 60 KB), and three daphne processes on the same database
and Redis, measured in the same run:

- ``limited``: the product as deployed (WEBSOCKET_MAX_QUEUED_BYTES, 1 MiB);
- ``unlimited``: the same with the limit off (0): what daphne alone does;
- ``readers``: the product, with clients that read everything they get.

Each process gets 50 sockets (tests/stack.py NonReadingClient for the first
two, a websockets client that reads for the third) that send
``{"action": "resync"}`` ten times a second, twice the sustained rate a
socket may send; a socket the server drops connects again at once, as a
hostile client would. Every 10 s it samples each process's RSS. Writes
docs/slow-clients.md and var/bench-greedy.json. The short version of this run
is tests/test_slow_clients.py.
"""

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from websockets.asyncio.client import connect  # noqa: E402

from bench import infra  # noqa: E402
from bench.infra import BenchError, log  # noqa: E402
from tests.stack import NonReadingClient  # noqa: E402

PORTS = {"limited": 8121, "unlimited": 8122, "readers": 8123}
LIMITS = {"limited": None, "unlimited": "0", "readers": None}  # None: the product's default
SOCKETS = 50
RATE = 10  # frames per second per socket
PRESENT = 300
SAMPLE_EVERY = 10.0
RESYNC = '{"action": "resync", "request_id": "r"}'


def seed():
    """One room of PRESENT callers and a session per socket (users of SOCKETS // 5 sockets each)."""
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.contrib.sessions.models import Session
    from django.utils import timezone

    from conferences.models import AsteriskServer, Conference, ConferenceAccess, Participant
    from tests.stack import make_sessions

    server, _ = AsteriskServer.objects.update_or_create(
        name="greedy-bench",
        defaults={"ari_url": "http://127.0.0.1:9/ari", "username": "u", "password": "p", "connected": True},
    )
    room, _ = Conference.objects.update_or_create(
        slug="greedy-bench", defaults={"server": server, "number": "77001", "name": "Greedy bench"}
    )
    Participant.objects.filter(conference=room).delete()
    now = timezone.now()
    Participant.objects.bulk_create(
        Participant(
            conference=room,
            server=server,
            channel_id=f"greedy-bench-{i}",
            caller_number=f"7{i:05d}",
            caller_name=f"Caller number {i} of a big room",
            joined_at=now,
        )
        for i in range(PRESENT)
    )
    Session.objects.all().delete()
    user_model = get_user_model()
    sessions = {}
    for name in PORTS:
        keys = []
        for u in range(SOCKETS // 5):
            user, _ = user_model.objects.get_or_create(username=f"greedy-{name}-{u}")
            ConferenceAccess.objects.get_or_create(conference=room, user=user)
            keys += make_sessions(user, 5)
        sessions[name] = keys
    return room.slug, sessions


async def hostile(port, slug, key, stats, until):
    """A client that never reads: spam until dropped, then connect again."""
    while time.monotonic() < until:
        client = NonReadingClient(port, f"/ws/conferences/{slug}/", key)
        try:
            await client.connect()
        except (OSError, AssertionError, TimeoutError):
            stats["refused"] += 1
            await asyncio.sleep(1)
            continue
        stats["connections"] += 1
        while time.monotonic() < until:
            if not await client.send(RESYNC):
                break
            await asyncio.sleep(1 / RATE)
        if client.dropped_after is not None:
            stats["dropped"] += 1
            stats["seconds_to_drop"].append(client.dropped_after)
        client.close()


async def reader(port, slug, key, stats, until):
    """A client that reads everything it is sent, sending the same spam."""
    url = f"ws://127.0.0.1:{port}/ws/conferences/{slug}/"
    headers = {"Cookie": f"sessionid={key}", "Origin": f"http://127.0.0.1:{port}"}
    while time.monotonic() < until:
        try:
            async with connect(url, additional_headers=headers, max_size=2**24, open_timeout=10) as ws:
                stats["connections"] += 1

                async def drain(ws=ws):
                    async for raw in ws:
                        stats["received_bytes"] += len(raw)

                drainer = asyncio.create_task(drain())
                try:
                    while time.monotonic() < until and not drainer.done():
                        await ws.send(RESYNC)
                        await asyncio.sleep(1 / RATE)
                finally:
                    drainer.cancel()
                if not drainer.cancelled() and time.monotonic() < until:
                    stats["dropped"] += 1
        except Exception:  # noqa: BLE001 (counted, then connect again)
            stats["refused"] += 1
            await asyncio.sleep(1)


def rss(pids, started):
    return {"t": round(time.monotonic() - started), **{n: infra.status_kb(p, "VmRSS") for n, p in pids.items()}}


async def sample(pids, samples, until, started):
    while time.monotonic() < until:
        samples.append(rss(pids, started))
        await asyncio.sleep(SAMPLE_EVERY)


async def drive(pids, slug, sessions, seconds):
    started = time.monotonic()
    until = started + seconds
    stats = {
        name: {"connections": 0, "dropped": 0, "refused": 0, "seconds_to_drop": [], "received_bytes": 0}
        for name in PORTS
    }
    samples = []
    tasks = [asyncio.create_task(sample(pids, samples, until, started))]
    for name, port in PORTS.items():
        client = reader if name == "readers" else hostile
        tasks += [asyncio.create_task(client(port, slug, key, stats[name], until)) for key in sessions[name]]
    await asyncio.gather(*tasks)
    samples.append(rss(pids, started))
    return stats, samples


def run(args):
    infra.run([str(ROOT / "scripts" / "ensure-redis")], env={**os.environ, "REDIS_URL": infra.REDIS_URL}, timeout=300)
    infra.run([str(ROOT / "scripts" / "ensure-postgres")], timeout=300)
    infra.create_and_migrate_db()
    infra.flush_redis()
    os.environ.update(infra.base_env())
    slug, sessions = seed()
    log_dir = Path(ROOT / "var" / "bench-greedy-logs")
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = infra.Processes(log_dir)
    try:
        pids = {}
        for name, port in PORTS.items():
            if infra.port_open(port):
                raise BenchError(f"port {port} is taken")
            env = infra.base_env()
            if LIMITS[name] is not None:
                env["WEBSOCKET_MAX_QUEUED_BYTES"] = LIMITS[name]
            command = [infra.DAPHNE, "-b", "127.0.0.1", "-p", str(port), "conferencesite.asgi:application"]
            proc = procs.start(name, command, env)
            infra.wait_port(port, 60, proc)
            pids[name] = proc.pid
        time.sleep(2)
        log(f"{SOCKETS} sockets per process, {RATE} frames/s each, for {args.seconds} s")
        stats, samples = asyncio.run(drive(pids, slug, sessions, args.seconds))
        for name in PORTS:
            if procs.procs[name].poll() is not None:
                raise BenchError(f"{name} exited during the run")
        drops_logged = {name: procs.log_text(name).count("dropping the connection") for name in PORTS}
    finally:
        procs.stop_all()
    commit = infra.run(["git", "rev-parse", "--short", "HEAD"], check=False, timeout=10).stdout.strip()
    return {
        "commit": commit,
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "seconds": args.seconds,
        "machine": infra.machine(),
        "stats": stats,
        "drops_logged": drops_logged,
        "samples": samples,
    }


def render(results):
    samples = results["samples"]
    rows = []
    for name in PORTS:
        series = [s[name] for s in samples if s.get(name)]
        stats = results["stats"][name]
        drop = stats["seconds_to_drop"]
        rows.append(
            f"| {name} | {series[0] / 1024:.0f} | {max(series) / 1024:.0f} | {series[-1] / 1024:.0f} | "
            f"{stats['connections']:,} | {results['drops_logged'][name]:,} | "
            f"{f'{statistics.median(drop):.1f}' if drop else '-'} |"
        )
    table = []
    for s in samples:
        table.append(f"| {s['t']} | " + " | ".join(f"{s[name] / 1024:.0f}" for name in PORTS) + " |")
    machine = results["machine"]
    return "\n".join(
        [
            "# Clients that do not read",
            "",
            "Written by `.venv/bin/python bench/greedy.py` (its docstring says what it starts and does).",
            f"Run finished {results['finished']} on commit `{results['commit']}`, {results['seconds']} s; "
            f"{machine['nproc']} cores, {machine['memory_gb']} GB, {machine['cpu']}.",
            "",
            f"Three daphne processes serve one room of {PRESENT} callers (a snapshot of about 60 KB) from",
            f"the same database and Redis, at the same time. Each gets {SOCKETS} sockets that send `resync`",
            f"{RATE} times a second and connect again whenever the server drops them. `limited` is the",
            "product as deployed (a socket with over 1 MiB waiting for its client is dropped,",
            "`conferencesite/daphne_limits.py`), `unlimited` the same with the limit off, `readers` the",
            "product with clients that read everything (the baseline of the same work).",
            "",
            "| process | RSS at start, MB | peak, MB | at the end, MB | connections | dropped by the limit "
            "| median seconds to the drop |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            "RSS, MB, every 10 s:",
            "",
            "| s | " + " | ".join(PORTS) + " |",
            "|---" * (1 + len(PORTS)) + "|",
            *table,
            "",
        ]
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description="Web-process memory under clients that do not read.")
    parser.add_argument("--seconds", type=int, default=600, help="how long to run (default 600)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "slow-clients.md"), help="the report to write")
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "conferencesite.settings")
    results = run(args)
    out_json = ROOT / "var" / "bench-greedy.json"
    out_json.parent.mkdir(exist_ok=True)
    out_json.write_text(json.dumps(results, indent=1))
    Path(args.out).write_text(render(results))
    log(f"wrote {args.out} and {out_json}")


if __name__ == "__main__":
    main()
