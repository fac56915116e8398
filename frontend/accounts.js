// Clinician sign-in (Amazon Cognito) and the patient history: the scans a care team stored for one patient,
// shown as a timeline (newest first, the new scan beside the previous one).
//
// Sign-in calls Cognito's JSON API (InitiateAuth) with fetch: no library, no CDN. ID tokens live 15 minutes:
// the page renews them with the refresh token shortly before they end (and once more after a 401), and "Sign
// out" revokes that refresh token (RevokeToken), so nothing can renew them after it. The session (the tokens)
// lives in sessionStorage only: it ends with the tab, and is never put in localStorage. Signed out, nothing
// here runs and the page works as before: nothing is stored.
// The upload queue (queue.js) asks requestExtras() what to add to a /predict request and tells onResult()
// about each answer. Not to be confused with the scans classified in this tab (tab-scans.js), kept in the tab only.

import { deletePatientScan, listPatientScans } from "./api.js";
import { cognitoCall, signInWithCognito } from "./sign-in.js";
import { byId } from "./dom.js";
import { initPatients, refreshPatients } from "./patients.js";
import { config } from "./settings.js";
import { byAcquisition, previousOf, recordDate, recordVerdict } from "./timeline.js";

const cognito = config.cognito;
const SESSION_KEY = "lungscan.session";
const PATIENT_PATTERN = /^(?!\.\.?$)[A-Za-z0-9._-]{1,64}$/; // "." and "..": URLs drop them
const PAGE_SIZE = 20;
const RENEW_BEFORE_MS = 60 * 1000; // renew the ID token this long before it ends
const UNDO_MS = config.deleteUndoMs; // a deleted scan can be brought back this long, then it is deleted

let session = null; // {idToken, refreshToken, sub, email, name, team, expiresAt}
let renewTimer = null;
const pendingDeletes = new Map(); // record id -> {record, patient, timer}: deleted on screen, not yet on the server
let shownPatient = "";
let records = [];
let newRecordId = "";
let newStudyId = ""; // a study just answered: its record is found by its study_id once the timeline loads

let ui = null; // the section's elements, from initAccounts()

// ------------------------------------------------------------------ session

function decodeClaims(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = decodeURIComponent(
      Array.from(atob(payload), (c) => "%" + c.charCodeAt(0).toString(16).padStart(2, "0")).join("")
    );
    return JSON.parse(json);
  } catch (error) {
    return null;
  }
}

function loadSession() {
  try {
    const stored = JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null");
    if (stored && stored.idToken && (stored.expiresAt > Date.now() || stored.refreshToken)) return stored;
  } catch (error) {
    /* a damaged entry: signed out */
  }
  sessionStorage.removeItem(SESSION_KEY);
  return null;
}

function startSession(idToken, refreshToken) {
  const claims = decodeClaims(idToken) || {};
  const groups = Array.isArray(claims["cognito:groups"]) ? claims["cognito:groups"] : [];
  session = {
    idToken: idToken,
    refreshToken: refreshToken || (session && session.refreshToken) || "",
    sub: String(claims.sub || ""),
    email: String(claims.email || ""),
    name: String(claims["custom:display_name"] || claims.email || ""),
    team: groups.length === 1 ? String(groups[0]) : "",
    expiresAt: Number(claims.exp || 0) * 1000,
  };
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
  scheduleRenewal();
}

function scheduleRenewal() {
  clearTimeout(renewTimer);
  if (!session || !session.refreshToken) return;
  const wait = Math.max(0, session.expiresAt - RENEW_BEFORE_MS - Date.now());
  renewTimer = setTimeout(() => renewSession(), wait);
}

