// Numbers and answers in the words the page shows them.

export function formatBytes(bytes) {
  if (bytes < 1024) return bytes + (bytes === 1 ? " byte" : " bytes");
  if (bytes < 1024 * 1024) return (bytes / 1024).toFixed(1) + " KB";
  return (bytes / (1024 * 1024)).toFixed(1) + " MB";
}

export function formatLimit(bytes) {
  const megabytes = bytes / (1024 * 1024);
  return Number.isInteger(megabytes) ? megabytes + " MB" : formatBytes(bytes);
}

export function percent(probability) {
  // A model's probability is never certainty: shown values stop at 99.9% (the API caps them too).
  return (Math.max(0, Math.min(0.999, Number(probability) || 0)) * 100).toFixed(1) + "%";
}

// The three tiers a clinician reads; an answer from before tiers falls back on its flag.
const TIER_WORDS = {
  suspicious: "Suspicious — review first",
  not_excluded: "Malignancy not excluded — review",
  clear: "No suspicious finding",
};

export function tierText(answer) {
  if (answer.tier_text) return answer.tier_text;
  if (TIER_WORDS[answer.tier]) return TIER_WORDS[answer.tier];
  return answer.suspicious ? TIER_WORDS.not_excluded : TIER_WORDS.clear;
}

export function predictionSetText(answer) {
  return Array.isArray(answer.prediction_set) ? answer.prediction_set.join(", ") : "";
}
