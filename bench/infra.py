"""Set-up and process plumbing for the benchmarks: services, the sandbox PBX, our own processes.

Everything here is bounded in time; every process started is remembered and
stopped by its own process group id (they are started in new sessions).

The product's processes (daphne, the worker, ``manage.py migrate``) run from
``CODE["root"]``: this checkout unless ``use_code`` named another one (an
older commit's worktree, for "before" figures). The bench's own code and the
sandbox PBX always come from this checkout.
"""

import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import requests

ROOT = Path(__file__).resolve().parent.parent
VENV_PY = str(ROOT / ".venv" / "bin" / "python")
DAPHNE = str(ROOT / ".venv" / "bin" / "daphne")

DB_NAME = "conference_bench"
DATABASE_URL = f"postgres://postgres@127.0.0.1:5432/{DB_NAME}"
REDIS_URL = "redis://127.0.0.1:6379/13"
SECRET_KEY = "bench-only-fixed-key-never-used-in-production-7c1e9a52d4b84f0e9d3a"
ARI_USER = ARI_PASSWORD = "conference"
PROJECT_APP = "conference"
# The checkout whose product code the bench starts, and whether its database starts afresh (see use_code).
CODE = {"root": ROOT, "fresh_db": False}

# Variables of the project that must not leak from the caller's shell into the bench.
PROJECT_VARS = (
    "DJANGO_DEBUG DJANGO_HTTPS DJANGO_ALLOWED_HOSTS DJANGO_SECRET_KEY DJANGO_TRUSTED_PROXIES DATABASE_URL REDIS_URL "
    "ARI_URL ARI_USERNAME ARI_PASSWORD ARI_APP DJANGO_SETTINGS_MODULE MAX_SOCKETS_PER_USER WEBSOCKET_MAX_QUEUED_BYTES"
).split()


class BenchError(RuntimeError):
    pass


def log(message):
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def use_code(path):
    """Start the product (daphne, worker, migrations) from the checkout at ``path`` from now on.

    The bench database is then created afresh: another checkout's migrations
    must not meet the tables a later commit's made.
    """
    root = Path(path).resolve()
    if not (root / "manage.py").is_file() or not (root / "conferences").is_dir():
        raise BenchError(f"{root} is not a checkout of this project (no manage.py and conferences/)")
    CODE.update(root=root, fresh_db=True)
    return root


def checkout(ref, workdir):
    """``(folder, made)`` for ``ref``: a checkout folder itself, or a new git worktree of that commit in ``workdir``."""
    if Path(ref).is_dir():
        return Path(ref).resolve(), None
    tree = Path(workdir) / f"code-{uuid.uuid4().hex[:8]}"
    run(["git", "worktree", "add", "--detach", str(tree), ref], timeout=120)
    return tree, tree


def remove_worktree(tree):
    run(["git", "worktree", "remove", "--force", str(tree)], check=False, timeout=60)


def wait_for_load(below, timeout):
    """Wait (at most ``timeout`` s) until the 1-minute load average is under ``below``; returns it."""
    end = time.time() + timeout
    said = 0.0
    while True:
        load = float(Path("/proc/loadavg").read_text().split()[0])
        if load < below or time.time() > end:
            return load
        if time.time() - said > 60:
            log(f"load average {load:.2f}: waiting until it is under {below} (at most {timeout:.0f} s)")
            said = time.time()
        time.sleep(5)


def run_measurement(cmd, out, label, limit, quiet_load=None):
    """Run one checkout's measurement (a child process in its own session); returns the JSON it wrote to ``out``.

    With ``quiet_load``, first wait (at most 10 minutes) for the machine's load average to fall under it.
    """
    if quiet_load is not None:
        wait_for_load(quiet_load, 600)
    log(f"measuring {label}: {' '.join(cmd[2:])}")
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True)  # noqa: S603 (the bench's own scripts)
    try:
        code = proc.wait(timeout=limit)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
        raise BenchError(f"{label}: stopped (time limit {limit} s, or interrupted)") from None
    if code != 0 or not Path(out).exists():
        raise BenchError(f"{label}: the measurement failed (exit {code})")
    return json.loads(Path(out).read_text())


