// The measuring clients of bench/web.py: every viewer of a run in one Node.js process (`ws`).
//
// Driven over stdin/stdout, one JSON object a line: {"id": n, "cmd": "...", "args": [...]} in,
// {"id": n, "ok": true, "value": ...} or {"id": n, "ok": false, "error": "..."} out. Logs go to stderr.
//
// Receive times are epoch seconds from performance.timeOrigin + performance.now() (sub-millisecond,
// the same clock as Python's time.time() on this machine), taken in the socket's message handler.
//
// Kinds of viewer (the same records as bench/clients.py, so bench/analysis.py reads both):
// - project: a logged-in page of /ws/conferences/<slug>/ (session cookie, Origin). Parses every frame,
//   keeps seq and the roster as the page does, and on a seq gap sends `resync` (gaps and the time to
//   the fresh snapshot are recorded). Ready when its first snapshot came.
// - needs: a client of bench/needs_relay.py (small JSON: enter / leave / talk, a snapshot first).
//   Ready when its snapshot came.
// - relay, clock: clients of bench/relay.py (every raw ARI frame). Only the frames of interest are kept,
//   as text, parsed when collected. Ready at the handshake.

import { performance } from "node:perf_hooks";
import readline from "node:readline";
import WebSocket from "ws";

const now = () => (performance.timeOrigin + performance.now()) / 1000;
const TYPE_AT = '{"type":"'.length;
const INTEREST = ["ChannelEnteredBridge", "ChannelLeftBridge", "ChannelTalkingStarted"];
const NEEDS_TYPE = { enter: "ChannelEnteredBridge", leave: "ChannelLeftBridge" };

class Viewer {
  constructor(spec) {
    this.spec = spec;
    this.id = spec.id;
    this.kind = spec.kind;
    this.room = spec.room ?? null;
    this.ws = null;
    this.frames = 0;
    this.lastFrameAt = 0;
    this.recs = [];
    this.closed = null; // close code (-1: the connection failed or dropped without one)
    this.error = null;
    this.started = null; // when the connection was started
    this.opened = null; // when the handshake completed
    this.readyAt = null; // when the viewer had what a page shows first (its snapshot)
    this.status = null; // the HTTP status of a refused handshake
    this.closedAt = null;
    this.onReady = null;
  }

  open(timeoutMs) {
    return new Promise((resolve) => {
      const headers = {};
      if (this.spec.cookie) headers.Cookie = this.spec.cookie;
      this.started = now();
      let ws;
      try {
        ws = new WebSocket(this.spec.url, {
          headers,
          origin: this.spec.origin,
          perMessageDeflate: false,
          // Past the bench's own wait, so that a page still waiting then is counted as waiting, not dropped.
          handshakeTimeout: timeoutMs + 5000,
          maxPayload: 4 * 1024 * 1024,
        });
      } catch (exc) {
        this.error = String(exc).slice(0, 200);
        this.closed = -1;
        resolve(this);
        return;
      }
      this.ws = ws;
      let done = false;
      const finish = () => {
        if (!done) {
          done = true;
          clearTimeout(timer);
          resolve(this);
        }
      };
      const timer = setTimeout(() => {
        if (this.readyAt === null && this.closed === null) this.error = this.error ?? "no snapshot in time";
        finish();
      }, timeoutMs);
      this.onReady = finish;
      ws.on("unexpected-response", (_req, res) => {
        this.status = res.statusCode;
        this.error = `HTTP ${res.statusCode}`;
        this.closed = -1;
        ws.terminate();
        finish();
      });
      ws.on("open", () => {
        this.opened = now();
        if (this.kind === "relay" || this.kind === "clock") this.ready();
      });
      ws.on("message", (data) => this.onFrame(now(), data.toString()));
      ws.on("error", (err) => {
        this.error = this.error ?? (err.code || String(err.message || err)).slice(0, 200);
      });
      ws.on("close", (code) => {
        this.closed = code || -1;
        this.closedAt = now();
        finish();
      });
    });
  }

  ready() {
    if (this.readyAt === null) {
      this.readyAt = now();
      if (this.onReady) this.onReady();
    }
  }

  startPhase() {
    this.recs = [];
    this.frames = 0;
  }

  close() {
    return new Promise((resolve) => {
      if (!this.ws || this.ws.readyState === WebSocket.CLOSED) {
        resolve();
        return;
      }
      const timer = setTimeout(() => {
        this.ws.terminate();
        resolve();
      }, 2000);
      this.ws.once("close", () => {
        clearTimeout(timer);
        resolve();
      });
      try {
        this.ws.close(1000);
      } catch {
        this.ws.terminate();
      }
    });
  }

  base() {
    return {
      id: this.id,
      kind: this.kind,
      room: this.room,
      frames: this.frames,
      recs: this.recs,
      closed: this.closed,
      error: this.error,
    };
  }
}

