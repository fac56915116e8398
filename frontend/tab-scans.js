// "Scans classified in this tab": every answer this tab received, in a table (newest first) that can be
// exported as CSV or cleared. It lives only in this tab's memory and holds file names, which never leave
// the computer. Not to be confused with a patient's history (accounts.js), which the server stores for a
// care team. (The table's DOM ids still say "history": the browser tests use them.)

import { downloadCsv, scansCsv } from "./csv.js";
import { announce, byId, setEnabled } from "./dom.js";
import { percent, tierText } from "./format.js";

const ui = {
  empty: byId("history-empty"),
  scroll: byId("history-scroll"),
  headings: byId("history-table").tHead,
  body: byId("history-body"),
  exportButton: byId("export-button"),
  clearButton: byId("clear-history-button"),
};

const scans = []; // {time, file, sizeBytes, answer}, oldest first

// A classified queue item (its name and size) and the API's answer.
export function addTabScan(item, answer) {
  const scan = {
    time: new Date(),
    file: item.name,
    sizeBytes: item.size,
    answer: answer,
  };
  scans.push(scan);
  const row = document.createElement("tr");
  const cells = [
    scan.time.toLocaleTimeString(),
    scan.file,
    tierText(answer) +
      (answer.unfamiliar === true ? " (unfamiliar scan)" : "") +
      (answer.uncertain === true ? " (uncertain — needs review)" : ""),
    answer.label,
    percent(answer.confidence),
    ((answer.model || {}).name || "") + " " + ((answer.model || {}).version || ""),
  ];
  const headings = Array.from(ui.headings.querySelectorAll("th"), (th) => th.textContent.trim());
  cells.forEach((text, index) => {
    const cell = document.createElement("td");
    cell.textContent = text;
    cell.dataset.label = headings[index] || ""; // shown beside the value on narrow screens
    row.append(cell);
  });
  row.cells[1].classList.add("file-cell");
  if (answer.suspicious) row.classList.add("suspicious-row");
  ui.body.prepend(row);
  ui.scroll.hidden = false;
  ui.empty.hidden = true;
  updateTabScanControls();
}

export function exportTabScans() {
  if (!scans.length) {
    announce("Nothing to export yet.");
    return;
  }
  const stamp = new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19);
  downloadCsv(scansCsv(scans), "lungscan-results-" + stamp + ".csv");
  announce("Exported " + scans.length + (scans.length === 1 ? " scan" : " scans") + " as CSV.");
}

export function clearTabScans() {
  scans.length = 0;
  ui.body.replaceChildren();
  ui.scroll.hidden = true;
  ui.empty.hidden = false;
  announce("The list of classified scans was cleared.");
  updateTabScanControls();
}

export function updateTabScanControls() {
  setEnabled(ui.exportButton, scans.length > 0);
  setEnabled(ui.clearButton, scans.length > 0);
}