def measure_checkouts(refs, measure, prefix, rounds=1, combine=None):
    """``[(label, results)]``: ``measure(folder, label, workdir)`` for each ``(label, ref)`` whose ref is set.

    A ref is a checkout folder or a commit (checked out into a temporary
    worktree, removed at the end). With ``rounds`` over 1 the checkouts take
    turns (baseline 1, measured 1, baseline 2, ...), so that a drift of the
    machine over the run (Asterisk, PostgreSQL and the page cache warming up
    or filling) falls on every checkout alike instead of on the last one;
    each run's label ends in ``-N``, and ``combine(runs)`` makes one checkout's
    results of its runs.
    """
    measured = []
    with tempfile.TemporaryDirectory(prefix=prefix) as workdir:
        made, trees = [], []
        try:
            for label, ref in refs:
                if ref is None:
                    continue
                tree, new = checkout(ref, workdir)
                made.append(new)
                trees.append((label, tree))
            runs = {label: [] for label, _tree in trees}
            for attempt in range(1, rounds + 1):
                for label, tree in trees:
                    name = label if rounds == 1 else f"{label}-{attempt}"
                    runs[label].append(measure(tree, name, workdir))
            for label, _tree in trees:
                results = runs[label]
                measured.append((label, results[0] if rounds == 1 else combine(results)))
        finally:
            for tree in made:
                if tree is not None:
                    remove_worktree(tree)
    return measured


def machine_versions(packages, asterisk=None):
    """The machine, the services' versions (Django set up, Redis db 13) and ``packages``' versions."""
    import importlib.metadata as md
    import sys

    import redis
    from django.db import connection

    info = machine()
    info["loadavg"] = Path("/proc/loadavg").read_text().split()[:3]
    info["python"] = sys.version.split()[0]
    if asterisk is not None:
        info["asterisk"] = asterisk
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    info["redis"] = client.info("server").get("redis_version", "?")
    client.close()
    with connection.cursor() as cursor:
        cursor.execute("show server_version")
        info["postgresql"] = cursor.fetchone()[0]
    info["packages"] = {name: md.version(name) for name in packages}
    info["commit"] = code_commit()
    return info


def code_commit(root=None):
    """The short commit of a checkout, marked when its work tree has uncommitted changes.

    Changes under docs/ do not count: they are the reports the benches write (a run of several benches
    writes one section after the other), not the code measured.
    """
    root = root or CODE["root"]
    commit = run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], check=False, timeout=10).stdout.strip()
    status = ["git", "-C", str(root), "status", "--porcelain", "--", ".", ":(exclude)docs"]
    dirty = run(status, check=False, timeout=10).stdout.strip()
    return (commit or "?") + (" (with uncommitted changes)" if dirty else "")


def base_env(settings="conferencesite.settings"):
    env = {k: v for k, v in os.environ.items() if k not in PROJECT_VARS}
    env.update(
        DATABASE_URL=DATABASE_URL,
        REDIS_URL=REDIS_URL,
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        DJANGO_SECRET_KEY=SECRET_KEY,
        DJANGO_SETTINGS_MODULE=settings,
        PYTHONPATH=str(CODE["root"]),
        BENCH_CODE_ROOT=str(CODE["root"]),
        PYTHONUNBUFFERED="1",
    )
    return env


def worker_env(ari_url, settings="conferencesite.settings"):
    env = base_env(settings)
    env.update(ARI_URL=ari_url, ARI_USERNAME=ARI_USER, ARI_PASSWORD=ARI_PASSWORD)
    return env


def run(cmd, *, env=None, timeout=300, check=True, cwd=ROOT):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()[-800:]}")
    return result


# --- services ---------------------------------------------------------------------------


def start_services():
    """Sandbox Asterisk, Redis, PostgreSQL; returns (ARI URL, whether we started Asterisk)."""
    sandbox = str(ROOT / "scripts" / "asterisk-sandbox")
    was_running = run([sandbox, "status"], check=False, timeout=30).returncode == 0
    out = run([sandbox, "start"], timeout=900).stdout.strip().splitlines()
    ari_url = out[-1].strip() if out else "http://127.0.0.1:8088/ari"
    if not ari_url.startswith("http"):
        ari_url = "http://127.0.0.1:8088/ari"
    ARI_PORT["port"] = urlsplit(ari_url).port or 80
    run([str(ROOT / "scripts" / "ensure-redis")], env={**os.environ, "REDIS_URL": REDIS_URL}, timeout=300)
    run([str(ROOT / "scripts" / "ensure-postgres")], timeout=300)
    return ari_url, not was_running


def stop_sandbox():
    run([str(ROOT / "scripts" / "asterisk-sandbox"), "stop"], check=False, timeout=120)


def create_and_migrate_db():
    """The database ``DB_NAME``, migrated by the code under test (dropped first after use_code)."""
    if CODE["fresh_db"]:
        drop = f"drop database if exists {DB_NAME} with (force)"
        run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-c", drop], timeout=60)
    exists = run(
        [
            "psql",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-Atqc",
            f"select 1 from pg_database where datname='{DB_NAME}'",  # noqa: S608 (the bench's own constant)
        ],
        timeout=30,
    ).stdout.strip()
    if exists != "1":
        run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-c", f"create database {DB_NAME}"], timeout=60)
    run([VENV_PY, "manage.py", "migrate", "--noinput", "-v0"], env=base_env(), timeout=300, cwd=CODE["root"])


