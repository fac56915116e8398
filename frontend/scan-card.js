// One file's card in "Files and results" (index.html's #scan-template): its state (waiting, sending,
// refused, failed, done), its error, and its result: verdict, probabilities, model line, heatmap toggle and opacity.
//
// Runs under a strict Content-Security-Policy (no inline style attributes): bars and the overlay's opacity are
// CSS custom properties set with the CSSOM. Everything the server sends is written as text, never as HTML.

import { byId } from "./dom.js";
import { formatBytes, percent, predictionSetText, tierText } from "./format.js";

const template = byId("scan-template");

function dataUrl(base64, mediaType) {
  return base64.startsWith("data:") ? base64 : "data:" + mediaType + ";base64," + base64;
}

// Builds the card of `item` (a queue entry: {id, name, size, ...}) and sets item.el to its parts.
// Returns the fragment to insert; onRetry and onRemove are called when its buttons are pressed.
export function createCard(item, { onRetry, onRemove }) {
  const fragment = template.content.cloneNode(true);
  const card = fragment.querySelector(".scan-card");
  const find = (selector) => card.querySelector(selector);
  const element = {
    card: card,
    name: find(".scan-name"),
    meta: find(".scan-meta"),
    state: find(".scan-state"),
    preview: find(".scan-preview"),
    overlay: find(".scan-overlay"),
    noPreview: find(".no-preview"),
    caption: find(".scan-caption"),
    progress: find(".scan-progress"),
    error: find(".scan-error"),
    errorTitle: find(".error-title"),
    errorDetail: find(".error-detail"),
    result: find(".scan-result"),
    verdict: find(".verdict"),
    label: find(".label-value"),
    uncertainNote: find(".uncertain-note"),
    unfamiliarNote: find(".unfamiliar-note"),
    setExplain: find(".set-explain"),
    notes: find(".answer-notes"),
    setLine: find(".set-line"),
    setValue: find(".set-value"),
    confidenceValue: find(".confidence-value"),
    confidenceFill: find(".bar-fill"),
    probabilities: find(".probabilities tbody"),
    heatmapControls: find(".heatmap-controls"),
    heatmapToggle: find(".heatmap-toggle"),
    heatmapToggleLabel: find(".heatmap-toggle-label"),
    heatmapOpacity: find(".heatmap-opacity"),
    heatmapOpacityLabel: find(".heatmap-opacity-label"),
    heatmapOpacityValue: find(".heatmap-opacity-value"),
    modelLine: find(".model-line"),
    disclaimer: find(".answer-disclaimer"),
    retry: find(".retry-button"),
    remove: find(".remove-button"),
    body: find(".scan-body"),
    details: find(".details-button"),
  };
  item.el = element;
  card.id = "scan-" + item.id;
  element.name.id = "scan-" + item.id + "-name";
  element.name.tabIndex = -1;
  element.name.textContent = item.name;
  element.meta.textContent = formatBytes(item.size);
  card.setAttribute("aria-labelledby", element.name.id);

  const toggleId = "heatmap-toggle-" + item.id;
  const opacityId = "heatmap-opacity-" + item.id;
  element.heatmapToggle.id = toggleId;
  element.heatmapToggleLabel.htmlFor = toggleId;
  element.heatmapOpacity.id = opacityId;
  element.heatmapOpacityLabel.htmlFor = opacityId;
  element.heatmapOpacityValue.htmlFor = opacityId;
  element.heatmapToggle.addEventListener("change", () => applyHeatmap(item));
  element.heatmapOpacity.addEventListener("input", () => applyHeatmap(item));

  element.retry.addEventListener("click", () => {
    setState(item, "waiting", "Waiting to be classified");
    element.error.hidden = true;
    element.name.focus();
    onRetry(item);
  });
  element.remove.addEventListener("click", () => onRemove(item));
  element.body.id = "scan-" + item.id + "-body";
  element.details.setAttribute("aria-controls", element.body.id);
  element.details.addEventListener("click", () => {
    item.opened = element.details.getAttribute("aria-expanded") !== "true";
    setCollapsed(item, !item.opened);
  });
  return fragment;
}

// In a worklist (many files), a card is one line (name, state, tier) until opened; `details` opens or closes it.
export function setCollapsed(item, collapsed) {
  const element = item.el;
  element.details.hidden = false;
  element.details.setAttribute("aria-expanded", collapsed ? "false" : "true");
  element.details.textContent = collapsed ? "Show details" : "Hide details";
  element.body.hidden = collapsed;
  element.card.classList.toggle("is-collapsed", collapsed);
}

export function showLocalPreview(item) {
  // PNG and JPEG display directly; DICOM fails to load and waits for the API's preview.
  const element = item.el;
  item.previewUrl = URL.createObjectURL(item.file);
  element.preview.alt = "Preview of " + item.name;
  element.preview.addEventListener(
    "error",
    () => {
      if (element.preview.src.startsWith("blob:")) {
        element.preview.hidden = true;
        element.noPreview.hidden = false;
      }
    },
    { once: true }
  );
  element.preview.addEventListener("load", () => {
    element.preview.hidden = false;
    element.noPreview.hidden = true;
  });
  element.preview.src = item.previewUrl;
}

export function removeCard(item) {
  if (item.previewUrl) URL.revokeObjectURL(item.previewUrl);
  item.el.card.remove();
}

