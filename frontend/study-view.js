// A classified study on the page: the tier, "N flagged of M slices", a plot of each slice's positive probability
// against its position (SVG drawn here), a jump to each of the most suspicious slices, a series picker when the
// upload held several, and the slice viewer (slice-viewer.js). Server data is written as text only.

import { getStudyDicom, Unreachable } from "./api.js";
import { byId, isEnabled, setEnabled } from "./dom.js";
import { percent, tierText } from "./format.js";
import { focusViewer, goTo, initViewer, orderOf, showSlices } from "./slice-viewer.js";

const SVG = "http://www.w3.org/2000/svg";
// A narrow drawing: its labels stay readable when a 375 px phone scales it down.
const PLOT = { width: 420, height: 170, left: 44, right: 14, top: 12, bottom: 36 };

const ui = {
  result: byId("study-result"),
  verdict: byId("study-verdict"),
  count: byId("study-count"),
  uncertain: byId("study-uncertain"),
  failed: byId("study-failed"),
  seriesBox: byId("study-series-box"),
  series: byId("study-series"),
  plot: byId("study-plot"),
  plotCaption: byId("study-plot-caption"),
  jumps: byId("study-jumps"),
  jumpsBox: byId("study-jumps-box"),
  viewer: byId("study-viewer"),
  exports: byId("study-exports"),
  model: byId("study-model"),
  disclaimer: byId("study-disclaimer"),
};

let study = null; // the GET /studies/{id} answer, every slice page joined
let files = [];
let requestHeaders = null; // the study's ID token, where it was created signed in

initViewer();
ui.series.addEventListener("change", () => showSeries(ui.series.value));

export function clearStudyView() {
  study = null;
  ui.result.hidden = true;
}

function plural(count, word) {
  return count + " " + word + (count === 1 ? "" : "s");
}

// The study answer (its `slices` complete), the dropped files, by upload index, and the headers it was asked with.
export function showStudy(answer, droppedFiles, headers) {
  study = answer;
  files = droppedFiles;
  requestHeaders = headers || null;
  const summary = answer.summary;
  const slices = Array.isArray(answer.slices) ? answer.slices : [];
  const errors = slices.filter((slice) => slice.error).length;
  ui.result.hidden = false;
  ui.failed.hidden = answer.status !== "failed";
  if (!summary) {
    ui.verdict.textContent = "No answer for this study.";
    ui.verdict.className = "verdict";
    ui.count.textContent = errors ? plural(errors, "file") + " could not be classified." : "";
    ui.uncertain.hidden = true;
  } else {
    ui.verdict.textContent = tierText(summary);
    ui.verdict.className = "verdict " + (summary.suspicious ? "suspicious" : "clear");
    let count = summary.flagged + " flagged of " + plural(summary.total, "slice");
    if (errors) count += " (" + plural(errors, "file") + " not classified: see each in the viewer)";
    ui.count.textContent = count + ".";
    ui.uncertain.hidden = summary.uncertain !== true;
  }
  const model = answer.model || {};
  ui.model.textContent = "Model " + (model.name || "unknown") + ", version " + (model.version || "unknown") + ".";
  ui.disclaimer.textContent =
    answer.disclaimer || "Research tool. Not a diagnosis. A clinician must review every scan.";

  const series = Array.isArray(answer.series) ? answer.series : [];
  ui.series.replaceChildren();
  series.forEach((entry, number) => {
    const option = document.createElement("option");
    option.value = entry.series;
    const count = slices.filter((slice) => slice.series === entry.series).length;
    const flagged = entry.summary ? entry.summary.flagged : 0;
    option.textContent = "Series " + (number + 1) + ": " + plural(count, "slice") + ", " + flagged + " flagged";
    ui.series.append(option);
  });
  ui.seriesBox.hidden = series.length < 2;
  showJumps(summary ? summary.most_suspicious_slices || [] : []);
  showSeries(series.length ? series[0].series : null);
  showExports(answer, slices);
}

// ------------------------------------------------------------------ DICOM results (GET /studies/{id}/dicom)

const EXPORTS = [
  { kind: "sr", label: "Download DICOM SR" },
  { kind: "key_image", label: "Download key image (DICOM)" },
];

// For a DICOM study: the Structured Report and the key image, built by the API when asked, saved by the browser.
function showExports(answer, slices) {
  ui.exports.replaceChildren();
  const dicom = answer.status === "done" && answer.summary && slices.some((slice) => slice.sop_instance_uid);
  ui.exports.hidden = !dicom;
  if (!dicom) return;
  const note = document.createElement("p");
  note.className = "hint export-status";
  note.setAttribute("role", "status");
  for (const entry of EXPORTS) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "button button-small button-secondary";
    button.id = "study-download-" + entry.kind.replace("_", "-");
    button.textContent = entry.label;
    setEnabled(button, true);
    button.addEventListener("click", () => download(answer.study_id, entry, button, note));
    ui.exports.append(button);
  }
  note.textContent = "For the PACS: the key image carries \u201cAI heatmap - not for diagnosis\u201d on its pixels.";
  ui.exports.append(note);
}

