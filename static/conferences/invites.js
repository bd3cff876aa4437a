// The moderator's invitations by number: a form that has the server call a number into the room
// (the invite action) and the list of open invitations (dialing, ringing), each with a Cancel
// button (cancel_invite). Shown only to a moderator of a room whose server can dial
// (config.can_invite); viewers get neither, though their timeline says how each call went
// (room-state.js keeps the invitations for everyone, timeline.js words the entries).
//
// The page checks only the number's shape (parseNumber); the server checks the rest (which
// numbers may be called, how often) and its refusal, translated, shows beside the form. The
// requests go through controls.js (one at a time per control, the timeout, the reply). Numbers
// come from users: textContent only.
import { element, setText } from "./dom.js";
import { compareInvites } from "./room-state.js";

/** The longest number the page sends, and the shape it checks (the server checks the rest). */
export const NUMBER_MAX_LENGTH = 32;
export const NUMBER_PATTERN = /^[0-9*#+]{1,32}$/;

// What people paste around the digits: white space, dashes (ASCII and Unicode), dots, parentheses.
const SEPARATORS = /[\s\-\u2010-\u2015\u2212.()]/g;

/** ``raw`` without the separators people type and paste: "+1 (555) 010-0000" -> "+15550100000". */
export function normalizeNumber(raw) {
  return String(raw === null || raw === undefined ? "" : raw).replace(SEPARATORS, "");
}

/** The number to send for what the user typed, or null when it is not one (digits, *, #, +; up to 32). */
export function parseNumber(raw) {
  const number = normalizeNumber(raw);
  return NUMBER_PATTERN.test(number) ? number : null;
}

/** The open invitations as the list shows them: oldest first. */
export function openInvites(state) {
  return [...state.invites.values()].sort(compareInvites);
}

/** The strings key of an open invitation's status ("invite_dialing"), or null for one the page has no word for. */
export function inviteStatusKey(status, strings) {
  const key = `invite_${status}`;
  return Object.prototype.hasOwnProperty.call(strings, key) ? key : null;
}

const CALL_KEY = "invite:call";
const cancelKey = (id) => `invite:${id}:cancel`;

export class Invites {
  /**
   * ``enabled``: config.can_invite (a moderator, a server that can dial); ``actions``: the
   * server's action names; ``controls``: controls.js's Controls (its request() and isPending()).
   */
  constructor({ root, enabled, actions, t, strings, controls }) {
    this.section = root.querySelector('[data-role="invites"]');
    this.enabled = Boolean(enabled) && Boolean(this.section);
    this.actions = actions || {};
    this.t = t;
    this.strings = strings;
    this.controls = controls;
    this.ui = null; // the form and the list, once built
    this.items = new Map(); // open invitation id -> its list item's parts
  }

  /** Draw the form and the list (a moderator's, when the server can dial); hide both otherwise. */
  render(state) {
    if (!this.section) return;
    if (!this.enabled || !state.canModerate || !this.actions.INVITE) {
      if (this.ui) {
        this.section.replaceChildren();
        this.ui = null;
        this.items.clear();
      }
      this.section.hidden = true;
      return;
    }
    if (!this.ui) this.build();
    this.setPending(this.ui.call, CALL_KEY);
    this.renderList(state);
    this.section.hidden = false;
  }

  build() {
    const { t, actions } = this;
    const heading = element("h2", "", t("invites_heading"));
    heading.id = "invites-heading";
    this.section.setAttribute("aria-labelledby", heading.id);

    const form = element("form", "invite-form");
    form.dataset.role = "invite-form";
    form.noValidate = true; // the page says what is wrong itself, in the page's language
    const label = element("label", "invite-label", t("invite_number_label"));
    label.htmlFor = "invite-number";
    const input = element("input", "invite-number");
    input.id = "invite-number";
    input.name = "number";
    input.type = "text";
    input.inputMode = "tel";
    input.autocomplete = "off";
    input.spellcheck = false;
    input.maxLength = NUMBER_MAX_LENGTH;
    input.dataset.role = "invite-number";
    input.setAttribute("aria-describedby", "invite-error");
    const call = element("button", "", t("invite_call"));
    call.type = "submit";
    call.dataset.role = "invite-call";
    call.dataset.control = "invite";
    call.dataset.action = actions.INVITE;
    const error = element("p", "invite-error");
    error.id = "invite-error";
    error.dataset.role = "invite-error";
    error.setAttribute("role", "status");
    const row = element("div", "invite-row");
    row.append(input, call);
    form.append(label, row, error);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    input.addEventListener("input", () => {
      if (input.getAttribute("aria-invalid") === "true" || error.textContent) this.showError("");
    });

    const open = element("div", "invites-open");
    open.dataset.role = "invites-open";
    open.hidden = true;
    const listHeading = element("h3", "", t("invites_list_heading"));
    listHeading.id = "invites-list-heading";
    const list = element("ul", "invites-list");
    list.dataset.role = "invites-list";
    list.setAttribute("aria-labelledby", listHeading.id);
    open.append(listHeading, list);

    this.section.replaceChildren(heading, form, open);
    this.ui = { form, input, call, error, open, list };
  }

  // --- the form ---

  /** Send the number typed (its shape checked here), or say why not. */
  submit() {
    const { input } = this.ui;
    if (this.controls.isPending(CALL_KEY)) return;
    const number = parseNumber(input.value);
    if (number === null) {
      this.showError(this.t("invite_number_invalid"), true);
      input.focus();
      return;
    }
    input.value = number; // what is dialled, as the server will see it
    this.showError("");
    this.controls.request(this.actions.INVITE, CALL_KEY, { number }, {
      onOk: () => {
        if (this.ui && this.ui.input.value === number) this.ui.input.value = ""; // unless retyped meanwhile
      },
      onError: (text) => this.showError(text),
    });
  }

  /** The line under the form: ``text`` ("" clears it); ``invalid``: the number is the problem. */
  showError(text, invalid = false) {
    if (!this.ui) return;
    const { input, error } = this.ui;
    setText(error, text);
    if (text) error.dataset.kind = "error";
    else delete error.dataset.kind;
    if (invalid) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  }

  setPending(button, key) {
    if (this.controls.isPending(key)) {
      button.setAttribute("aria-disabled", "true");
      button.dataset.pending = "true";
    } else {
      button.removeAttribute("aria-disabled");
      delete button.dataset.pending;
    }
  }

  // --- the list ---

  renderList(state) {
    const { list, open } = this.ui;
    const sorted = openInvites(state);
    for (const id of [...this.items.keys()]) {
      if (!state.invites.has(id)) this.removeItem(id);
    }
    sorted.forEach((invite, index) => {
      let parts = this.items.get(invite.id);
      if (!parts) {
        parts = this.buildItem(invite.id);
        this.items.set(invite.id, parts);
      }
      this.updateItem(parts, invite);
      const here = list.children[index];
      if (here !== parts.item) list.insertBefore(parts.item, here || null); // moved only when out of place
    });
    open.hidden = sorted.length === 0;
  }

  buildItem(id) {
    const item = element("li", "invite-item");
    item.dataset.inviteId = String(id);
    const parts = { item, invite: null };
    parts.number = element("span", "invite-number-text");
    parts.number.dataset.role = "invite-number-text";
    parts.status = element("span", "invite-status");
    parts.status.dataset.role = "invite-status";
    parts.cancel = element("button", "row-button danger", this.t("invite_cancel"));
    parts.cancel.type = "button";
    parts.cancel.dataset.role = "invite-cancel";
    parts.cancel.dataset.control = "cancel_invite";
    if (this.actions.CANCEL_INVITE) parts.cancel.dataset.action = this.actions.CANCEL_INVITE;
    else parts.cancel.hidden = true; // the server offers no way to cancel
    parts.cancel.addEventListener("click", () => this.cancel(id, parts.cancel));
    const actions = element("span", "invite-actions");
    actions.append(parts.cancel);
    item.append(parts.number, " ", parts.status, " ", actions);
    return parts;
  }

  updateItem(parts, invite) {
    const { t } = this;
    parts.invite = invite;
    const status = String(invite.status || "");
    parts.item.dataset.status = status;
    const number = invite.number || "";
    setText(parts.number, number);
    const key = inviteStatusKey(status, this.strings);
    setText(parts.status, key ? t(key) : status);
    parts.cancel.setAttribute("aria-label", t("invite_cancel_label", { number }));
    this.setPending(parts.cancel, cancelKey(invite.id));
  }

  cancel(id, button) {
    if (button.getAttribute("aria-disabled") === "true" || !this.items.has(id)) return;
    this.showError("");
    this.controls.request(this.actions.CANCEL_INVITE, cancelKey(id), { invite: id }, {
      onError: (text) => this.showError(text),
    });
  }

  /** An invitation ended: its item goes; the focus in it moves to a neighbour's Cancel, or the number field. */
  removeItem(id) {
    const parts = this.items.get(id);
    this.items.delete(id);
    if (!parts) return;
    const active = document.activeElement;
    const hadFocus = active && parts.item.contains(active);
    const neighbour = parts.item.nextElementSibling || parts.item.previousElementSibling;
    parts.item.remove();
    if (!hadFocus) return;
    const target = neighbour ? neighbour.querySelector('[data-role="invite-cancel"]:not([hidden])') : null;
    (target || this.ui.input).focus();
  }
}