export function setState(item, state, text) {
  item.state = state;
  const element = item.el;
  element.card.dataset.state = state;
  element.state.textContent = text;
  element.progress.hidden = state !== "sending";
  element.remove.hidden = !(state === "waiting" || state === "refused" || state === "failed");
  element.retry.hidden = !(state === "failed" && item.retriable);
  // A file that failed before any preview existed gets no empty picture frame.
  const noImage = (state === "failed" || state === "refused") && element.preview.hidden;
  element.card.classList.toggle("no-figure", noImage);
}

export function showError(item, title, detail) {
  const element = item.el;
  element.errorTitle.textContent = title;
  element.errorDetail.textContent = detail || "";
  element.errorDetail.hidden = !detail;
  element.error.hidden = false;
  element.result.hidden = true;
}

export function hideError(item) {
  item.el.error.hidden = true;
}

// A /predict answer on the card; the card's state becomes "done".
export function showResult(item, answer) {
  const element = item.el;
  const suspicious = Boolean(answer.suspicious);
  // The tier, in the words of the answer (never the original app's "Cancer Detected").
  element.verdict.textContent = tierText(answer);
  element.verdict.classList.toggle("suspicious", suspicious);
  element.verdict.classList.toggle("clear", !suspicious);
  element.card.classList.toggle("is-suspicious", suspicious);
  element.label.textContent = answer.label;
  // The conformal prediction set: every finding the model cannot rule out (about 9 cases in 10 hold the
  // true one). More than one means the answer needs a clinician's review.
  const uncertain = answer.uncertain === true;
  element.card.classList.toggle("is-uncertain", uncertain);
  element.uncertainNote.hidden = !uncertain;
  element.setLine.hidden = !Array.isArray(answer.prediction_set);
  element.setExplain.hidden = element.setLine.hidden;
  element.setValue.textContent = predictionSetText(answer);
  element.unfamiliarNote.hidden = answer.unfamiliar !== true;
  element.card.classList.toggle("is-unfamiliar", answer.unfamiliar === true);
  // Plain words on what this tier and set mean (the unfamiliar sentence is already shown above).
  const notes = (Array.isArray(answer.notes) ? answer.notes : []).filter((note) => !/unlike the scans/.test(note));
  element.notes.textContent = notes.join(" ");
  element.notes.hidden = notes.length === 0;
  element.confidenceValue.textContent = percent(answer.confidence);
  element.confidenceFill.style.setProperty("--value", String(Number(answer.confidence) || 0));
  showProbabilities(element.probabilities, answer);
  element.modelLine.textContent = modelLine(answer);
  element.disclaimer.textContent = answer.disclaimer || "Research tool. Not a diagnosis. A clinician must review every scan.";

  if (typeof answer.preview === "string" && answer.preview) {
    element.preview.alt = "What the model saw for " + item.name;
    element.preview.src = dataUrl(answer.preview, "image/png");
    element.preview.hidden = false;
    element.noPreview.hidden = true;
  } else if (element.preview.hidden) {
    element.noPreview.textContent = "No preview available for this file.";
  }

  const hasHeatmap = typeof answer.heatmap === "string" && answer.heatmap.length > 0;
  element.heatmapControls.hidden = !hasHeatmap;
  if (hasHeatmap) {
    element.overlay.src = dataUrl(answer.heatmap, "image/png");
    element.heatmapToggle.checked = false;
  } else {
    element.overlay.removeAttribute("src");
  }
  applyHeatmap(item);

  element.result.hidden = false;
  element.error.hidden = true;
  const positive = typeof answer.positive_probability === "number" ? ", " + percent(answer.positive_probability) + " positive" : "";
  setState(item, "done", tierText(answer) + positive + (uncertain ? ", uncertain" : ""));
}

function showProbabilities(tbody, answer) {
  tbody.replaceChildren();
  for (const [name, probability] of Object.entries(answer.probabilities)) {
    const row = document.createElement("tr");
    if (name === answer.label) row.classList.add("top");
    const nameCell = document.createElement("th");
    nameCell.scope = "row";
    nameCell.textContent = name;
    const valueCell = document.createElement("td");
    const bar = document.createElement("div");
    bar.className = "bar bar-small";
    bar.setAttribute("aria-hidden", "true");
    const fill = document.createElement("div");
    fill.className = "bar-fill";
    fill.style.setProperty("--value", String(Number(probability) || 0));
    bar.append(fill);
    const value = document.createElement("span");
    value.className = "probability-value";
    value.textContent = percent(probability);
    valueCell.append(bar, value);
    row.append(nameCell, valueCell);
    tbody.append(row);
  }
}

function modelLine(answer) {
  const model = answer.model || {};
  const input = answer.input || {};
  let text = "Model " + (model.name || "unknown") + ", version " + (model.version || "unknown") + ".";
  if (input.format) {
    text += " Input: " + input.format;
    if (input.width && input.height) text += ", " + input.width + "×" + input.height;
    if (typeof input.frame === "number") text += ", frame " + input.frame;
    if (input.window && input.window.center !== undefined) {
      text += ", lung window (centre " + input.window.center + " HU, width " + input.window.width + " HU)";
    }
    text += ".";
  }
  return text;
}

function applyHeatmap(item) {
  const element = item.el;
  const available = !element.heatmapControls.hidden;
  const shown = available && element.heatmapToggle.checked && !element.preview.hidden;
  const opacity = Number(element.heatmapOpacity.value) / 100;
  element.overlay.hidden = !shown;
  element.overlay.style.setProperty("--overlay-opacity", String(opacity));
  element.heatmapOpacity.disabled = !element.heatmapToggle.checked;
  element.heatmapOpacityValue.textContent = Math.round(opacity * 100) + "%";
  element.caption.textContent = shown
    ? "Heatmap on: warmer colours mark the regions that weighed most in the model's score."
    : "";
}
