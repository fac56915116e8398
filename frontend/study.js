// A whole study (a DICOM series, a folder, or files the user chose to read as one): created with POST /studies,
// each file uploaded straight to its presigned POST (S3; the API never carries the bytes) with its progress,
// started, then GET /studies/{id} polled until the summary is there; study-view.js shows the answer.
//
// Requests name no file: only sizes (and, signed in with a patient reference, that reference). The files stay
// in this tab for the viewer.

import { onStudyResult, requestExtras } from "./accounts.js";
import {
  createStudy,
  describeHttpError,
  describeUnreachable,
  getStudy,
  startStudy,
  uploadToPresigned,
} from "./api.js";
import { byId, setEnabled } from "./dom.js";
import { formatBytes } from "./format.js";
import { chosenModel } from "./models.js";
import { clearStudyView, showStudy } from "./study-view.js";

const PARALLEL_UPLOADS = 4;
const UPLOAD_TRIES = 2;
const POLL_MS = 1000;
const POLL_TRIES = 5;
const SLICE_PAGE = 500;

const ui = {
  section: byId("study-section"),
  title: byId("study-title"),
  files: byId("study-files"),
  ready: byId("study-ready-actions"),
  start: byId("study-start-button"),
  split: byId("study-split-button"),
  progress: byId("study-progress"),
  progressLabel: byId("study-progress-label"),
  progressBar: byId("study-progress-bar"),
  status: byId("study-status"),
  error: byId("study-error"),
  errorTitle: byId("study-error-title"),
  errorDetail: byId("study-error-detail"),
};

const wait = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

let pending = null; // {files, fromFolder}: offered, not started
let running = false;
let onSplit = () => {};

export function isStudyRunning() {
  return running;
}

// `split(files)` is what "Classify as separate slices" does with the files instead (the upload queue).
export function initStudy(split) {
  onSplit = split;
  ui.start.addEventListener("click", () => {
    if (pending && !running) runStudy(pending.files);
  });
  ui.split.addEventListener("click", () => {
    if (!pending || running) return;
    const files = pending.files;
    pending = null;
    ui.section.hidden = true;
    onSplit(files);
  });
}

// Files that read as one study: shown ready, with the choice to read them as separate slices instead.
export function offerStudy(files, fromFolder) {
  if (running) {
    say("A study is still being classified: wait for it to finish, then add the next one.");
    return;
  }
  const nonEmpty = files.filter((file) => file.size > 0);
  const empty = files.length - nonEmpty.length;
  pending = { files: nonEmpty, fromFolder: fromFolder };
  clearStudyView();
  ui.section.hidden = false;
  ui.error.hidden = true;
  ui.progress.hidden = true;
  ui.ready.hidden = false;
  setEnabled(ui.start, nonEmpty.length > 0);
  const bytes = nonEmpty.reduce((total, file) => total + file.size, 0);
  let text = (fromFolder ? "A folder of " : "") + plural(nonEmpty.length, "file") + ", " + formatBytes(bytes) + ".";
  if (empty) text += " " + plural(empty, "empty file") + " left out.";
  ui.files.textContent = text;
  say("Study ready: " + plural(nonEmpty.length, "file") + ". Press “Upload and classify the study”.");
  ui.title.focus();
}

function plural(count, word) {
  return count + " " + word + (count === 1 ? "" : "s");
}

function say(message) {
  ui.status.textContent = message;
}

function fail(title, detail) {
  ui.errorTitle.textContent = title;
  ui.errorDetail.textContent = detail || "";
  ui.error.hidden = false;
  ui.progress.hidden = true;
  say("The study was not classified: " + title);
}

function showProgress(label, value, max) {
  ui.progress.hidden = false;
  ui.progressLabel.textContent = label;
  ui.progressBar.max = Math.max(1, max);
  ui.progressBar.value = Math.min(value, max);
}