// A new ID token from the refresh token; false (and signed out) when the refresh token was revoked or ended.
async function renewSession() {
  if (!session || !session.refreshToken) return false;
  let result;
  try {
    result = await cognitoCall(cognito, "InitiateAuth", {
      AuthFlow: "REFRESH_TOKEN_AUTH",
      ClientId: cognito.clientId,
      AuthParameters: { REFRESH_TOKEN: session.refreshToken },
    });
  } catch (error) {
    scheduleRenewal(); // offline for now: try again later, the token may still be valid
    return false;
  }
  const authenticated = result.body && result.body.AuthenticationResult;
  if (result.status !== 200 || !authenticated || !authenticated.IdToken) {
    endSession("Your session has ended: sign in again to store results.");
    return false;
  }
  startSession(authenticated.IdToken);
  return true;
}

// The ID token for a request, renewed first when it is about to end.
async function currentToken() {
  if (session && session.expiresAt - Date.now() < RENEW_BEFORE_MS) await renewSession();
  return session ? session.idToken : "";
}

function endSession(message) {
  clearTimeout(renewTimer);
  session = null;
  sessionStorage.removeItem(SESSION_KEY);
  records = [];
  shownPatient = "";
  newRecordId = "";
  hideUndo();
  render();
  ui.password.value = "";
  ui.authStatus.textContent = message || "Signed out. Results are no longer stored.";
  ui.email.focus();
}

// "Sign out": the scans deleted on screen are deleted, then the refresh token is revoked, so that no copy of
// this session can renew its tokens (an ID token already issued lives out its 15 minutes: docs/accounts.md).
async function signOut() {
  const ending = session;
  await flushDeletes(false);
  let revoked = false;
  if (ending && ending.refreshToken) {
    try {
      const revoke = { Token: ending.refreshToken, ClientId: cognito.clientId };
      const result = await cognitoCall(cognito, "RevokeToken", revoke);
      revoked = result.status === 200;
    } catch (error) {
      revoked = false;
    }
  }
  endSession(
    revoked || !ending
      ? "Signed out. Results are no longer stored."
      : "Signed out on this page, but the sign-in service could not be told: the session ends within 12 hours."
  );
}

function isSignedIn() {
  return Boolean(session);
}

async function signIn(event) {
  event.preventDefault();
  const email = ui.email.value.trim();
  const password = ui.password.value;
  if (!email || !password) {
    ui.authStatus.textContent = "Enter your email and password.";
    return;
  }
  ui.authStatus.textContent = "Signing in…";
  let outcome;
  try {
    outcome = await signInWithCognito(cognito, email, password, askCode);
  } catch (error) {
    outcome = { error: "Could not reach the sign-in service. Check the network connection." };
  }
  hideCodeForm();
  ui.password.value = "";
  const tokens = outcome.tokens;
  if (!tokens || !tokens.IdToken || !tokens.RefreshToken) {
    ui.authStatus.textContent = outcome.error || "Sign-in failed: check your email and password.";
    return;
  }
  startSession(tokens.IdToken, tokens.RefreshToken);
  render();
  ui.authStatus.textContent = "Signed in as " + session.name + (session.team ? " (team " + session.team + ")." : ".");
  ui.patient.focus();
}

// The authenticator-app code: the form appears (with the secret to add to the app at the first sign-in) and the
// promise resolves with the code typed.
function askCode({ email, secret }) {
  ui.codeSetup.hidden = !secret;
  if (secret) {
    ui.codeSecret.textContent = secret;
    ui.codeUri.textContent =
      "otpauth://totp/LungScan:" + encodeURIComponent(email) + "?secret=" + secret + "&issuer=LungScan";
  }
  ui.code.value = "";
  ui.codeForm.hidden = false;
  ui.signInForm.hidden = true;
  ui.authStatus.textContent = secret
    ? "Add LungScan to your authenticator app with the key shown, then enter the 6-digit code it gives."
    : "Enter the 6-digit code from your authenticator app.";
  ui.code.focus();
  return new Promise((resolve) => {
    ui.codeForm.onsubmit = (submitted) => {
      submitted.preventDefault();
      ui.authStatus.textContent = "Checking the code…";
      resolve(ui.code.value.trim());
    };
  });
}

