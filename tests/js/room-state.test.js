// The room page's reducer (static/conferences/room-state.js) over every frame type and every
// gap and resync case: what the page shows follows from these.
import assert from "node:assert/strict";
import test from "node:test";

import { diffRoster, handPosition, initialState, reduce } from "../../static/conferences/room-state.js";
import { run } from "./reduce-run.js";

const at = (second) => `2025-01-01T10:00:${String(second).padStart(2, "0")}+00:00`;
const caller = (id, fields = {}) => ({ id, caller_name: `C${id}`, joined_at: at(id), muted: false, ...fields });
const room = (fields = {}) => ({ slug: "sales", name: "Sales", locked: false, ...fields });

function snapshot(seq, participants, fields = {}) {
  return { type: "snapshot", seq, conference: room(), participants, can_moderate: false, ...fields };
}

const kinds = (result) => result.entries.map((entry) => entry.kind);

test("the first snapshot sets the roster and says nothing; it rebuilds and answers a resync", () => {
  const { state, results } = run([snapshot(5, [caller(1), caller(2)], { asterisk: { connected: true } })]);
  assert.deepEqual([...state.participants.keys()], [1, 2]);
  assert.equal(state.lastSeq, 5);
  assert.equal(state.snapshots, 1);
  assert.deepEqual(kinds(results[0]), []);
  assert.equal(results[0].rebuild, true);
  assert.equal(results[0].resynced, true);
  assert.deepEqual(results[0].asterisk, { connected: true, log: false }); // not logged on the first
});

test("events before the first snapshot are ignored", () => {
  const { state, results } = run([{ type: "participant.joined", seq: 1, participant: caller(1) }]);
  assert.equal(state.participants.size, 0);
  assert.equal(state.lastSeq, null);
  assert.deepEqual(kinds(results[0]), []);
});

test("joined, updated (mute, hand), left: in order, each logged once", () => {
  const { state, results } = run([
    snapshot(1, [caller(1)]),
    { type: "participant.joined", seq: 2, participant: caller(2) },
    { type: "participant.updated", seq: 3, participant: caller(2, { muted: true, mute_source: "self" }) },
    { type: "participant.updated", seq: 4, participant: caller(2, { muted: true, hand_raised: true, hand_raised_at: at(30) }) },
    { type: "participant.updated", seq: 5, participant: caller(2, { muted: true, hand_raised: true, talking: true }) },
    { type: "participant.left", seq: 6, participant: caller(1, { left_at: at(40), left_reason: "kicked" }) },
  ]);
  assert.deepEqual(results.slice(1).map(kinds), [["joined"], ["muted"], ["hand"], [], ["left"]]);
  assert.equal(results[5].entries[0].reason, "kicked");
  assert.deepEqual([...state.participants.keys()], [2]);
  assert.equal(state.lastSeq, 6);
});

test("a participant with left_at in an update leaves; a leave of someone unknown changes nothing", () => {
  const { state, results } = run([
    snapshot(1, [caller(1)]),
    { type: "participant.updated", seq: 2, participant: caller(1, { left_at: at(9), left_reason: "hangup" }) },
    { type: "participant.left", seq: 3, participant: caller(7, { left_at: at(9), left_reason: "hangup" }) },
  ]);
  assert.equal(state.participants.size, 0);
  assert.deepEqual(results.slice(1).map(kinds), [["left"], []]);
});

test("stale events (seq not above the last) are dropped without a change", () => {
  const first = run([snapshot(10, [caller(1)])]).state;
  for (const seq of [3, 9, 10]) {
    const result = reduce(first, { type: "participant.joined", seq, participant: caller(2) });
    assert.equal(result.state, first);
    assert.equal(result.resync, false);
  }
});

test("a gap asks for a resync, applies the event anyway and keeps the last seq until the snapshot", () => {
  const { state, results } = run([
    snapshot(10, [caller(1)]),
    { type: "participant.joined", seq: 13, participant: caller(2) },
    { type: "participant.joined", seq: 14, participant: caller(3) },
  ]);
  assert.equal(results[1].resync, true);
  assert.equal(results[2].resync, true); // still behind: seq 11 and 12 never came
  assert.equal(state.lastSeq, 10);
  assert.deepEqual([...state.participants.keys()], [1, 2, 3]);
  // The snapshot asked for: the truth, the gap closed.
  const after = reduce(state, snapshot(14, [caller(2), caller(3)]));
  assert.equal(after.state.lastSeq, 14);
  assert.equal(after.resynced, true);
  assert.deepEqual(kinds(after), ["left"]); // 1 left during the gap
  assert.equal(reduce(after.state, { type: "participant.joined", seq: 15, participant: caller(4) }).resync, false);
});

