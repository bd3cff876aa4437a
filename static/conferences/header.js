// The room's header (name, number, who is present, who waits, locked), its status bar (the
// Asterisk link, this page's socket) and the message line under it.
import { element, setText } from "./dom.js";
import { refusalKey } from "./live-socket.js";

export class Header {
  constructor({ root, t, closeCodes, timeline }) {
    const $ = (role) => root.querySelector(`[data-role="${role}"]`);
    this.root = root;
    this.t = t;
    this.closeCodes = closeCodes;
    this.timeline = timeline;
    this.ui = {
      name: $("room-name"),
      number: $("room-number"),
      count: $("count"),
      waiting: $("waiting-count"),
      locked: $("locked"),
      recording: $("recording"),
      asterisk: $("asterisk-status"),
      asteriskText: $("asterisk-status-text"),
      socket: $("socket-status"),
      socketText: $("socket-status-text"),
      message: $("message"),
    };
  }

  /** What the server-rendered page says of the link, before the first frame. */
  get asteriskConnected() {
    return this.ui.asterisk.dataset.state === "connected";
  }

  render(state) {
    const { ui, t } = this;
    const c = state.conference;
    if (c) {
      setText(ui.name, c.name);
      setText(ui.number, t("room_number", { number: c.number }));
      ui.locked.hidden = !c.locked;
      if (ui.recording) ui.recording.hidden = !c.recording;
      if (document.title !== c.name) document.title = c.name;
    }
    setText(ui.count, String(state.participants.size));
    // The callers the page lists as waiting (the lobby list's length: the two always agree).
    const waiting = state.waiting.size;
    ui.waiting.hidden = waiting === 0;
    setText(ui.waiting, waiting ? t("waiting_count", { count: waiting }) : "");
  }

  /** Show the link's state; ``changedFrom``: the state shown before, logged when it differs. */
  setAsterisk(connected, changedFrom) {
    const { ui, t } = this;
    ui.asterisk.dataset.state = connected ? "connected" : "down";
    setText(ui.asteriskText, t(connected ? "asterisk_connected" : "asterisk_down"));
    if (changedFrom !== undefined && changedFrom !== connected) {
      this.timeline.add(connected ? "link-up" : "link-down", t(connected ? "event_link_up" : "event_link_down"));
    }
  }

  /** The socket's state: "connecting", "live", "reconnecting" (at ``reconnectAt``) or "refused". */
  renderSocket(state, reconnectAt) {
    const { ui, t } = this;
    ui.socket.hidden = false;
    ui.socket.dataset.state = state.socketState;
    this.root.dataset.live = String(state.socketState === "live");
    if (state.closeCode !== null) ui.socket.dataset.closeCode = String(state.closeCode);
    else delete ui.socket.dataset.closeCode;
    let text;
    if (state.socketState === "live") text = t("socket_live");
    else if (state.socketState === "reconnecting") {
      text = t("socket_reconnecting", { seconds: Math.max(0, Math.ceil((reconnectAt - Date.now()) / 1000)) });
    } else if (state.socketState === "refused") {
      text = t("socket_refused", { reason: t(refusalKey(state.closeCode, this.closeCodes)) });
    } else text = t("socket_connecting");
    setText(ui.socketText, text);
  }

  /** The message line: ``kind`` "info" or "error"; ``link``: {href, text} to add after the text. */
  showMessage(text, kind, link) {
    const message = this.ui.message;
    message.dataset.kind = kind || "info";
    message.replaceChildren(document.createTextNode(text));
    if (link) {
      const a = element("a", "", link.text);
      a.href = link.href;
      message.append(" ", a);
    }
  }

  /** An old error no longer applies (the user tries again). */
  clearError() {
    if (this.ui.message.dataset.kind === "error") this.showMessage("", "info");
  }
}
