// The API client: every request the page sends to the LungScan API, its timeouts, and its errors in plain words.
//
// Requests carry no cookies and no referrer; a file's name never goes into one (only the image bytes).
// The sign-in itself goes to Cognito, not to this API (accounts.js).

import { config } from "./settings.js";
import { formatLimit } from "./format.js";

const MODEL_LIST_TIMEOUT_MS = 10000;

// The request did not get an HTTP answer: `timedOut` when the page gave up waiting, otherwise the network failed.
export class Unreachable extends Error {
  constructor(timedOut) {
    super(timedOut ? "the API did not answer in time" : "the API could not be reached");
    this.name = "Unreachable";
    this.timedOut = timedOut;
  }
}

function apiHeaders(extra) {
  const headers = Object.assign({ Accept: "application/json" }, extra || {});
  if (config.apiKey) headers["x-api-key"] = config.apiKey;
  return headers;
}

// Any HTTP answer resolves to {status, ok, body}, body being the parsed JSON or null (a gateway's or a
// proxy's HTML page: the status says enough); no answer (network, timeout) rejects with Unreachable.
async function call(method, path, { headers, body, timeoutMs, keepalive } = {}) {
  const controller = new AbortController();
  let timedOut = false;
  const timer = timeoutMs
    ? setTimeout(() => {
        timedOut = true;
        controller.abort();
      }, timeoutMs)
    : null;
  try {
    const response = await fetch(config.apiUrl + path, {
      method: method,
      headers: apiHeaders(headers),
      body: body,
      signal: controller.signal,
      keepalive: Boolean(keepalive), // a request sent as the page closes (accounts.js: a delete past its undo)
      credentials: "omit",
      referrerPolicy: "no-referrer",
    });
    const text = await response.text(); // within the timeout too: a stalled body is no answer
    let parsed = null;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch (error) {
      parsed = null;
    }
    return { status: response.status, ok: response.ok, body: parsed };
  } catch (error) {
    throw new Unreachable(timedOut);
  } finally {
    clearTimeout(timer);
  }
}

// POST /predict: one CT slice (JSON with base64). `headers` adds a signed-in clinician's token (accounts.js).
export function predict(request, headers) {
  return call("POST", "/predict", {
    headers: Object.assign({ "Content-Type": "application/json" }, headers || {}),
    body: JSON.stringify(request),
    timeoutMs: config.requestTimeoutMs,
  });
}

// GET /model: the models served, with their versions and which one is the default.
export function listModels() {
  return call("GET", "/model", { timeoutMs: MODEL_LIST_TIMEOUT_MS });
}

// GET /patients: one page of the care team's patients, in reference order (`next`: the previous page's token).
export function listPatients(limit, next, idToken) {
  const path = "/patients?limit=" + limit + (next ? "&next=" + encodeURIComponent(next) : "");
  return call("GET", path, { headers: { Authorization: idToken } });
}

// GET /patients/{ref}/scans: a patient's stored scans, newest first, at most `limit` (the raw Cognito ID
// token authorizes it).
export function listPatientScans(ref, limit, idToken) {
  const path = "/patients/" + encodeURIComponent(ref) + "/scans?limit=" + limit;
  return call("GET", path, { headers: { Authorization: idToken } });
}

// DELETE /patients/{ref}/scans/{record_id}: for the whole care team (only its author may). `keepalive`: sent
// while the page closes.
export function deletePatientScan(ref, recordId, idToken, keepalive) {
  const path = "/patients/" + encodeURIComponent(ref) + "/scans/" + encodeURIComponent(recordId);
  return call("DELETE", path, { headers: { Authorization: idToken }, keepalive: keepalive });
}

// ------------------------------------------------------------------ whole studies

const STUDY_TIMEOUT_MS = 30000;

// POST /studies: a study of `files` ([{size}], never names)
// -> 201 {study_id, expires_at, uploads: [{index, url, fields}]}.
export function createStudy(request, headers) {
  return call("POST", "/studies", {
    headers: Object.assign({ "Content-Type": "application/json" }, headers || {}),
    body: JSON.stringify(request),
    timeoutMs: STUDY_TIMEOUT_MS,
  });
}

// POST /studies/{id}/start: 202 once every file is uploaded (idempotent).
export function startStudy(studyId, headers) {
  return call("POST", "/studies/" + encodeURIComponent(studyId) + "/start", {
    headers: headers || {},
    timeoutMs: STUDY_TIMEOUT_MS,
  });
}