test("a later snapshot logs what changed meanwhile: joins, leaves, mutes, hands, the lock", () => {
  const { results } = run([
    snapshot(1, [caller(1), caller(2, { muted: true })]),
    snapshot(9, [caller(2), caller(3), caller(1, { hand_raised: true, hand_raised_at: at(50) })], {
      conference: room({ locked: true }),
      asterisk: { connected: false },
    }),
  ]);
  assert.deepEqual(kinds(results[1]).sort(), ["hand", "joined", "locked", "unmuted"].sort());
  assert.deepEqual(results[1].asterisk, { connected: false, log: true });
  assert.equal(results[1].rebuild, false);
});

test("a role change in a snapshot rebuilds the roster (moderator controls come or go)", () => {
  const { results } = run([snapshot(1, []), snapshot(1, [], { can_moderate: true }), snapshot(1, [], { can_moderate: true })]);
  assert.deepEqual(results.map((result) => result.rebuild), [true, true, false]);
});

test("conference.updated: the lock is logged when it changes, the room's state replaced", () => {
  const { state, results } = run([
    snapshot(1, []),
    { type: "conference.updated", seq: 2, conference: room({ locked: true, participant_count: 0 }) },
    { type: "conference.updated", seq: 3, conference: room({ locked: true, name: "Sales (EU)" }) },
    { type: "conference.updated", seq: 4 }, // no conference: nothing but the seq
  ]);
  assert.deepEqual(results.slice(1).map(kinds), [["locked"], [], []]);
  assert.equal(state.conference.name, "Sales (EU)");
  assert.equal(state.lastSeq, 4);
});

test("asterisk.status is reported for the page to show and log, without touching the room", () => {
  const first = run([snapshot(1, [])]).state;
  const result = reduce(first, { type: "asterisk.status", connected: false });
  assert.equal(result.state, first);
  assert.deepEqual(result.asterisk, { connected: false, log: true });
});

test("hostile or unknown frames change nothing", () => {
  const first = run([snapshot(1, [caller(1)])]).state;
  for (const frame of [null, 7, "x", {}, { type: "reply", ok: true }, { type: "participant.joined", seq: 2 }]) {
    const result = reduce(first, frame);
    assert.deepEqual(kinds(result), []);
    assert.equal(result.resync, false);
  }
  assert.equal(reduce(first, { type: "snapshot", seq: 2, participants: "not a list" }).state.participants.size, 0);
});

test("raised hands keep the order they went up in", () => {
  const people = new Map(
    [
      caller(1, { hand_raised: true, hand_raised_at: at(30) }),
      caller(2, { hand_raised: true, hand_raised_at: at(10) }),
      caller(3),
      caller(4, { hand_raised: true, hand_raised_at: at(10) }), // same moment: by id
    ].map((p) => [p.id, p])
  );
  assert.deepEqual([1, 2, 3, 4].map((id) => handPosition(people, people.get(id))), [3, 1, 0, 2]);
});

// --- The lobby and the leader: waiting callers are kept apart from the present ones ---

const waiter = (id, fields = {}) => caller(id, { status: "waiting", waiting_for: "lobby", ...fields });
const ids = (map) => [...map.keys()];

test("a caller who arrives waiting goes to the lobby list, not the roster, and is logged as waiting", () => {
  const { state, results } = run([
    snapshot(1, [caller(1)]),
    { type: "participant.joined", seq: 2, participant: waiter(2) },
    { type: "participant.joined", seq: 3, participant: waiter(3, { waiting_for: "leader" }) },
  ]);
  assert.deepEqual(ids(state.participants), [1]);
  assert.deepEqual(ids(state.waiting), [2, 3]);
  assert.deepEqual(results.slice(1).map(kinds), [["waiting"], ["waiting"]]);
  assert.deepEqual(results.slice(1).map((r) => r.entries[0].reason), ["lobby", "leader"]);
  assert.equal(results[1].entries[0].when, at(2)); // waiting since the arrival
});

