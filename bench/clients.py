"""The measuring clients of bench/run.py: many WebSocket viewers in one asyncio process.

A client process is started by run.py (multiprocessing, spawn) and driven over
a pipe with small commands (connect, phase, settle, rosters, collect, close,
quit). Receive times are ``time.time()`` taken when the frame is handed to the
viewer's task, so they include this process's own scheduling delay: the same
cost for the relay's viewers and the project's.

Three kinds of viewer:

- ``project``: a logged-in browser of /ws/conferences/<slug>/. Parses every
  frame, keeps ``seq`` and the roster, and on a seq gap sends ``resync`` like
  the page does (the gap and the time until the fresh snapshot are recorded).
  A moderator's clicks (``moderate``) are sent on it; each ``reply`` is
  recorded with the time its request was sent.
- ``relay``: a client of bench/relay.py. Counts every frame; keeps the raw
  text of bridge enter/leave and talking-started events (parsed only when the
  phase is collected, outside the measurement).
- ``clock``: one more relay client whose events give Asterisk's own
  timestamps for every call event (the reference the project is matched to).
"""

import asyncio
import contextlib
import json
import time
from datetime import datetime

from websockets.asyncio.client import connect

INTEREST = ("ChannelEnteredBridge", "ChannelLeftBridge", "ChannelTalkingStarted")
TYPE_AT = len('{"type":"')


def ari_time(stamp):
    """Asterisk's event timestamp (2026-11-26T10:37:45.344+0000) as epoch seconds."""
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


class Viewer:
    def __init__(self, spec):
        self.spec = spec
        self.id = spec["id"]
        self.kind = spec["kind"]
        self.room = spec.get("room")
        self.ws = None
        self.task = None
        self.ready = asyncio.Event()
        self.closed_code = None
        self.error = None
        self.frames = 0
        self.last_frame_at = 0.0
        self.recs = []

    async def open(self, timeout):
        headers = {}
        if self.spec.get("cookie"):
            headers["Cookie"] = self.spec["cookie"]
        self.ws = await connect(
            self.spec["url"],
            origin=self.spec.get("origin"),
            additional_headers=headers or None,
            compression=None,
            ping_interval=None,
            open_timeout=timeout,
            close_timeout=2,
            max_size=2**22,
        )
        self.task = asyncio.create_task(self._read())
        if self.kind == "project":
            async with asyncio.timeout(timeout):
                await self.ready.wait()
        else:
            self.ready.set()

    async def _read(self):
        try:
            async for raw in self.ws:
                self.on_frame(time.time(), raw)
        except Exception as exc:  # noqa: BLE001 (recorded, reported by run.py)
            self.error = repr(exc)[:200]
        finally:
            rcvd = getattr(self.ws, "close_code", None)
            self.closed_code = rcvd if rcvd is not None else -1
            self.ready.set()

    def start_phase(self):
        self.recs = []
        self.frames = 0

    async def close(self):
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task


class RelayViewer(Viewer):
    def on_frame(self, now, raw):
        self.frames += 1
        self.last_frame_at = now
        if raw.startswith(INTEREST, TYPE_AT):
            self.recs.append((now, raw))

    def result(self):
        parsed = []
        for now, raw in self.recs:
            event = json.loads(raw)
            parsed.append(
                (
                    now,
                    event["type"],
                    (event.get("channel") or {}).get("id"),
                    (event.get("bridge") or {}).get("id"),
                    ari_time(event["timestamp"]),
                )
            )
        return {"id": self.id, "kind": self.kind, "frames": self.frames, "recs": parsed, "closed": self.closed_code}