function hideCodeForm() {
  ui.codeForm.hidden = true;
  ui.codeForm.onsubmit = null;
  ui.code.value = "";
  ui.codeSecret.textContent = "";
  ui.codeUri.textContent = "";
  ui.signInForm.hidden = Boolean(session);
}

// ------------------------------------------------------------------ API

// The history routes with this session's token (renewed when about to end); a 401 renews it once and retries,
// then signs out; a 403 access_revoked (the account was disabled or moved to another team) signs out.
async function authorized(send) {
  const token = await currentToken();
  if (!session) return { status: 401, ok: false, body: null }; // the session ended while renewing
  let result = await send(token); // the raw ID token, as the API's Cognito authorizer wants it
  if (result.status === 401 && (await renewSession())) result = await send(session.idToken);
  if (result.status === 401) {
    endSession("Your session has ended: sign in again.");
  } else if (result.status === 403 && result.body && result.body.error && result.body.error.code === "access_revoked") {
    endSession(result.body.error.message);
  }
  return result;
}

// ------------------------------------------------------------------ what the upload queue asks

function patientRef() {
  return ui.patient.value.trim();
}

// Extras for POST /predict: the patient and the token (renewed when about to end), when signed in with a
// patient reference.
export async function requestExtras() {
  if (!cognito || !isSignedIn() || !patientRef()) return null;
  const token = await currentToken();
  if (!session) return null;
  return { patient: patientRef(), headers: { Authorization: token } };
}

export function onResult(answer) {
  if (!answer || !answer.record_id || !session) return;
  newRecordId = answer.record_id;
  loadTimeline(patientRef());
  refreshPatients(true);
}

// A finished study (study.js): its history record is written by the service; show the timeline again.
export function onStudyResult(answer) {
  if (!session || !answer) return;
  newRecordId = answer.record_id || "";
  newStudyId = answer.study_id || "";
  loadTimeline(patientRef());
  refreshPatients(true);
}

// ------------------------------------------------------------------ the patient history (timeline)

function checkPatient() {
  const ref = patientRef();
  const valid = !ref || PATIENT_PATTERN.test(ref);
  ui.patient.setAttribute("aria-invalid", valid ? "false" : "true");
  ui.patientError.hidden = valid;
  return valid;
}

async function loadTimeline(ref) {
  if (!session || !ref || !PATIENT_PATTERN.test(ref)) return;
  ui.timelineStatus.textContent = "Loading earlier scans…";
  let result;
  try {
    result = await authorized((idToken) => listPatientScans(ref, PAGE_SIZE, idToken));
  } catch (error) {
    ui.timelineStatus.textContent = "Could not reach the LungScan service.";
    return;
  }
  if (!session) return;
  shownPatient = ref;
  if (result.status === 404) {
    records = [];
  } else if (result.status !== 200 || !result.body) {
    const message = result.body && result.body.error ? result.body.error.message : "status " + result.status;
    ui.timelineStatus.textContent = "The history could not be loaded: " + message;
    return;
  } else {
    records = byAcquisition(result.body.scans || []); // acquisition date, not upload order (timeline.js)
    const study = newStudyId && records.find((record) => record.study && record.study.study_id === newStudyId);
    if (study) newRecordId = study.record_id;
    newStudyId = "";
  }
  renderTimeline();
}

// Delete asks to confirm, hides the scan and offers "Undo" for UNDO_MS; only then is it deleted on the server
// (or when the page is left or the clinician signs out). Only the clinician who stored a scan may delete it.
function deleteRecord(record) {
  const when = new Date(record.created_at).toLocaleString();
  if (!window.confirm("Delete the scan of " + when + " for patient " + shownPatient + "? Your whole team loses it.")) {
    return;
  }
  const pending = { record: record, patient: shownPatient, when: when, timer: null };
  pending.timer = setTimeout(() => sendDelete(record.record_id), UNDO_MS);
  pendingDeletes.set(record.record_id, pending);
  records = records.filter((candidate) => candidate.record_id !== record.record_id);
  if (newRecordId === record.record_id) newRecordId = "";
  renderTimeline();
  ui.undoText.textContent = "Scan of " + when + " deleted.";
  ui.undoBar.dataset.recordId = record.record_id;
  ui.undoBar.hidden = false;
  ui.undoButton.focus();
}

