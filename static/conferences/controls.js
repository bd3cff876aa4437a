// The moderator's controls and the requests they send.
//
// - The room's buttons: mute all, unmute all, lock, the lobby (on or off: it shows which), admit
//   all (when someone waits to be admitted), open the room (when someone waits for the leader).
// - Each caller's buttons, which roster.js puts in its rows: mute or unmute, kick, lower the hand
//   for a present caller; admit and deny for a waiting one. Kick and deny ask first.
// - The requests: one at a time per control (its button says so until the reply), a timeout when
//   no reply comes, the error the server sent (translated) when it refuses; and the resync the
//   page asks for on a seq gap. invites.js sends its requests through here too (request()).
//
// Every action name is the server's (config.actions, from conferences.moderation.ACTIONS): none
// is typed here, and the server checks every action anyway. Viewers get no buttons at all.
import { element, setText } from "./dom.js";
import { newRequestId, waitingFor } from "./room-state.js";

const REQUEST_TIMEOUT_MS = 15000; // the server answers within its own 12 s
const RESYNC_RETRY_MS = 5000;

// Controls that ask first: which of the state's lists the caller must still be in, the question.
const CONFIRMED = {
  kick: { list: "participants", question: "kick_confirm", confirm: "kick" },
  deny: { list: "waiting", question: "deny_confirm", confirm: "deny" },
};

export class Controls {
  /**
   * ``actions``: the server's action names (config.actions); ``getState()``: the page's state now;
   * ``socket``: {isLive(), send(frame)}; ``messages``: {showMessage(text, kind), clearError()};
   * ``onChange()``: redraw (a request started or ended).
   */
  constructor({ root, actions, t, nameOf, getState, socket, messages, onChange }) {
    this.root = root;
    this.container = root.querySelector('[data-role="room-controls"]');
    this.actions = actions || {};
    this.t = t;
    this.nameOf = nameOf;
    this.getState = getState;
    this.socket = socket;
    this.messages = messages;
    this.onChange = onChange;
    this.pending = new Map(); // request id -> {key, timer}
    this.pendingKeys = new Map(); // control key -> request id
    this.roomButtons = null; // control -> button, once built
    this.dialogs = {}; // confirm name -> its <dialog>
    this.resyncRequest = null;
    this.resyncTimer = null;
    this.needResync = false;
    this.specs = this.buildSpecs();
    root.addEventListener("click", (event) => this.onClick(event));
  }

  /** What each button sends and says: [control, class, (state or participant) -> view]. */
  buildSpecs() {
    const { actions, t, nameOf } = this;
    const someoneWaits = (state, what) => [...state.waiting.values()].some((p) => waitingFor(p) === what);
    const conference = (state) => state.conference || {};
    const named = (key, p) => t(key, { name: nameOf(p) });
    return {
      room: [
        ["mute_all", "", () => ({ action: actions.MUTE_ALL, label: t("mute_all") })],
        ["unmute_all", "", () => ({ action: actions.UNMUTE_ALL, label: t("unmute_all") })],
        ["lock", "", (state) => {
          const locked = Boolean(conference(state).locked);
          return { action: locked ? actions.UNLOCK : actions.LOCK, label: t(locked ? "unlock" : "lock") };
        }],
        ["lobby", "", (state) => {
          // A toggle: it says whether the lobby is on (aria-pressed), a press turns it the other way.
          const on = Boolean(conference(state).lobby);
          const label = t(on ? "lobby_state_on" : "lobby_state_off");
          return { action: on ? actions.LOBBY_OFF : actions.LOBBY_ON, label, pressed: on };
        }],
        ["admit_all", "", (state) => ({
          action: actions.ADMIT_ALL,
          label: t("admit_all"),
          hidden: !someoneWaits(state, "lobby"),
        })],
        ["open_room", "", (state) => ({
          action: actions.OPEN_ROOM,
          label: t("open_room"),
          hidden: !someoneWaits(state, "leader"),
        })],
        ["record", "", (state) => {
          // Start or stop recording; none for a room that is never recorded.
          const c = conference(state);
          const on = Boolean(c.recording);
          const label = t(on ? "record_stop" : "record_start");
          return { action: on ? actions.RECORD_STOP : actions.RECORD_START, label, hidden: c.record_mode === "never" };
        }],
      ],
      present: [
        ["mute", "row-button", (p) => {
          const label = p.muted ? "unmute" : "mute";
          return { action: p.muted ? actions.UNMUTE : actions.MUTE, label: t(label), aria: named(`${label}_label`, p) };
        }],
        ["kick", "row-button danger", (p) => ({ action: actions.KICK, label: t("kick"), aria: named("kick_label", p) })],
        ["lower_hand", "row-button", (p) => ({
          action: actions.LOWER_HAND,
          label: t("lower_hand"),
          aria: named("lower_hand_label", p),
          hidden: !p.hand_raised,
        })],
      ],
      waiting: [
        ["admit", "row-button", (p) => ({ action: actions.ADMIT, label: t("admit"), aria: named("admit_label", p) })],
        ["deny", "row-button danger", (p) => ({ action: actions.DENY, label: t("deny"), aria: named("deny_label", p) })],
      ],
    };
  }