// GET /studies/{id}: status, progress, summary and one page of slices (`cursor` for the next one).
export function getStudy(studyId, { limit, cursor, headers } = {}) {
  let path = "/studies/" + encodeURIComponent(studyId) + "?limit=" + (limit || 1);
  if (cursor) path += "&cursor=" + encodeURIComponent(cursor);
  return call("GET", path, { headers: headers || {}, timeoutMs: STUDY_TIMEOUT_MS });
}

// GET /studies/{id}/dicom: a finished DICOM study's Structured Report and key image, base64 (built on request).
export function getStudyDicom(studyId, headers) {
  return call("GET", "/studies/" + encodeURIComponent(studyId) + "/dicom", {
    headers: headers || {},
    timeoutMs: STUDY_TIMEOUT_MS,
  });
}

// One file straight to its presigned POST (S3, not this API): XMLHttpRequest, for its upload progress.
// Resolves with the HTTP status (0: no answer); onProgress(bytesSent) as the bytes leave.
export function uploadToPresigned(target, file, onProgress) {
  return new Promise((resolve) => {
    const form = new FormData();
    for (const [name, value] of Object.entries(target.fields || {})) form.append(name, value);
    form.append("file", file); // last: S3 ignores fields after the file
    const request = new XMLHttpRequest();
    request.open("POST", target.url);
    request.withCredentials = false;
    request.upload.onprogress = (event) => onProgress(Math.min(event.loaded, file.size));
    request.onload = () => resolve(request.status);
    request.onerror = () => resolve(0);
    request.ontimeout = () => resolve(0);
    request.timeout = Math.max(config.requestTimeoutMs, 120000);
    request.send(form);
  });
}

// ------------------------------------------------------------------ errors in plain words

const ACCESS_REFUSED = "The service refused access: this page is not allowed to use it. Tell the team that runs it.";
const PLAIN_ERRORS = {
  400: "The file could not be read as an image. It may be damaged or incomplete.",
  401: ACCESS_REFUSED,
  403: ACCESS_REFUSED,
  404: "The service does not know this model or address.",
  413: "The file is too large for the service (limit " + formatLimit(config.maxUploadBytes) + ").",
  415: "This file is not a PNG, JPEG or DICOM image the service can read.",
  422: "This image cannot be a CT slice the model can read.",
  429: "The service is busy. Wait a moment, then press Retry.",
  503: "The model is not available right now. Try again in a minute.",
};

// Refusals whose code says more than their status does.
const PLAIN_ERRORS_BY_CODE = {
  unauthorized: "Your session has ended: sign in again, or clear the patient reference.",
  too_many_slices: "This study has more slices than the service accepts in one study.",
  payload_too_large: "This study, or one of its files, is larger than the service accepts.",
  uploads_incomplete: "Some files of this study did not reach the service. Try again.",
  invalid_patient_ref: "The patient reference is not valid: use a record number, never a name.",
  not_ct_like:
    "This does not look like a CT slice of the chest, so no verdict was given. Add one chest CT slice (DICOM, PNG or JPEG).",
};

// An HTTP refusal: {title, detail (the API's message and request id), retriable}.
export function describeHttpError(status, body) {
  const error = body && typeof body === "object" ? body.error : null;
  const detail = error && typeof error.message === "string" ? error.message : "";
  const requestId = error && typeof error.request_id === "string" ? error.request_id : "";
  const code = error && typeof error.code === "string" ? error.code : "";
  let title = PLAIN_ERRORS_BY_CODE[code] || PLAIN_ERRORS[status];
  if (!title) {
    title =
      status >= 500
        ? "The service had a problem (status " + status + "). Try again; if it keeps happening, tell the team."
        : "The service refused the request (status " + status + ").";
  }
  const parts = [];
  if (detail) parts.push(detail);
  if (requestId) parts.push("Request id: " + requestId + ".");
  return { title: title, detail: parts.join(" "), retriable: status === 429 || status >= 500 };
}

// A /predict that got no answer (Unreachable): {title, detail, retriable}.
export function describeUnreachable(error) {
  if (error && error.timedOut) {
    const seconds = Math.max(1, Math.round(config.requestTimeoutMs / 1000));
    const wait = seconds === 1 ? "1 second" : seconds + " seconds";
    return {
      title: "The service did not answer within " + wait + ".",
      detail: "Press Retry to try again.",
      retriable: true,
    };
  }
  return {
    title: "Could not reach the LungScan service.",
    detail: "Check the network connection, then press Retry.",
    retriable: true,
  };
}