function undoDelete() {
  const recordId = ui.undoBar.dataset.recordId;
  const pending = pendingDeletes.get(recordId);
  hideUndo();
  if (!pending) return;
  clearTimeout(pending.timer);
  pendingDeletes.delete(recordId);
  if (pending.patient === shownPatient) {
    records = records.concat([pending.record]).sort((a, b) => (a.record_id < b.record_id ? 1 : -1));
    renderTimeline();
  }
  ui.timelineStatus.textContent = "Scan of " + pending.when + " kept.";
  ui.timelineTitle.focus();
}

function hideUndo() {
  if (!ui.undoBar) return;
  ui.undoBar.hidden = true;
  delete ui.undoBar.dataset.recordId;
}

async function sendDelete(recordId, leaving) {
  const pending = pendingDeletes.get(recordId);
  if (!pending || !session) return;
  clearTimeout(pending.timer);
  pendingDeletes.delete(recordId);
  if (ui.undoBar.dataset.recordId === recordId) hideUndo();
  let result;
  try {
    result = await authorized((idToken) => deletePatientScan(pending.patient, recordId, idToken, leaving));
  } catch (error) {
    result = { status: 0, body: null };
  }
  if (leaving || result.status === 204 || result.status === 404) {
    if (!leaving) ui.timelineStatus.textContent = "Scan of " + pending.when + " deleted.";
    if (!leaving && session) refreshPatients(true);
    return;
  }
  // Refused or unreachable: the scan is still stored, so it comes back, with the reason.
  if (session && pending.patient === shownPatient) {
    records = records.concat([pending.record]).sort((a, b) => (a.record_id < b.record_id ? 1 : -1));
    renderTimeline();
  }
  const reason =
    result.body && result.body.error
      ? result.body.error.message
      : result.status
        ? "status " + result.status
        : "the service could not be reached";
  if (ui.timelineStatus) ui.timelineStatus.textContent = "The scan of " + pending.when + " was not deleted: " + reason;
}

// Send every delete still waiting for its undo window (`leaving`: the page is being closed, so keepalive).
async function flushDeletes(leaving) {
  await Promise.all(Array.from(pendingDeletes.keys()).map((recordId) => sendDelete(recordId, leaving)));
}

function describe(record) {
  const model = record.model || {};
  return {
    date: new Date(record.created_at).toLocaleString(),
    model: (model.name || "") + " " + (model.version || ""),
  };
}

function figure(record, caption) {
  const box = document.createElement("figure");
  box.className = "compare-figure";
  const image = document.createElement("img");
  image.src = "data:image/png;base64," + record.preview;
  image.alt = caption + ": what the model saw";
  const text = document.createElement("figcaption");
  const shown = describe(record);
  text.textContent = caption + " — " + recordDate(record) + ": " + recordVerdict(record) + " (" + shown.model + ")";
  box.append(image, text);
  return box;
}

