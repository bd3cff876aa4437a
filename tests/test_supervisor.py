"""Servers picked up live (conferences/ari/supervisor.py): `ari_worker --all` and the embedded `serve`.

The unit tests drive the supervisor with stand-in workers and a list of
servers the test edits; the process test runs the real `ari_worker --all`
against the sandbox Asterisk and edits the server in the database as the
admin does: added, disabled, re-enabled, given a wrong password, fixed.
"""

import asyncio
import signal
import subprocess
import sys
import types

import pytest

from conferences.ari import supervisor
from conferences.ari.supervisor import WorkerSupervisor
from conferences.ari.worker import WorkerConflict
from conferences.models import AsteriskServer
from tests.live import db
from tests.sandbox import eventually
from tests.stack import ROOT, base_env, database_url


def server(pk, name=None, url="http://127.0.0.1:8088/ari", password="p", app="conference"):
    return types.SimpleNamespace(
        pk=pk, name=name or f"pbx{pk}", ari_url=url, username="u", password=password, app_name=app
    )


class FakeWorker:
    made = []

    def __init__(self, server, *, stopping, ends_with=None):
        self.server, self.stopping, self.ends_with = server, stopping, ends_with
        self.replaced = False
        self.stopped = False
        FakeWorker.made.append(self)

    async def run(self):
        if self.ends_with == "conflict":
            raise WorkerConflict("another worker holds the lease")
        if self.ends_with == "replaced":
            self.replaced = True
            return
        await self.stopping.wait()
        self.stopped = True


class Harness:
    def __init__(self, **kwargs):
        FakeWorker.made = []
        self.servers = {}
        self.ends = {}  # pk -> how its next worker ends

        def factory(srv, *, stopping):
            return FakeWorker(srv, stopping=stopping, ends_with=self.ends.get(srv.pk))

        async def read():
            return {pk: types.SimpleNamespace(**vars(s)) for pk, s in self.servers.items()}

        self.stopping = asyncio.Event()
        self.supervisor = WorkerSupervisor(stopping=self.stopping, worker_factory=factory, read=read, **kwargs)

    async def step(self):
        await self.supervisor.apply(await self.supervisor.read())
        await asyncio.sleep(0)

    async def ends_and_steps(self, pk, how, steps):
        """Server ``pk``'s worker ends ``how``; then ``steps`` rounds of the supervisor."""
        self.servers[pk] = server(pk)
        self.ends[pk] = how
        await self.step()
        await asyncio.sleep(0.01)
        for _ in range(steps):
            await self.step()
            await asyncio.sleep(0.01)
        self.ends.pop(pk)

    def live(self):
        return sorted(r.server.name for r in self.supervisor.running.values() if not r.task.done())


async def test_added_disabled_edited_servers_start_stop_and_restart():
    h = Harness()
    await h.step()
    assert h.live() == []
    h.servers[1] = server(1)
    h.servers[2] = server(2)
    await h.step()
    assert h.live() == ["pbx1", "pbx2"]
    first = h.supervisor.running[1].worker
    await h.step()
    assert h.supervisor.running[1].worker is first  # nothing changed: the same worker
    del h.servers[2]  # disabled (or deleted) in the admin
    await h.step()
    assert h.live() == ["pbx1"] and FakeWorker.made[1].stopped
    h.servers[1] = server(1, password="new")  # credentials edited
    await h.step()
    assert first.stopped and h.supervisor.running[1].worker is not first
    assert h.supervisor.running[1].worker.server.password == "new"
    h.servers[2] = server(2)  # re-enabled
    await h.step()
    assert h.live() == ["pbx1", "pbx2"]
    h.servers[1] = server(1, app="other-app")
    await h.step()
    assert h.supervisor.running[1].worker.server.app_name == "other-app"
    await h.supervisor.stop_all()
    assert h.live() == [] and all(w.stopped for w in FakeWorker.made)


async def test_a_worker_refused_by_the_lease_is_tried_again_after_the_retry_time_not_in_a_loop():
    h = Harness(retry=0.3)
    await h.ends_and_steps(1, "conflict", 5)
    assert len(FakeWorker.made) == 1  # ended, and not started again at once
    await asyncio.sleep(0.35)
    await h.step()
    assert len(FakeWorker.made) == 2 and h.live() == ["pbx1"]


async def test_a_replaced_worker_waits_for_its_settings_to_change():
    h = Harness(retry=0.0)
    await h.ends_and_steps(1, "replaced", 3)
    assert len(FakeWorker.made) == 1  # no fight over the application
    h.servers[1] = server(1, app="conference-2")
    await h.step()
    assert len(FakeWorker.made) == 2 and h.live() == ["pbx1"]


