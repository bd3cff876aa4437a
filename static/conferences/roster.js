// The room's two lists, drawn from the state (room-state.js): the participants table (present
// callers, in join order) and the lobby list (waiting callers, in arrival order: waiting to be
// admitted, or for the leader).
//
// Rows are kept across redraws and moved only when out of place, so focus inside them survives;
// when a row goes with the focus in it, the focus moves to the same button on a neighbouring row
// (or to the list's heading). The buttons in the rows are controls.js's; viewers get none.
//
// Caller names and numbers come from the phone network and are hostile: textContent only.
import { element, setText, setTime } from "./dom.js";
import { compareParticipants, formatDuration, handPosition, waitingFor } from "./room-state.js";

export class Roster {
  constructor({ root, t, strings, nameOf, formatTime, controls }) {
    const $ = (role) => root.querySelector(`[data-role="${role}"]`);
    this.t = t;
    this.unknown = strings.unknown || "unknown";
    this.nameOf = nameOf;
    this.formatTime = formatTime;
    this.controls = controls;
    this.body = $("roster-body");
    this.heading = document.getElementById("roster-heading");
    this.headerRow = $("roster").tHead.rows[0];
    this.columnLabels = [...this.headerRow.cells].map((cell) => cell.textContent.trim());
    this.lobbySection = $("lobby-section");
    this.lobby = $("lobby");
    this.lobbyHeading = document.getElementById("lobby-heading");
    this.rows = new Map(); // present participant id -> row parts
    this.lobbyRows = new Map(); // waiting participant id -> row parts
    this.withActions = false;
  }

  /** Draw both lists; ``rebuild``: afresh (the first snapshot, a role change: buttons come or go). */
  render(state, rebuild) {
    const actions = state.canModerate;
    if (rebuild || actions !== this.withActions) {
      this.withActions = actions;
      this.setActionsColumn(actions);
      this.rows.clear();
      this.body.replaceChildren();
      this.lobbyRows.clear();
      this.lobby.replaceChildren();
    }
    this.renderPresent(state);
    this.renderWaiting(state);
  }

  /** Every second: the durations. */
  tick(now) {
    for (const parts of this.rows.values()) {
      if (parts.participant) setText(parts.duration, formatDuration(now - Date.parse(parts.participant.joined_at)));
    }
  }

  // --- the participants table ---

  setActionsColumn(present) {
    let th = this.headerRow.querySelector('[data-role="actions-header"]');
    if (present && !th) {
      th = element("th", "", this.t("actions"));
      th.scope = "col";
      th.setAttribute("role", "columnheader"); // kept when narrow screens show rows as cards
      th.dataset.role = "actions-header";
      this.headerRow.append(th);
    } else if (!present && th) th.remove();
  }

  renderPresent(state) {
    const { body } = this;
    for (const id of [...this.rows.keys()]) {
      if (!state.participants.has(id)) this.removeRow(this.rows, id, this.heading);
    }
    const sorted = [...state.participants.values()].sort(compareParticipants);
    const empty = body.querySelector('[data-role="roster-empty"]');
    if (sorted.length === 0) {
      if (!empty) {
        const tr = element("tr");
        tr.setAttribute("role", "row");
        tr.dataset.role = "roster-empty";
        const td = element("td", "roster-empty", this.t("nobody"));
        td.setAttribute("role", "cell");
        tr.append(td);
        body.append(tr);
      }
      body.querySelector('[data-role="roster-empty"] td').colSpan = this.headerRow.cells.length;
      return;
    }
    if (empty) empty.remove();
    sorted.forEach((p, index) => {
      let parts = this.rows.get(p.id);
      if (!parts) {
        parts = this.buildRow();
        this.rows.set(p.id, parts);
      }
      parts.row.dataset.participantId = String(p.id);
      this.updateRow(parts, p, state);
      place(body, parts.row, index);
    });
  }

  buildRow() {
    const tr = element("tr");
    tr.setAttribute("role", "row");
    const cell = (className, column) => {
      const td = element("td", className);
      td.setAttribute("role", "cell");
      if (this.columnLabels[column]) td.dataset.label = this.columnLabels[column];
      tr.append(td);
      return td;
    };
    const parts = { row: tr, participant: null, badgeKey: null };
    parts.name = element("span", "caller-name");
    cell("cell-name", 0).append(parts.name);
    parts.number = cell("cell-number", 1);
    parts.time = element("time");
    cell("cell-joined", 2).append(parts.time);
    const durationCell = cell("cell-duration", 3);
    parts.duration = element("span");
    parts.talked = element("small", "talked"); // the stay's talk time (talk_seconds), once there is some
    parts.talked.dataset.role = "talked";
    durationCell.append(parts.duration, parts.talked);
    const stateCell = cell("cell-state", 4);
    parts.talking = element("span", "talking-indicator");
    parts.talking.dataset.role = "talking";
    const icon = element("span", "talking-icon");
    icon.setAttribute("aria-hidden", "true");
    icon.append(element("span"), element("span"), element("span"));
    parts.talking.append(icon, element("span", "talking-text", this.t("talking")));
    parts.badges = element("span", "badges");
    stateCell.append(parts.talking, parts.badges);
    if (this.withActions) {
      parts.actions = this.controls.rowActions("present");
      const td = element("td", "cell-actions");
      td.setAttribute("role", "cell");
      td.dataset.label = this.t("actions");
      td.append(...parts.actions.nodes);
      tr.append(td);
    }
    return parts;
  }

