// The live room page's state, as pure functions: (state, frame) -> the next state and what happened.
//
// No DOM, no socket, no clock of its own: tests/js/room-state.test.js runs every frame type and
// every gap and resync case in Node. static/conferences/room.js keeps the view, the controls and
// the socket, and applies what reduce() says (timeline entries, a resync to ask for, the link).

/** What to do with a room event given the last applied seq: "stale", "next" or "gap". */
export function classifySeq(lastSeq, seq) {
  if (seq <= lastSeq) return "stale";
  if (seq === lastSeq + 1) return "next";
  return "gap";
}

/** Roster order: by join time, then id. */
export function compareParticipants(a, b) {
  const ta = Date.parse(a.joined_at) || 0;
  const tb = Date.parse(b.joined_at) || 0;
  return ta - tb || a.id - b.id;
}

/** Raised hands in the order they went up (then by id). */
export function compareHands(a, b) {
  const at = Date.parse(a.hand_raised_at) - Date.parse(b.hand_raised_at);
  return at || a.id - b.id;
}

/** A raised hand's place in the order hands went up (1 = first); 0 for a hand that is down. */
export function handPosition(participants, p) {
  if (!p.hand_raised) return 0;
  let position = 1;
  for (const other of participants.values()) {
    if (other.id !== p.id && other.hand_raised && compareHands(other, p) < 0) position += 1;
  }
  return position;
}

/** What changed between the roster we had and a fresh snapshot (after a gap or reconnect). */
export function diffRoster(previous, participants) {
  const next = new Map(participants.map((p) => [p.id, p]));
  const joined = participants.filter((p) => !previous.has(p.id));
  const left = [...previous.values()].filter((p) => !next.has(p.id));
  const muted = [];
  const unmuted = [];
  const hands = [];
  for (const p of participants) {
    const before = previous.get(p.id);
    if (before && before.muted !== p.muted) (p.muted ? muted : unmuted).push(p);
    if (before && Boolean(before.hand_raised) !== Boolean(p.hand_raised)) hands.push(p);
  }
  return { joined, left, muted, unmuted, hands };
}

export function initialState() {
  return {
    participants: new Map(), // id -> participant, present ones only
    conference: null,
    canModerate: false,
    lastSeq: null, // null until the first snapshot
    snapshots: 0,
  };
}

const ROOM_EVENTS = new Set(["participant.joined", "participant.updated", "participant.left", "conference.updated"]);

function lockEntry(locked) {
  return { kind: locked ? "locked" : "unlocked" };
}

function participantEntries(before, p) {
  const entries = [];
  if (before.muted !== p.muted) entries.push({ kind: p.muted ? "muted" : "unmuted", participant: p });
  if (Boolean(before.hand_raised) !== Boolean(p.hand_raised)) {
    entries.push({ kind: p.hand_raised ? "hand" : "hand-lowered", participant: p });
  }
  return entries;
}

/**
 * The next state after ``frame``, with what the page should do about it:
 *
 * - ``entries``: timeline entries, oldest first: {kind, participant?, reason?, when?};
 *   kinds joined, left, muted, unmuted, hand, hand-lowered, locked, unlocked;
 * - ``resync``: a seq gap: ask for a snapshot (the event is applied anyway: events are whole state);
 * - ``resynced``: a snapshot came (any resync asked for is answered);
 * - ``rebuild``: the roster must be drawn afresh (the first snapshot, a role change);
 * - ``asterisk``: {connected, log} when the frame says how the link is.
 *
 * A frame that is not a room frame, or one that changes nothing (stale, before the first
 * snapshot), returns the same state object.
 */
