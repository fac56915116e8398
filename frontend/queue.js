// The upload queue: files added in this tab, each checked locally, then sent one at a time to POST /predict.
//
// A file is refused before upload when empty or over the API's limit. Only the image bytes are sent: the
// file's name stays in this browser. Each answer goes on the file's card (scan-card.js), into this tab's list
// (tab-scans.js) and, signed in with a patient reference, to the patient's history (accounts.js).
//
// Past WORKLIST_FROM files the list is a worklist: each card one line until opened, the classified ones most
// suspicious first (tier, then positive probability), so that many slices never make a page 10,000 px tall.

import { requestExtras, onResult } from "./accounts.js";
import { describeHttpError, describeUnreachable, predict } from "./api.js";
import { config } from "./settings.js";
import { announce, byId, setEnabled } from "./dom.js";
import { formatBytes, formatLimit } from "./format.js";
import { chosenModel } from "./models.js";
import {
  createCard,
  hideError,
  removeCard,
  setCollapsed,
  setState,
  showError,
  showLocalPreview,
  showResult,
} from "./scan-card.js";
import { addTabScan } from "./tab-scans.js";

const ui = {
  classifyButton: byId("classify-button"),
  clearQueueButton: byId("clear-queue-button"),
  asStudyButton: byId("as-study-button"),
  overall: byId("overall"),
  overallLabel: byId("overall-label"),
  overallProgress: byId("overall-progress"),
  queue: byId("queue"),
  queueTitle: byId("queue-title"),
  queueEmpty: byId("queue-empty"),
};

const items = []; // every file added in this tab, in order: {id, file, name, size, state, previewUrl, answer, el}
const WORKLIST_FROM = 4;
const TIER_RANK = { suspicious: 0, not_excluded: 1, clear: 2 };
let nextId = 1;
let running = false;
let run = { total: 0, done: 0, failed: 0 };

export function isRunning() {
  return running;
}

export function addFiles(fileList) {
  const files = Array.from(fileList || []);
  if (!files.length) return;
  let refused = 0;
  for (const file of files) {
    const item = {
      id: nextId++,
      file: file,
      name: file.name || "unnamed file",
      size: file.size,
      state: "waiting",
      previewUrl: null,
      answer: null,
    };
    items.push(item);
    ui.queue.append(createCard(item, { onRetry: retry, onRemove: removeItem }));
    ui.queueEmpty.hidden = true;
    if (file.size === 0) {
      refuse(item, "This file is empty.", "It was not sent.");
      refused++;
    } else if (file.size > config.maxUploadBytes) {
      refuse(
        item,
        "Too large: " + formatBytes(file.size) + ". The limit is " + formatLimit(config.maxUploadBytes) + " per file.",
        "It was not sent. Export a single slice, or a smaller image, and add it again."
      );
      refused++;
    } else {
      showLocalPreview(item);
      setState(item, "waiting", "Waiting to be classified");
    }
  }
  const added = files.length - refused;
  let message = added === 1 ? "1 file ready to classify." : added + " files ready to classify.";
  if (refused) message += " " + refused + (refused === 1 ? " file was" : " files were") + " refused: see the list.";
  if (added && running) message += " They will be classified after the current ones.";
  announce(message);
  updateWorklist();
  updateControls();
}

// The waiting files, taken out of the queue (to be read as one study instead).
export function takeWaiting() {
  const waiting = items.filter((item) => item.state === "waiting");
  for (const item of waiting) {
    items.splice(items.indexOf(item), 1);
    removeCard(item);
  }
  ui.queueEmpty.hidden = items.length > 0;
  updateWorklist();
  updateControls();
  return waiting.map((item) => item.file);
}

// Collapses the cards the user has not opened once the list is a worklist, and puts the most suspicious first.
function updateWorklist() {
  const worklist = items.length >= WORKLIST_FROM;
  for (const item of items) {
    // A failure stays open (its error and Retry need the user, and so does its answer after a retry) until the
    // user closes it.
    if (item.opened === undefined && (item.state === "failed" || item.state === "refused")) item.opened = true;
    if (worklist) setCollapsed(item, !item.opened);
    else if (item.el.details.getAttribute("aria-expanded") === "false") setCollapsed(item, false);
    item.el.details.hidden = !worklist;
  }
  if (!worklist) return;
  const rank = (item) => {
    if (item.state !== "done") return [item.state === "failed" || item.state === "refused" ? 4 : 3, 0];
    const tier = TIER_RANK[item.answer.tier];
    const positive = Number(item.answer.positive_probability) || 0;
    return [tier === undefined ? (item.answer.suspicious ? 0 : 2) : tier, -positive];
  };
  const order = items
    .map((item, position) => ({ item: item, key: rank(item), position: position }))
    .sort((a, b) => a.key[0] - b.key[0] || a.key[1] - b.key[1] || a.position - b.position)
    .map((entry) => entry.item.el.card);
  const cards = Array.from(ui.queue.children);
  if (order.every((card, index) => cards[index] === card)) return;
  const focused = document.activeElement; // moving a card drops its focus: give it back
  ui.queue.append(...order);
  if (focused && ui.queue.contains(focused)) focused.focus();
}