  // --- drawing ---

  isPending(key) {
    return this.pendingKeys.has(key);
  }

  /** Draw a button as ``view`` says; one the server has no action for stays hidden. */
  show(button, view, key) {
    if (view.action) button.dataset.action = view.action;
    else delete button.dataset.action;
    button.hidden = Boolean(view.hidden) || !view.action;
    setText(button, view.label);
    if (view.aria) button.setAttribute("aria-label", view.aria);
    if (view.pressed !== undefined) button.setAttribute("aria-pressed", String(view.pressed));
    if (this.isPending(key)) {
      button.setAttribute("aria-disabled", "true");
      button.dataset.pending = "true";
    } else {
      button.removeAttribute("aria-disabled");
      delete button.dataset.pending;
    }
  }

  button(control, className) {
    const button = element("button", className);
    button.type = "button";
    button.dataset.control = control;
    return button;
  }

  /** The room's buttons: shown to moderators only (the server-rendered ones are replaced). */
  renderRoom(state) {
    if (!state.canModerate) {
      this.container.replaceChildren();
      this.container.hidden = true;
      this.roomButtons = null;
      return;
    }
    if (!this.roomButtons) {
      this.roomButtons = new Map(this.specs.room.map(([control, cls]) => [control, this.button(control, cls)]));
      this.container.replaceChildren(...this.roomButtons.values());
    }
    for (const [control, , view] of this.specs.room) {
      this.show(this.roomButtons.get(control), view(state), `room:${control}`);
    }
    this.container.hidden = false;
  }

  /**
   * One caller's buttons, for roster.js: ``kind`` "present" or "waiting"; returns
   * {nodes: to put in the row, update(p): draw them for participant p}.
   */
  rowActions(kind) {
    const specs = this.specs[kind];
    const buttons = specs.map(([control, className]) => this.button(control, className));
    const nodes = buttons.flatMap((button, index) => (index ? [" ", button] : [button]));
    const update = (p) => {
      specs.forEach(([control, , view], index) => this.show(buttons[index], view(p), `p:${p.id}:${control}`));
    };
    return { nodes, update };
  }

  // --- clicks ---

  onClick(event) {
    const button = event.target.closest("button[data-action][data-control]");
    if (!button || !this.root.contains(button)) return;
    if (button.getAttribute("aria-disabled") === "true") {
      event.preventDefault();
      return;
    }
    const { action, control } = button.dataset;
    const row = button.closest("[data-participant-id]");
    if (!row) {
      if (this.container.contains(button)) this.sendAction(action, `room:${control}`);
      return;
    }
    const id = Number(row.dataset.participantId);
    const key = `p:${id}:${control}`;
    if (CONFIRMED[control]) this.confirm(control, id, button, () => this.sendAction(action, key, id));
    else this.sendAction(action, key, id);
  }

  /** Ask before ``go()`` (kick, deny); nothing is sent when the caller went meanwhile. */
  confirm(name, participantId, opener, go) {
    const spec = CONFIRMED[name];
    const p = this.getState()[spec.list].get(participantId);
    if (!p) return;
    const question = this.t(spec.question, { name: this.nameOf(p) });
    const goIfStill = () => {
      if (this.getState()[spec.list].has(participantId)) go();
    };
    if (typeof HTMLDialogElement === "undefined" || !("showModal" in HTMLDialogElement.prototype)) {
      if (window.confirm(question)) goIfStill();
      return;
    }
    if (!this.dialogs[name]) this.dialogs[name] = this.buildDialog(name, spec);
    const dialog = this.dialogs[name];
    dialog.querySelector(`[data-role="${name}-question"]`).textContent = question;
    dialog.returnValue = "";
    dialog.onclose = () => {
      dialog.onclose = null;
      if (opener && document.contains(opener)) opener.focus();
      if (dialog.returnValue === "confirm") goIfStill();
    };
    dialog.showModal();
  }

