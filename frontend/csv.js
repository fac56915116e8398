// CSV export of the scans classified in this tab: one row per scan, one p_<class> column per class seen.
// The file is built and saved in the browser; nothing is sent anywhere.

import { predictionSetText } from "./format.js";

export function csvField(value) {
  let text = value === null || value === undefined ? "" : String(value);
  // Spreadsheets run cells starting with = + - @ as formulas: keep them as text.
  if (/^[=+\-@\t\r]/.test(text)) text = "'" + text;
  return /[",\r\n]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
}

// `scans`: [{time: Date, file, sizeBytes, answer}], oldest first (tab-scans.js).
export function scansCsv(scans) {
  const classes = [];
  for (const scan of scans) {
    for (const name of Object.keys(scan.answer.probabilities || {})) {
      if (!classes.includes(name)) classes.push(name);
    }
  }
  const header = ["time", "file", "size_bytes", "format", "width", "height", "tier", "verdict", "suspicious", "label",
    "confidence", "prediction_set", "uncertain", "unfamiliar"]
    .concat(classes.map((name) => "p_" + name))
    .concat(["threshold", "model_name", "model_version", "model_sha256", "request_id"]);
  const lines = [header.map(csvField).join(",")];
  for (const scan of scans) {
    const answer = scan.answer;
    const input = answer.input || {};
    const model = answer.model || {};
    const row = [
      scan.time.toISOString(),
      scan.file,
      scan.sizeBytes,
      input.format,
      input.width,
      input.height,
      answer.tier || "",
      answer.verdict || "",
      answer.suspicious ? "true" : "false",
      answer.label,
      answer.confidence,
      predictionSetText(answer).replace(/, /g, "|"),
      answer.uncertain === undefined || answer.uncertain === null ? "" : String(answer.uncertain),
      answer.unfamiliar === undefined || answer.unfamiliar === null ? "" : String(answer.unfamiliar),
    ]
      .concat(classes.map((name) => (answer.probabilities || {})[name]))
      .concat([answer.threshold, model.name, model.version, model.sha256, answer.request_id]);
    lines.push(row.map(csvField).join(","));
  }
  return "\ufeff" + lines.join("\r\n") + "\r\n"; // BOM: spreadsheets then read UTF-8 names right
}

// Saves `text` as a download named `filename`.
export function downloadCsv(text, filename) {
  const blob = new Blob([text], { type: "text/csv;charset=utf-8" });
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
