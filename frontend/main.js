// LungScan page: the entry point index.html loads (<script type="module">). It wires the page's controls to
// the modules that do the work; each module's first lines say what it owns:
//
//   settings.js    config.js's window.LUNGSCAN_CONFIG, read once      api.js        requests, timeouts, errors
//   queue.js       the files added, sent one at a time              scan-card.js  one file's card and result
//   tab-scans.js   the scans classified in this tab, CSV export     csv.js        the CSV itself
//   accounts.js    clinician sign-in and the patient history        models.js     the model picker
//   drop.js        dropped files and folders: a study or slices?    study.js      a whole study: upload, progress
//   study-view.js  the study's answer: N of M, plot, jumps          slice-viewer.js  the study's slices, windows
//   dicom-slices.js  DICOM decoded in the browser (vendor/dicom-parser)  timeline.js  a patient's records in order
//   dom.js, format.js  shared helpers
//
// Privacy: file names and results stay in this tab; requests carry only the image bytes (and, signed in
// with a patient reference, that reference). Under a strict Content-Security-Policy: no inline scripts or styles.

import { initAccounts } from "./accounts.js";
import { announce, byId, isEnabled } from "./dom.js";
import { filesFromDrop, filesFromFolderInput, isStudy } from "./drop.js";
import { formatLimit } from "./format.js";
import { loadModels } from "./models.js";
import { addFiles, isRunning, removeUnsent, startQueue, takeWaiting, updateControls } from "./queue.js";
import { initStudy, offerStudy } from "./study.js";
import { config } from "./settings.js";
import { clearTabScans, exportTabScans, updateTabScanControls } from "./tab-scans.js";

const ui = {
  dropZone: byId("drop-zone"),
  fileInput: byId("file-input"),
  folderInput: byId("folder-input"),
  asStudyButton: byId("as-study-button"),
  maxSize: byId("max-size"),
  classifyButton: byId("classify-button"),
  clearQueueButton: byId("clear-queue-button"),
  exportButton: byId("export-button"),
  clearTabScansButton: byId("clear-history-button"),
};

initAccounts();
initStudy(addFiles);

ui.maxSize.textContent = formatLimit(config.maxUploadBytes);

// A folder, or several DICOM files, is one study; other files go to the queue one by one.
async function take(files, fromFolder) {
  if (await isStudy(files, fromFolder)) offerStudy(files, fromFolder);
  else if (fromFolder && !files.length) announce("This folder holds no files.");
  else addFiles(files);
}

ui.fileInput.addEventListener("change", () => {
  const files = Array.from(ui.fileInput.files || []);
  ui.fileInput.value = ""; // the same file can be added again
  take(files, false);
});

ui.folderInput.addEventListener("change", () => {
  const files = filesFromFolderInput(ui.folderInput.files);
  ui.folderInput.value = "";
  take(files, true);
});

ui.asStudyButton.addEventListener("click", () => {
  if (!isEnabled(ui.asStudyButton)) return;
  offerStudy(takeWaiting(), false);
});

ui.classifyButton.addEventListener("click", () => {
  if (!isEnabled(ui.classifyButton)) {
    announce(isRunning() ? "Already classifying: please wait." : "Add CT slices first.");
    return;
  }
  startQueue();
});

ui.clearQueueButton.addEventListener("click", () => {
  if (isEnabled(ui.clearQueueButton)) removeUnsent();
});

ui.exportButton.addEventListener("click", () => {
  if (isEnabled(ui.exportButton)) exportTabScans();
  else announce("Nothing to export yet.");
});

ui.clearTabScansButton.addEventListener("click", () => {
  if (isEnabled(ui.clearTabScansButton)) clearTabScans();
});

// Drops are accepted anywhere on the page, so a missed drop never navigates away from the results.
let dragDepth = 0;
const hasFiles = (event) => Boolean(event.dataTransfer) && Array.from(event.dataTransfer.types || []).includes("Files");
window.addEventListener("dragenter", (event) => {
  if (!hasFiles(event)) return;
  event.preventDefault();
  dragDepth++;
  ui.dropZone.classList.add("dragging");
});
window.addEventListener("dragover", (event) => {
  if (!hasFiles(event)) return;
  event.preventDefault();
  event.dataTransfer.dropEffect = "copy";
});
window.addEventListener("dragleave", () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (!dragDepth) ui.dropZone.classList.remove("dragging");
});
window.addEventListener("drop", (event) => {
  event.preventDefault();
  dragDepth = 0;
  ui.dropZone.classList.remove("dragging");
  if (!event.dataTransfer || !event.dataTransfer.items.length) return;
  filesFromDrop(event.dataTransfer).then(
    (dropped) => take(dropped.files, dropped.fromFolder),
    () => announce("The dropped folder could not be read.")
  );
});

updateControls();
updateTabScanControls();
loadModels();