export function reduce(state, frame) {
  const result = { state, entries: [], resync: false, resynced: false, rebuild: false, asterisk: null };
  if (!frame || typeof frame !== "object") return result;
  if (frame.type === "snapshot") return reduceSnapshot(state, frame, result);
  if (frame.type === "asterisk.status") {
    result.asterisk = { connected: Boolean(frame.connected), log: true };
    return result;
  }
  if (!ROOM_EVENTS.has(frame.type) || state.lastSeq === null) return result;
  let lastSeq = state.lastSeq;
  if (typeof frame.seq === "number") {
    const verdict = classifySeq(state.lastSeq, frame.seq);
    if (verdict === "stale") return result;
    if (verdict === "gap") result.resync = true;
    else lastSeq = frame.seq;
  }
  const next = { ...state, lastSeq };
  if (frame.type === "conference.updated") {
    const c = frame.conference;
    if (!c) return { ...result, state: next };
    if (state.conference && state.conference.locked !== c.locked) result.entries.push(lockEntry(c.locked));
    next.conference = c;
    return { ...result, state: next };
  }
  const p = frame.participant;
  if (!p || p.id === undefined) return { ...result, state: next };
  const before = state.participants.get(p.id);
  next.participants = new Map(state.participants);
  if (frame.type === "participant.left" || p.left_at) {
    if (before) {
      next.participants.delete(p.id);
      result.entries.push({ kind: "left", participant: p, reason: p.left_reason || null, when: p.left_at });
    }
    return { ...result, state: next };
  }
  next.participants.set(p.id, p);
  if (!before) {
    if (frame.type === "participant.joined") result.entries.push({ kind: "joined", participant: p, when: p.joined_at });
  } else {
    result.entries.push(...participantEntries(before, p));
  }
  return { ...result, state: next };
}

function reduceSnapshot(state, frame, result) {
  const list = Array.isArray(frame.participants) ? frame.participants : [];
  const first = state.snapshots === 0;
  if (!first) {
    const diff = diffRoster(state.participants, list);
    diff.joined.forEach((p) => result.entries.push({ kind: "joined", participant: p, when: p.joined_at }));
    diff.left.forEach((p) => result.entries.push({ kind: "left", participant: p, reason: null }));
    diff.muted.concat(diff.unmuted).forEach((p) => result.entries.push({ kind: p.muted ? "muted" : "unmuted", participant: p }));
    diff.hands.forEach((p) => result.entries.push({ kind: p.hand_raised ? "hand" : "hand-lowered", participant: p }));
    if (state.conference && frame.conference && state.conference.locked !== frame.conference.locked) {
      result.entries.push(lockEntry(frame.conference.locked));
    }
  }
  const canModerate = Boolean(frame.can_moderate);
  result.state = {
    ...state,
    participants: new Map(list.map((p) => [p.id, p])),
    conference: frame.conference || state.conference,
    lastSeq: typeof frame.seq === "number" ? frame.seq : state.lastSeq,
    canModerate,
    snapshots: state.snapshots + 1,
  };
  result.resynced = true;
  result.rebuild = first || canModerate !== state.canModerate;
  if (frame.asterisk) result.asterisk = { connected: Boolean(frame.asterisk.connected), log: !first };
  return result;
}

/** "m:ss" below an hour, "h:mm:ss" above; negative (clock skew) counts as zero. */
export function formatDuration(ms) {
  const total = Math.floor(Math.max(0, Number(ms) || 0) / 1000);
  const hours = Math.floor(total / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  const seconds = String(total % 60).padStart(2, "0");
  if (hours > 0) return `${hours}:${String(minutes).padStart(2, "0")}:${seconds}`;
  return `${minutes}:${seconds}`;
}

/** Fill "%(name)s" placeholders; values are inserted as is, once (no re-expansion). */
export function interpolate(template, values) {
  return String(template).replace(/%\((\w+)\)s/g, (match, key) =>
    Object.prototype.hasOwnProperty.call(values, key) ? String(values[key]) : match
  );
}

let requestCounter = 0;
/** A request id unique within this page (and most likely across pages). */
export function newRequestId() {
  requestCounter += 1;
  const random = Math.floor(Math.random() * 0xffffffff).toString(36);
  return `r${Date.now().toString(36)}-${requestCounter.toString(36)}-${random}`;
}