class RawViewer extends Viewer {
  onFrame(t, raw) {
    this.frames += 1;
    this.lastFrameAt = t;
    for (const name of INTEREST) {
      if (raw.startsWith(name, TYPE_AT)) {
        this.recs.push([t, raw]);
        break;
      }
    }
  }

  result() {
    // [receipt, ARI type, channel id, bridge id, ARI timestamp text]: bench/web.py parses the time.
    const recs = this.recs.map(([t, raw]) => {
      const e = JSON.parse(raw);
      return [t, e.type, e.channel?.id ?? null, e.bridge?.id ?? null, e.timestamp];
    });
    return { ...this.base(), recs };
  }
}

class NeedsViewer extends Viewer {
  onFrame(t, raw) {
    this.frames += 1;
    this.lastFrameAt = t;
    const f = JSON.parse(raw);
    if (f.type === "snapshot") {
      this.ready();
      return;
    }
    if (f.type === "talk") {
      if (f.talking) this.recs.push([t, "ChannelTalkingStarted", f.id, f.room, f.at]);
    } else if (NEEDS_TYPE[f.type]) {
      this.recs.push([t, NEEDS_TYPE[f.type], f.id, f.room, f.at]);
    }
  }

  result() {
    return this.base();
  }
}

class ProjectViewer extends Viewer {
  constructor(spec) {
    super(spec);
    this.lastSeq = null;
    this.startSeq = null;
    this.roster = new Map(); // participant id -> [caller number, talking]
    this.gaps = 0;
    this.resyncs = 0;
    this.resyncStarted = null;
    this.recovery = [];
    this.dups = 0;
    this.requests = 0;
  }

  startPhase() {
    super.startPhase();
    this.startSeq = this.lastSeq;
    this.gaps = this.resyncs = this.dups = 0;
    this.recovery = [];
  }

  onFrame(t, raw) {
    this.frames += 1;
    this.lastFrameAt = t;
    const f = JSON.parse(raw);
    const kind = f.type;
    if (kind === "reply") return;
    if (kind === "snapshot") {
      this.lastSeq = f.seq;
      this.roster = new Map(f.participants.map((p) => [p.id, [p.caller_number, Boolean(p.talking)]]));
      const numbers = [...this.roster.values()].map((p) => p[0]).sort();
      this.recs.push([t, "s", f.seq, numbers]);
      if (this.resyncStarted !== null) {
        this.recovery.push(t - this.resyncStarted);
        this.resyncStarted = null;
      }
      this.ready();
      return;
    }
    const seq = f.seq;
    if (seq !== undefined && seq !== null && this.lastSeq !== null) {
      if (seq <= this.lastSeq) {
        this.dups += 1;
        return;
      }
      if (seq > this.lastSeq + 1) {
        this.gaps += 1;
        this.recs.push([t, "g", this.lastSeq, seq]);
        if (this.resyncStarted === null) {
          this.resyncStarted = t;
          this.resyncs += 1;
          this.requests += 1;
          try {
            this.ws.send(JSON.stringify({ action: "resync", request_id: `resync-${this.requests}` }));
          } catch {
            // the socket is closing: its close is recorded
          }
        }
      }
      this.lastSeq = seq;
    }
    const p = f.participant || {};
    if (kind === "participant.joined") {
      this.roster.set(p.id, [p.caller_number, Boolean(p.talking)]);
      this.recs.push([t, "j", seq, p.caller_number]);
    } else if (kind === "participant.left") {
      this.roster.delete(p.id);
      this.recs.push([t, "l", seq, p.caller_number]);
    } else if (kind === "participant.updated") {
      const state = this.roster.get(p.id);
      const talking = Boolean(p.talking);
      const started = talking && (state === undefined || !state[1]);
      if (state !== undefined) state[1] = talking;
      this.recs.push([t, started ? "t" : "u", seq, p.caller_number ?? null]);
    } else if (seq !== undefined && seq !== null) {
      this.recs.push([t, "c", seq, null]);
    }
  }

  result() {
    return {
      ...this.base(),
      start_seq: this.startSeq,
      last_seq: this.lastSeq,
      gaps: this.gaps,
      resyncs: this.resyncs,
      recovery: this.recovery,
      dups: this.dups,
      actions: {},
    };
  }

  rosterNumbers() {
    return [...this.roster.values()].map((p) => p[0]).sort();
  }
}

const KINDS = { project: ProjectViewer, needs: NeedsViewer, relay: RawViewer, clock: RawViewer };
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const state = { viewers: [] };