function refuse(item, title, detail) {
  item.retriable = false;
  showError(item, title, detail);
  setState(item, "refused", "Not sent");
}


function fail(item, title, detail, retriable) {
  item.retriable = retriable;
  showError(item, title, detail);
  setState(item, "failed", "Failed");
  updateWorklist();
  return false;
}

function retry() {
  updateControls();
  startQueue();
}

function removeItem(item) {
  const index = items.indexOf(item);
  if (index >= 0) items.splice(index, 1);
  removeCard(item);
  ui.queueEmpty.hidden = items.length > 0;
  updateWorklist();
  announce(item.name + " removed.");
  ui.queueTitle.focus();
  updateControls();
}

// "Remove unsent files": the waiting and the refused ones.
export function removeUnsent() {
  for (const item of items.filter((entry) => entry.state === "waiting" || entry.state === "refused")) {
    removeItem(item);
  }
  announce("Unsent files removed.");
}

export function updateControls() {
  const waiting = items.filter((item) => item.state === "waiting").length;
  const removable = items.filter((item) => item.state === "waiting" || item.state === "refused").length;
  setEnabled(ui.classifyButton, waiting > 0 && !running);
  ui.classifyButton.textContent = waiting > 1 && !running ? "Classify " + waiting + " files" : "Classify";
  setEnabled(ui.clearQueueButton, removable > 0 && !running);
  ui.asStudyButton.hidden = waiting < 2;
  setEnabled(ui.asStudyButton, waiting >= 2 && !running);
}

export async function startQueue() {
  if (running) return;
  running = true;
  run = { total: 0, done: 0, failed: 0 };
  ui.overall.hidden = false;
  updateControls();
  try {
    let item;
    while ((item = items.find((candidate) => candidate.state === "waiting"))) {
      run.total = run.done + items.filter((candidate) => candidate.state === "waiting").length;
      ui.overallLabel.textContent = "Classifying " + (run.done + 1) + " of " + run.total + "…";
      ui.overallProgress.max = run.total;
      ui.overallProgress.value = run.done;
      announce("Classifying " + (run.done + 1) + " of " + run.total + "…");
      const ok = await classify(item);
      run.done++;
      if (!ok) run.failed++;
    }
  } finally {
    running = false;
    ui.overall.hidden = true;
    const succeeded = run.done - run.failed;
    let message = "Finished: " + succeeded + (succeeded === 1 ? " scan" : " scans") + " classified";
    message += run.failed ? ", " + run.failed + " failed (see the list)." : ".";
    announce(message);
    updateWorklist();
    updateControls();
  }
}

function readAsBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => {
      const text = String(reader.result || "");
      const comma = text.indexOf(",");
      resolve(comma >= 0 ? text.slice(comma + 1) : "");
    };
    reader.onerror = () => reject(new Error("read_failed"));
    reader.readAsDataURL(file);
  });
}

// One file, one request: true when it got a result.
async function classify(item) {
  setState(item, "sending", "Classifying…");
  hideError(item);
  let base64;
  try {
    base64 = await readAsBase64(item.file);
  } catch (error) {
    return fail(item, "The file could not be read from your computer.", "It may have been moved or deleted.", false);
  }
  const request = { image: base64, explain: true }; // no file name: it stays in this browser
  const model = chosenModel();
  if (model) request.model = model;
  // Signed in with a patient reference (accounts.js): the answer is stored for the care team.
  const signedIn = requestExtras();
  if (signedIn) request.patient = signedIn.patient;

  let result;
  try {
    result = await predict(request, signedIn ? signedIn.headers : null);
  } catch (error) {
    const described = describeUnreachable(error);
    return fail(item, described.title, described.detail, described.retriable);
  }
  const body = result.body;
  if (!result.ok) {
    const described = describeHttpError(result.status, body);
    return fail(item, described.title, described.detail, described.retriable);
  }
  if (!body || typeof body.label !== "string" || !body.probabilities) {
    return fail(item, "The service sent an answer this page cannot read.", "Press Retry to try again.", true);
  }
  item.answer = body;
  showResult(item, body);
  updateWorklist();
  addTabScan(item, body);
  onResult(body);
  return true;
}