async function download(studyId, entry, button, note) {
  if (!isEnabled(button)) return;
  setEnabled(button, false);
  note.textContent = "Preparing the DICOM file\u2026";
  try {
    const answer = await getStudyDicom(studyId, requestHeaders);
    const found = answer.ok && answer.body && Array.isArray(answer.body.objects)
      ? answer.body.objects.find((item) => item.kind === entry.kind)
      : null;
    if (!found) {
      const error = answer.body && answer.body.error ? answer.body.error.message : "The service sent no DICOM file.";
      note.textContent = "No DICOM file: " + error;
      return;
    }
    const bytes = Uint8Array.from(atob(found.dicom), (character) => character.charCodeAt(0));
    const link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([bytes], { type: "application/dicom" }));
    link.download = found.filename;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
    note.textContent = found.filename + " saved (kept by this browser only, not by LungScan).";
  } catch (error) {
    note.textContent = error instanceof Unreachable ? "No DICOM file: " + error.message + "." : "No DICOM file.";
  } finally {
    setEnabled(button, true);
  }
}

function seriesSlices(name) {
  const slices = study && Array.isArray(study.slices) ? study.slices : [];
  return name === null ? slices : slices.filter((slice) => slice.series === name);
}

function showSeries(name) {
  ui.series.value = name || "";
  const slices = seriesSlices(name);
  const suspicious = study.summary ? study.summary.most_suspicious_slices || [] : [];
  ui.viewer.hidden = slices.length === 0;
  showSlices(slices, files, suspicious);
  drawPlot(slices);
}

function showJumps(suspicious) {
  ui.jumps.replaceChildren();
  ui.jumpsBox.hidden = suspicious.length === 0;
  for (const entry of suspicious) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "button button-small button-secondary jump-button";
    const where = typeof entry.position === "number" ? "z " + entry.position.toFixed(1) + " mm" : "";
    const instance = entry.instance_number != null ? "instance " + entry.instance_number : "";
    button.textContent =
      "Show " + ([where, instance].filter(Boolean).join(", ") || "slice") + ": " + percent(entry.positive_probability);
    button.dataset.index = String(entry.index);
    button.addEventListener("click", () => jumpTo(entry));
    item.append(button);
    ui.jumps.append(item);
  }
}

function jumpTo(entry) {
  if (entry.series != null && ui.series.value !== entry.series && !ui.seriesBox.hidden) showSeries(entry.series);
  goTo(orderOf(entry.index));
  focusViewer();
}

function svg(name, attributes) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  return element;
}

// Positive probability (0..1, up) against position (z in mm, else slice order), one point per classified slice.
function drawPlot(slices) {
  ui.plot.replaceChildren();
  const points = slices
    .map((slice, order) => ({ slice: slice, order: order }))
    .filter((point) => typeof point.slice.positive_probability === "number");
  const byPosition = points.length > 0 && points.every((point) => typeof point.slice.position === "number");
  const x = (point) => (byPosition ? point.slice.position : point.order + 1);
  const xs = points.map(x);
  const low = xs.length ? Math.min(...xs) : 0;
  const high = xs.length ? Math.max(...xs) : 1;
  const span = high - low || 1;
  const plotWidth = PLOT.width - PLOT.left - PLOT.right;
  const plotHeight = PLOT.height - PLOT.top - PLOT.bottom;
  const px = (value) => PLOT.left + ((value - low) / span) * plotWidth;
  const py = (probability) => PLOT.top + (1 - probability) * plotHeight;
  ui.plot.setAttribute("viewBox", "0 0 " + PLOT.width + " " + PLOT.height);
  for (const probability of [0, 0.5, 1]) {
    const y = py(probability);
    ui.plot.append(svg("line", { x1: PLOT.left, x2: PLOT.width - PLOT.right, y1: y, y2: y, class: "plot-grid" }));
    const label = svg("text", { x: PLOT.left - 6, y: py(probability) + 4, class: "plot-label", "text-anchor": "end" });
    label.textContent = Math.round(probability * 100) + "%";
    ui.plot.append(label);
  }
  for (const [value, anchor] of [
    [low, "start"],
    [high, "end"],
  ]) {
    const label = svg("text", { x: px(value), y: PLOT.height - 16, class: "plot-label", "text-anchor": anchor });
    label.textContent = byPosition ? value.toFixed(0) + " mm" : "slice " + value;
    ui.plot.append(label);
  }
  const middle = PLOT.left + plotWidth / 2;
  const axis = svg("text", { x: middle, y: PLOT.height - 2, class: "plot-label", "text-anchor": "middle" });
  axis.textContent = byPosition ? "position (z)" : "slice order";
  ui.plot.append(axis);
  const sorted = points.slice().sort((a, b) => x(a) - x(b));
  const line = sorted.map((point) => px(x(point)).toFixed(1) + "," + py(point.slice.positive_probability).toFixed(1));
  if (line.length) ui.plot.append(svg("polyline", { points: line.join(" "), class: "plot-line" }));
  for (const point of sorted.filter((entry) => entry.slice.suspicious === true)) {
    const dot = svg("circle", { cx: px(x(point)), cy: py(point.slice.positive_probability), r: 4, class: "plot-flag" });
    dot.dataset.index = String(point.slice.index);
    ui.plot.append(dot);
  }
  const flagged = points.filter((point) => point.slice.suspicious === true).length;
  ui.plotCaption.textContent =
    "Positive probability of each slice against its " +
    (byPosition ? "position (z, mm)" : "order") +
    ": " +
    plural(points.length, "slice") +
    ", " +
    flagged +
    " flagged (dots). Click the plot to show the nearest slice; the buttons below jump to the most suspicious ones.";
  ui.plot.onclick = (event) => {
    if (!sorted.length) return;
    const box = ui.plot.getBoundingClientRect();
    const value = low + ((((event.clientX - box.left) / box.width) * PLOT.width - PLOT.left) / plotWidth) * span;
    const distance = (point) => Math.abs(x(point) - value);
    const nearest = sorted.reduce((best, point) => (distance(point) < distance(best) ? point : best));
    goTo(nearest.order);
  };
}