  buildDialog(name, spec) {
    const dialog = element("dialog", "confirm-dialog");
    dialog.dataset.role = `${name}-dialog`;
    dialog.setAttribute("aria-labelledby", `${name}-question`);
    const form = element("form");
    form.method = "dialog";
    const question = element("p", "confirm-question");
    question.id = `${name}-question`;
    question.dataset.role = `${name}-question`;
    const buttons = element("div", "dialog-buttons");
    const cancel = element("button", "secondary", this.t("cancel"));
    cancel.value = "cancel";
    cancel.dataset.role = `${name}-cancel`;
    cancel.autofocus = true;
    const confirm = element("button", "danger", this.t(spec.confirm));
    confirm.value = "confirm";
    confirm.dataset.role = `${name}-confirm`;
    confirm.dataset.confirm = "";
    buttons.append(cancel, confirm);
    form.append(question, buttons);
    dialog.append(form);
    this.root.append(dialog);
    return dialog;
  }

  /** The user may no longer moderate: no question left open. */
  closeDialogs() {
    for (const dialog of Object.values(this.dialogs)) if (dialog.open) dialog.close();
  }

  // --- requests ---

  sendAction(action, key, participantId) {
    this.request(action, key, participantId !== undefined ? { participant: participantId } : {});
  }

  /**
   * Send ``action`` with ``fields`` as the control ``key`` (one request at a time per key).
   * ``onError(text)``: where its errors go (the message line when absent); ``onOk()``: after a
   * successful reply (not after a timeout or a lost connection). Returns whether it was sent.
   */
  request(action, key, fields = {}, { onOk, onError } = {}) {
    if (this.isPending(key)) return false;
    const showError = onError || ((text) => this.messages.showMessage(text, "error"));
    if (!this.socket.isLive()) {
      showError(this.t("not_connected"));
      return false;
    }
    this.messages.clearError();
    const requestId = newRequestId();
    const frame = { ...fields, action, request_id: requestId };
    const timer = setTimeout(() => this.finish(requestId, this.t("no_answer")), REQUEST_TIMEOUT_MS);
    this.pending.set(requestId, { key, timer, onOk, showError });
    this.pendingKeys.set(key, requestId);
    this.socket.send(frame);
    this.onChange();
    return true;
  }

  /** A request is over: ``ok`` (the server did it), or ``errorText`` to show (none when the socket closed). */
  finish(requestId, errorText, ok = false) {
    const entry = this.pending.get(requestId);
    if (!entry) return;
    this.pending.delete(requestId);
    clearTimeout(entry.timer);
    if (this.pendingKeys.get(entry.key) === requestId) this.pendingKeys.delete(entry.key);
    if (ok && entry.onOk) entry.onOk();
    if (errorText) entry.showError(errorText);
    this.onChange();
  }

  /** Ask for a snapshot (a seq gap); one request at a time, asked again when it gets no answer. */
  requestResync() {
    this.needResync = true;
    if (this.resyncRequest !== null || !this.socket.isLive()) return;
    this.resyncRequest = newRequestId();
    clearTimeout(this.resyncTimer);
    // No answer: forget it, so the next gap (or the retry) asks again.
    this.resyncTimer = setTimeout(() => {
      this.resyncRequest = null;
      if (this.needResync) this.requestResync();
    }, REQUEST_TIMEOUT_MS);
    this.socket.send({ action: this.actions.RESYNC, request_id: this.resyncRequest });
  }

  /** A snapshot came: whatever resync was asked for is answered. */
  resynced() {
    this.needResync = false;
  }

  /** A ``reply`` frame: the resync's, or a pending request's (ignored otherwise). */
  reply(frame) {
    if (frame.request_id === this.resyncRequest) {
      this.resyncRequest = null;
      clearTimeout(this.resyncTimer);
      if (!frame.ok) {
        this.messages.showMessage(errorText(frame), "error");
        this.resyncTimer = setTimeout(() => this.needResync && this.requestResync(), RESYNC_RETRY_MS);
      }
    } else if (this.pending.has(frame.request_id)) {
      this.finish(frame.request_id, frame.ok ? null : errorText(frame), Boolean(frame.ok));
    }
  }

  /** The socket closed: no reply will come to anything asked on it. */
  connectionLost() {
    this.resyncRequest = null;
    clearTimeout(this.resyncTimer);
    const ids = [...this.pending.keys()];
    for (const id of ids) this.finish(id, null);
    if (ids.length) this.messages.showMessage(this.t("connection_lost"), "error");
  }
}

/** The server sends each error in the page's language beside its protocol text (conferences/protocol.py). */
export function errorText(frame) {
  return String(frame.error_text || frame.error || "");
}
