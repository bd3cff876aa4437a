// DOM helpers of the page scripts. Text goes in as textContent only: caller names are hostile.

/** A new element, with a class and text when given. */
export function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Set a node's text only when it differs (a live page redraws often; unchanged text stays put). */
export function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

/** A clock time ("10:04:05") in the page's language; "" for a value that is not a time. */
export function timeFormatter(lang) {
  const options = { hour: "2-digit", minute: "2-digit", second: "2-digit" };
  let format;
  try {
    format = new Intl.DateTimeFormat(lang || undefined, options);
  } catch (error) {
    format = new Intl.DateTimeFormat(undefined, options); // an invalid lang attribute
  }
  return (value) => {
    const date = value instanceof Date ? value : new Date(value);
    return Number.isNaN(date.getTime()) ? "" : format.format(date);
  };
}

/** Set a <time> element to an ISO time, its text in the page's clock format (only when it changed). */
export function setTime(node, iso, formatTime) {
  if (node.dateTime === (iso || "")) return;
  node.dateTime = iso || "";
  node.textContent = formatTime(iso);
}
