// Small DOM helpers every part of the page shares.

export const byId = (id) => document.getElementById(id);

// The classify panel's live status line (role="status"): what screen readers hear after each step.
export function announce(message) {
  byId("status").textContent = message;
}

// aria-disabled instead of `disabled`: a button that disables itself keeps keyboard focus.
export function setEnabled(button, enabled) {
  button.setAttribute("aria-disabled", enabled ? "false" : "true");
  button.classList.toggle("is-disabled", !enabled);
}

export function isEnabled(button) {
  return button.getAttribute("aria-disabled") !== "true";
}