  updateRow(parts, p, state) {
    const { t } = this;
    parts.participant = p;
    const tr = parts.row;
    tr.dataset.talking = String(Boolean(p.talking));
    tr.dataset.muted = String(Boolean(p.muted));
    tr.dataset.participantRole = p.role === "admin" ? "admin" : "participant";
    this.setName(parts.name, p);
    setText(parts.number, p.caller_number || "");
    setTime(parts.time, p.joined_at, this.formatTime);
    setText(parts.duration, formatDuration(Date.now() - Date.parse(p.joined_at)));
    const talked = Number(p.talk_seconds) || 0;
    parts.talked.hidden = talked < 1;
    setText(parts.talked, talked < 1 ? "" : t("talked", { duration: formatDuration(talked * 1000) }));
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
    if (parts.actions) parts.actions.update(p);
  }

  // --- the lobby list ---

  renderWaiting(state) {
    const sorted = [...state.waiting.values()].sort(compareParticipants);
    // The last one admitted or gone: the list hides, so the focus goes to the participants.
    const fallback = sorted.length ? this.lobbyHeading : this.heading;
    for (const id of [...this.lobbyRows.keys()]) {
      if (!state.waiting.has(id)) this.removeRow(this.lobbyRows, id, fallback);
    }
    this.lobbySection.hidden = sorted.length === 0;
    sorted.forEach((p, index) => {
      let parts = this.lobbyRows.get(p.id);
      if (!parts) {
        parts = this.buildLobbyRow();
        this.lobbyRows.set(p.id, parts);
      }
      parts.row.dataset.participantId = String(p.id);
      this.updateLobbyRow(parts, p);
      place(this.lobby, parts.row, index);
    });
  }

  buildLobbyRow() {
    const li = element("li", "lobby-item");
    const parts = { row: li, participant: null };
    parts.name = element("span", "caller-name");
    parts.number = element("span", "lobby-number");
    parts.time = element("time");
    const since = element("span", "lobby-since", `${this.t("waiting_since")} `);
    since.append(parts.time);
    parts.waitingFor = element("span", "badge badge-waiting");
    parts.waitingFor.dataset.badge = "waiting-for";
    li.append(parts.name, " ", parts.number, " ", since, " ", parts.waitingFor);
    if (this.withActions) {
      parts.actions = this.controls.rowActions("waiting");
      const box = element("span", "lobby-actions");
      box.append(...parts.actions.nodes);
      li.append(" ", box);
    }
    return parts;
  }

  updateLobbyRow(parts, p) {
    parts.participant = p;
    const what = waitingFor(p);
    parts.row.dataset.waitingFor = what;
    this.setName(parts.name, p);
    setText(parts.number, p.caller_number || "");
    setTime(parts.time, p.joined_at, this.formatTime);
    setText(parts.waitingFor, this.t(`waiting_for_${what}`));
    if (parts.actions) parts.actions.update(p);
  }

  // --- both ---

  setName(node, p) {
    setText(node, p.caller_name || this.unknown);
    node.classList.toggle("is-unknown", !p.caller_name);
  }

  removeRow(rows, id, fallback) {
    const parts = rows.get(id);
    rows.delete(id);
    if (!parts) return;
    const active = document.activeElement;
    if (active && parts.row.contains(active)) {
      // Keep keyboard users in the list: the same control on the next (or previous) row.
      const control = active.dataset ? active.dataset.control : null;
      const isRow = (node) => node && node.dataset && node.dataset.participantId;
      const neighbour = [parts.row.nextElementSibling, parts.row.previousElementSibling].find(isRow);
      parts.row.remove();
      const target = neighbour && control ? neighbour.querySelector(`[data-control="${control}"]`) : null;
      (target || fallback).focus();
      return;
    }
    parts.row.remove();
  }
}

/** Put ``row`` at ``index`` in ``list``, moving it only when it is out of place (focus in it survives). */
function place(list, row, index) {
  const here = list.children[index];
  if (here !== row) list.insertBefore(row, here || null);
}
