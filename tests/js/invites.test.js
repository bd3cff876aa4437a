// Invitations by number: the reducer's open list (static/conferences/room-state.js) and the form's
// number check (static/conferences/invites.js). What the list and the timeline show follows from these.
import assert from "node:assert/strict";
import test from "node:test";

import {
  inviteStatusKey,
  NUMBER_MAX_LENGTH,
  normalizeNumber,
  openInvites,
  parseNumber,
} from "../../static/conferences/invites.js";
import { INVITE_FINAL, initialState, reduce } from "../../static/conferences/room-state.js";
import { run } from "./reduce-run.js";

const at = (second) => `2025-01-01T10:00:${String(second).padStart(2, "0")}+00:00`;
const invite = (id, fields = {}) => ({
  id,
  number: `700${id}`,
  status: "dialing",
  participant: null,
  created_at: at(id),
  ...fields,
});
const updated = (seq, id, fields) => ({ type: "invite.updated", seq, invite: invite(id, fields) });

function snapshot(seq, invites, fields = {}) {
  return { type: "snapshot", seq, conference: { slug: "sales" }, participants: [], invites, can_moderate: true, ...fields };
}

const ids = (map) => [...map.keys()];
const said = (result) => result.entries.map((entry) => [entry.kind, entry.reason, entry.invite.id]);

// --- the reducer ---

test("the first snapshot lists the open invitations by id and says nothing", () => {
  const { state, results } = run([
    snapshot(4, [invite(2, { status: "ringing" }), invite(1), invite(3, { status: "busy" }), { number: "1" }, null]),
  ]);
  assert.deepEqual(ids(state.invites).sort(), [1, 2]); // a final one or one without an id is no open invitation
  assert.equal(state.invites.get(2).status, "ringing");
  assert.deepEqual(openInvites(state).map((i) => i.id), [1, 2]); // oldest first
  assert.deepEqual(results[0].entries, []);
  assert.equal(state.lastSeq, 4);
});

test("a snapshot without invites (an older server) leaves an empty list", () => {
  const { state } = run([{ type: "snapshot", seq: 1, participants: [] }]);
  assert.equal(state.invites.size, 0);
});

test("invite.updated: a new call is listed and logged, ringing replaces it quietly, an end removes and logs it", () => {
  const { state, results } = run([
    snapshot(1, []),
    updated(2, 7),
    updated(3, 7, { status: "ringing" }),
    updated(4, 7, { status: "busy" }),
  ]);
  assert.deepEqual(said(results[1]), [["invite", "started", 7]]);
  assert.equal(results[1].entries[0].when, at(7)); // since it was made
  assert.equal(results[1].state.invites.get(7).status, "dialing");
  assert.deepEqual(results[2].entries, []);
  assert.equal(results[2].state.invites.get(7).status, "ringing");
  assert.deepEqual(said(results[3]), [["invite", "busy", 7]]);
  assert.equal(results[3].entries[0].invite.number, "7007");
  assert.equal(state.invites.size, 0);
  assert.equal(state.lastSeq, 4);
  assert.ok(results.every((result) => !result.resync));
});

test("every final status takes the invitation off the list, the timeline saying which", () => {
  assert.deepEqual([...INVITE_FINAL], ["answered", "busy", "no_answer", "failed", "cancelled"]);
  INVITE_FINAL.forEach((status) => {
    const { state, results } = run([
      snapshot(1, [invite(1), invite(2, { status: "ringing" })]),
      updated(2, 1, { status, participant: status === "answered" ? 40 : null }),
    ]);
    assert.deepEqual(ids(state.invites), [2], status);
    assert.deepEqual(said(results[1]), [["invite", status, 1]], status);
    assert.equal(state.endedInvites.get(1), status);
  });
});

test("the same frames again change nothing and log nothing twice", () => {
  const first = run([snapshot(1, []), updated(2, 1), updated(3, 1, { status: "ringing" })]);
  // The same seq again: stale, the very same state.
  const stale = reduce(first.state, updated(3, 1, { status: "ringing" }));
  assert.equal(stale.state, first.state);
  // The same invitation under a later seq (whole state by id): the same list, nothing logged.
  const again = reduce(first.state, updated(4, 1, { status: "ringing" }));
  assert.deepEqual([...again.state.invites], [...first.state.invites]);
  assert.deepEqual(again.entries, []);
  // An end twice: logged once; a late "ringing" after it does not bring the call back.
  const { state, results } = run(
    [updated(5, 1, { status: "failed" }), updated(6, 1, { status: "failed" }), updated(7, 1, { status: "ringing" })],
    again.state
  );
  assert.deepEqual(results.map(said), [[["invite", "failed", 1]], [], []]);
  assert.equal(state.invites.size, 0);
  assert.equal(state.lastSeq, 7);
});

test("an unknown invitation: an end adds nothing to the list (it is logged); an open one is listed", () => {
  const { state, results } = run([
    snapshot(1, [invite(1)]),
    updated(2, 9, { status: "no_answer" }),
    updated(3, 8, { status: "ringing" }),
  ]);
  assert.deepEqual(ids(state.invites).sort(), [1, 8]);
  assert.deepEqual(said(results[1]), [["invite", "no_answer", 9]]);
  assert.deepEqual(said(results[2]), [["invite", "started", 8]]);
});