function renderTimeline() {
  ui.timeline.replaceChildren();
  ui.compare.replaceChildren();
  ui.timelineSection.hidden = !session || !shownPatient;
  ui.timelinePatient.textContent = shownPatient;
  if (!records.length) {
    ui.timelineStatus.textContent = "No scans stored for this patient in your team.";
    ui.compare.hidden = true;
    return;
  }
  ui.timelineStatus.textContent =
    (records.length === 1 ? "1 scan stored" : records.length + " scans stored") + ", newest acquisition first.";
  const newest = records.find((record) => record.record_id === newRecordId);
  const previous = newest ? previousOf(records, newest) : null;
  ui.compare.hidden = !previous;
  if (previous) ui.compare.append(figure(newest, "This scan"), figure(previous, "Previous scan"));
  for (const record of records) {
    const shown = describe(record);
    const item = document.createElement("li");
    item.className = "timeline-item";
    item.dataset.recordId = record.record_id;
    if (record.record_id === newRecordId) item.classList.add("is-new");
    const image = document.createElement("img");
    image.className = "timeline-thumb";
    if (record.preview) image.src = "data:image/png;base64," + record.preview;
    image.alt = "Scan of " + shown.date;
    const text = document.createElement("div");
    text.className = "timeline-text";
    const verdict = document.createElement("p");
    verdict.className = "timeline-verdict" + (record.suspicious ? " suspicious" : " clear");
    verdict.textContent = (record.record_id === newRecordId ? "New: " : "") + recordVerdict(record);
    const meta = document.createElement("p");
    meta.className = "timeline-meta";
    const clinician = record.clinician || {};
    const author = clinician.name || clinician.email; // the name an administrator set (older records: the email)
    const by = author ? " · by " + author : "";
    const label = record.label ? " · most likely " + record.label : "";
    meta.textContent = recordDate(record) + " · model " + shown.model + label + by;
    text.append(verdict, meta);
    if (session && clinician.sub === session.sub) {
      // Only its author may delete a scan (the API answers anyone else 403 not_author).
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "button button-small button-secondary timeline-delete";
      remove.textContent = "Delete";
      remove.setAttribute("aria-label", "Delete the scan of " + shown.date);
      remove.addEventListener("click", () => deleteRecord(record));
      text.append(remove);
    }
    item.append(image, text);
    ui.timeline.append(item);
  }
}

// ------------------------------------------------------------------ page

function render() {
  const signedIn = Boolean(session);
  ui.signInForm.hidden = signedIn;
  ui.signedIn.hidden = !signedIn;
  ui.patientBox.hidden = !signedIn;
  if (signedIn) {
    ui.who.textContent =
      session.name + (session.name !== session.email ? " (" + session.email + ")" : "") +
      (session.team ? " · team " + session.team : " · no care team");
  }
  renderTimeline();
  refreshPatients(signedIn);
}

// A patient chosen in the team's list (patients.js): its reference in the field, its timeline shown.
async function choosePatient(ref) {
  ui.patient.value = ref;
  if (!checkPatient()) return;
  newRecordId = "";
  await loadTimeline(ref);
  if (session) ui.timelineTitle.focus();
}

export function initAccounts() {
  ui = {
    section: byId("accounts"),
    signInForm: byId("sign-in-form"),
    email: byId("sign-in-email"),
    password: byId("sign-in-password"),
    signedIn: byId("signed-in"),
    who: byId("signed-in-who"),
    signOut: byId("sign-out-button"),
    authStatus: byId("auth-status"),
    patientBox: byId("patient-box"),
    patient: byId("patient-ref"),
    patientError: byId("patient-ref-error"),
    showHistory: byId("show-history-button"),
    timelineSection: byId("timeline-section"),
    timelineTitle: byId("timeline-title"),
    timelinePatient: byId("timeline-patient"),
    timelineStatus: byId("timeline-status"),
    timeline: byId("timeline"),
    compare: byId("compare"),
    undoBar: byId("undo-bar"),
    undoText: byId("undo-text"),
    undoButton: byId("undo-button"),
    codeForm: byId("code-form"),
    code: byId("code-input"),
    codeSetup: byId("code-setup"),
    codeSecret: byId("code-secret"),
    codeUri: byId("code-uri"),
  };
  if (!cognito || !ui.section) return; // no accounts on this deployment: the page as before
  ui.section.hidden = false;
  initPatients({ authorized: authorized, choose: choosePatient });
  session = loadSession();
  scheduleRenewal();
  ui.signInForm.addEventListener("submit", signIn);
  ui.signOut.addEventListener("click", () => signOut());
  ui.undoButton.addEventListener("click", undoDelete);
  window.addEventListener("pagehide", () => flushDeletes(true));
  ui.patient.addEventListener("input", checkPatient);
  ui.showHistory.addEventListener("click", () => {
    if (checkPatient() && patientRef()) {
      newRecordId = "";
      loadTimeline(patientRef());
    }
  });
  render();
}