class ProjectViewer(Viewer):
    def __init__(self, spec):
        super().__init__(spec)
        self.last_seq = None
        self.start_seq = None
        self.roster = {}  # participant id -> [caller number, talking]
        self.gaps = 0
        self.resyncs = 0
        self.resync_started = None
        self.recovery = []  # seconds from a detected gap to the fresh snapshot
        self.dups = 0
        self.requests = 0
        self.actions = {}  # request id -> [action, sent, received, ok, error]

    def start_phase(self):
        super().start_phase()
        self.start_seq = self.last_seq
        self.gaps = self.resyncs = self.dups = 0
        self.recovery = []

    def on_frame(self, now, raw):
        self.frames += 1
        self.last_frame_at = now
        frame = json.loads(raw)
        kind = frame.get("type")
        if kind == "reply":
            action = self.actions.get(frame.get("request_id"))
            if action is not None and action[2] is None:
                action[2:] = [now, bool(frame.get("ok")), frame.get("error")]
            return
        if kind == "snapshot":
            self.last_seq = frame["seq"]
            self.roster = {p["id"]: [p["caller_number"], bool(p["talking"])] for p in frame["participants"]}
            self.recs.append((now, "s", frame["seq"], tuple(sorted(p[0] for p in self.roster.values()))))
            if self.resync_started is not None:
                self.recovery.append(now - self.resync_started)
                self.resync_started = None
            self.ready.set()
            return
        seq = frame.get("seq")
        if seq is not None and self.last_seq is not None:
            if seq <= self.last_seq:
                self.dups += 1
                return
            if seq > self.last_seq + 1:
                self.gaps += 1
                self.recs.append((now, "g", self.last_seq, seq))
                if self.resync_started is None:
                    self.resync_started = now
                    self.resyncs += 1
                    self.requests += 1
                    asyncio.get_running_loop().create_task(self._resync(f"resync-{self.requests}"))
            self.last_seq = seq
        participant = frame.get("participant") or {}
        pid = participant.get("id")
        if kind == "participant.joined":
            self.roster[pid] = [participant["caller_number"], bool(participant.get("talking"))]
            self.recs.append((now, "j", seq, participant["caller_number"]))
        elif kind == "participant.left":
            self.roster.pop(pid, None)
            self.recs.append((now, "l", seq, participant["caller_number"]))
        elif kind == "participant.updated":
            state = self.roster.get(pid)
            talking = bool(participant.get("talking"))
            started = talking and (state is None or not state[1])
            if state is not None:
                state[1] = talking
            self.recs.append((now, "t" if started else "u", seq, participant.get("caller_number")))
        elif seq is not None:
            self.recs.append((now, "c", seq, None))

    async def _resync(self, request_id):
        with contextlib.suppress(Exception):
            await self.ws.send(json.dumps({"action": "resync", "request_id": request_id}))

    async def act(self, action, request_id):
        """A moderator's click: the request goes out now, its reply is matched by ``request_id``."""
        self.actions[request_id] = [action, time.time(), None, None, None]
        await self.ws.send(json.dumps({"action": action, "request_id": request_id}))

    def result(self):
        return {
            "id": self.id,
            "kind": self.kind,
            "room": self.room,
            "frames": self.frames,
            "recs": self.recs,
            "start_seq": self.start_seq,
            "last_seq": self.last_seq,
            "gaps": self.gaps,
            "resyncs": self.resyncs,
            "recovery": self.recovery,
            "dups": self.dups,
            "closed": self.closed_code,
            "error": self.error,
            "actions": {request_id: list(action) for request_id, action in self.actions.items()},
        }

    def roster_numbers(self):
        return sorted(number for number, _talking in self.roster.values())


KINDS = {"relay": RelayViewer, "clock": RelayViewer, "project": ProjectViewer}


