// The live room page: one WebSocket to /ws/conferences/<slug>/, a roster kept
// from a snapshot plus seq-numbered events, moderator controls, a timeline.
//
// Caller names and numbers come from the phone network and are hostile: they
// only ever reach the page through textContent or setAttribute, never HTML.
// Plain ES modules, no build step, no dependencies, no inline script (settings,
// close codes and translated strings come from the json_script element
// #room-config). The state is room-state.js's reducer (tested in Node,
// tests/js/); the socket is live-socket.js's, shared with the room list.
import { element } from "./dom.js";
import { LiveSocket, refusalKey } from "./live-socket.js";
import {
  compareParticipants,
  formatDuration,
  handPosition,
  initialState,
  interpolate,
  newRequestId,
  reduce,
} from "./room-state.js";

// --- The page -----------------------------------------------------------------------

const REQUEST_TIMEOUT_MS = 15000; // the server answers within its own 12 s
const RESYNC_RETRY_MS = 5000;
const ANNOUNCEMENTS_KEPT = 3;

function start() {
  const configElement = document.getElementById("room-config");
  const root = document.querySelector('[data-role="room"]');
  if (!configElement || !root) return;
  const config = JSON.parse(configElement.textContent);
  const strings = config.strings || {};
  const closeCodes = config.close_codes || {};
  const timelineLimit = config.timeline_limit || 100;

  const $ = (role) => root.querySelector(`[data-role="${role}"]`);
  const ui = {
    name: $("room-name"),
    number: $("room-number"),
    count: $("count"),
    locked: $("locked"),
    asterisk: $("asterisk-status"),
    asteriskText: $("asterisk-status-text"),
    socket: $("socket-status"),
    socketText: $("socket-status-text"),
    message: $("message"),
    controls: $("room-controls"),
    roster: $("roster"),
    body: $("roster-body"),
    heading: document.getElementById("roster-heading"),
    timeline: $("timeline"),
    timelineEmpty: $("timeline-empty"),
    announcer: $("announcer"),
  };
  const headerRow = ui.roster.tHead.rows[0];
  const columnLabels = [...headerRow.cells].map((cell) => cell.textContent.trim());

  const timeOptions = { hour: "2-digit", minute: "2-digit", second: "2-digit" };
  let timeFormat;
  try {
    timeFormat = new Intl.DateTimeFormat(document.documentElement.lang || undefined, timeOptions);
  } catch (error) {
    timeFormat = new Intl.DateTimeFormat(undefined, timeOptions); // an invalid lang attribute
  }

  const t = (key, values) => interpolate(strings[key] || key, values || {});
  const nameOf = (p) => p.caller_name || p.caller_number || strings.unknown || "unknown";
  const formatTime = (value) => {
    const date = value instanceof Date ? value : new Date(value);
    return Number.isNaN(date.getTime()) ? "" : timeFormat.format(date);
  };
  const setText = (node, text) => {
    if (node.textContent !== text) node.textContent = text;
  };

  // --- state: the room's (room-state.js reduce), and the page's own ---
  let state = {
    ...initialState(),
    asteriskConnected: ui.asterisk.dataset.state === "connected",
    socketState: "connecting",
    closeCode: null,
  };
  const rows = new Map(); // participant id -> row parts
  const pending = new Map(); // request id -> {key, timer}
  const pendingKeys = new Map(); // control key -> request id
  let rowsHaveActions = false;
  let reconnectAt = 0;
  let resyncRequest = null;
  let resyncTimer = null;
  let needResync = false;
  let kickDialog = null;

  // --- messages, announcements, timeline ---

  function showMessage(text, kind) {
    ui.message.dataset.kind = kind || "info";
    ui.message.replaceChildren(document.createTextNode(text));
  }

  function announce(text) {
    ui.announcer.append(element("p", "", text));
    while (ui.announcer.childElementCount > ANNOUNCEMENTS_KEPT) ui.announcer.firstElementChild.remove();
  }

  function addTimeline(kind, text, when) {
    const date = when ? new Date(when) : new Date();
    const at = Number.isNaN(date.getTime()) ? new Date() : date;
    const item = element("li", "timeline-item");
    item.dataset.kind = kind;
    const time = element("time", "timeline-time", formatTime(at));
    time.dateTime = at.toISOString();
    item.append(time, " ", element("span", "timeline-text", text));
    ui.timeline.prepend(item);
    while (ui.timeline.childElementCount > timelineLimit) ui.timeline.lastElementChild.remove();
    ui.timelineEmpty.hidden = true;
  }

  function logJoin(p, when) {
    const text = t("event_joined", { name: nameOf(p) });
    addTimeline("joined", text, when);
    announce(text);
  }

  function logLeave(p, reason, when) {
    const key = reason ? `event_left_${reason}` : "event_left";
    const text = t(strings[key] ? key : "event_left", { name: nameOf(p) });
    addTimeline(reason ? `left-${reason}` : "left", text, when);
    announce(text);
  }

  function logMute(p) {
    addTimeline(p.muted ? "muted" : "unmuted", t(p.muted ? "event_muted" : "event_unmuted", { name: nameOf(p) }));
  }

  function logHand(p) {
    const raised = Boolean(p.hand_raised);
    const text = t(raised ? "event_hand_raised" : "event_hand_lowered", { name: nameOf(p) });
    addTimeline(raised ? "hand" : "hand-lowered", text);
  }

  function logLock(locked) {
    addTimeline(locked ? "locked" : "unlocked", t(locked ? "event_locked" : "event_unlocked"));
  }

  // --- header and status bar ---

  function renderHeader() {
    const c = state.conference;
    if (c) {
      setText(ui.name, c.name);
      setText(ui.number, t("room_number", { number: c.number }));
      ui.locked.hidden = !c.locked;
      if (document.title !== c.name) document.title = c.name;
    }
    setText(ui.count, String(state.participants.size));
  }

  function setAsterisk(connected, log) {
    const changed = connected !== state.asteriskConnected;
    state.asteriskConnected = connected;
    ui.asterisk.dataset.state = connected ? "connected" : "down";
    setText(ui.asteriskText, t(connected ? "asterisk_connected" : "asterisk_down"));
    if (changed && log) addTimeline(connected ? "link-up" : "link-down", t(connected ? "event_link_up" : "event_link_down"));
  }

  function renderSocket() {
    ui.socket.hidden = false;
    ui.socket.dataset.state = state.socketState;
    root.dataset.live = String(state.socketState === "live");
    if (state.closeCode !== null) ui.socket.dataset.closeCode = String(state.closeCode);
    else delete ui.socket.dataset.closeCode;
    let text;
    if (state.socketState === "live") text = t("socket_live");
    else if (state.socketState === "reconnecting") {
      text = t("socket_reconnecting", { seconds: Math.max(0, Math.ceil((reconnectAt - Date.now()) / 1000)) });
    } else if (state.socketState === "refused") {
      text = t("socket_refused", { reason: t(refusalKey(state.closeCode, closeCodes)) });
    } else text = t("socket_connecting");
    setText(ui.socketText, text);
  }

  // --- controls ---

  function isPending(key) {
    return pendingKeys.has(key);
  }

  function markPending(button, key) {
    if (isPending(key)) {
      button.setAttribute("aria-disabled", "true");
      button.dataset.pending = "true";
    } else {
      button.removeAttribute("aria-disabled");
      delete button.dataset.pending;
    }
  }

  function roomButton(action) {
    return ui.controls.querySelector(`button[data-action="${action}"]`);
  }

  function renderControls() {
    if (!state.canModerate) {
      ui.controls.replaceChildren();
      ui.controls.hidden = true;
      return;
    }
    for (const action of ["mute_all", "unmute_all"]) {
      let button = roomButton(action);
      if (!button) {
        button = element("button", "", t(action));
        button.type = "button";
        button.dataset.action = action;
        ui.controls.append(button);
      }
      markPending(button, `room:${action}`);
    }
    let lock = roomButton("lock") || roomButton("unlock");
    if (!lock) {
      lock = element("button");
      lock.type = "button";
      ui.controls.append(lock);
    }
    const locked = Boolean(state.conference && state.conference.locked);
    lock.dataset.action = locked ? "unlock" : "lock";
    setText(lock, t(locked ? "unlock" : "lock"));
    markPending(lock, "room:lock");
    ui.controls.hidden = false;
  }

  // --- roster ---

  function setActionsColumn(present) {
    let th = headerRow.querySelector('[data-role="actions-header"]');
    if (present && !th) {
      th = element("th", "", t("actions"));
      th.scope = "col";
      th.setAttribute("role", "columnheader"); // kept when narrow screens show rows as cards
      th.dataset.role = "actions-header";
      headerRow.append(th);
    } else if (!present && th) th.remove();
  }

  function buildRow(p) {
    const tr = element("tr");
    tr.setAttribute("role", "row");
    tr.dataset.participantId = String(p.id);
    const cell = (className, column) => {
      const td = element("td", className);
      td.setAttribute("role", "cell");
      if (columnLabels[column]) td.dataset.label = columnLabels[column];
      tr.append(td);
      return td;
    };
    const parts = { tr, participant: null, badgeKey: null };
    parts.name = element("span", "caller-name");
    cell("cell-name", 0).append(parts.name);
    parts.number = cell("cell-number", 1);
    parts.time = element("time");
    cell("cell-joined", 2).append(parts.time);
    parts.duration = cell("cell-duration", 3);
    const stateCell = cell("cell-state", 4);
    parts.talking = element("span", "talking-indicator");
    parts.talking.dataset.role = "talking";
    const icon = element("span", "talking-icon");
    icon.setAttribute("aria-hidden", "true");
    icon.append(element("span"), element("span"), element("span"));
    parts.talking.append(icon, element("span", "talking-text", t("talking")));
    parts.badges = element("span", "badges");
    stateCell.append(parts.talking, parts.badges);
    if (rowsHaveActions) {
      const actions = element("td", "cell-actions");
      actions.setAttribute("role", "cell");
      actions.dataset.label = t("actions");
      parts.mute = element("button", "row-button");
      parts.mute.type = "button";
      parts.mute.dataset.control = "mute";
      parts.kick = element("button", "row-button danger", t("kick"));
      parts.kick.type = "button";
      parts.kick.dataset.action = "kick";
      parts.kick.dataset.control = "kick";
      parts.lowerHand = element("button", "row-button", t("lower_hand"));
      parts.lowerHand.type = "button";
      parts.lowerHand.dataset.action = "lower_hand";
      parts.lowerHand.dataset.control = "lower_hand";
      actions.append(parts.mute, " ", parts.kick, " ", parts.lowerHand);
      tr.append(actions);
    }
    return parts;
  }

  function updateRow(parts, p) {
    parts.participant = p;
    const tr = parts.tr;
    tr.dataset.talking = String(Boolean(p.talking));
    tr.dataset.muted = String(Boolean(p.muted));
    tr.dataset.participantRole = p.role === "admin" ? "admin" : "participant";
    setText(parts.name, p.caller_name || strings.unknown || "unknown");
    parts.name.classList.toggle("is-unknown", !p.caller_name);
    setText(parts.number, p.caller_number || "");
    if (parts.time.dateTime !== p.joined_at) {
      parts.time.dateTime = p.joined_at || "";
      parts.time.textContent = formatTime(p.joined_at);
    }
    setText(parts.duration, formatDuration(Date.now() - Date.parse(p.joined_at)));
    parts.talking.hidden = !p.talking;
    tr.dataset.handRaised = String(Boolean(p.hand_raised));
    const hand = handPosition(state.participants, p);
    const badgeKey = `${p.role === "admin"}|${Boolean(p.muted)}|${p.mute_source}|${Boolean(p.moh)}|${hand}`;
    if (badgeKey !== parts.badgeKey) {
      parts.badgeKey = badgeKey;
      const badges = [];
      const badge = (name, text) => {
        const node = element("span", `badge badge-${name}`, text);
        node.dataset.badge = name;
        badges.push(node);
      };
      if (hand) badge("hand", t("hand_raised", { position: hand }));
      if (p.role === "admin") badge("admin", t("admin"));
      if (p.muted) badge("muted", t(p.mute_source === "self" ? "muted_self" : "muted_moderator"));
      if (p.moh) badge("moh", t("moh"));
      parts.badges.replaceChildren(...badges);
    }
    if (parts.mute) {
      const action = p.muted ? "unmute" : "mute";
      parts.mute.dataset.action = action;
      setText(parts.mute, t(action));
      parts.mute.setAttribute("aria-label", t(`${action}_label`, { name: nameOf(p) }));
      parts.kick.setAttribute("aria-label", t("kick_label", { name: nameOf(p) }));
      parts.lowerHand.hidden = !p.hand_raised;
      parts.lowerHand.setAttribute("aria-label", t("lower_hand_label", { name: nameOf(p) }));
      markPending(parts.mute, `p:${p.id}:mute`);
      markPending(parts.kick, `p:${p.id}:kick`);
      markPending(parts.lowerHand, `p:${p.id}:lower_hand`);
    }
  }

  function removeRow(id) {
    const parts = rows.get(id);
    rows.delete(id);
    if (!parts) return;
    const active = document.activeElement;
    if (active && parts.tr.contains(active)) {
      // Keep keyboard users in the roster: same control on the next (or previous) row.
      const control = active.dataset ? active.dataset.control : null;
      const isRow = (node) => node && node.dataset && node.dataset.participantId;
      const neighbour = [parts.tr.nextElementSibling, parts.tr.previousElementSibling].find(isRow);
      parts.tr.remove();
      const target = neighbour && control ? neighbour.querySelector(`[data-control="${control}"]`) : null;
      (target || ui.heading).focus();
      return;
    }
    parts.tr.remove();
  }

  function renderRoster(rebuild) {
    const actions = state.canModerate;
    if (rebuild || actions !== rowsHaveActions) {
      rowsHaveActions = actions;
      setActionsColumn(actions);
      rows.clear();
      ui.body.replaceChildren();
    }
    for (const id of [...rows.keys()]) if (!state.participants.has(id)) removeRow(id);
    const sorted = [...state.participants.values()].sort(compareParticipants);
    const empty = ui.body.querySelector('[data-role="roster-empty"]');
    if (sorted.length === 0) {
      if (!empty) {
        const tr = element("tr");
        tr.setAttribute("role", "row");
        tr.dataset.role = "roster-empty";
        const td = element("td", "roster-empty", t("nobody"));
        td.setAttribute("role", "cell");
        tr.append(td);
        ui.body.append(tr);
      }
      ui.body.querySelector('[data-role="roster-empty"] td').colSpan = headerRow.cells.length;
      return;
    }
    if (empty) empty.remove();
    sorted.forEach((p, index) => {
      let parts = rows.get(p.id);
      if (!parts) {
        parts = buildRow(p);
        rows.set(p.id, parts);
      }
      updateRow(parts, p);
      // Move a row only when it is out of place, so focus inside it survives.
      const here = ui.body.children[index];
      if (here !== parts.tr) ui.body.insertBefore(parts.tr, here || null);
    });
  }

  function render(rebuild) {
    renderControls();
    if (state.snapshots === 0) return; // the server-rendered roster stays until then
    renderHeader();
    renderRoster(rebuild);
  }

  function tick() {
    const now = Date.now();
    for (const parts of rows.values()) {
      if (parts.participant) setText(parts.duration, formatDuration(now - Date.parse(parts.participant.joined_at)));
    }
    if (state.socketState === "reconnecting") renderSocket();
  }

  // --- requests ---

  function isLive() {
    return live.open && state.socketState === "live";
  }

  function send(frame) {
    live.send(frame);
  }

  function sendAction(action, key, participantId) {
    if (isPending(key)) return;
    if (!isLive()) {
      showMessage(t("not_connected"), "error");
      return;
    }
    if (ui.message.dataset.kind === "error") showMessage("", "info"); // an old error no longer applies
    const requestId = newRequestId();
    const frame = { action, request_id: requestId };
    if (participantId !== undefined) frame.participant = participantId;
    const timer = setTimeout(() => finishRequest(requestId, t("no_answer")), REQUEST_TIMEOUT_MS);
    pending.set(requestId, { key, timer });
    pendingKeys.set(key, requestId);
    send(frame);
    render(false);
  }

  function finishRequest(requestId, errorText) {
    const entry = pending.get(requestId);
    if (!entry) return;
    pending.delete(requestId);
    clearTimeout(entry.timer);
    if (pendingKeys.get(entry.key) === requestId) pendingKeys.delete(entry.key);
    if (errorText) showMessage(errorText, "error");
    render(false);
  }

  function failAllRequests(errorText) {
    const ids = [...pending.keys()];
    for (const id of ids) finishRequest(id, null);
    if (ids.length) showMessage(errorText, "error");
  }

  // The server sends each error in the page's language beside its protocol text (conferences/protocol.py).
  function errorText(frame) {
    return String(frame.error_text || frame.error || "");
  }

  function requestResync() {
    needResync = true;
    if (resyncRequest !== null || !isLive()) return;
    resyncRequest = newRequestId();
    clearTimeout(resyncTimer);
    // No answer: forget it, so the next gap (or the retry) asks again.
    resyncTimer = setTimeout(() => {
      resyncRequest = null;
      if (needResync) requestResync();
    }, REQUEST_TIMEOUT_MS);
    send({ action: "resync", request_id: resyncRequest });
  }

  function confirmKick(participantId, opener) {
    const p = state.participants.get(participantId);
    if (!p) return;
    const question = t("kick_confirm", { name: nameOf(p) });
    const go = () => {
      if (state.participants.has(participantId)) sendAction("kick", `p:${participantId}:kick`, participantId);
    };
    if (typeof HTMLDialogElement === "undefined" || !("showModal" in HTMLDialogElement.prototype)) {
      if (window.confirm(question)) go();
      return;
    }
    if (!kickDialog) kickDialog = buildKickDialog();
    kickDialog.querySelector('[data-role="kick-question"]').textContent = question;
    kickDialog.returnValue = "";
    kickDialog.onclose = () => {
      kickDialog.onclose = null;
      if (opener && document.contains(opener)) opener.focus();
      if (kickDialog.returnValue === "confirm") go();
    };
    kickDialog.showModal();
  }

  function buildKickDialog() {
    const dialog = element("dialog", "kick-dialog");
    dialog.dataset.role = "kick-dialog";
    dialog.setAttribute("aria-labelledby", "kick-question");
    const form = element("form");
    form.method = "dialog";
    const question = element("p", "kick-question");
    question.id = "kick-question";
    question.dataset.role = "kick-question";
    const buttons = element("div", "dialog-buttons");
    const cancel = element("button", "secondary", t("cancel"));
    cancel.value = "cancel";
    cancel.dataset.role = "kick-cancel";
    cancel.autofocus = true;
    const confirm = element("button", "danger", t("kick"));
    confirm.value = "confirm";
    confirm.dataset.role = "kick-confirm";
    confirm.dataset.confirm = "";
    buttons.append(cancel, confirm);
    form.append(question, buttons);
    dialog.append(form);
    root.append(dialog);
    return dialog;
  }

  root.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button || !root.contains(button)) return;
    if (button.getAttribute("aria-disabled") === "true") {
      event.preventDefault();
      return;
    }
    const action = button.dataset.action;
    const row = button.closest("tr[data-participant-id]");
    if (row && (action === "mute" || action === "unmute" || action === "kick" || action === "lower_hand")) {
      const id = Number(row.dataset.participantId);
      if (action === "kick") confirmKick(id, button);
      else if (action === "lower_hand") sendAction(action, `p:${id}:lower_hand`, id);
      else sendAction(action, `p:${id}:mute`, id);
    } else if (action === "mute_all" || action === "unmute_all") {
      sendAction(action, `room:${action}`);
    } else if (action === "lock" || action === "unlock") {
      sendAction(action, "room:lock");
    }
  });

  // --- frames from the server ---

  function logEntry(entry) {
    const p = entry.participant;
    if (entry.kind === "joined") logJoin(p, entry.when);
    else if (entry.kind === "left") logLeave(p, entry.reason, entry.when);
    else if (entry.kind === "muted" || entry.kind === "unmuted") logMute(p);
    else if (entry.kind === "hand" || entry.kind === "hand-lowered") logHand(p);
    else if (entry.kind === "locked" || entry.kind === "unlocked") logLock(entry.kind === "locked");
  }

  function apply(frame) {
    const before = state;
    const result = reduce(state, frame);
    state = result.state;
    result.entries.forEach(logEntry);
    if (result.asterisk) setAsterisk(result.asterisk.connected, result.asterisk.log);
    if (result.resynced) {
      needResync = false;
      live.live();
      state.socketState = "live";
      state.closeCode = null;
      renderSocket();
      if (!state.canModerate && kickDialog && kickDialog.open) kickDialog.close();
    }
    if (result.resync) requestResync();
    if (state !== before) render(result.rebuild);
  }

  function onFrame(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch (error) {
      return;
    }
    if (!frame || typeof frame !== "object") return;
    switch (frame.type) {
      case "snapshot":
      case "participant.joined":
      case "participant.updated":
      case "participant.left":
      case "conference.updated":
      case "asterisk.status":
        apply(frame);
        break;
      case "reply":
        if (frame.request_id === resyncRequest) {
          resyncRequest = null;
          clearTimeout(resyncTimer);
          if (!frame.ok) {
            showMessage(errorText(frame), "error");
            resyncTimer = setTimeout(() => needResync && requestResync(), RESYNC_RETRY_MS);
          }
        } else if (pending.has(frame.request_id)) {
          finishRequest(frame.request_id, frame.ok ? null : errorText(frame));
        }
        break;
      case "error":
        showMessage(errorText(frame), "error");
        break;
      default:
        break;
    }
  }

  // --- the connection (live-socket.js) ---

  function onSocketState(socketState, info) {
    if (socketState === "closed") {
      resyncRequest = null;
      clearTimeout(resyncTimer);
      failAllRequests(t("connection_lost"));
      return;
    }
    if (socketState === "refused") {
      const code = info.code;
      state.socketState = "refused";
      state.closeCode = code;
      state.canModerate = false;
      if (kickDialog && kickDialog.open) kickDialog.close();
      renderSocket();
      render(false);
      showMessage(t(refusalKey(code, closeCodes)), "error");
      if (code === closeCodes.not_logged_in && config.login_url) {
        const link = element("a", "", t("log_in"));
        link.href = config.login_url;
        ui.message.append(" ", link);
      }
      return;
    }
    if (socketState === "reconnecting") reconnectAt = info.at;
    state.socketState = socketState;
    renderSocket();
  }

  const live = new LiveSocket({ path: config.ws_path, closeCodes, onFrame, onState: onSocketState });

  window.roomPage = Object.freeze({
    get lastSeq() {
      return state.lastSeq;
    },
    get state() {
      return state;
    },
    get socket() {
      return live.socket;
    },
  });

  setAsterisk(state.asteriskConnected, false);
  setInterval(tick, 1000);
  live.connect();
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
else start();
