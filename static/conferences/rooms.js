// The room list: live people counts and locked badges from /ws/conferences/.
"use strict";
(() => {
  const table = document.querySelector("table.rooms");
  if (!table) return;
  const lockedText = table.dataset.lockedText || "locked";
  const notLoggedIn = Number(table.dataset.notLoggedInCode); // conferences/closecodes.py
  let delay = 1000;

  function update(room) {
    const row = table.querySelector(`tr[data-slug="${CSS.escape(room.slug)}"]`);
    if (!row) return;
    row.querySelector("[data-role=count]").textContent = String(room.participant_count);
    const status = row.querySelector("[data-role=status]");
    status.replaceChildren();
    if (room.locked) {
      const badge = document.createElement("span");
      badge.className = "badge";
      badge.textContent = lockedText;
      status.append(badge);
    }
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ws/conferences/`);
    socket.addEventListener("message", (event) => {
      const frame = JSON.parse(event.data);
      if (frame.type === "rooms") {
        delay = 1000;
        table.dataset.live = "true";
        frame.rooms.forEach(update);
      } else if (frame.type === "conference.updated") {
        update(frame.conference);
      }
    });
    socket.addEventListener("close", (event) => {
      table.dataset.live = "false";
      if (event.code === notLoggedIn) return; // logged out: the next page load goes to the login page
      // As the room page: the first retry anywhere in 0.25-2.25 s (lists dropped together spread out).
      const wait = delay === 1000 ? 250 + 2000 * Math.random() : delay * (0.5 + Math.random() / 2);
      delay = Math.min(delay * 2, 30000);
      setTimeout(connect, wait);
    });
  }
  connect();
})();
