// Written at deploy time by infrastructure/deploy.sh from the stack's ApiUrl output.
// apiUrl "" means "same origin": the local stack (make run) serves the page and the API together.
// maxUploadBytes is the API's upload limit (lungscan.inputs.imaging.DEFAULT_LIMITS.max_bytes): the page
// refuses larger files before sending them. Optional: requestTimeoutMs (default 45000); apiKey, sent
// as x-api-key, only where the stage requires one (public to anyone who can load the page).
window.LUNGSCAN_CONFIG = { apiUrl: "", maxUploadBytes: 4194304 };