test("admitted: waiting -> present moves the caller to the roster with the admission as joined_at", () => {
  const { state, results } = run([
    snapshot(1, [waiter(2)]),
    { type: "participant.updated", seq: 2, participant: caller(2, { status: "present", waiting_for: null, joined_at: at(50) }) },
  ]);
  assert.deepEqual(kinds(results[1]), ["admitted"]);
  assert.equal(results[1].entries[0].when, at(50));
  assert.deepEqual(ids(state.participants), [2]);
  assert.equal(state.participants.get(2).joined_at, at(50));
  assert.equal(state.waiting.size, 0);
});

test("the leader leaves a wait room: present -> waiting for the leader leaves the roster", () => {
  const { state, results } = run([
    snapshot(1, [caller(1, { hand_raised: true, hand_raised_at: at(20) }), caller(2, { hand_raised: true, hand_raised_at: at(30) })]),
    { type: "participant.updated", seq: 2, participant: waiter(1, { waiting_for: "leader" }) },
  ]);
  assert.deepEqual(kinds(results[1]), ["waiting"]);
  assert.equal(results[1].entries[0].reason, "leader");
  assert.equal(results[1].entries[0].when, undefined); // now, not its old arrival
  assert.deepEqual(ids(state.participants), [2]);
  assert.deepEqual(ids(state.waiting), [1]);
  assert.equal(handPosition(state.participants, state.participants.get(2)), 1); // the waiting hand is not counted
});

test("a waiting caller's update: logged when it waits for something else, silent otherwise", () => {
  const { state, results } = run([
    snapshot(1, [waiter(1)]),
    { type: "participant.updated", seq: 2, participant: waiter(1, { moh: true }) },
    { type: "participant.updated", seq: 3, participant: waiter(1, { waiting_for: "leader" }) },
    { type: "participant.updated", seq: 4, participant: waiter(5) }, // unknown: listed, not logged
  ]);
  assert.deepEqual(results.slice(1).map(kinds), [[], ["waiting"], []]);
  assert.deepEqual(ids(state.waiting), [1, 5]);
  assert.equal(state.waiting.get(1).waiting_for, "leader");
  assert.equal(state.participants.size, 0);
});

test("leaves: denied and hung up while waiting, ended for the present and the waiting", () => {
  const left = (p, reason) => ({ ...p, left_at: at(59), left_reason: reason });
  const { state, results } = run([
    snapshot(1, [caller(1), waiter(2), waiter(3), waiter(4), waiter(5)]),
    { type: "participant.left", seq: 2, participant: left(waiter(2), "denied") },
    { type: "participant.left", seq: 3, participant: left(waiter(3), "hangup") },
    { type: "participant.left", seq: 4, participant: left(waiter(4), "lost") },
    { type: "participant.left", seq: 5, participant: left(caller(1), "ended") },
    { type: "participant.left", seq: 6, participant: left(waiter(5, { waiting_for: "leader" }), "ended") },
    { type: "participant.left", seq: 7, participant: left(waiter(9), "denied") }, // unknown
  ]);
  assert.deepEqual(results.slice(1).map(kinds), [["denied"], ["waiting-left"], ["waiting-left"], ["left"], ["left"], []]);
  assert.deepEqual(results.slice(1, 6).map((r) => r.entries[0].reason), [undefined, "hangup", "lost", "ended", "ended"]);
  assert.equal(results[1].entries[0].when, at(59));
  assert.equal(state.participants.size, 0);
  assert.equal(state.waiting.size, 0);
});

test("a snapshot lists waiting callers too: the first splits them, a later one logs what changed", () => {
  const first = run([snapshot(1, [caller(1), waiter(2), waiter(3, { waiting_for: "leader" })])]);
  assert.deepEqual(ids(first.state.participants), [1]);
  assert.deepEqual(ids(first.state.waiting), [2, 3]);
  assert.deepEqual(kinds(first.results[0]), []);
  const later = reduce(
    first.state,
    snapshot(9, [
      waiter(1, { waiting_for: "leader" }), // back to waiting: the leader left
      caller(2, { status: "present", joined_at: at(40) }), // admitted
      // 3 gone (denied or hung up: the snapshot does not say)
      waiter(4), // a new arrival
      caller(5, { status: "present" }), // joined
    ])
  );
  const entries = later.entries.map((entry) => [entry.kind, entry.participant.id]).sort((a, b) => a[1] - b[1]);
  assert.deepEqual(entries, [["waiting", 1], ["admitted", 2], ["waiting-left", 3], ["waiting", 4], ["joined", 5]]);
  const byId = new Map(later.entries.map((entry) => [entry.participant.id, entry]));
  assert.equal(byId.get(1).reason, "leader");
  assert.equal(byId.get(1).when, undefined);
  assert.equal(byId.get(4).when, at(4));
  assert.equal(byId.get(3).reason, null);
  assert.deepEqual(ids(later.state.participants), [2, 5]);
  assert.deepEqual(ids(later.state.waiting), [1, 4]);
});

