"""ARI REST calls from the worker's event loop: the thread-pooled ``requests`` client beside two async clients.

    .venv/bin/python bench/ari_client.py             # against the sandbox (scripts/asterisk-sandbox start)
    .venv/bin/python bench/ari_client.py --calls 500 # a quick look

The worker makes REST calls from its event loop (answer, play, add to the
bridge, mute...); every room's lane waits for its own. Until commit 208c1c8
the product's client ran ``requests`` in a pool of 8 threads (kept here as
the baseline); it now uses aiohttp, whose calls run on the loop itself, as
do those of httpx, the other candidate. Plain aiohttp is measured beside the
product's client to show what the client itself adds.
Each is measured in the same run, against the same Asterisk, at 1, 8 and 32
calls in flight: calls per second, latency p50/p99, and the CPU seconds the
calling process spent per 1,000 calls (the worker's own budget). The call is
``GET /asterisk/info`` (small, no state change); a second series with
``POST /channels/<none>/variable`` (a 404, as when a channel just left).
Writes the section "ARI client" of docs/performance.md.
"""

import argparse
import asyncio
import base64
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import httpx  # noqa: E402
import requests  # noqa: E402
import requests.adapters  # noqa: E402

from bench import infra, report  # noqa: E402
from conferences.ari.client import AriClient, AriNotFound  # noqa: E402

CONCURRENCY = (1, 8, 32)


class Requests:
    """The product's client before (up to commit 208c1c8): requests in a pool of 8 threads."""

    name = "requests in 8 threads (before)"

    def __init__(self, url, user, password):
        self.url = url
        self.session = requests.Session()
        self.session.auth = (user, password)
        adapter = requests.adapters.HTTPAdapter(pool_connections=2, pool_maxsize=8)
        self.session.mount("http://", adapter)
        self.executor = ThreadPoolExecutor(max_workers=8)

    async def _call(self, method, path, **kwargs):
        def call():
            return self.session.request(method, f"{self.url}{path}", timeout=5, **kwargs)

        return await asyncio.get_running_loop().run_in_executor(self.executor, call)

    async def info(self):
        (await self._call("GET", "/asterisk/info")).json()

    async def missing(self):
        params = {"variable": "X", "value": "1"}
        response = await self._call("POST", "/channels/no-such-channel/variable", params=params)
        assert response.status_code == 404

    async def close(self):
        self.executor.shutdown()
        self.session.close()


class Product:
    name = "aiohttp, conferences/ari/client.py (the product)"

    def __init__(self, url, user, password):
        self.client = AriClient(url, user, password)

    async def info(self):
        await self.client.asterisk_info()

    async def missing(self):
        try:
            await self.client.set_variable("no-such-channel", "X", "1")
        except AriNotFound:
            pass

    async def close(self):
        await self.client.close()


class Aiohttp:
    name = "aiohttp"

    def __init__(self, url, user, password):
        self.url = url
        self.session = aiohttp.ClientSession(
            auth=aiohttp.BasicAuth(user, password), timeout=aiohttp.ClientTimeout(total=5)
        )

    async def info(self):
        async with self.session.get(f"{self.url}/asterisk/info") as response:
            await response.json()

    async def missing(self):
        params = {"variable": "X", "value": "1"}
        async with self.session.post(f"{self.url}/channels/no-such-channel/variable", params=params) as response:
            await response.read()
            assert response.status == 404

    async def close(self):
        await self.session.close()


class Httpx:
    name = "httpx"

    def __init__(self, url, user, password):
        self.url = url
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.client = httpx.AsyncClient(headers={"Authorization": f"Basic {token}"}, timeout=5)

    async def info(self):
        (await self.client.get(f"{self.url}/asterisk/info")).json()

    async def missing(self):
        response = await self.client.post(
            f"{self.url}/channels/no-such-channel/variable", params={"variable": "X", "value": "1"}
        )
        assert response.status_code == 404

    async def close(self):
        await self.client.aclose()


async def measure(client, call, calls, in_flight):
    latencies = []
    queue = asyncio.Queue()
    for _ in range(calls):
        queue.put_nowait(None)

    async def runner():
        while not queue.empty():
            queue.get_nowait()
            started = time.perf_counter()
            await getattr(client, call)()
            latencies.append(time.perf_counter() - started)

    for _ in range(20):  # warm the connections
        await getattr(client, call)()
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(runner() for _ in range(in_flight)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    latencies.sort()
    return {
        "rate": calls / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "cpu_ms_per_1000": cpu / calls * 1000 * 1000,
    }


async def run(args):
    results = {}
    for kind in (Requests, Product, Aiohttp, Httpx):
        client = kind(args.ari_url, args.user, args.password)
        try:
            for call in ("info", "missing"):
                for in_flight in CONCURRENCY:
                    results[(kind.name, call, in_flight)] = await measure(client, call, args.calls, in_flight)
                    infra.log(f"{kind.name} {call} x{in_flight}: {results[(kind.name, call, in_flight)]}")
        finally:
            await client.close()
    return results


def render(results, args):
    rows = []
    for (name, call, in_flight), r in results.items():
        rows.append(
            f"| {name} | `{'GET /asterisk/info' if call == 'info' else 'POST …/variable (404)'}` | {in_flight} | "
            f"{r['rate']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['cpu_ms_per_1000']:,.0f} |"
        )
    machine = infra.machine()
    return "\n".join(
        [
            "<!-- section:ari-client:start -->",
            "## ARI client",
            "",
            "Written by `.venv/bin/python bench/ari_client.py` (its docstring says what it does).",
            f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {args.calls:,} calls per row, against the "
            f"sandbox Asterisk on loopback; {machine['nproc']} cores, {machine['cpu']}, load "
            f"{os.getloadavg()[0]:.2f} at the end.",
            "",
            "| client | call | in flight | calls/s | p50, ms | p99, ms | CPU ms per 1,000 calls |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            "<!-- section:ari-client:end -->",
        ]
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description="ARI REST clients compared.")
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--ari-url", default=os.environ.get("ARI_TEST_URL", "http://127.0.0.1:8088/ari"))
    parser.add_argument("--user", default="conference")
    parser.add_argument("--password", default="conference")
    parser.add_argument("--out", default=str(ROOT / "docs" / "performance.md"))
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "conferencesite.settings")
    results = asyncio.run(run(args))
    text = render(results, args)
    print(text)
    report.write_section(Path(args.out), "ari-client", text)


if __name__ == "__main__":
    main()
