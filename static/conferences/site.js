// Small behaviours shared by every page; no inline scripts, so a strict CSP holds.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const select of document.querySelectorAll("select[data-autosubmit]")) {
    select.addEventListener("change", () => select.form.submit());
  }
  for (const hidden of document.querySelectorAll(".js-hidden")) {
    hidden.hidden = true;
  }
});
