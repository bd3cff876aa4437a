"""Redis behind Sentinel, as real processes: a master, a replica and three Sentinels, on loopback.

Each is a ``redis-server`` of its own (Sentinels with ``--sentinel``, which
is what Debian's ``redis-sentinel`` runs), in a temporary directory, so a
test can kill the master and watch the Sentinels promote the replica.
"""

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from tests.stack import free_port, port_open

MASTER_NAME = "conference"
DOWN_AFTER_MS = 1000


class SentinelRedis:
    def __init__(self, sentinels=3):
        self.dir = Path(tempfile.mkdtemp(prefix="conference-sentinel-"))
        self.redis_ports = [free_port(), free_port()]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.processes = {}  # port -> Popen
        self.frozen = set()  # ports of processes stopped with SIGSTOP
        self.binary = shutil.which("redis-server")
        assert self.binary, "redis-server is missing (scripts/ensure-redis installs it)"

    # --- what the project is given -------------------------------------------------------

    @property
    def environ(self):
        return {
            "REDIS_URL": f"redis://{MASTER_NAME}/0",
            "REDIS_SENTINELS": ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports),
        }

    @property
    def sentinels(self):
        return [("127.0.0.1", port) for port in self.sentinel_ports]

    # --- processes -----------------------------------------------------------------------

    def _spawn(self, port, *args):
        log = open(self.dir / f"{port}.log", "w")  # noqa: SIM115 (closed with the directory)
        self.processes[port] = subprocess.Popen(
            [self.binary, *args], stdout=log, stderr=subprocess.STDOUT, cwd=self.dir
        )
        self._wait(lambda: port_open(port), f"redis-server on {port} did not start")

    def _redis_args(self, port):
        data = self.dir / str(port)
        data.mkdir(exist_ok=True)
        return [
            "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(data),
            # The replica's first copy without waiting for more replicas to join it (5 s by default).
            "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip

    def start(self):
        master, replica = self.redis_ports
        self._spawn(master, *self._redis_args(master))
        self._spawn(replica, *self._redis_args(replica), "--replicaof", "127.0.0.1", str(master))
        self._wait(lambda: self.client(replica).info("replication").get("master_link_status") == "up", "replication")
        for port in self.sentinel_ports:
            conf = self.dir / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER_NAME} 10000\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            self._spawn(port, str(conf), "--sentinel")

        def ready():  # every Sentinel knows the replica and the other Sentinels: a failover can be agreed
            for port in self.sentinel_ports:
                state = self.client(port).sentinel_master(MASTER_NAME)
                if state["num-slaves"] < 1 or state["num-other-sentinels"] < len(self.sentinel_ports) - 1:
                    return False
            return True

        self._wait(ready, "the Sentinels did not find each other and the replica", timeout=30)
        return self

    def client(self, port):
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, decode_responses=True)

    def master_port(self, sentinel_port=None):
        host, port = self.client(sentinel_port or self.sentinel_ports[0]).sentinel_get_master_addr_by_name(MASTER_NAME)
        return int(port)

    def master(self):
        return self.client(self.master_port())

    def replica_port(self):
        master = self.master_port()
        return next(port for port in self.redis_ports if port != master and self.processes[port].poll() is None)

    def kill_master(self):
        """SIGKILL the master (no goodbye to anyone); return its port."""
        port = self.master_port()
        process = self.processes[port]
        process.kill()
        process.wait(10)
        return port

    def freeze_master(self):
        """SIGSTOP the master: its connections stay open and nothing answers (a hung host); return its port."""
        port = self.master_port()
        self.processes[port].send_signal(signal.SIGSTOP)
        self.frozen.add(port)
        return port

    def wait_promoted(self, old_port, timeout=30):
        """Until every Sentinel names a new master and that master takes writes; return the seconds waited."""
        started = time.monotonic()

        def promoted():
            ports = {self.master_port(port) for port in self.sentinel_ports}
            if ports & self.frozen:
                return False
            if len(ports) != 1 or old_port in ports:
                return False
            return self.client(ports.pop()).info("replication")["role"] == "master"

        self._wait(promoted, "no new master was promoted", timeout=timeout)
        return time.monotonic() - started

    def close(self):
        for port in self.frozen:
            self.processes[port].send_signal(signal.SIGCONT)
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)

    @staticmethod
    def _wait(check, message, timeout=15):
        end = time.monotonic() + timeout
        while True:
            try:
                if check():
                    return
            except (redis.RedisError, OSError):
                pass
            if time.monotonic() > end:
                raise AssertionError(message)
            time.sleep(0.05)