test("snapshot diff: waiting callers never count as joins, leaves, mutes or hands", () => {
  const before = new Map([[1, caller(1)]]);
  const previousWaiting = new Map([[2, waiter(2)]]);
  const diff = diffRoster(before, [waiter(1, { waiting_for: "leader", muted: true }), waiter(2, { muted: true }), waiter(3)], previousWaiting);
  assert.deepEqual(diff.joined, []);
  assert.deepEqual(diff.left, []);
  assert.deepEqual(diff.muted, []);
  assert.deepEqual(diff.waiting.map((p) => p.id), [1, 3]);
  assert.deepEqual(diff.admitted, []);
  assert.deepEqual(diff.gone, []);
});

test("gaps and resyncs work the same with waiting callers", () => {
  const { state, results } = run([
    snapshot(10, [waiter(1)]),
    { type: "participant.joined", seq: 12, participant: waiter(2) },
    { type: "participant.updated", seq: 10, participant: caller(1, { status: "present" }) }, // stale
  ]);
  assert.equal(results[1].resync, true);
  assert.deepEqual(kinds(results[1]), ["waiting"]); // applied anyway
  assert.equal(results[2].state, results[1].state);
  assert.equal(state.lastSeq, 10);
  assert.deepEqual(ids(state.waiting), [1, 2]);
  const after = reduce(state, snapshot(12, [waiter(2), caller(1, { status: "present", joined_at: at(45) })]));
  assert.equal(after.resynced, true);
  assert.equal(after.state.lastSeq, 12);
  assert.deepEqual(kinds(after), ["admitted"]);
  assert.equal(reduce(after.state, { type: "participant.left", seq: 13, participant: waiter(2, { left_at: at(50) }) }).resync, false);
});

test("conference.updated: the lobby turned on or off is logged, like the lock", () => {
  const { state, results } = run([
    snapshot(1, [], { conference: room({ lobby: false, waiting_count: 0 }) }),
    { type: "conference.updated", seq: 2, conference: room({ lobby: true, waiting_count: 0 }) },
    { type: "conference.updated", seq: 3, conference: room({ lobby: true, waiting_count: 2 }) },
    { type: "conference.updated", seq: 4, conference: room({ lobby: false, locked: true, waiting_count: 2 }) },
  ]);
  assert.deepEqual(results.slice(1).map(kinds), [["lobby-on"], [], ["locked", "lobby-off"]]);
  assert.equal(state.conference.waiting_count, 2);
  const resynced = reduce(state, snapshot(5, [], { conference: room({ lobby: true }) }));
  assert.deepEqual(kinds(resynced).sort(), ["lobby-on", "unlocked"]);
});

test("recording: the badge's changes and a stored recording are timeline entries, and their seq counts", () => {
  let state = reduce(initialState(), {
    type: "snapshot",
    seq: 5,
    conference: { slug: "r", recording: false },
    participants: [],
    can_moderate: true,
  }).state;
  let result = reduce(state, { type: "conference.updated", seq: 6, conference: { slug: "r", recording: true } });
  assert.deepEqual(result.entries.map((e) => e.kind), ["recording-on"]);
  state = result.state;
  result = reduce(state, { type: "recording.finished", seq: 7, recording: { id: 3, download_url: null } });
  assert.deepEqual(result.entries.map((e) => e.kind), ["recording-stored"]);
  assert.equal(result.state.lastSeq, 7);
  assert.equal(result.resync, false);
  result = reduce(result.state, { type: "participant.joined", seq: 8, participant: { id: 1, joined_at: "x" } });
  assert.equal(result.resync, false); // no gap after it
});