ROOM_PK0 = 9001  # fixed primary keys: bridge ids conference-conference-90xx stay apart from the tests'
ROOM_NUMBER0 = 88001


def seed(rooms, sessions):
    """Rooms bench-01 … (fixed keys and numbers) and ``sessions`` new logged-in sessions of superuser 'bench'.

    In-process, after ``django.setup()`` with ``worker_env`` in the environment (the ``default``
    server comes from ARI_URL). Returns (rooms, session keys); earlier sessions are deleted.
    """
    from django.contrib.auth import get_user_model
    from django.contrib.sessions.models import Session

    from conferences.models import AsteriskServer, Conference
    from tests.stack import make_sessions

    server = AsteriskServer.objects.sync_default_from_settings()
    made = []
    for i in range(rooms):
        room, _ = Conference.objects.update_or_create(
            pk=ROOM_PK0 + i,
            defaults={
                "server": server,
                "number": str(ROOM_NUMBER0 + i),
                "slug": f"bench-{i + 1:02d}",
                "name": f"Bench room {i + 1}",
                "max_participants": None,
                "pin": "",
                "locked": False,
            },
        )
        made.append(room)
    user_model = get_user_model()
    user = user_model.objects.filter(username="bench").first()
    if user is None:
        user = user_model.objects.create_superuser("bench", "bench@example.invalid", None)
    Session.objects.all().delete()
    return made, make_sessions(user, sessions)


def flush_redis():
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    try:
        client.flushdb()
    finally:
        client.close()


def port_open(port):
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_port(port, timeout, proc=None):
    end = time.time() + timeout
    while time.time() < end:
        if port_open(port):
            return
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"the process for port {port} exited ({proc.returncode})")
        time.sleep(0.2)
    raise BenchError(f"nothing answers on 127.0.0.1:{port} after {timeout} s")


# --- who else is using the sandbox --------------------------------------------------------

# Another benchmark run would share our ports, database and sandbox.
FOREIGN_MARKERS = ("bench/run.py", "bench/busy.py", "bench/capacity.py")
# The sandbox's ARI port (set by start_services from the URL it prints).
ARI_PORT = {"port": 8088}
HARMLESS = {"curl"}  # scripts/asterisk-sandbox status probes


