// Written at deploy time by infrastructure/deploy.sh from the stack's ApiUrl output.
// Empty means "same origin": the local stack (make run) serves the page and the API together.
window.LUNGSCAN_CONFIG = { apiUrl: "" };
