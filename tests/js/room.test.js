// Pure helpers of the page scripts (node --test, no dependencies; ES modules: package.json).
import assert from "node:assert/strict";
import test from "node:test";

import * as socket from "../../static/conferences/live-socket.js";
import * as state from "../../static/conferences/room-state.js";

const room = { ...state, ...socket };

test("seq: stale, next, gap", () => {
  assert.equal(room.classifySeq(5, 3), "stale");
  assert.equal(room.classifySeq(5, 5), "stale");
  assert.equal(room.classifySeq(5, 6), "next");
  assert.equal(room.classifySeq(5, 7), "gap");
  assert.equal(room.classifySeq(0, 1), "next");
});

test("durations", () => {
  assert.equal(room.formatDuration(0), "0:00");
  assert.equal(room.formatDuration(-5000), "0:00");
  assert.equal(room.formatDuration(59999), "0:59");
  assert.equal(room.formatDuration(61000), "1:01");
  assert.equal(room.formatDuration(3600000), "1:00:00");
  assert.equal(room.formatDuration((2 * 3600 + 5 * 60 + 9) * 1000), "2:05:09");
  assert.equal(room.formatDuration(Number.NaN), "0:00");
});

test("backoff: the first retry spread over 0.25-2.25 s, then growing to 30 s with jitter", () => {
  assert.equal(room.backoffDelay(0, () => 0), 250);
  assert.equal(room.backoffDelay(0, () => 0.375), 1000);
  assert.equal(room.backoffDelay(0, () => 1), 2250);
  assert.equal(room.backoffDelay(1, () => 1), 2000);
  assert.equal(room.backoffDelay(1, () => 0), 1000);
  assert.equal(room.backoffDelay(3, () => 1), 8000);
  assert.equal(room.backoffDelay(10, () => 1), 30000);
  assert.equal(room.backoffDelay(50, () => 0), 15000);
  for (let attempt = 0; attempt < 20; attempt += 1) {
    const delay = room.backoffDelay(attempt);
    assert.ok(delay >= 250 && delay <= 30000, `${attempt}: ${delay}`);
  }
  // A thousand pages dropped at once: their first retries spread out, none in the same 10 ms as 5 % of them.
  const firsts = Array.from({ length: 1000 }, () => room.backoffDelay(0));
  const buckets = new Map();
  for (const delay of firsts) buckets.set(Math.floor(delay / 10), (buckets.get(Math.floor(delay / 10)) || 0) + 1);
  assert.ok(Math.max(...buckets.values()) < 50, `at most ${Math.max(...buckets.values())} in one 10 ms`);
  assert.ok(Math.min(...firsts) >= 250 && Math.max(...firsts) <= 2250);
});

test("interpolate fills placeholders once and leaves hostile values alone", () => {
  assert.equal(room.interpolate("%(name)s joined", { name: "Bob" }), "Bob joined");
  assert.equal(room.interpolate("%(name)s joined", { name: "%(seconds)s" }), "%(seconds)s joined");
  assert.equal(room.interpolate("%(missing)s", {}), "%(missing)s");
  assert.equal(room.interpolate("in %(seconds)s s", { seconds: 0 }), "in 0 s");
});

test("refusal codes stop reconnecting, others do not", () => {
  // As conferences/protocol.py close_codes_config() sends them (tests/test_room_page.py checks that side).
  const codes = { refusals: [4401, 4403, 4404, 4429], retry_after_ms: { 4429: 30000 } };
  assert.equal(room.refusalKey(4401, codes), "refused_4401");
  assert.equal(room.refusalKey(4403, codes), "refused_4403");
  assert.equal(room.refusalKey(4404, codes), "refused_4404");
  assert.equal(room.refusalKey(4429, codes), "refused_4429");
  assert.equal(room.refusalKey(1006, codes), null);
  assert.equal(room.refusalKey(1000, codes), null);
  assert.equal(room.refusalKey(4011, codes), null); // a server error: reconnect
  assert.equal(room.refusalKey(4401, {}), null); // no table: reconnect rather than give up
  // Too many open pages passes when others close: retried; the other refusals are final.
  assert.equal(room.retryAfterRefusal(4429, codes), 30000);
  assert.equal(room.retryAfterRefusal(4403, codes), null);
});

test("request ids are unique, short strings", () => {
  const ids = new Set(Array.from({ length: 1000 }, () => room.newRequestId()));
  assert.equal(ids.size, 1000);
  for (const id of ids) assert.ok(typeof id === "string" && id.length <= 64);
});

test("roster order and snapshot diff", () => {
  const a = { id: 2, joined_at: "2025-01-01T10:00:00+00:00", muted: false };
  const b = { id: 1, joined_at: "2025-01-01T10:00:05+00:00", muted: false };
  const c = { id: 3, joined_at: "2025-01-01T10:00:00+00:00", muted: false };
  assert.deepEqual([b, c, a].sort(room.compareParticipants).map((p) => p.id), [2, 3, 1]);
  const before = new Map([a, b].map((p) => [p.id, p]));
  const diff = room.diffRoster(before, [{ ...a, muted: true }, c]);
  assert.deepEqual(diff.joined.map((p) => p.id), [3]);
  assert.deepEqual(diff.left.map((p) => p.id), [1]);
  assert.deepEqual(diff.muted.map((p) => p.id), [2]);
  assert.deepEqual(diff.unmuted, []);
});
