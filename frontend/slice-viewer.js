// The study's slice viewer: the user's own dropped files, decoded in this browser (dicom-slices.js), in the
// study's slice order; the mouse wheel, the arrow keys (Page Up/Down by ten, Home, End) and two buttons move
// through them. DICOM slices get display windows (lung, mediastinum, bone); the most suspicious slices, whose
// heatmaps the API returns, get the heatmap toggle.

import { byId, setEnabled } from "./dom.js";
import { percent, tierText } from "./format.js";
import { decodeSlice, drawSlice, WINDOWS } from "./dicom-slices.js";

const CACHE_SIZE = 24; // decoded slices kept (a 512x512 slice in HU is 1 MB)

const ui = {
  frame: byId("viewer-frame"),
  canvas: byId("viewer-canvas"),
  heatmap: byId("viewer-heatmap"),
  note: byId("viewer-note"),
  position: byId("viewer-position"),
  result: byId("viewer-result"),
  previous: byId("viewer-previous"),
  next: byId("viewer-next"),
  windows: byId("window-presets"),
  heatmapToggle: byId("viewer-heatmap-toggle"),
  heatmapRow: byId("viewer-heatmap-row"),
};

let slices = []; // this series' slices, in order (the API's entries)
let files = []; // the dropped files, by upload index
let marked = new Map(); // upload index -> a most suspicious slice {heatmap_url, preview_url, ...}
let current = 0;
let windowName = "lung";
const cache = new Map(); // upload index -> Promise of a decoded slice

export function initViewer() {
  ui.frame.addEventListener("keydown", (event) => {
    const steps = { ArrowUp: -1, ArrowLeft: -1, ArrowDown: 1, ArrowRight: 1, PageUp: -10, PageDown: 10 };
    if (event.key in steps) goTo(current + steps[event.key]);
    else if (event.key === "Home") goTo(0);
    else if (event.key === "End") goTo(slices.length - 1);
    else return;
    event.preventDefault();
  });
  ui.frame.addEventListener(
    "wheel",
    (event) => {
      if (!slices.length || event.deltaY === 0) return;
      event.preventDefault(); // the wheel moves through the slices, not the page
      goTo(current + Math.sign(event.deltaY));
    },
    { passive: false }
  );
  ui.previous.addEventListener("click", () => goTo(current - 1));
  ui.next.addEventListener("click", () => goTo(current + 1));
  ui.windows.addEventListener("change", (event) => {
    if (event.target.name !== "window" || !WINDOWS[event.target.value]) return;
    windowName = event.target.value;
    render();
  });
  ui.heatmapToggle.addEventListener("change", applyHeatmap);
}

// Shows `seriesSlices` (API order) of `droppedFiles`; `suspicious` are the summary's most suspicious slices.
export function showSlices(seriesSlices, droppedFiles, suspicious) {
  slices = seriesSlices;
  files = droppedFiles;
  marked = new Map((suspicious || []).map((entry) => [entry.index, entry]));
  cache.clear();
  ui.heatmapToggle.checked = false;
  ui.frame.setAttribute("aria-valuemin", "1");
  ui.frame.setAttribute("aria-valuemax", String(Math.max(1, slices.length)));
  current = 0;
  render();
}

// Moves to the slice at `order` (0-based, in this series' order).
export function goTo(order) {
  if (!slices.length) return;
  const next = Math.max(0, Math.min(slices.length - 1, order));
  if (next === current) return;
  current = next;
  render();
}

export function orderOf(index) {
  return slices.findIndex((slice) => slice.index === index);
}

export function focusViewer() {
  ui.frame.focus();
}

function decoded(index) {
  if (!cache.has(index)) {
    if (cache.size >= CACHE_SIZE) cache.delete(cache.keys().next().value);
    const file = files[index];
    cache.set(index, file ? decodeSlice(file) : Promise.reject(new Error("no file")));
  }
  return cache.get(index);
}

function positionText(slice) {
  return typeof slice.position === "number" ? "z " + slice.position.toFixed(1) + " mm" : "";
}

function describe(slice) {
  if (slice.error) return "not classified: " + (slice.error.message || slice.error.code || "error");
  const parts = [percent(slice.positive_probability) + " positive", tierText(slice)];
  if (slice.uncertain) parts.push("uncertain");
  if (slice.unfamiliar) parts.push("unfamiliar");
  return parts.join(", ");
}

async function render() {
  const slice = slices[current];
  if (!slice) return;
  const where = [positionText(slice), slice.instance_number != null ? "instance " + slice.instance_number : ""]
    .filter(Boolean)
    .join(", ");
  const label = "Slice " + (current + 1) + " of " + slices.length + (where ? " (" + where + ")" : "");
  ui.position.textContent = label;
  ui.result.textContent = describe(slice);
  ui.result.classList.toggle("suspicious", slice.suspicious === true);
  ui.frame.setAttribute("aria-valuenow", String(current + 1));
  ui.frame.setAttribute("aria-valuetext", label + ": " + describe(slice));
  ui.frame.dataset.index = String(slice.index);
  setEnabled(ui.previous, current > 0); // aria-disabled: a button at the end keeps its focus
  setEnabled(ui.next, current < slices.length - 1);
  const mark = marked.get(slice.index);
  ui.heatmapRow.hidden = !(mark && mark.heatmap_url);
  applyHeatmap();

  const shown = current;
  let image;
  try {
    image = await decoded(slice.index);
  } catch (error) {
    if (shown !== current) return;
    showFallback(mark);
    return;
  }
  if (shown !== current) return; // the user moved on while it decoded
  ui.note.hidden = true;
  ui.canvas.hidden = false;
  ui.windows.hidden = image.kind !== "dicom";
  drawSlice(ui.canvas, image, WINDOWS[windowName]);
  ui.canvas.dataset.window = image.kind === "dicom" ? windowName : "";
}

// A slice this browser cannot decode (a compressed DICOM): the API's preview when it sent one, else a note.
function showFallback(mark) {
  ui.windows.hidden = true;
  ui.canvas.hidden = true;
  ui.note.hidden = false;
  ui.note.textContent =
    mark && mark.preview_url
      ? "This browser cannot show this file itself; the service's preview is shown instead."
      : "This browser cannot show this file (a compressed or unusual DICOM); its result is below.";
  if (mark && mark.preview_url) {
    const preview = new Image();
    preview.onload = () => {
      ui.canvas.width = preview.naturalWidth;
      ui.canvas.height = preview.naturalHeight;
      ui.canvas.getContext("2d").drawImage(preview, 0, 0);
      ui.canvas.hidden = false;
    };
    preview.src = mark.preview_url;
  }
}

function applyHeatmap() {
  const slice = slices[current];
  const mark = slice ? marked.get(slice.index) : null;
  const shown = Boolean(mark && mark.heatmap_url && ui.heatmapToggle.checked);
  if (shown && ui.heatmap.getAttribute("src") !== mark.heatmap_url) ui.heatmap.src = mark.heatmap_url;
  ui.heatmap.hidden = !shown;
}
