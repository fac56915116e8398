// Clinician sign-in (Amazon Cognito) and the patient history: the scans a care team stored for one patient,
// shown as a timeline (newest first, the new scan beside the previous one).
//
// Sign-in calls Cognito's JSON API (InitiateAuth, USER_PASSWORD_AUTH) with fetch: no library, no CDN.
// The session (the ID token) lives in sessionStorage only: it ends with the tab, and is never put in
// localStorage. Signed out, nothing here runs and the page works as before: nothing is stored.
// The upload queue (queue.js) asks requestExtras() what to add to a /predict request and tells onResult()
// about each answer. Not to be confused with the scans classified in this tab (tab-scans.js), kept in the tab only.

import { deletePatientScan, listPatientScans } from "./api.js";
import { byId } from "./dom.js";
import { config } from "./settings.js";
import { byAcquisition, previousOf, recordDate, recordVerdict } from "./timeline.js";

const cognito = config.cognito;
const SESSION_KEY = "lungscan.session";
const PATIENT_PATTERN = /^(?!\.\.?$)[A-Za-z0-9._-]{1,64}$/; // "." and "..": URLs drop them
const PAGE_SIZE = 20;

let session = null; // {idToken, email, team, expiresAt}
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
    if (stored && stored.idToken && stored.expiresAt > Date.now()) return stored;
  } catch (error) {
    /* a damaged entry: signed out */
  }
  sessionStorage.removeItem(SESSION_KEY);
  return null;
}

function startSession(idToken) {
  const claims = decodeClaims(idToken) || {};
  const groups = Array.isArray(claims["cognito:groups"]) ? claims["cognito:groups"] : [];
  session = {
    idToken: idToken,
    email: String(claims.email || ""),
    team: groups.length === 1 ? String(groups[0]) : "",
    expiresAt: Number(claims.exp || 0) * 1000,
  };
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
}

function signOut(message) {
  session = null;
  sessionStorage.removeItem(SESSION_KEY);
  records = [];
  shownPatient = "";
  newRecordId = "";
  render();
  ui.password.value = "";
  ui.authStatus.textContent = message || "Signed out. Results are no longer stored.";
  ui.email.focus();
}

function isSignedIn() {
  if (session && session.expiresAt <= Date.now()) {
    signOut("Your session has ended: sign in again to store results.");
  }
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
  let response;
  let body = null;
  try {
    response = await fetch(cognito.endpoint, {
      method: "POST",
      headers: {
        "Content-Type": "application/x-amz-json-1.1",
        "X-Amz-Target": "AWSCognitoIdentityProviderService.InitiateAuth",
      },
      body: JSON.stringify({
        AuthFlow: "USER_PASSWORD_AUTH",
        ClientId: cognito.clientId,
        AuthParameters: { USERNAME: email, PASSWORD: password },
      }),
      credentials: "omit",
      referrerPolicy: "no-referrer",
    });
    body = await response.json().catch(() => null);
  } catch (error) {
    ui.authStatus.textContent = "Could not reach the sign-in service. Check the network connection.";
    return;
  }
  const result = body && body.AuthenticationResult;
  if (!response.ok || !result || !result.IdToken) {
    ui.authStatus.textContent =
      body && body.ChallengeName
        ? "Your account needs a step this page does not offer (" + body.ChallengeName + "): ask your administrator."
        : "Sign-in failed: check your email and password.";
    return;
  }
  ui.password.value = "";
  startSession(result.IdToken);
  render();
  ui.authStatus.textContent = "Signed in as " + session.email + (session.team ? " (team " + session.team + ")." : ".");
  ui.patient.focus();
}

// ------------------------------------------------------------------ API

// The history routes with this session's token; a 401 (the token expired or was revoked) signs out.
async function authorized(send) {
  const result = await send(session.idToken); // the raw ID token, as the API's Cognito authorizer wants it
  if (result.status === 401) {
    signOut("Your session has ended: sign in again.");
  }
  return result;
}

// ------------------------------------------------------------------ what the upload queue asks

function patientRef() {
  return ui.patient.value.trim();
}

// Extras for POST /predict: the patient and the token, when signed in with a patient reference.
export function requestExtras() {
  if (!cognito || !isSignedIn() || !patientRef()) return null;
  return { patient: patientRef(), headers: { Authorization: session.idToken } };
}

export function onResult(answer) {
  if (!answer || !answer.record_id || !session) return;
  newRecordId = answer.record_id;
  loadTimeline(patientRef());
}

// A finished study (study.js): its history record is written by the service; show the timeline again.
export function onStudyResult(answer) {
  if (!session || !answer) return;
  newRecordId = answer.record_id || "";
  newStudyId = answer.study_id || "";
  loadTimeline(patientRef());
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

async function deleteRecord(record) {
  const when = new Date(record.created_at).toLocaleString();
  if (!window.confirm("Delete the scan of " + when + " for patient " + shownPatient + "? Your whole team loses it.")) {
    return;
  }
  const result = await authorized((idToken) => deletePatientScan(shownPatient, record.record_id, idToken));
  if (result.status === 204 || result.status === 404) {
    records = records.filter((candidate) => candidate.record_id !== record.record_id);
    if (newRecordId === record.record_id) newRecordId = "";
    renderTimeline();
    ui.timelineStatus.textContent = "Scan of " + when + " deleted.";
    ui.timelineTitle.focus();
  } else {
    ui.timelineStatus.textContent = "The scan could not be deleted (status " + result.status + ").";
  }
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
    const by = record.clinician && record.clinician.email ? " · by " + record.clinician.email : "";
    const label = record.label ? " · most likely " + record.label : "";
    meta.textContent = recordDate(record) + " · model " + shown.model + label + by;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "button button-small button-secondary timeline-delete";
    remove.textContent = "Delete";
    remove.setAttribute("aria-label", "Delete the scan of " + shown.date);
    remove.addEventListener("click", () => deleteRecord(record));
    text.append(verdict, meta, remove);
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
    ui.who.textContent = session.email + (session.team ? " · team " + session.team : " · no care team");
  }
  renderTimeline();
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
  };
  if (!cognito || !ui.section) return; // no accounts on this deployment: the page as before
  ui.section.hidden = false;
  session = loadSession();
  ui.signInForm.addEventListener("submit", signIn);
  ui.signOut.addEventListener("click", () => signOut());
  ui.patient.addEventListener("input", checkPatient);
  ui.showHistory.addEventListener("click", () => {
    if (checkPatient() && patientRef()) {
      newRecordId = "";
      loadTimeline(patientRef());
    }
  });
  render();
}