test("invite.updated counts in the seq like every room event: stale dropped, a gap resyncs", () => {
  const base = run([snapshot(10, [invite(1)])]).state;
  for (const seq of [5, 10]) assert.equal(reduce(base, updated(seq, 1, { status: "cancelled" })).state, base);
  const gap = reduce(base, updated(12, 1, { status: "cancelled" }));
  assert.equal(gap.resync, true);
  assert.equal(gap.state.lastSeq, 10); // kept until the snapshot
  assert.equal(gap.state.invites.size, 0); // applied anyway: the frame is whole state
  const next = reduce(base, updated(11, 2));
  assert.equal(next.resync, false);
  assert.equal(next.state.lastSeq, 11);
  // After it, the next room event is no gap.
  const after = reduce(next.state, { type: "participant.joined", seq: 12, participant: { id: 5, joined_at: at(5) } });
  assert.equal(after.resync, false);
});

test("invite.updated before the first snapshot, or without an invitation, changes no list", () => {
  assert.equal(reduce(initialState(), updated(1, 1)).state.invites.size, 0);
  const base = run([snapshot(1, [invite(1)])]).state;
  for (const invalid of [undefined, null, "x", { number: "7001", status: "busy" }]) {
    const result = reduce(base, { type: "invite.updated", seq: 2, invite: invalid });
    assert.equal(result.state.invites, base.invites);
    assert.deepEqual(result.entries, []);
    assert.equal(result.state.lastSeq, 2);
  }
});

test("a later snapshot logs calls made and ended meanwhile, and is the truth about which are open", () => {
  const { state, results } = run([
    snapshot(1, [invite(1), invite(2)]),
    updated(2, 3, { status: "busy" }),
    snapshot(9, [invite(2, { status: "ringing" }), invite(4), invite(3, { status: "dialing" })]),
  ]);
  const entries = said(results[2]).sort((a, b) => a[2] - b[2]);
  // 1 gone (how, the snapshot does not say); 3 and 4 new to this page's list.
  assert.deepEqual(entries, [["invite", null, 1], ["invite", "started", 3], ["invite", "started", 4]]);
  assert.deepEqual(ids(state.invites).sort(), [2, 3, 4]);
  assert.equal(state.invites.get(2).status, "ringing");
  assert.equal(state.endedInvites.has(3), false); // listed open by the snapshot: no longer taken as ended
  assert.deepEqual(said(reduce(state, updated(10, 3, { status: "cancelled" }))), [["invite", "cancelled", 3]]);
});

test("viewers keep the invitations too (the timeline is everyone's)", () => {
  const { state, results } = run([snapshot(1, [], { can_moderate: false }), updated(2, 1), updated(3, 1, { status: "answered", participant: 5 })]);
  assert.equal(state.invites.size, 0);
  assert.deepEqual(results.slice(1).map(said), [[["invite", "started", 1]], [["invite", "answered", 1]]]);
});

// --- the form's number ---

test("a pasted number loses its spaces, dashes, dots and parentheses", () => {
  assert.equal(normalizeNumber("+1 (555) 010-0000"), "+15550100000");
  assert.equal(normalizeNumber(" 7002 "), "7002");
  assert.equal(normalizeNumber("555.010.0000"), "5550100000");
  assert.equal(normalizeNumber("555\u2013010\u20110000"), "5550100000"); // en dash, non-breaking hyphen
  assert.equal(normalizeNumber("7\u00a0002\t"), "7002"); // no-break space, tab
  assert.equal(normalizeNumber(null), "");
  assert.equal(normalizeNumber(undefined), "");
  assert.equal(normalizeNumber(7002), "7002");
});

test("the page sends digits, *, # and + only, 1 to 32 of them; the server checks the rest", () => {
  assert.equal(parseNumber("+1 (555) 010-0000"), "+15550100000");
  assert.equal(parseNumber("7001"), "7001");
  assert.equal(parseNumber("*72#"), "*72#");
  assert.equal(parseNumber("1".repeat(NUMBER_MAX_LENGTH)), "1".repeat(32));
  assert.equal(parseNumber("1".repeat(33)), null);
  assert.equal(parseNumber("1 2 3 ".repeat(6)), "123".repeat(6)); // 36 typed, 18 sent
  for (const bad of ["", "   ", "-", "()", "abc", "7002a", "70,02", "7002;1", "PJSIP/7002", "<b>1</b>", "١٢٣", null]) {
    assert.equal(parseNumber(bad), null, String(bad));
  }
});

test("an open invitation's status has its words; one the page does not know has none", () => {
  const strings = { invite_dialing: "dialing…", invite_ringing: "ringing…" };
  assert.equal(inviteStatusKey("dialing", strings), "invite_dialing");
  assert.equal(inviteStatusKey("ringing", strings), "invite_ringing");
  assert.equal(inviteStatusKey("queued", strings), null);
  assert.equal(inviteStatusKey("__proto__", strings), null);
});