async function runStudy(files) {
  running = true;
  ui.ready.hidden = true;
  ui.error.hidden = true;
  ui.title.focus(); // the button pressed is gone: keep the keyboard in the study
  const extras = await requestExtras(); // signed in with a patient: one history record (the token renewed first)
  const headers = extras ? extras.headers : null;
  try {
    const created = await ask(() =>
      createStudy(
        Object.assign(
          { files: files.map((file) => ({ size: file.size })), explain: true },
          chosenModel() ? { model: chosenModel() } : {},
          extras ? { patient: extras.patient } : {}
        ),
        headers
      )
    );
    if (!created) return;
    const study = created.body;
    if (!study || typeof study.study_id !== "string" || !Array.isArray(study.uploads)) {
      fail("The service sent an answer this page cannot read.", "Try again.");
      return;
    }
    if (!(await uploadAll(files, study.uploads))) return;
    if (!(await ask(() => startStudy(study.study_id, headers)))) return;
    const answer = await waitForResult(study.study_id, headers);
    if (!answer) return;
    ui.progress.hidden = true;
    showStudy(answer, files, headers);
    say(answer.status === "failed" ? "The study failed: see below." : "Study classified.");
    if (extras) onStudyResult(answer);
  } finally {
    running = false;
    pending = null;
  }
}

// One API call: its 2xx answer, or null once the failure is shown. `tries` > 1 for reads that may be repeated
// (a poll): a dropped connection or a busy service is tried again before the study is given up on.
async function ask(send, tries = 1) {
  let result;
  for (let attempt = 1; ; attempt++) {
    try {
      result = await send();
    } catch (error) {
      if (attempt < tries) {
        await wait(POLL_MS * attempt);
        continue;
      }
      const described = describeUnreachable(error);
      fail(described.title, described.detail);
      return null;
    }
    if ((result.status === 429 || result.status >= 500) && attempt < tries) {
      await wait(POLL_MS * attempt);
      continue;
    }
    break;
  }
  if (!result.ok) {
    const described = describeHttpError(result.status, result.body);
    fail(described.title, described.detail);
    return null;
  }
  return result;
}

async function uploadAll(files, uploads) {
  const total = files.reduce((sum, file) => sum + file.size, 0);
  const sent = new Array(files.length).fill(0);
  let done = 0;
  let failed = false;
  const update = () => {
    const bytes = sent.reduce((sum, value) => sum + value, 0);
    showProgress(
      "Uploading " + done + " of " + files.length + " files (" +
        formatBytes(bytes) + " of " + formatBytes(total) + ")…",
      bytes,
      total
    );
  };
  update();
  say("Uploading " + plural(files.length, "file") + "…");
  const queue = uploads.filter((target) => target && files[target.index]);
  if (queue.length !== files.length) {
    fail("The service sent an answer this page cannot read.", "Try again.");
    return false;
  }
  const worker = async () => {
    let target;
    while (!failed && (target = queue.shift())) {
      const file = files[target.index];
      let status = 0;
      for (let attempt = 0; attempt < UPLOAD_TRIES && !(status >= 200 && status < 300); attempt++) {
        status = await uploadToPresigned(target, file, (bytes) => {
          sent[target.index] = bytes;
          update();
        });
      }
      if (!(status >= 200 && status < 300)) {
        failed = true;
        fail(
          "A file could not be uploaded" + (status ? " (status " + status + ")." : ": the storage did not answer."),
          "Check the network connection, then add the study again."
        );
        return;
      }
      sent[target.index] = file.size;
      done++;
      update();
    }
  };
  await Promise.all(Array.from({ length: PARALLEL_UPLOADS }, worker));
  return !failed;
}

// Polls until the study is done or failed; then reads every page of its slices.
async function waitForResult(studyId, headers) {
  for (;;) {
    const result = await ask(() => getStudy(studyId, { limit: 1, headers: headers }), POLL_TRIES);
    if (!result) return null;
    const body = result.body || {};
    const progress = body.progress || {};
    if (body.status === "done" || body.status === "failed") break;
    const total = Number(progress.total) || 0;
    const done = Number(progress.done) || 0;
    showProgress("Classifying: " + done + " of " + plural(total, "slice") + " done…", done, total);
    say("Classifying " + done + " of " + total + "…");
    await wait(POLL_MS);
  }
  let answer = null;
  let cursor = null;
  const slices = [];
  do {
    const result = await ask(
      () => getStudy(studyId, { limit: SLICE_PAGE, cursor: cursor, headers: headers }),
      POLL_TRIES
    );
    if (!result || !result.body) return null;
    answer = answer || result.body;
    slices.push(...(Array.isArray(result.body.slices) ? result.body.slices : []));
    cursor = result.body.next_cursor || null;
  } while (cursor);
  answer.slices = slices;
  return answer;
}
