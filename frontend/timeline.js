// A patient's stored records (accounts.js) in the words and the order a clinician reads them: by acquisition date
// (the DICOM study date, day precision; the upload date when there is none), newest first; a study's summary
// ("N flagged of M slices"), its tier and its uncertainty. A study's record (the `studies` work) carries
// `study_date` (YYYY-MM-DD) and `study: {study_id, flagged, total, failed, ...}` beside the tier and `uncertain`.

import { tierText } from "./format.js";

// "2026-11-02" or "20261102" -> "2026-11-02"; anything else -> "".
function day(value) {
  const match = /^(\d{4})-?(\d{2})-?(\d{2})/.exec(String(value || ""));
  return match ? match[1] + "-" + match[2] + "-" + match[3] : "";
}

// When the scan was acquired: {day: "YYYY-MM-DD", fromStudy: bool} (the upload day when the scan says nothing).
export function acquired(record) {
  const study = day(record.study_date);
  if (study) return { day: study, fromStudy: true };
  const uploaded = new Date(record.created_at);
  const two = (number) => String(number).padStart(2, "0");
  const local = Number.isNaN(uploaded.getTime())
    ? ""
    : uploaded.getFullYear() + "-" + two(uploaded.getMonth() + 1) + "-" + two(uploaded.getDate());
  return { day: local, fromStudy: false };
}

// Newest acquisition first; the same day: newest upload first.
export function byAcquisition(records) {
  return records.slice().sort((a, b) => {
    const first = acquired(a).day;
    const second = acquired(b).day;
    if (first !== second) return first < second ? 1 : -1;
    return String(b.created_at || "").localeCompare(String(a.created_at || ""));
  });
}

// The record to show beside `record` as "previous": the newest one acquired on an earlier day (two scans of the
// same day are not a follow-up).
export function previousOf(records, record) {
  const when = acquired(record).day;
  return records.find((other) => other !== record && acquired(other).day && acquired(other).day < when) || null;
}

export function isStudyRecord(record) {
  return Boolean(record.study && typeof record.study === "object");
}

// The verdict line: the tier, "N flagged of M slices" for a study, and uncertainty.
export function recordVerdict(record) {
  let text = tierText(record);
  if (isStudyRecord(record) && typeof record.study.total === "number") {
    const total = record.study.total;
    text += " · study: " + (record.study.flagged || 0) + " flagged of " + total + (total === 1 ? " slice" : " slices");
    if (record.study.failed) text += " (" + record.study.failed + " not classified)";
  }
  if (record.uncertain === true) text += " · uncertain — needs review";
  return text;
}

// The date a clinician reads first.
export function recordDate(record) {
  const when = acquired(record);
  if (when.fromStudy) return "acquired " + when.day;
  return "uploaded " + new Date(record.created_at).toLocaleString() + " (no acquisition date)";
}
