// The live room page's state, as pure functions: (state, frame) -> the next state and what happened.
//
// No DOM, no socket, no clock of its own: tests/js/room-state.test.js runs every frame type and
// every gap and resync case in Node. static/conferences/room.js applies what reduce() says
// (timeline entries, a resync to ask for, the link); roster.js and controls.js draw the state.
//
// A participant is present (in the room's bridge) or waiting (in the lobby, or for the leader):
// the state keeps the two apart, ``participants`` and ``waiting``, so nothing that means "present"
// (the roster, the count, hands, mute and kick targets) counts a caller who is not in yet.
//
// Invitations by number: ``invites`` holds the open ones (dialing or ringing) by id, from the
// snapshot and invite.updated; one that ends (answered, busy, no answer, failed, cancelled) leaves
// it and is remembered in ``endedInvites``, so a repeated or late frame about it changes nothing.

/** What to do with a room event given the last applied seq: "stale", "next" or "gap". */
export function classifySeq(lastSeq, seq) {
  if (seq <= lastSeq) return "stale";
  if (seq === lastSeq + 1) return "next";
  return "gap";
}

/** A waiting caller (in the lobby or waiting for the leader); a frame without a status is present. */
export function isWaiting(p) {
  return p.status === "waiting";
}

/** What a waiting caller waits for: "leader", else "lobby" (to be admitted). */
export function waitingFor(p) {
  return p.waiting_for === "leader" ? "leader" : "lobby";
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

/**
 * What changed between the room we had and a fresh snapshot (after a gap or reconnect).
 * ``previous``: the present callers, ``previousWaiting`` the waiting ones; ``participants``: the
 * snapshot's list, both kinds. ``waiting``: callers who wait now and did not (or wait for something
 * else); ``admitted``: waiting ones now present; ``gone``: waiting ones no longer listed.
 */
export function diffRoster(previous, participants, previousWaiting = new Map()) {
  const next = new Map(participants.map((p) => [p.id, p]));
  const present = participants.filter((p) => !isWaiting(p));
  const joined = present.filter((p) => !previous.has(p.id) && !previousWaiting.has(p.id));
  const admitted = present.filter((p) => previousWaiting.has(p.id));
  const left = [...previous.values()].filter((p) => !next.has(p.id));
  const gone = [...previousWaiting.values()].filter((p) => !next.has(p.id));
  const waiting = participants.filter((p) => {
    if (!isWaiting(p)) return false;
    const before = previousWaiting.get(p.id);
    return !before || waitingFor(before) !== waitingFor(p);
  });
  const muted = [];
  const unmuted = [];
  const hands = [];
  for (const p of present) {
    const before = previous.get(p.id);
    if (before && before.muted !== p.muted) (p.muted ? muted : unmuted).push(p);
    if (before && Boolean(before.hand_raised) !== Boolean(p.hand_raised)) hands.push(p);
  }
  return { joined, left, muted, unmuted, hands, waiting, admitted, gone };
}

/** An invitation's final statuses: it leaves the list, the timeline says how (dialing, ringing: open). */
export const INVITE_FINAL = Object.freeze(["answered", "busy", "no_answer", "failed", "cancelled"]);

/** An invitation that is over; any status the page does not know counts as open (not over yet). */
export function isFinalInvite(invite) {
  return INVITE_FINAL.includes(invite.status);
}

/** The invitations' order: by when they were made, then id. */
export function compareInvites(a, b) {
  const ta = Date.parse(a.created_at) || 0;
  const tb = Date.parse(b.created_at) || 0;
  return ta - tb || a.id - b.id;
}

// Ended invitations remembered (so a late frame about one changes nothing): the most recent ones.
const ENDED_INVITES_KEPT = 200;

export function initialState() {
  return {
    participants: new Map(), // id -> participant, present ones only
    waiting: new Map(), // id -> participant, waiting ones (in the lobby or for the leader)
    invites: new Map(), // id -> invitation, open ones only (dialing, ringing)
    endedInvites: new Map(), // id -> final status, of the invitations that ended while this page watched
    conference: null,
    canModerate: false,
    lastSeq: null, // null until the first snapshot
    snapshots: 0,
  };
}

const ROOM_EVENTS = new Set([
  "participant.joined",
  "participant.updated",
  "participant.left",
  "conference.updated",
  "recording.finished",
  "invite.updated",
]);

function conferenceEntries(before, after) {
  const entries = [];
  if (!before || !after) return entries;
  if (before.locked !== after.locked) entries.push({ kind: after.locked ? "locked" : "unlocked" });
  if (Boolean(before.lobby) !== Boolean(after.lobby)) entries.push({ kind: after.lobby ? "lobby-on" : "lobby-off" });
  if (Boolean(before.recording) !== Boolean(after.recording)) {
    entries.push({ kind: after.recording ? "recording-on" : "recording-off" });
  }
  return entries;
}

/** A timeline entry about an invitation: ``reason`` "started", a final status, or null (gone, how unknown). */
function inviteEntry(invite, reason, when) {
  return { kind: "invite", invite, reason, when };
}

/** The state after one invitation's frame (whole state: the same frame twice changes nothing more). */
function reduceInvite(state, next, invite, result) {
  if (state.endedInvites.has(invite.id)) return; // over already: a late or repeated frame
  next.invites = new Map(state.invites);
  next.invites.delete(invite.id);
  if (isFinalInvite(invite)) {
    next.endedInvites = rememberEnded(state.endedInvites, invite);
    result.entries.push(inviteEntry(invite, invite.status));
    return;
  }
  if (!state.invites.has(invite.id)) result.entries.push(inviteEntry(invite, "started", invite.created_at));
  next.invites.set(invite.id, invite);
}

function rememberEnded(ended, invite) {
  const next = new Map(ended);
  next.delete(invite.id);
  next.set(invite.id, invite.status);
  while (next.size > ENDED_INVITES_KEPT) next.delete(next.keys().next().value);
  return next;
}

function validInvite(invite) {
  return Boolean(invite) && typeof invite === "object" && invite.id !== undefined && invite.id !== null;
}

function waitingEntry(p, when) {
  return { kind: "waiting", participant: p, reason: waitingFor(p), when };
}

/** A waiting caller's leave: turned away, the room ended, or gone by itself (hung up, lost). */
function waitingLeaveEntry(p, reason) {
  if (reason === "denied") return { kind: "denied", participant: p, when: p.left_at };
  if (reason === "ended") return { kind: "left", participant: p, reason, when: p.left_at };
  return { kind: "waiting-left", participant: p, reason: reason || null, when: p.left_at };
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
 * - ``entries``: timeline entries, oldest first: {kind, participant?, invite?, reason?, when?};
 *   kinds joined, left (reason: hangup, kicked, lost, ended, null), muted, unmuted, hand,
 *   hand-lowered, locked, unlocked, lobby-on, lobby-off, waiting (reason: lobby or leader),
 *   admitted, denied, waiting-left (a waiting caller gone by itself; reason hangup, lost, null),
 *   invite (with ``invite``; reason started, answered, busy, no_answer, failed, cancelled, or null:
 *   gone from a later snapshot, how it ended unknown);
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
  if (frame.type === "invite.updated") {
    if (validInvite(frame.invite)) reduceInvite(state, next, frame.invite, result);
    return { ...result, state: next };
  }
  if (frame.type === "recording.finished") {
    result.entries.push({ kind: "recording-stored", recording: frame.recording || null });
    return { ...result, state: next };
  }
  if (frame.type === "conference.updated") {
    const c = frame.conference;
    if (!c) return { ...result, state: next };
    result.entries.push(...conferenceEntries(state.conference, c));
    next.conference = c;
    return { ...result, state: next };
  }
  const p = frame.participant;
  if (!p || p.id === undefined) return { ...result, state: next };
  const present = state.participants.get(p.id);
  const waiting = state.waiting.get(p.id);
  next.participants = new Map(state.participants);
  next.waiting = new Map(state.waiting);
  next.participants.delete(p.id);
  next.waiting.delete(p.id);
  if (frame.type === "participant.left" || p.left_at) {
    const reason = p.left_reason || null;
    if (present) result.entries.push({ kind: "left", participant: p, reason, when: p.left_at });
    else if (waiting) result.entries.push(waitingLeaveEntry(p, reason));
    return { ...result, state: next };
  }
  if (isWaiting(p)) {
    next.waiting.set(p.id, p);
    if (present) result.entries.push(waitingEntry(p)); // back to waiting: the leader left
    else if (waiting && waitingFor(waiting) !== waitingFor(p)) result.entries.push(waitingEntry(p));
    else if (!waiting && frame.type === "participant.joined") result.entries.push(waitingEntry(p, p.joined_at));
    return { ...result, state: next };
  }
  next.participants.set(p.id, p);
  if (waiting) result.entries.push({ kind: "admitted", participant: p, when: p.joined_at });
  else if (present) result.entries.push(...participantEntries(present, p));
  else if (frame.type === "participant.joined") result.entries.push({ kind: "joined", participant: p, when: p.joined_at });
  return { ...result, state: next };
}

function reduceSnapshot(state, frame, result) {
  const list = Array.isArray(frame.participants) ? frame.participants.filter((p) => p && p.id !== undefined) : [];
  const first = state.snapshots === 0;
  if (!first) {
    const diff = diffRoster(state.participants, list, state.waiting);
    const entry = (kind, p, fields) => result.entries.push({ kind, participant: p, ...fields });
    diff.gone.forEach((p) => entry("waiting-left", p, { reason: null }));
    diff.admitted.forEach((p) => entry("admitted", p, { when: p.joined_at }));
    diff.joined.forEach((p) => entry("joined", p, { when: p.joined_at }));
    diff.left.forEach((p) => entry("left", p, { reason: null }));
    // Waiting anew: since its arrival; waiting again (the leader left) or for something else: now.
    diff.waiting.forEach((p) => result.entries.push(waitingEntry(p, known(state, p) ? undefined : p.joined_at)));
    diff.muted.concat(diff.unmuted).forEach((p) => entry(p.muted ? "muted" : "unmuted", p));
    diff.hands.forEach((p) => entry(p.hand_raised ? "hand" : "hand-lowered", p));
    result.entries.push(...conferenceEntries(state.conference, frame.conference));
  }
  const invites = snapshotInvites(frame);
  if (!first) result.entries.push(...diffInvites(state, invites));
  const endedInvites = new Map([...state.endedInvites].filter(([id]) => !invites.has(id))); // the snapshot is the truth
  const canModerate = Boolean(frame.can_moderate);
  result.state = {
    ...state,
    participants: new Map(list.filter((p) => !isWaiting(p)).map((p) => [p.id, p])),
    waiting: new Map(list.filter(isWaiting).map((p) => [p.id, p])),
    invites,
    endedInvites,
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

/** A snapshot's open invitations by id (it lists only open ones; anything else is left out). */
function snapshotInvites(frame) {
  const list = Array.isArray(frame.invites) ? frame.invites : [];
  return new Map(list.filter((invite) => validInvite(invite) && !isFinalInvite(invite)).map((i) => [i.id, i]));
}

/** Invitations made and ended while the page was not listening (a gap, a reconnect). */
function diffInvites(state, invites) {
  const entries = [];
  for (const [id, invite] of state.invites) if (!invites.has(id)) entries.push(inviteEntry(invite, null));
  for (const [id, invite] of invites) {
    if (!state.invites.has(id)) entries.push(inviteEntry(invite, "started", invite.created_at));
  }
  return entries;
}

function known(state, p) {
  return state.participants.has(p.id) || state.waiting.has(p.id);
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