class Clients:
    def __init__(self):
        self.viewers = []

    async def connect(self, specs, concurrency, timeout):
        started = time.time()
        limit = asyncio.Semaphore(concurrency)
        failures = []

        async def one(spec):
            viewer = KINDS[spec["kind"]](spec)
            async with limit:
                try:
                    await viewer.open(timeout)
                except Exception as exc:  # noqa: BLE001 (reported by run.py)
                    failures.append(f"{spec['id']}: {exc!r}"[:200])
                    await viewer.close()
                    return
            if viewer.closed_code is not None:
                failures.append(f"{spec['id']}: closed with {viewer.closed_code}")
                return
            self.viewers.append(viewer)

        await asyncio.gather(*(one(spec) for spec in specs))
        return {"connected": len(specs) - len(failures), "failed": failures[:20], "seconds": time.time() - started}

    def phase(self):
        for viewer in self.viewers:
            viewer.start_phase()
        return {"viewers": len(self.viewers)}

    async def settle(self, targets, quiet, timeout, left=()):
        """Wait until the viewers have everything of the phase, and no frame came for ``quiet`` s.

        Project viewers: each reached its room's target seq. Relay viewers: the clock saw
        ChannelLeftBridge of every channel in ``left``, and every relay viewer has as many
        frames as the clock (they get the same stream).
        """
        started = time.time()
        end = started + timeout
        waiting_left = set(left)
        seen = 0
        while True:
            now = time.time()
            behind = [
                v
                for v in self.viewers
                if v.kind == "project"
                and v.closed_code is None
                and v.room in targets
                and (v.last_seq or 0) < targets[v.room]
            ]
            clock = next((v for v in self.viewers if v.kind == "clock"), None)
            if clock is not None and waiting_left:
                for _now, raw in clock.recs[seen:]:
                    if raw.startswith("ChannelLeftBridge", TYPE_AT):
                        waiting_left.discard((json.loads(raw).get("channel") or {}).get("id"))
                seen = len(clock.recs)
            if clock is not None:
                behind += [
                    v for v in self.viewers if v.kind == "relay" and v.closed_code is None and v.frames < clock.frames
                ]
            last = max((v.last_frame_at for v in self.viewers), default=0.0)
            done = not behind and not waiting_left and now - last >= quiet
            if done or now > end:
                return {
                    "seconds": now - started,
                    "behind": len(behind),
                    "missing_left": len(waiting_left),
                    "timed_out": not done,
                }
            await asyncio.sleep(0.05)

    async def moderate(self, clicks, timeout):
        """Send ``[viewer id, action, request id]`` clicks all at once, then wait for every reply."""
        viewers = {v.id: v for v in self.viewers if v.kind == "project"}
        for viewer_id, action, request_id in clicks:
            await viewers[viewer_id].act(action, request_id)
        end = time.time() + timeout
        waiting = len(clicks)
        while waiting and time.time() < end:
            await asyncio.sleep(0.01)
            waiting = sum(1 for v in viewers.values() for a in v.actions.values() if a[2] is None)
        return {"sent": len(clicks), "unanswered": waiting}

    def rosters(self):
        return {
            v.id: {"room": v.room, "seq": v.last_seq, "numbers": v.roster_numbers(), "closed": v.closed_code}
            for v in self.viewers
            if v.kind == "project"
        }

    def collect(self):
        return [viewer.result() for viewer in self.viewers]

    async def close(self):
        viewers, self.viewers = self.viewers, []
        for start in range(0, len(viewers), 200):
            await asyncio.gather(*(v.close() for v in viewers[start : start + 200]))
        return {"closed": len(viewers)}


async def serve(conn):
    clients = Clients()
    loop = asyncio.get_running_loop()
    while True:
        command, *args = await loop.run_in_executor(None, conn.recv)
        try:
            if command == "connect":
                reply = await clients.connect(*args)
            elif command == "phase":
                reply = clients.phase()
            elif command == "settle":
                reply = await clients.settle(*args)
            elif command == "moderate":
                reply = await clients.moderate(*args)
            elif command == "rosters":
                reply = clients.rosters()
            elif command == "collect":
                reply = clients.collect()
            elif command == "close":
                reply = await clients.close()
            elif command == "quit":
                await asyncio.wait_for(clients.close(), 30)
                conn.send(("ok", None))
                return
            else:
                reply = {"error": f"unknown command {command}"}
            await loop.run_in_executor(None, conn.send, ("ok", reply))
        except Exception as exc:  # noqa: BLE001 (the parent reports it)
            await loop.run_in_executor(None, conn.send, ("error", repr(exc)))


def main(conn):
    """Entry point of a client process (multiprocessing target)."""
    asyncio.run(serve(conn))
