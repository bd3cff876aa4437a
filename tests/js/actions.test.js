// No action name is typed under static/: every action a page sends comes from the server
// (config.actions, built from conferences.moderation.ACTIONS in conferences/views.py), so a
// renamed or removed action cannot linger in a script. tests/test_room_page.py checks the other
// half: every config.actions key a script reads is one the server gives.
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import test from "node:test";

const dir = new URL("../../static/", import.meta.url);

function scripts(url) {
  return readdirSync(url, { withFileTypes: true }).flatMap((entry) => {
    const child = new URL(entry.name + (entry.isDirectory() ? "/" : ""), url);
    if (entry.isDirectory()) return scripts(child);
    return entry.name.endsWith(".js") ? [[child.pathname, readFileSync(child, "utf8")]] : [];
  });
}

// An action spelled out: a frame's action, a button's data-action, or a comparison with one.
const LITERAL = [
  /\baction\s*:\s*["'`]/, // {action: "mute"}
  /\.action\s*=\s*["'`]/, // button.dataset.action = "mute"
  /\.action\s*[!=]==?\s*["'`]/, // dataset.action === "mute"
  /["'`]\s*[!=]==?\s*(?:\w+\.)*action\b/, // "mute" === action
  /\baction\s*[!=]==?\s*["'`]/, // action === "kick"
  /data-action\s*=\s*["'`]?\w/, // markup with data-action="lock"
  /setAttribute\(\s*["'`]data-action["'`]\s*,\s*["'`]/,
];

test("the page scripts exist and none spells out an action name", () => {
  const found = scripts(dir);
  assert.ok(found.some(([path]) => path.endsWith("/controls.js")), "controls.js is missing");
  for (const [path, text] of found) {
    text.split("\n").forEach((line, index) => {
      for (const pattern of LITERAL) assert.doesNotMatch(line, pattern, `${path}:${index + 1}: ${line.trim()}`);
    });
  }
});

test("the patterns catch what they are for", () => {
  const caught = (line) => LITERAL.some((pattern) => pattern.test(line));
  for (const line of [
    'send({ action: "resync", request_id: id });',
    "button.dataset.action = 'kick';",
    'if (action === "mute") go();',
    'if (button.dataset.action === "lock") go();',
    'if ("unlock" === button.dataset.action) go();',
    'row.innerHTML = "<button data-action=mute>";',
  ]) {
    assert.ok(caught(line), line);
  }
  for (const line of ["send({ action: actions.RESYNC, request_id: id });", 'const { action, control } = button.dataset;']) {
    assert.ok(!caught(line), line);
  }
});
