// The care team's patients (GET /patients), listed once signed in: reference, number of scans, last scan date and
// last verdict, in reference order, a page at a time ("Show more" follows the API's `next`). Choosing one shows its
// timeline (accounts.js, which owns the session and hands in its authorized() requests). Server data is written
// as text only.

import { listPatients } from "./api.js";
import { byId } from "./dom.js";
import { tierText } from "./format.js";
import { config } from "./settings.js";

const PAGE_SIZE = config.patientsPageSize;
const MAX_PAGE_SIZE = 100; // the API's own limit

let ui = null;
let hooks = null; // {authorized(send), choose(ref)} from accounts.js
let shown = []; // the patients listed so far
let next = null; // the token of the page after them
let generation = 0; // a newer load (or a sign-out) drops the answers of older ones

export function initPatients(given) {
  hooks = given;
  ui = {
    box: byId("patients-box"),
    status: byId("patients-status"),
    list: byId("patients-list"),
    more: byId("patients-more"),
  };
  ui.more.addEventListener("click", () => load(false));
}

// Signed in: list the team's patients again from the first page, as many as were shown (a new scan or a delete
// changes counts and verdicts). Signed out: hidden and forgotten.
export function refreshPatients(signedIn) {
  generation++;
  if (!signedIn) {
    shown = [];
    next = null;
    ui.box.hidden = true;
    ui.list.replaceChildren();
    ui.status.textContent = "";
    return;
  }
  ui.box.hidden = false;
  load(true);
}

async function load(fromStart) {
  const mine = ++generation;
  const limit = fromStart ? Math.min(MAX_PAGE_SIZE, Math.max(PAGE_SIZE, shown.length)) : PAGE_SIZE;
  ui.status.textContent = "Loading your team's patients…";
  let result;
  try {
    result = await hooks.authorized((idToken) => listPatients(limit, fromStart ? null : next, idToken));
  } catch (error) {
    if (mine === generation) ui.status.textContent = "Could not reach the LungScan service to list your patients.";
    return;
  }
  if (mine !== generation) return;
  if (result.status !== 200 || !result.body || !Array.isArray(result.body.patients)) {
    const message = result.body && result.body.error ? result.body.error.message : "status " + result.status;
    ui.status.textContent = "Your team's patients could not be listed: " + message;
    return;
  }
  const page = result.body.patients;
  shown = fromStart ? page : shown.concat(page);
  next = result.body.next || null;
  render(fromStart ? 0 : shown.length - page.length);
}

function lastVerdict(patient) {
  // The tier's words; a summary kept before tiers has only the deprecated verdict, whose flag says enough.
  return tierText({ tier: patient.last_tier, suspicious: patient.last_verdict === "Cancer Detected" });
}

function render(firstNew) {
  ui.list.replaceChildren();
  ui.more.hidden = !next;
  if (!shown.length) {
    ui.status.textContent = "No patients stored for your team yet.";
    return;
  }
  const count = shown.length === 1 ? "1 patient" : shown.length + " patients";
  ui.status.textContent = count + (next ? " shown, in reference order; more with Show more." : ", in reference order.");
  shown.forEach((patient, index) => {
    const item = document.createElement("li");
    item.className = "patients-item";
    const choose = document.createElement("button");
    choose.type = "button";
    choose.className = "patients-choose";
    const ref = document.createElement("strong");
    ref.className = "patients-ref";
    ref.textContent = String(patient.patient);
    const when = new Date(patient.last_scan_at);
    const meta = document.createElement("span");
    meta.className = "patients-meta";
    meta.textContent =
      (patient.scans === 1 ? "1 scan" : patient.scans + " scans") +
      " · last " + (Number.isNaN(when.getTime()) ? "unknown" : when.toLocaleDateString());
    const verdict = document.createElement("span");
    verdict.className = "patients-verdict";
    verdict.textContent = lastVerdict(patient);
    choose.append(ref, meta, verdict);
    choose.addEventListener("click", () => hooks.choose(String(patient.patient)));
    item.append(choose);
    ui.list.append(item);
    if (index === firstNew && firstNew > 0) choose.focus(); // "Show more": on to the first new patient
  });
}