async def test_an_unreadable_database_keeps_the_workers_and_the_loop_goes_on():
    from django.db import OperationalError

    h = Harness(poll=0.05)
    h.servers[1] = server(1)
    reads = {"n": 0}
    real_read = h.supervisor.read

    async def flaky():
        reads["n"] += 1
        if 2 <= reads["n"] <= 4:
            raise OperationalError("the database went away")
        return await real_read()

    h.supervisor.read = flaky
    task = asyncio.create_task(h.supervisor.run())
    await eventually(lambda: reads["n"] >= 6, timeout=5)
    assert h.live() == ["pbx1"] and len(FakeWorker.made) == 1
    h.stopping.set()
    await asyncio.wait_for(task, 5)
    assert FakeWorker.made[0].stopped


@pytest.mark.django_db(transaction=True)
async def test_a_save_in_this_process_wakes_the_supervisor_but_a_heartbeat_does_not():
    h = Harness(poll=30.0)
    reads = []
    real_read = h.supervisor.read

    async def counted():
        reads.append(True)
        return await real_read()

    h.supervisor.read = counted
    task = asyncio.create_task(h.supervisor.run())
    await eventually(lambda: len(reads) == 1, timeout=2)
    pbx = await db(AsteriskServer.objects.create)(name="woken", ari_url="http://127.0.0.1:9/ari", username="u")
    await eventually(lambda: len(reads) == 2, timeout=2, message="an admin save is acted on at once")
    pbx.connected = True
    await db(pbx.save)(update_fields=["connected", "last_seen_at"])  # what a worker's heartbeat saves
    await asyncio.sleep(0.3)
    assert len(reads) == 2
    await db(pbx.delete)()
    await eventually(lambda: len(reads) == 3, timeout=2, message="a deletion is acted on at once")
    h.stopping.set()
    await asyncio.wait_for(task, 5)


# --- the real command against the sandbox -------------------------------------------------------


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
async def test_ari_worker_all_follows_the_admin_without_a_restart(ari, tmp_path, redis_url):
    async def link(pk, up):
        def check():
            row = AsteriskServer.objects.get(pk=pk)
            return row.connected is up and (row.worker_owner != "") is up

        await eventually(lambda: db(check)(), timeout=10, message=f"link {'up' if up else 'down'}")
        return asyncio.get_running_loop().time()

    log = open(tmp_path / "worker.log", "w")  # noqa: SIM115, ASYNC230
    process = subprocess.Popen(  # noqa: ASYNC220 (returns at once)
        [sys.executable, "manage.py", "ari_worker", "--all"],
        cwd=ROOT,
        env=base_env(database_url(), redis_url),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    figures = {}
    try:
        await asyncio.sleep(1.5)
        assert process.poll() is None  # no enabled server yet: it waits, it does not exit
        loop = asyncio.get_running_loop()
        created = loop.time()
        pbx = await db(AsteriskServer.objects.create)(
            name="live-pickup", ari_url=ari.url, username=ari.username, password=ari.password, app_name="conf-live"
        )
        figures["added"] = await link(pbx.pk, True) - created
        changed = loop.time()
        await db(AsteriskServer.objects.filter(pk=pbx.pk).update)(enabled=False)
        figures["disabled"] = await link(pbx.pk, False) - changed
        changed = loop.time()
        await db(AsteriskServer.objects.filter(pk=pbx.pk).update)(enabled=True)
        figures["re-enabled"] = await link(pbx.pk, True) - changed
        # A wrong password: the old link is dropped and the new worker says why.
        await db(AsteriskServer.objects.filter(pk=pbx.pk).update)(password="wrong")

        def refused():
            row = AsteriskServer.objects.get(pk=pbx.pk)
            return not row.connected and row.last_error not in ("", "worker stopped")

        await eventually(lambda: db(refused)(), timeout=10, message="a wrong password is reported")
        changed = loop.time()
        await db(AsteriskServer.objects.filter(pk=pbx.pk).update)(password=ari.password)
        figures["fixed"] = await link(pbx.pk, True) - changed
        assert process.poll() is None
        print("live pickup:", {k: round(v, 2) for k, v in figures.items()})
        assert all(seconds < 8 for seconds in figures.values()), figures
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, 20)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()
    assert process.returncode == 0, (tmp_path / "worker.log").read_text()[-2000:]
    row = await db(AsteriskServer.objects.get)(pk=pbx.pk)
    assert row.connected is False and row.worker_owner == ""  # stopped cleanly at SIGTERM
    assert supervisor.POLL_SECONDS <= 2
