// The room list, an overview that moves (a wall display too): per room who is in, who talks,
// who is muted or has a hand up, how many wait (in the lobby or for the leader), lobby, locked
// and Asterisk-down badges, live from /ws/conferences/ (live-socket.js: the same reconnecting
// socket as the room page). The list shows present callers only: a waiting one is counted (the
// room's waiting_count), not named.
//
// Caller names come from the phone network and are hostile: textContent only.
import { element } from "./dom.js";
import { LiveSocket } from "./live-socket.js";
import { interpolate, isWaiting } from "./room-state.js";

const table = document.querySelector("table.rooms");
if (table) {
  const text = {
    locked: table.dataset.lockedText || "locked",
    linkDown: table.dataset.linkDownText || "Asterisk down",
    talking: table.dataset.talkingText || "talking",
    muted: table.dataset.mutedText || "muted",
    hand: table.dataset.handText || "hand raised",
    waiting: table.dataset.waitingText || "%(count)s waiting",
    lobby: table.dataset.lobbyText || "lobby",
    recording: table.dataset.recordingText || "recording",
  };
  const rooms = new Map(); // slug -> {state, participants: Map(id -> participant)}
  const notIn = (p) => Boolean(p && (p.left_at || isWaiting(p))); // gone, or waiting (again)

  const render = (slug) => {
    const room = rooms.get(slug);
    const row = table.querySelector(`tr[data-slug="${CSS.escape(slug)}"]`);
    if (!room || !row) return;
    const { state, participants } = room;
    row.querySelector("[data-role=count]").textContent = String(participants.size);
    const who = row.querySelector("[data-role=who] ul");
    if (who) {
      who.replaceChildren(
        ...[...participants.values()].map((p) => {
          const item = element("li", "who-item", p.caller_name || p.caller_number || "?");
          item.dataset.participantId = String(p.id);
          item.dataset.talking = String(Boolean(p.talking));
          if (p.talking) item.title = text.talking;
          if (p.muted) item.append(" ", element("span", "badge badge-muted", text.muted));
          if (p.hand_raised) item.append(" ", element("span", "badge badge-hand", text.hand));
          return item;
        })
      );
    }
    const badges = [];
    if (state.waiting_count > 0) {
      badges.push(element("span", "badge badge-waiting", interpolate(text.waiting, { count: state.waiting_count })));
    }
    if (state.recording) badges.push(element("span", "badge badge-recording", text.recording));
    if (state.lobby) badges.push(element("span", "badge badge-lobby", text.lobby));
    if (state.locked) badges.push(element("span", "badge", text.locked));
    if (state.asterisk && !state.asterisk.connected) badges.push(element("span", "badge badge-down", text.linkDown));
    row.querySelector("[data-role=status]").replaceChildren(...badges);
  };

  const onFrame = (data) => {
    const frame = JSON.parse(data);
    if (frame.type === "rooms") {
      socket.live();
      table.dataset.live = "true";
      rooms.clear();
      for (const state of frame.rooms) {
        rooms.set(state.slug, { state, participants: new Map((state.participants || []).map((p) => [p.id, p])) });
        render(state.slug);
      }
      // A room no longer listed (access withdrawn) disappears, with its callers' names.
      for (const row of table.querySelectorAll("tbody tr[data-slug]")) {
        row.hidden = !rooms.has(row.dataset.slug);
        if (row.hidden) row.querySelector("[data-role=who] ul")?.replaceChildren();
      }
      return;
    }
    const slug = frame.type === "conference.updated" ? frame.conference && frame.conference.slug : frame.conference;
    const room = rooms.get(slug);
    if (!room) return;
    if (frame.type === "conference.updated") {
      room.state = { ...room.state, ...frame.conference };
    } else if (frame.type === "participant.left" || notIn(frame.participant)) {
      room.participants.delete(frame.participant.id);
    } else if (frame.type === "participant.joined" || frame.type === "participant.updated") {
      room.participants.set(frame.participant.id, frame.participant);
    } else if (frame.type === "asterisk.status") {
      room.state = { ...room.state, asterisk: { ...(room.state.asterisk || {}), connected: frame.connected } };
    }
    render(slug);
  };

  const socket = new LiveSocket({
    path: "/ws/conferences/",
    closeCodes: JSON.parse(table.dataset.closeCodes || "{}"), // conferences/protocol.py
    onFrame,
    onState: (state) => {
      if (state !== "connecting") table.dataset.live = "false";
    },
  });
  socket.connect();
}
