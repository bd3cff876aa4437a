"""The history page with 300,000 stored stays: response times before and after the bounded pages.

    .venv/bin/python bench/history.py            # before and after, prints the figures
    .venv/bin/python bench/history.py --write    # ... and writes them into docs/performance.md

"Before" is the commit just before migration 0002_meetings came in, "after" is
HEAD (``--before`` / ``--after`` take other commits). Each is checked out into
a temporary git worktree and gets its own PostgreSQL database
(``bench_history_before`` / ``bench_history_after``, dropped at the end), the
test suite's databases are never touched. Two rooms are written with
tests/history_data.py: "busy", 300,000 stays in meetings of three with their
600,000 join and leave events, and "always-on", 300,000 stays in one meeting
that never ends (a room that never empties), with their events too. For
"after" the stays are written before migrating to 0002, so the migration's
backfill groups them (timed: what an upgrade costs).

Requests run in one process through Django's test client (the whole view,
middleware and template, no network), logged in as a viewer of both rooms,
with no date filter unless named: each ``--repeat`` times (median and slowest),
the whole-file downloads once. Queries are counted on a separate run, and the
peak of Python's memory (tracemalloc) on another.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_PY = str(ROOT / ".venv" / "bin" / "python")
DATA_MODULE = ROOT / "tests" / "history_data.py"
DOC = ROOT / "docs" / "performance.md"
SECTION_START = "<!-- section:history-pages:start -->"
SECTION_END = "<!-- section:history-pages:end -->"
START = datetime(2020, 1, 1, tzinfo=UTC)
PSQL = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-Atqc"]
# Variables of the project that must not leak from the caller's shell.
PROJECT_VARS = (
    "DJANGO_DEBUG DJANGO_HTTPS DJANGO_ALLOWED_HOSTS DJANGO_SECRET_KEY DJANGO_TRUSTED_PROXIES DATABASE_URL "
    "REDIS_URL ARI_URL ARI_USERNAME ARI_PASSWORD ARI_APP DJANGO_SETTINGS_MODULE"
).split()


def log(message):
    print(f"[bench-history {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the parent: worktrees, databases, the report -------------------------------------


def git(*args):
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def default_before():
    added = git("log", "--diff-filter=A", "--format=%H", "--", "conferences/migrations/0002_meetings.py")
    if not added:
        raise SystemExit("no commit adds conferences/migrations/0002_meetings.py: give --before")
    return git("rev-parse", added.splitlines()[-1] + "^")


def env_for(tree, database):
    env = {k: v for k, v in os.environ.items() if k not in PROJECT_VARS}
    env.update(
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{database}",
        DJANGO_SECRET_KEY="bench-history-only-fixed-key-never-used-in-production-2f7b",
        DJANGO_ALLOWED_HOSTS="testserver,127.0.0.1,localhost",
        DJANGO_SETTINGS_MODULE="conferencesite.settings",
        PYTHONPATH=str(tree),
        PYTHONUNBUFFERED="1",
        BENCH_HISTORY_TREE=str(tree),
    )
    return env


def run(cmd, *, env, cwd, timeout=3600):
    result = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout


def recreate_database(name):
    subprocess.run([*PSQL, f"DROP DATABASE IF EXISTS {name}"], check=True, capture_output=True)
    subprocess.run([*PSQL, f"CREATE DATABASE {name}"], check=True, capture_output=True)


def drop_database(name):
    subprocess.run([*PSQL, f"DROP DATABASE IF EXISTS {name}"], check=False, capture_output=True)


def child(tree, env, *args):
    out = run([VENV_PY, str(Path(__file__).resolve()), "--child", *args], env=env, cwd=tree)
    return json.loads(out.strip().splitlines()[-1])


def measure_tree(label, ref, args, workdir):
    tree = workdir / label
    database = f"bench_history_{label}"
    git("worktree", "add", "--detach", str(tree), ref)
    try:
        env = env_for(tree, database)
        recreate_database(database)
        with_meetings = (tree / "conferences" / "migrations" / "0002_meetings.py").exists()
        manage = [VENV_PY, "manage.py", "migrate", "--noinput", "-v0"]
        result = {"label": label, "commit": git("rev-parse", "--short", ref)}
        if with_meetings:
            # The history is stored before meetings existed; the upgrade groups it.
            run([*manage, "conferences", "0001"], env=env, cwd=tree)
            log(f"{label}: writing the history ({args.stays:,} stays per room)")
            result["seed"] = child(tree, env, "seed", str(args.stays), "legacy")
            log(f"{label}: migrating to 0002 (the backfill groups the stays into meetings)")
            began = time.perf_counter()
            run(manage, env=env, cwd=tree)
            result["migrate_s"] = time.perf_counter() - began
        else:
            run(manage, env=env, cwd=tree)
            log(f"{label}: writing the history ({args.stays:,} stays per room)")
            result["seed"] = child(tree, env, "seed", str(args.stays), "auto")
        log(f"{label}: measuring")
        result["requests"] = child(tree, env, "measure", str(args.stays), str(args.repeat))
        return result
    finally:
        drop_database(database)
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)


def fmt_ms(value):
    return "–" if value is None else f"{value:,.0f}" if value >= 10 else f"{value:,.1f}"


def render(before, after, args):
    rows = []
    names = list(dict.fromkeys([*before["requests"], *after["requests"]]))
    for name in names:
        cells = [name]
        for side in (before, after):
            found = side["requests"].get(name)
            if found is None:
                cells += ["–", "–", "–", "–"]
                continue
            cells += [
                f"{found['queries']:,}",
                fmt_ms(found["median_ms"]),
                fmt_ms(found["max_ms"]),
                f"{found['peak_mib']:,.1f}",
            ]
        rows.append(cells)
    header = ["request", "before: queries", "median ms", "slowest ms", "peak MiB", "after: queries", "median ms"]
    header += ["slowest ms", "peak MiB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    server = subprocess.run([*PSQL, "SHOW server_version"], capture_output=True, text=True).stdout.strip()
    out = [
        SECTION_START,
        "## History pages",
        "",
        f"`bench/history.py` ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, PostgreSQL {server} on the same",
        f"machine): the history page of a room with {args.stays:,} stored stays and their join and leave events,",
        f"before (`{before['commit']}`) and after (`{after['commit']}`) meetings were stored and the pages became",
        f'keyset pages. "busy": meetings of three stays ({args.stays // 3:,} of them); "always-on": one meeting of all',
        "the stays, a room that never empties. In one process through Django's test client (view, middleware,",
        f"template; no network), {args.repeat} runs each, the whole-file downloads once; the queries counted on",
        "one more run, the peak of Python's memory (tracemalloc) on another.",
        "",
        *lines,
        "",
        f"Writing the history took {before['seed']['seconds']:.1f} s before and {after['seed']['seconds']:.1f} s "
        f"after (the same SQL). The upgrade of that database to 0002 ({2 * args.stays:,} stays in both rooms):",
        f"{after['migrate_s']:.1f} s for `manage.py migrate`, the backfill included.",
        "",
        "What changed: the attendance no longer groups every stay of the room on each request but reads the",
        "stored meetings, a page of 20, and at most 250 stays of each (the most recent; a meeting with more says",
        "so and links to its whole attendance as CSV); the timeline pages by keyset instead of COUNT(*) and",
        "OFFSET; a CSV is read in keyset chunks of 2,000 rows, one indexed query each (hence the query counts",
        "of the whole-file downloads), instead of one server-side cursor held for the whole download. A",
        "whole-file download is the one request meant to read everything, so its time still grows with the",
        "history, in bounded memory and without holding a cursor or the database thread between chunks.",
        "",
        "Reproduce: `.venv/bin/python bench/history.py --write` (rewrites this section only).",
        SECTION_END,
    ]
    return "\n".join(out)


def write_section(text):
    doc = DOC.read_text()
    pattern = re.compile(re.escape(SECTION_START) + ".*?" + re.escape(SECTION_END), re.S)
    doc = pattern.sub(lambda _match: text, doc) if pattern.search(doc) else doc.rstrip("\n") + "\n\n" + text + "\n"
    DOC.write_text(doc)


def parent(args):
    before_ref = args.before or default_before()
    after_ref = args.after
    with tempfile.TemporaryDirectory(prefix="bench-history-") as workdir:
        before = measure_tree("before", before_ref, args, Path(workdir))
        after = measure_tree("after", after_ref, args, Path(workdir))
    text = render(before, after, args)
    print(text)
    print(json.dumps({"before": before, "after": after}, default=str), file=sys.stderr)
    if args.write:
        write_section(text)
        log(f"wrote the section to {DOC}")


# --- the child: runs inside one checkout, with its code -------------------------------


def load_history_data():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_history_data", DATA_MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def setup_django():
    tree = os.environ["BENCH_HISTORY_TREE"]
    sys.path.insert(0, tree)
    import django

    django.setup()


def child_seed(stays, mode):
    from django.contrib.auth.models import User
    from django.db import transaction

    from conferences.models import AsteriskServer, Conference, ConferenceAccess

    data = load_history_data()
    meetings = False if mode == "legacy" else None
    began = time.perf_counter()
    with transaction.atomic():
        server = AsteriskServer.objects.create(
            name="bench-history", ari_url="http://127.0.0.1:8088/ari", username="u", password="p"
        )
        viewer = User.objects.create_user("bench-viewer", password="bench-viewer-pw")
        for slug, number, per_meeting in (("busy", "501", 3), ("always-on", "502", stays)):
            room = Conference.objects.create(server=server, number=number, slug=slug, name=slug)
            ConferenceAccess.objects.create(conference=room, user=viewer)
            data.store_history(room, stays, per_meeting=per_meeting, start=START, meetings=meetings)
    return {"seconds": time.perf_counter() - began}


class Measure:
    """Times a request: ``repeat`` runs, plus one for the queries and one for the memory."""

    def __init__(self, client, repeat):
        self.client, self.repeat, self.results = client, repeat, {}

    def fetch(self, path, *, rows=None):
        """GET ``path``; read a streamed body to the end, or until ``rows`` CSV lines past the header."""
        response = self.client.get(path)
        assert response.status_code == 200, (path, response.status_code)
        if not response.streaming:
            return len(response.content)
        size = lines = 0
        for chunk in response.streaming_content:
            size += len(chunk)
            lines += chunk.count(b"\n")
            if rows is not None and lines > rows:
                break
        response.close()
        return size

    def __call__(self, name, path, *, rows=None, repeat=None):
        import tracemalloc

        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        with CaptureQueriesContext(connection) as captured:
            size = self.fetch(path, rows=rows)
        # Now: the next request's request_started signal empties the log it is read from.
        queries = len(captured.captured_queries)
        times = []
        for _ in range(repeat or self.repeat):
            began = time.perf_counter()
            self.fetch(path, rows=rows)
            times.append((time.perf_counter() - began) * 1000)
        tracemalloc.start()
        self.fetch(path, rows=rows)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        self.results[name] = {
            "queries": queries,
            "median_ms": statistics.median(times),
            "max_ms": max(times),
            "peak_mib": peak / 2**20,
            "bytes": size,
        }
        log(f"  {name}: {statistics.median(times):,.0f} ms, {queries} queries")


def link_named(content, text):
    found = re.findall(rf'<a href="([^"]*)"[^>]*>{re.escape(text)}</a>', content)
    return found[0].replace("&amp;", "&") if found else None


def child_measure(stays, repeat):
    from django.contrib.auth.models import User
    from django.test import Client

    from conferences import history
    from conferences.models import ConferenceEvent

    client = Client()
    client.force_login(User.objects.get(username="bench-viewer"))
    measure = Measure(client, repeat)
    keyset = hasattr(history, "encode_cursor")
    busy, always = "/conferences/busy/history/", "/conferences/always-on/history/"
    first = client.get(busy).content.decode()
    deep = f"busy: timeline page {stays // 100 + 1:,}"
    measure("busy: the page", busy)
    if keyset:
        measure("busy: timeline page 2", busy + link_named(first, "Older events"))
        middle = ConferenceEvent.objects.filter(conference__slug="busy").order_by("-created_at", "-id")[stays]
        measure(deep, busy + "?before=" + history.encode_cursor(middle.created_at, middle.pk))
        measure("busy: meetings page 2", busy + link_named(first, "Older meetings"))
    else:
        measure("busy: timeline page 2", busy + "?page=2")
        measure(deep, busy + f"?page={stays // 100 + 1}")
    measure("busy: one day (2031-06-01)", busy + "?from=2031-06-01&to=2031-06-01")
    measure("busy: CSV, first 2,000 rows", busy + "?format=csv", rows=2000)
    measure(f"busy: CSV, whole ({2 * stays - 1:,} rows)", busy + "?format=csv", repeat=1)
    measure("always-on: the page", always, repeat=1 if not keyset else None)
    if keyset:
        meeting = re.search(r"format=csv&amp;meeting=(\d+)", client.get(always).content.decode())[1]
        measure("always-on: meeting CSV, whole", always + f"?format=csv&meeting={meeting}", repeat=1)
    return measure.results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stays", type=int, default=300_000, help="stays per room (default 300,000)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per request (default 5)")
    parser.add_argument("--before", help="commit for the 'before' figures (default: the parent of 0002_meetings)")
    parser.add_argument("--after", default="HEAD", help="commit for the 'after' figures (default HEAD)")
    parser.add_argument("--write", action="store_true", help="write the section into docs/performance.md")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.child:
        parent(args)
        return
    setup_django()
    command, *rest = args.child
    if command == "seed":
        result = child_seed(int(rest[0]), rest[1])
    else:
        result = child_measure(int(rest[0]), int(rest[1]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
