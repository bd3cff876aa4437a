// The room's timeline (newest first) and its screen-reader announcer: what happened, in words.
//
// The words come from the server (the page's strings, translated); a caller's name and an
// invited number go in as text only.
import { element } from "./dom.js";

const ANNOUNCEMENTS_KEPT = 3;

// The reducer's entry kinds (room-state.js) and the string saying each; a reason, when the
// strings have a sentence for it, picks "<key>_<reason>" ("event_left_kicked").
const KEYS = {
  joined: "event_joined",
  left: "event_left",
  muted: "event_muted",
  unmuted: "event_unmuted",
  hand: "event_hand_raised",
  "hand-lowered": "event_hand_lowered",
  locked: "event_locked",
  unlocked: "event_unlocked",
  "lobby-on": "event_lobby_on",
  "lobby-off": "event_lobby_off",
  waiting: "event_waiting",
  admitted: "event_admitted",
  denied: "event_denied",
  "waiting-left": "event_waiting_left",
  "recording-on": "event_recording_on",
  "recording-off": "event_recording_off",
  "recording-stored": "event_recording_stored",
  invite: "event_invite", // reason: started, or how the call ended ("event_invite_busy")
};

// Read out as they happen: people coming, going and waiting, and how each call ended (the rest is
// in the timeline only).
const ANNOUNCED = new Set(["joined", "left", "waiting", "admitted", "denied", "waiting-left"]);
const announced = (entry) => ANNOUNCED.has(entry.kind) || (entry.kind === "invite" && entry.reason !== "started");

export class Timeline {
  /** ``t(key, values)``: a translated string; ``strings``: the page's (to tell which keys exist). */
  constructor({ root, limit, strings, t, nameOf, formatTime }) {
    this.list = root.querySelector('[data-role="timeline"]');
    this.empty = root.querySelector('[data-role="timeline-empty"]');
    this.announcer = root.querySelector('[data-role="announcer"]');
    this.limit = limit;
    this.strings = strings;
    this.t = t;
    this.nameOf = nameOf;
    this.formatTime = formatTime;
  }

  announce(text) {
    this.announcer.append(element("p", "", text));
    while (this.announcer.childElementCount > ANNOUNCEMENTS_KEPT) this.announcer.firstElementChild.remove();
  }

  /** A line at ``when`` (an ISO time; now when absent or not a time); ``kind`` is its data-kind. */
  add(kind, text, when) {
    const date = when ? new Date(when) : new Date();
    const at = Number.isNaN(date.getTime()) ? new Date() : date;
    const item = element("li", "timeline-item");
    item.dataset.kind = kind;
    const time = element("time", "timeline-time", this.formatTime(at));
    time.dateTime = at.toISOString();
    item.append(time, " ", element("span", "timeline-text", text));
    this.list.prepend(item);
    while (this.list.childElementCount > this.limit) this.list.lastElementChild.remove();
    this.empty.hidden = true;
  }

  /** A reducer entry (room-state.js reduce()) in words. */
  log(entry) {
    const base = KEYS[entry.kind];
    if (!base) return;
    const withReason = entry.reason ? `${base}_${entry.reason}` : null;
    const key = withReason && withReason in this.strings ? withReason : base;
    const values = {};
    if (entry.participant) values.name = this.nameOf(entry.participant);
    if (entry.invite) values.number = entry.invite.number || this.t("invite_number_hidden");
    const text = this.t(key, values);
    this.add(entry.reason ? `${entry.kind}-${entry.reason}` : entry.kind, text, entry.when);
    if (announced(entry)) this.announce(text);
  }
}
