// The page's settings, read once: every module imports `config` from here, none reads the global.
//
// config.js, a classic script that index.html runs before the modules, sets window.LUNGSCAN_CONFIG: the
// committed copy for `make run` (same origin), or the copy infrastructure/deploy.sh writes at deploy time
// (and the local stack extends with `cognito`). A missing or partial config falls back to the defaults below.

const DEFAULT_MAX_UPLOAD_BYTES = 4 * 1024 * 1024; // the API's limit when config.js does not say
const DEFAULT_TIMEOUT_MS = 45000; // API Gateway itself gives up after 29 s

function positiveNumber(value, fallback) {
  const number = Number(value);
  return Number.isFinite(number) && number > 0 ? number : fallback;
}

const settings = window.LUNGSCAN_CONFIG || {};
const cognito = settings.cognito;

export const config = Object.freeze({
  apiUrl: String(settings.apiUrl || "").replace(/\/+$/, ""),
  maxUploadBytes: positiveNumber(settings.maxUploadBytes, DEFAULT_MAX_UPLOAD_BYTES),
  requestTimeoutMs: positiveNumber(settings.requestTimeoutMs, DEFAULT_TIMEOUT_MS),
  // Only on a stage whose API requires a key (template.yaml RequireApiKey); anyone loading the page can read it.
  apiKey: typeof settings.apiKey === "string" ? settings.apiKey : "",
  // How many of the team's patients the page asks for at a time (patients.js; the API takes at most 100).
  patientsPageSize: Math.min(100, Math.floor(positiveNumber(settings.patientsPageSize, 20))),
  // How long a deleted scan can be brought back before the DELETE is sent (accounts.js).
  deleteUndoMs: positiveNumber(settings.deleteUndoMs, 8000),
  // Where clinicians sign in ({endpoint, clientId, region}); null: no accounts on this deployment.
  cognito: cognito && cognito.clientId && cognito.endpoint ? cognito : null,
});