// Open `specs`: connection i starts at t0 + i * spreadMs / n (no jitter), at most `concurrency` opening
// at once (0: no limit); each waits up to timeoutMs for its first snapshot. Returns every viewer's times.
async function open(specs, spreadMs, timeoutMs, concurrency) {
  const t0 = now() + 0.05;
  const n = specs.length;
  const viewers = specs.map((spec) => new KINDS[spec.kind](spec));
  let inFlight = 0;
  const waiters = [];
  const slot = async () => {
    if (!concurrency) return;
    while (inFlight >= concurrency) await new Promise((resolve) => waiters.push(resolve));
    inFlight += 1;
  };
  const release = () => {
    if (!concurrency) return;
    inFlight -= 1;
    const next = waiters.shift();
    if (next) next();
  };
  await Promise.all(
    viewers.map(async (viewer, i) => {
      const at = t0 + (n > 1 ? (i * spreadMs) / (n - 1) / 1000 : 0);
      const wait = (at - now()) * 1000;
      if (wait > 0) await sleep(wait);
      await slot();
      await viewer.open(timeoutMs);
      release();
    }),
  );
  for (const viewer of viewers) state.viewers.push(viewer);
  return {
    t0,
    finished: now(),
    // A viewer's close is reported only when it came before the wait was over (a later one is not the storm's).
    viewers: viewers.map((v) => {
      const closed = v.closedAt !== null && v.closedAt <= v.started + timeoutMs / 1000 ? v.closed : null;
      return [v.id, v.kind, v.started, v.opened, v.readyAt, closed, v.status, v.error, v.closedAt];
    }),
  };
}

function phase() {
  for (const viewer of state.viewers) viewer.startPhase();
  return { viewers: state.viewers.length };
}

// Wait until project viewers reached their room's target seq, the clock saw every channel in `left`
// leave, every raw relay viewer has as many frames as the clock and every needs viewer as many as the
// busiest needs viewer, and no frame came for `quiet` s (bench/clients.py's settle, plus needs viewers).
async function settle(targets, quiet, timeout, left = []) {
  const started = now();
  const end = started + timeout;
  const waitingLeft = new Set(left);
  let seen = 0;
  for (;;) {
    const t = now();
    const open = state.viewers.filter((v) => v.closed === null);
    const behind = open.filter(
      (v) => v.kind === "project" && v.room in targets && (v.lastSeq ?? 0) < targets[v.room],
    );
    const clock = state.viewers.find((v) => v.kind === "clock");
    if (clock && waitingLeft.size) {
      for (const [, raw] of clock.recs.slice(seen)) {
        if (raw.startsWith("ChannelLeftBridge", TYPE_AT)) waitingLeft.delete(JSON.parse(raw).channel?.id);
      }
      seen = clock.recs.length;
    }
    if (clock) behind.push(...open.filter((v) => v.kind === "relay" && v.frames < clock.frames));
    const needs = open.filter((v) => v.kind === "needs");
    const most = Math.max(0, ...needs.map((v) => v.frames));
    behind.push(...needs.filter((v) => v.frames < most));
    const last = Math.max(0, ...state.viewers.map((v) => v.lastFrameAt));
    const done = behind.length === 0 && waitingLeft.size === 0 && t - last >= quiet;
    if (done || t > end) {
      return { seconds: t - started, behind: behind.length, missing_left: waitingLeft.size, timed_out: !done };
    }
    await sleep(50);
  }
}

function rosters() {
  const out = {};
  for (const v of state.viewers) {
    if (v.kind === "project") out[v.id] = { room: v.room, seq: v.lastSeq, numbers: v.rosterNumbers(), closed: v.closed };
  }
  return out;
}

function collect() {
  return state.viewers.map((v) => v.result());
}

async function close() {
  const viewers = state.viewers;
  state.viewers = [];
  for (let i = 0; i < viewers.length; i += 200) await Promise.all(viewers.slice(i, i + 200).map((v) => v.close()));
  return { closed: viewers.length };
}

const COMMANDS = { open, phase, settle, rosters, collect, close };

const rl = readline.createInterface({ input: process.stdin, terminal: false });
rl.on("line", async (line) => {
  let request;
  try {
    request = JSON.parse(line);
  } catch {
    process.stderr.write(`clients.mjs: not JSON: ${line.slice(0, 100)}\n`);
    return;
  }
  const { id, cmd, args = [] } = request;
  if (cmd === "quit") {
    await close();
    process.stdout.write(`${JSON.stringify({ id, ok: true, value: null })}\n`, () => process.exit(0));
    return;
  }
  try {
    const fn = COMMANDS[cmd];
    if (!fn) throw new Error(`unknown command ${cmd}`);
    const value = await fn(...args);
    process.stdout.write(`${JSON.stringify({ id, ok: true, value })}\n`);
  } catch (exc) {
    process.stdout.write(`${JSON.stringify({ id, ok: false, error: String(exc?.stack || exc).slice(0, 500) })}\n`);
  }
});
rl.on("close", () => process.exit(0));
