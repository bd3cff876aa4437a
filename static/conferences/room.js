// The live room page: one WebSocket to /ws/conferences/<slug>/, the room's state kept from a
// snapshot plus seq-numbered events, drawn by small modules. This file only wires them:
//
// - room-state.js: the state, a pure reducer (state + frame -> state), tested in Node (tests/js/);
// - live-socket.js: the reconnecting socket, shared with the room list;
// - header.js: the header, the status bar, the message line;
// - roster.js: the participants table and the lobby list;
// - controls.js: the moderator's buttons and the requests they send;
// - invites.js: the moderator's invitations by number (the form, the open calls);
// - announce.js: the moderator's sounds played to the room;
// - timeline.js: the timeline and the screen-reader announcer.
//
// Caller names and numbers come from the phone network and are hostile: they only ever reach
// the page through textContent or setAttribute, never HTML. Plain ES modules, no build step, no
// dependencies, no inline script: settings, close codes, action names and translated strings
// come from the json_script element #room-config.
import { Controls, errorText } from "./controls.js";
import { timeFormatter } from "./dom.js";
import { Header } from "./header.js";
import { Announcements } from "./announce.js";
import { Invites } from "./invites.js";
import { LiveSocket, refusalKey } from "./live-socket.js";
import { initialState, interpolate, reduce } from "./room-state.js";
import { Roster } from "./roster.js";
import { Timeline } from "./timeline.js";

function start() {
  const configElement = document.getElementById("room-config");
  const root = document.querySelector('[data-role="room"]');
  if (!configElement || !root) return;
  const config = JSON.parse(configElement.textContent);
  const strings = config.strings || {};
  const closeCodes = config.close_codes || {};

  const t = (key, values) => interpolate(strings[key] || key, values || {});
  const nameOf = (p) => p.caller_name || p.caller_number || strings.unknown || "unknown";
  const formatTime = timeFormatter(document.documentElement.lang);

  const timeline = new Timeline({ root, limit: config.timeline_limit || 100, strings, t, nameOf, formatTime });
  const header = new Header({ root, t, closeCodes, timeline });

  // The room's state (room-state.js reduce) and the page's own.
  let state = {
    ...initialState(),
    asteriskConnected: header.asteriskConnected,
    socketState: "connecting",
    closeCode: null,
  };
  let reconnectAt = 0;

  const controls = new Controls({
    root,
    actions: config.actions,
    t,
    nameOf,
    getState: () => state,
    socket: { isLive: () => live.open && state.socketState === "live", send: (frame) => live.send(frame) },
    messages: header,
    onChange: () => render(false),
  });
  const roster = new Roster({ root, t, strings, nameOf, formatTime, controls });
  const invites = new Invites({ root, enabled: config.can_invite, actions: config.actions, t, strings, controls });
  const announcements = new Announcements({ root, sounds: config.sounds, actions: config.actions, t, controls });

  function render(rebuild) {
    controls.renderRoom(state);
    invites.render(state);
    announcements.render(state);
    if (state.snapshots === 0) return; // the server-rendered lists stay until then
    header.render(state);
    roster.render(state, rebuild);
  }

  function setAsterisk(connected, log) {
    const before = state.asteriskConnected;
    state.asteriskConnected = connected;
    header.setAsterisk(connected, log ? before : undefined);
  }

  // --- frames from the server ---

  function apply(frame) {
    const before = state;
    const result = reduce(state, frame);
    state = result.state;
    result.entries.forEach((entry) => timeline.log(entry));
    if (result.asterisk) setAsterisk(result.asterisk.connected, result.asterisk.log);
    if (result.resynced) {
      controls.resynced();
      live.live();
      state.socketState = "live";
      state.closeCode = null;
      header.renderSocket(state, reconnectAt);
      if (!state.canModerate) controls.closeDialogs();
    }
    if (result.resync) controls.requestResync();
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
      case "invite.updated":
      case "recording.finished":
        apply(frame);
        break;
      case "reply":
        controls.reply(frame);
        break;
      case "error":
        header.showMessage(errorText(frame), "error");
        break;
      default:
        break;
    }
  }

  // --- the connection (live-socket.js) ---

  function onSocketState(socketState, info) {
    if (socketState === "closed") {
      controls.connectionLost();
      return;
    }
    if (socketState === "refused") {
      const code = info.code;
      state.socketState = "refused";
      state.closeCode = code;
      state.canModerate = false;
      controls.closeDialogs();
      header.renderSocket(state, reconnectAt);
      render(false);
      const login = code === closeCodes.not_logged_in && config.login_url;
      const link = login ? { href: config.login_url, text: t("log_in") } : null;
      header.showMessage(t(refusalKey(code, closeCodes)), "error", link);
      return;
    }
    if (socketState === "reconnecting") reconnectAt = info.at;
    state.socketState = socketState;
    header.renderSocket(state, reconnectAt);
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
  setInterval(() => {
    roster.tick(Date.now());
    if (state.socketState === "reconnecting") header.renderSocket(state, reconnectAt);
  }, 1000);
  live.connect();
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
else start();