def _parent(pid):
    """The parent pid of ``pid`` (from /proc/<pid>/stat), or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def ancestors():
    """This process and the processes that started it (the shell running the bench, ...)."""
    pids, pid = set(), os.getpid()
    while pid is not None and pid > 1 and pid not in pids:
        pids.add(pid)
        pid = _parent(pid)
    return pids


def _connections_to(port):
    """Socket inodes of established TCP connections to 127.0.0.1:<port> (the client ends)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "01" and int(fields[2].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    return inodes


def _cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def foreign_users(own_pids):
    """Other processes that use the sandbox's ARI (a test run, another worker) or run the bench.

    Found by their established TCP connections to the sandbox's ARI port
    (/proc/net/tcp and /proc/<pid>/fd), so tests against another sandbox do not count.
    """
    found = []
    mine = set(own_pids) | ancestors()
    inodes = _connections_to(ARI_PORT["port"])
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in mine:
            continue
        pid = int(entry)
        if _parent(pid) == os.getpid():
            continue  # ours: e.g. a client process of the previous configuration still exiting
        cmdline = _cmdline(pid)
        if any(marker in cmdline for marker in FOREIGN_MARKERS):
            found.append(f"{pid}: {cmdline[:120]}")
            continue
        if not inodes:
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link in inodes:
                try:
                    comm = Path(f"/proc/{pid}/comm").read_text().strip()
                except OSError:
                    comm = "?"
                if comm not in HARMLESS:
                    found.append(f"{pid} uses ARI on port {ARI_PORT['port']}: {cmdline[:120]}")
                break
    return found


def wait_for_sandbox_free(own_pids, timeout, quiet=10.0):
    """Wait until no other sandbox user has been seen for ``quiet`` seconds; returns the seconds waited."""
    started = time.time()
    end = started + timeout
    free_since = None
    said = 0.0
    while True:
        others = foreign_users(own_pids)
        now = time.time()
        if others:
            free_since = None
            if now > end:
                raise BenchError(
                    "other processes use the sandbox Asterisk (the test suite or a worker): "
                    + "; ".join(others[:3])
                    + " -- run the benchmark when they are done"
                )
            if now - said > 30:
                log(f"waiting for {len(others)} other sandbox user(s) to finish: {others[0]}")
                said = now
        else:
            free_since = free_since or now
            if now - free_since >= quiet:
                return now - started
        time.sleep(1)


class Watcher:
    """Looks for other sandbox users every second while a configuration runs."""

    def __init__(self, own_pids):
        self.own_pids = own_pids  # a callable: our pids right now
        self.seen = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-watcher", daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(1.0):
            others = foreign_users(self.own_pids())
            if others and self.seen is None:
                self.seen = others[0]

    def stop(self):
        self._stop.set()
        self._thread.join(5)


# --- the sandbox PBX --------------------------------------------------------------------


CALLER_FORMATS = "ulaw"


class Ari:
    """Blocking ARI REST helpers (callers, hang-ups, clean-up), for the orchestrator's threads."""

    def __init__(self, url):
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.auth = (ARI_USER, ARI_PASSWORD)
        adapter = requests.adapters.HTTPAdapter(pool_connections=2, pool_maxsize=16)
        self.session.mount("http://", adapter)

    def call(self, method, path, *, params=None, ok=(200, 204), timeout=5):
        response = self.session.request(method, f"{self.url}{path}", params=params, timeout=timeout)
        if response.status_code not in ok:
            raise BenchError(f"ARI {method} {path} -> {response.status_code} {response.text[:200]}")
        return response.json() if response.content else None

    def info(self):
        return self.call("GET", "/asterisk/info")

    def caller(self, room_number, *, far, name, number):
        """A simulated caller: Local/<room>@conferences (the participant, ;2) with a far end (;1)."""
        token = uuid.uuid4().hex
        participant_id, far_id = f"bp{token}", f"bf{token}"
        self.call(
            "POST",
            "/channels",
            params={
                "endpoint": f"Local/{room_number}@conferences",
                "context": "test-farend",
                "extension": far,
                "priority": 1,
                "channelId": far_id,
                "otherChannelId": participant_id,
                "callerId": f'"{name}" <{number}>',
                # What a desk phone or a trunk offers (G.711). Without it a Local channel offers every
                # format Asterisk has, its bridge mixes at the highest rate on offer (slin192), and
                # resampling every caller takes most of Asterisk's CPU (perf: 85 % in codec_resample).
                "formats": CALLER_FORMATS,
            },
        )
        return participant_id, far_id

    def hangup(self, channel_id):
        self.call("DELETE", f"/channels/{channel_id}", ok=(200, 204, 404))

    def channels(self):
        return self.call("GET", "/channels")

    def cleanup(self, timeout=20):
        """Hang up every sandbox channel and destroy every bridge (as tests/sandbox.py does)."""
        for channel in self.channels():
            self.call("DELETE", f"/channels/{channel['id']}", ok=(200, 204, 404))
        for bridge in self.call("GET", "/bridges"):
            self.call("DELETE", f"/bridges/{bridge['id']}", ok=(200, 204, 404))
        end = time.time() + timeout
        while self.channels():
            if time.time() > end:
                raise BenchError("sandbox channels did not hang up")
            time.sleep(0.2)


# --- our processes ----------------------------------------------------------------------


class Processes:
    """The processes this run started; each in its own session, stopped by its own group id."""

    def __init__(self, log_dir):
        self.log_dir = Path(log_dir)
        self.procs = {}  # name -> Popen

    def start(self, name, cmd, env):
        logfile = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(
            cmd, cwd=CODE["root"], env=env, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True
        )
        proc.logfile = logfile
        self.procs[name] = proc
        log(f"started {name} (pid {proc.pid})")
        return proc

    def pids(self):
        return {proc.pid for proc in self.procs.values()}

    def log_text(self, name):
        try:
            return (self.log_dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, name, timeout=15):
        proc = self.procs.pop(name, None)
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{name} did not stop in {timeout} s: killing it")
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(10)
        proc.logfile.close()
        return proc.returncode

    def stop_all(self):
        for name in list(self.procs):
            self.stop(name)


# --- /proc ----------------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """utime + stime of a process (its threads included), in seconds; None when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kb(pid, key):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def pids_named(comm):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/comm").read_text().strip() == comm:
                    found.append(int(entry))
            except OSError:
                continue
    return found


def descendants(pid):
    """The processes started by ``pid``, their children and so on (a server's worker processes)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = _parent(int(entry))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def sandbox_asterisk_pids():
    """The sandbox's Asterisk (its pid file), not other Asterisk instances on this machine."""
    state = Path(os.environ.get("ASTERISK_SANDBOX_DIR", "/var/tmp/conference-asterisk"))  # noqa: S108 (the sandbox's own default)
    try:
        pid = int((state / "asterisk.pid").read_text().strip())
    except (OSError, ValueError):
        return []
    return [pid] if Path(f"/proc/{pid}").exists() else []


def busy_seconds():
    """CPU time the whole machine spent busy (all cores), from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def machine():
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return {"nproc": os.cpu_count(), "memory_gb": round(mem_kb / 1024 / 1024, 1), "cpu": cpu}
