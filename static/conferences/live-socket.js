// One reconnecting WebSocket for the live pages (the room page and the room list).
//
// It reconnects with backoff (spread, so pages dropped together do not come back together),
// stops on a refusal (the close codes come from the server: conferences/protocol.py), retries
// a refusal that passes by itself after the delay the server gave, reconnects at once when the
// network comes back, and closes cleanly when the page is left (and opens again when it comes
// back from the back/forward cache). The page says when a connection is live (its first frame)
// with ``live()``, which resets the backoff.

/**
 * Reconnect delay in ms. The first retry comes anywhere between base / 4 and 2.25 x base
 * (1 s on average): pages dropped together — a web restart, a deploy — spread their
 * reconnects over two seconds instead of all arriving at once. Later retries grow
 * exponentially to `max`, each between half and all of its step.
 */
export function backoffDelay(attempt, random = Math.random, base = 1000, max = 30000) {
  if (attempt <= 0) return Math.round(base / 4 + 2 * base * random());
  const ceiling = Math.min(max, base * 2 ** attempt);
  return Math.round(ceiling * (0.5 + 0.5 * random()));
}

/** The strings key explaining a refusal close code, or null when the page should reconnect. */
export function refusalKey(code, closeCodes) {
  return ((closeCodes && closeCodes.refusals) || []).includes(code) ? `refused_${code}` : null;
}

/** How long to wait before trying again after a refusal, or null when the page must not retry. */
export function retryAfterRefusal(code, closeCodes) {
  return ((closeCodes && closeCodes.retry_after_ms) || {})[String(code)] || null;
}

/**
 * ``path``: the socket's path; ``closeCodes``: the server's (page_config); ``onFrame(data)``;
 * ``onState(state, info)`` with state "connecting", "reconnecting" ({at}: when, ms since the
 * epoch), "refused" ({code}) or "closed" ({code}: before reconnecting or refusing).
 */
export class LiveSocket {
  constructor({ path, closeCodes, onFrame, onState }) {
    this.path = path;
    this.closeCodes = closeCodes || {};
    this.onFrame = onFrame;
    this.onState = onState || (() => {});
    this.socket = null;
    this.attempt = 0;
    this.timer = null;
    this.stopped = false;
    window.addEventListener("online", () => {
      if (this.timer !== null) this.connect();
    });
    window.addEventListener("pagehide", () => {
      this.stopped = true;
      clearTimeout(this.timer);
      this.timer = null;
      if (this.socket) this.socket.close(1000);
    });
    window.addEventListener("pageshow", (event) => {
      if (!event.persisted || !this.stopped) return;
      this.stopped = false; // back from the cache: a fresh socket sends a fresh snapshot
      this.attempt = 0;
      this.connect();
    });
  }

  /** The connection works (its first frame came): the next drop starts the backoff afresh. */
  live() {
    this.attempt = 0;
  }

  get open() {
    return this.socket !== null && this.socket.readyState === WebSocket.OPEN;
  }

  send(frame) {
    this.socket.send(JSON.stringify(frame));
  }

  connect() {
    clearTimeout(this.timer);
    this.timer = null;
    this.onState("connecting", {});
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    let ws;
    try {
      ws = new WebSocket(`${scheme}://${location.host}${this.path}`);
    } catch (error) {
      this.scheduleReconnect();
      return;
    }
    this.socket = ws;
    ws.addEventListener("message", (event) => {
      if (ws === this.socket) this.onFrame(event.data);
    });
    ws.addEventListener("close", (event) => {
      if (ws === this.socket) this.closed(event.code);
    });
  }

  closed(code) {
    this.socket = null;
    if (this.stopped) return;
    this.onState("closed", { code });
    if (refusalKey(code, this.closeCodes)) {
      this.onState("refused", { code });
      const retry = retryAfterRefusal(code, this.closeCodes);
      if (retry !== null) this.timer = setTimeout(() => this.connect(), retry);
      return;
    }
    this.scheduleReconnect();
  }

  scheduleReconnect() {
    const delay = backoffDelay(this.attempt);
    this.attempt += 1;
    this.onState("reconnecting", { at: Date.now() + delay });
    this.timer = setTimeout(() => this.connect(), delay);
  }
}
