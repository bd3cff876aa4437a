// The moderator's announcements: a sound from the server's list (config.sounds) played to the
// whole room (the play action). Shown only to a moderator, and only when the server has sounds;
// the room's music on hold pauses around it (the worker does that). The server checks the name
// again; its refusal, translated, shows beside the button.
import { element, setText } from "./dom.js";

const PLAY_KEY = "announce:play";

export class Announcements {
  /** ``sounds``: ``[{name, label}]``; ``controls``: controls.js's Controls (its request() and isPending()). */
  constructor({ root, sounds, actions, t, controls }) {
    this.section = root.querySelector('[data-role="announce"]');
    this.sounds = Array.isArray(sounds) ? sounds.filter((s) => s && typeof s.name === "string") : [];
    this.actions = actions || {};
    this.t = t;
    this.controls = controls;
    this.ui = null;
  }

  render(state) {
    if (!this.section) return;
    if (!state.canModerate || !this.actions.PLAY || this.sounds.length === 0) {
      if (this.ui) {
        this.section.replaceChildren();
        this.ui = null;
      }
      this.section.hidden = true;
      return;
    }
    if (!this.ui) this.build();
    const pending = this.controls.isPending(PLAY_KEY);
    if (pending) {
      this.ui.play.setAttribute("aria-disabled", "true");
      this.ui.play.dataset.pending = "true";
    } else {
      this.ui.play.removeAttribute("aria-disabled");
      delete this.ui.play.dataset.pending;
    }
    this.section.hidden = false;
  }

  build() {
    const { t } = this;
    const heading = element("h2", "", t("announce_heading"));
    heading.id = "announce-heading";
    this.section.setAttribute("aria-labelledby", heading.id);
    const form = element("form", "announce-form");
    form.dataset.role = "announce-form";
    const label = element("label", "", t("announce_sound_label"));
    label.htmlFor = "announce-sound";
    const select = element("select", "announce-sound");
    select.id = "announce-sound";
    select.dataset.role = "announce-sound";
    for (const sound of this.sounds) {
      const option = element("option", "", String(sound.label || sound.name));
      option.value = sound.name;
      select.append(option);
    }
    const play = element("button", "", t("announce_play"));
    play.type = "submit";
    play.dataset.role = "announce-play";
    play.dataset.control = "play";
    play.dataset.action = this.actions.PLAY;
    const error = element("p", "announce-error");
    error.dataset.role = "announce-error";
    error.setAttribute("role", "status");
    const row = element("div", "invite-row");
    row.append(select, play);
    form.append(label, row, error);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (this.controls.isPending(PLAY_KEY)) return;
      setText(error, "");
      this.controls.request(this.actions.PLAY, PLAY_KEY, { sound: select.value }, {
        onError: (text) => setText(error, text),
      });
    });
    this.section.replaceChildren(heading, form);
    this.ui = { form, select, play, error };
  }
}
