// DOM helpers of the page scripts. Text goes in as textContent only: caller names are hostile.

/** A new element, with a class and text when given. */
export function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}
