// LungScan page: queue CT slices, send each to POST /predict, show and keep the answers.
//
// Runs under a strict Content-Security-Policy (no inline scripts, no inline style attributes):
// styling goes through classes and CSS custom properties set with the CSSOM.
// Privacy: file names and results stay in this tab; requests carry only the image bytes.
"use strict";

(function () {
  const DEFAULT_MAX_UPLOAD_BYTES = 4 * 1024 * 1024; // the API's limit when config.js does not say
  const DEFAULT_TIMEOUT_MS = 45000; // API Gateway itself gives up after 29 s
  const MODEL_LIST_TIMEOUT_MS = 10000;

  const settings = window.LUNGSCAN_CONFIG || {};
  const config = {
    apiUrl: String(settings.apiUrl || "").replace(/\/+$/, ""),
    maxUploadBytes: positiveNumber(settings.maxUploadBytes, DEFAULT_MAX_UPLOAD_BYTES),
    requestTimeoutMs: positiveNumber(settings.requestTimeoutMs, DEFAULT_TIMEOUT_MS),
    // Only on a stage whose API requires a key (template.yaml RequireApiKey); anyone loading the page can read it.
    apiKey: typeof settings.apiKey === "string" ? settings.apiKey : "",
  };

  const byId = (id) => document.getElementById(id);
  const ui = {
    dropZone: byId("drop-zone"),
    fileInput: byId("file-input"),
    maxSize: byId("max-size"),
    modelPicker: byId("model-picker"),
    modelSelect: byId("model-select"),
    serviceNote: byId("service-note"),
    classifyButton: byId("classify-button"),
    clearQueueButton: byId("clear-queue-button"),
    overall: byId("overall"),
    overallLabel: byId("overall-label"),
    overallProgress: byId("overall-progress"),
    status: byId("status"),
    queue: byId("queue"),
    queueTitle: byId("queue-title"),
    queueEmpty: byId("queue-empty"),
    historyEmpty: byId("history-empty"),
    historyScroll: byId("history-scroll"),
    historyBody: byId("history-body"),
    exportButton: byId("export-button"),
    clearHistoryButton: byId("clear-history-button"),
    template: byId("scan-template"),
  };

  const items = []; // every file added in this tab, in order
  const history = []; // classified scans, oldest first
  let nextId = 1;
  let running = false;
  let run = { total: 0, done: 0, failed: 0 };

  // ------------------------------------------------------------------ helpers

  function positiveNumber(value, fallback) {
    const number = Number(value);
    return Number.isFinite(number) && number > 0 ? number : fallback;
  }

  function formatBytes(bytes) {
    if (bytes < 1024) return bytes + (bytes === 1 ? " byte" : " bytes");
    if (bytes < 1024 * 1024) return (bytes / 1024).toFixed(1) + " KB";
    return (bytes / (1024 * 1024)).toFixed(1) + " MB";
  }

  function formatLimit(bytes) {
    const megabytes = bytes / (1024 * 1024);
    return Number.isInteger(megabytes) ? megabytes + " MB" : formatBytes(bytes);
  }

  function percent(probability) {
    // A model's probability is never certainty: shown values stop at 99.9% (the API caps them too).
    return (Math.max(0, Math.min(0.999, Number(probability) || 0)) * 100).toFixed(1) + "%";
  }

  function predictionSetText(answer) {
    return Array.isArray(answer.prediction_set) ? answer.prediction_set.join(", ") : "";
  }

  function announce(message) {
    ui.status.textContent = message;
  }

  // aria-disabled instead of `disabled`: a button that disables itself keeps keyboard focus.
  function setEnabled(button, enabled) {
    button.setAttribute("aria-disabled", enabled ? "false" : "true");
    button.classList.toggle("is-disabled", !enabled);
  }

  function isEnabled(button) {
    return button.getAttribute("aria-disabled") !== "true";
  }

  function dataUrl(base64, mediaType) {
    return base64.startsWith("data:") ? base64 : "data:" + mediaType + ";base64," + base64;
  }

  function apiHeaders(extra) {
    const headers = Object.assign({ Accept: "application/json" }, extra || {});
    if (config.apiKey) headers["x-api-key"] = config.apiKey;
    return headers;
  }

  function readAsBase64(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => {
        const text = String(reader.result || "");
        const comma = text.indexOf(",");
        resolve(comma >= 0 ? text.slice(comma + 1) : "");
      };
      reader.onerror = () => reject(new Error("read_failed"));
      reader.readAsDataURL(file);
    });
  }

  // ------------------------------------------------------------------ API errors in plain words

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
    invalid_patient_ref: "The patient reference is not valid: use a record number, never a name.",
    not_ct_like:
      "This does not look like a CT slice of the chest, so no verdict was given. Add one chest CT slice (DICOM, PNG or JPEG).",
  };

  function describeHttpError(status, body) {
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

  // ------------------------------------------------------------------ queue

  function addFiles(fileList) {
    const files = Array.from(fileList || []);
    if (!files.length) return;
    let refused = 0;
    for (const file of files) {
      const item = {
        id: nextId++,
        file: file,
        name: file.name || "unnamed file",
        size: file.size,
        state: "waiting",
        previewUrl: null,
        answer: null,
      };
      items.push(item);
      renderCard(item);
      if (file.size === 0) {
        refuse(item, "This file is empty.", "It was not sent.");
        refused++;
      } else if (file.size > config.maxUploadBytes) {
        refuse(
          item,
          "Too large: " + formatBytes(file.size) + ". The limit is " + formatLimit(config.maxUploadBytes) + " per file.",
          "It was not sent. Export a single slice, or a smaller image, and add it again."
        );
        refused++;
      } else {
        showLocalPreview(item);
        setState(item, "waiting", "Waiting to be classified");
      }
    }
    const added = files.length - refused;
    let message = added === 1 ? "1 file ready to classify." : added + " files ready to classify.";
    if (refused) message += " " + refused + (refused === 1 ? " file was" : " files were") + " refused: see the list.";
    if (added && running) message += " They will be classified after the current ones.";
    announce(message);
    updateControls();
  }

  function renderCard(item) {
    const fragment = ui.template.content.cloneNode(true);
    const card = fragment.querySelector(".scan-card");
    const find = (selector) => card.querySelector(selector);
    const element = {
      card: card,
      name: find(".scan-name"),
      meta: find(".scan-meta"),
      state: find(".scan-state"),
      preview: find(".scan-preview"),
      overlay: find(".scan-overlay"),
      noPreview: find(".no-preview"),
      caption: find(".scan-caption"),
      progress: find(".scan-progress"),
      error: find(".scan-error"),
      errorTitle: find(".error-title"),
      errorDetail: find(".error-detail"),
      result: find(".scan-result"),
      verdict: find(".verdict"),
      label: find(".label-value"),
      uncertainNote: find(".uncertain-note"),
      setLine: find(".set-line"),
      setValue: find(".set-value"),
      confidenceValue: find(".confidence-value"),
      confidenceFill: find(".bar-fill"),
      probabilities: find(".probabilities tbody"),
      heatmapControls: find(".heatmap-controls"),
      heatmapToggle: find(".heatmap-toggle"),
      heatmapToggleLabel: find(".heatmap-toggle-label"),
      heatmapOpacity: find(".heatmap-opacity"),
      heatmapOpacityLabel: find(".heatmap-opacity-label"),
      heatmapOpacityValue: find(".heatmap-opacity-value"),
      modelLine: find(".model-line"),
      disclaimer: find(".answer-disclaimer"),
      retry: find(".retry-button"),
      remove: find(".remove-button"),
    };
    item.el = element;
    card.id = "scan-" + item.id;
    element.name.id = "scan-" + item.id + "-name";
    element.name.tabIndex = -1;
    element.name.textContent = item.name;
    element.meta.textContent = formatBytes(item.size);
    card.setAttribute("aria-labelledby", element.name.id);

    const toggleId = "heatmap-toggle-" + item.id;
    const opacityId = "heatmap-opacity-" + item.id;
    element.heatmapToggle.id = toggleId;
    element.heatmapToggleLabel.htmlFor = toggleId;
    element.heatmapOpacity.id = opacityId;
    element.heatmapOpacityLabel.htmlFor = opacityId;
    element.heatmapOpacityValue.htmlFor = opacityId;
    element.heatmapToggle.addEventListener("change", () => applyHeatmap(item));
    element.heatmapOpacity.addEventListener("input", () => applyHeatmap(item));

    element.retry.addEventListener("click", () => {
      setState(item, "waiting", "Waiting to be classified");
      element.error.hidden = true;
      element.name.focus();
      updateControls();
      startQueue();
    });
    element.remove.addEventListener("click", () => removeItem(item));

    ui.queue.append(fragment);
    ui.queueEmpty.hidden = true;
  }

  function showLocalPreview(item) {
    // PNG and JPEG display directly; DICOM fails to load and waits for the API's preview.
    const element = item.el;
    item.previewUrl = URL.createObjectURL(item.file);
    element.preview.alt = "Preview of " + item.name;
    element.preview.addEventListener(
      "error",
      () => {
        if (element.preview.src.startsWith("blob:")) {
          element.preview.hidden = true;
          element.noPreview.hidden = false;
        }
      },
      { once: true }
    );
    element.preview.addEventListener("load", () => {
      element.preview.hidden = false;
      element.noPreview.hidden = true;
    });
    element.preview.src = item.previewUrl;
  }

  function setState(item, state, text) {
    item.state = state;
    const element = item.el;
    element.card.dataset.state = state;
    element.state.textContent = text;
    element.progress.hidden = state !== "sending";
    element.remove.hidden = !(state === "waiting" || state === "refused" || state === "failed");
    element.retry.hidden = !(state === "failed" && item.retriable);
    // A file that failed before any preview existed gets no empty picture frame.
    const noImage = (state === "failed" || state === "refused") && element.preview.hidden;
    element.card.classList.toggle("no-figure", noImage);
  }

  function refuse(item, title, detail) {
    item.retriable = false;
    showError(item, title, detail);
    setState(item, "refused", "Not sent");
  }

  function showError(item, title, detail) {
    const element = item.el;
    element.errorTitle.textContent = title;
    element.errorDetail.textContent = detail || "";
    element.errorDetail.hidden = !detail;
    element.error.hidden = false;
    element.result.hidden = true;
  }

  function removeItem(item) {
    const index = items.indexOf(item);
    if (index >= 0) items.splice(index, 1);
    if (item.previewUrl) URL.revokeObjectURL(item.previewUrl);
    item.el.card.remove();
    ui.queueEmpty.hidden = items.length > 0;
    announce(item.name + " removed.");
    ui.queueTitle.focus();
    updateControls();
  }

  function updateControls() {
    const waiting = items.filter((item) => item.state === "waiting").length;
    const removable = items.filter((item) => item.state === "waiting" || item.state === "refused").length;
    setEnabled(ui.classifyButton, waiting > 0 && !running);
    ui.classifyButton.textContent = waiting > 1 && !running ? "Classify " + waiting + " files" : "Classify";
    setEnabled(ui.clearQueueButton, removable > 0 && !running);
    setEnabled(ui.exportButton, history.length > 0);
    setEnabled(ui.clearHistoryButton, history.length > 0);
  }

  async function startQueue() {
    if (running) return;
    running = true;
    run = { total: 0, done: 0, failed: 0 };
    ui.overall.hidden = false;
    updateControls();
    try {
      let item;
      while ((item = items.find((candidate) => candidate.state === "waiting"))) {
        run.total = run.done + items.filter((candidate) => candidate.state === "waiting").length;
        ui.overallLabel.textContent = "Classifying " + (run.done + 1) + " of " + run.total + "…";
        ui.overallProgress.max = run.total;
        ui.overallProgress.value = run.done;
        announce("Classifying " + (run.done + 1) + " of " + run.total + "…");
        const ok = await classify(item);
        run.done++;
        if (!ok) run.failed++;
      }
    } finally {
      running = false;
      ui.overall.hidden = true;
      const succeeded = run.done - run.failed;
      let message = "Finished: " + succeeded + (succeeded === 1 ? " scan" : " scans") + " classified";
      message += run.failed ? ", " + run.failed + " failed (see the list)." : ".";
      announce(message);
      updateControls();
    }
  }

  // ------------------------------------------------------------------ one request

  async function classify(item) {
    setState(item, "sending", "Classifying…");
    item.el.error.hidden = true;
    let base64;
    try {
      base64 = await readAsBase64(item.file);
    } catch (error) {
      return fail(item, "The file could not be read from your computer.", "It may have been moved or deleted.", false);
    }
    const request = { image: base64, explain: true }; // no file name: it stays in this browser
    const model = ui.modelPicker.hidden ? "" : ui.modelSelect.value;
    if (model) request.model = model;
    // Signed in with a patient reference (accounts.js): the answer is stored for the care team.
    const signedIn = window.LungScanAccounts ? window.LungScanAccounts.requestExtras() : null;
    if (signedIn) request.patient = signedIn.patient;

    const controller = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, config.requestTimeoutMs);
    let response;
    let body = null;
    try {
      response = await fetch(config.apiUrl + "/predict", {
        method: "POST",
        headers: apiHeaders(Object.assign({ "Content-Type": "application/json" }, signedIn ? signedIn.headers : {})),
        body: JSON.stringify(request),
        signal: controller.signal,
        credentials: "omit",
        referrerPolicy: "no-referrer",
      });
      const text = await response.text();
      try {
        body = text ? JSON.parse(text) : null;
      } catch (error) {
        body = null; // a gateway or proxy page: the status says enough
      }
    } catch (error) {
      if (timedOut) {
        const seconds = Math.max(1, Math.round(config.requestTimeoutMs / 1000));
        const wait = seconds === 1 ? "1 second" : seconds + " seconds";
        return fail(item, "The service did not answer within " + wait + ".", "Press Retry to try again.", true);
      }
      return fail(
        item,
        "Could not reach the LungScan service.",
        "Check the network connection, then press Retry.",
        true
      );
    } finally {
      clearTimeout(timer);
    }

    if (!response.ok) {
      const described = describeHttpError(response.status, body);
      return fail(item, described.title, described.detail, described.retriable);
    }
    if (!body || typeof body.label !== "string" || !body.probabilities) {
      return fail(item, "The service sent an answer this page cannot read.", "Press Retry to try again.", true);
    }
    showResult(item, body);
    if (window.LungScanAccounts) window.LungScanAccounts.onResult(body);
    return true;
  }

  function fail(item, title, detail, retriable) {
    item.retriable = retriable;
    showError(item, title, detail);
    setState(item, "failed", "Failed");
    return false;
  }

  // ------------------------------------------------------------------ result card

  function showResult(item, answer) {
    const element = item.el;
    item.answer = answer;
    const suspicious = Boolean(answer.suspicious);
    element.verdict.textContent = answer.verdict || answer.prediction || "";
    element.verdict.classList.toggle("suspicious", suspicious);
    element.verdict.classList.toggle("clear", !suspicious);
    element.card.classList.toggle("is-suspicious", suspicious);
    element.label.textContent = answer.label;
    // The conformal prediction set: every finding the model cannot rule out (about 9 cases in 10 hold the
    // true one). More than one means the answer needs a clinician's review.
    const uncertain = answer.uncertain === true;
    element.card.classList.toggle("is-uncertain", uncertain);
    element.uncertainNote.hidden = !uncertain;
    element.setLine.hidden = !Array.isArray(answer.prediction_set);
    element.setValue.textContent = predictionSetText(answer);
    element.confidenceValue.textContent = percent(answer.confidence);
    element.confidenceFill.style.setProperty("--value", String(Number(answer.confidence) || 0));

    element.probabilities.replaceChildren();
    for (const [name, probability] of Object.entries(answer.probabilities)) {
      const row = document.createElement("tr");
      if (name === answer.label) row.classList.add("top");
      const nameCell = document.createElement("th");
      nameCell.scope = "row";
      nameCell.textContent = name;
      const valueCell = document.createElement("td");
      const bar = document.createElement("div");
      bar.className = "bar bar-small";
      bar.setAttribute("aria-hidden", "true");
      const fill = document.createElement("div");
      fill.className = "bar-fill";
      fill.style.setProperty("--value", String(Number(probability) || 0));
      bar.append(fill);
      const value = document.createElement("span");
      value.className = "probability-value";
      value.textContent = percent(probability);
      valueCell.append(bar, value);
      row.append(nameCell, valueCell);
      element.probabilities.append(row);
    }

    const model = answer.model || {};
    const input = answer.input || {};
    let modelText = "Model " + (model.name || "unknown") + ", version " + (model.version || "unknown") + ".";
    if (input.format) {
      modelText += " Input: " + input.format;
      if (input.width && input.height) modelText += ", " + input.width + "×" + input.height;
      if (typeof input.frame === "number") modelText += ", frame " + input.frame;
      if (input.window && input.window.center !== undefined) {
        modelText += ", lung window (centre " + input.window.center + " HU, width " + input.window.width + " HU)";
      }
      modelText += ".";
    }
    element.modelLine.textContent = modelText;
    element.disclaimer.textContent = answer.disclaimer || "Research tool. Not a diagnosis. A clinician must review every scan.";

    if (typeof answer.preview === "string" && answer.preview) {
      element.preview.alt = "What the model saw for " + item.name;
      element.preview.src = dataUrl(answer.preview, "image/png");
      element.preview.hidden = false;
      element.noPreview.hidden = true;
    } else if (element.preview.hidden) {
      element.noPreview.textContent = "No preview available for this file.";
    }

    const hasHeatmap = typeof answer.heatmap === "string" && answer.heatmap.length > 0;
    element.heatmapControls.hidden = !hasHeatmap;
    if (hasHeatmap) {
      element.overlay.src = dataUrl(answer.heatmap, "image/png");
      element.heatmapToggle.checked = false;
    } else {
      element.overlay.removeAttribute("src");
    }
    applyHeatmap(item);

    element.result.hidden = false;
    element.error.hidden = true;
    setState(item, "done", suspicious ? "Classified: flagged as suspicious" : "Classified: not flagged");
    addToHistory(item, answer);
  }

  function applyHeatmap(item) {
    const element = item.el;
    const available = !element.heatmapControls.hidden;
    const shown = available && element.heatmapToggle.checked && !element.preview.hidden;
    const opacity = Number(element.heatmapOpacity.value) / 100;
    element.overlay.hidden = !shown;
    element.overlay.style.setProperty("--overlay-opacity", String(opacity));
    element.heatmapOpacity.disabled = !element.heatmapToggle.checked;
    element.heatmapOpacityValue.textContent = Math.round(opacity * 100) + "%";
    element.caption.textContent = shown
      ? "Heatmap on: warmer colours mark the regions that weighed most in the model's score."
      : "";
  }

  // ------------------------------------------------------------------ history and CSV

  function addToHistory(item, answer) {
    const entry = {
      time: new Date(),
      file: item.name,
      sizeBytes: item.size,
      answer: answer,
    };
    history.push(entry);
    const row = document.createElement("tr");
    const cells = [
      entry.time.toLocaleTimeString(),
      entry.file,
      (answer.verdict || "") + (answer.uncertain === true ? " (uncertain — needs review)" : ""),
      answer.label,
      percent(answer.confidence),
      ((answer.model || {}).name || "") + " " + ((answer.model || {}).version || ""),
    ];
    const headings = historyHeadings();
    cells.forEach((text, index) => {
      const cell = document.createElement("td");
      cell.textContent = text;
      cell.dataset.label = headings[index] || ""; // shown beside the value on narrow screens
      row.append(cell);
    });
    row.cells[1].classList.add("file-cell");
    if (answer.suspicious) row.classList.add("suspicious-row");
    ui.historyBody.prepend(row);
    ui.historyScroll.hidden = false;
    ui.historyEmpty.hidden = true;
    updateControls();
  }

  function historyHeadings() {
    return Array.from(document.querySelectorAll("#history-table thead th"), (th) => th.textContent.trim());
  }

  function csvField(value) {
    let text = value === null || value === undefined ? "" : String(value);
    // Spreadsheets run cells starting with = + - @ as formulas: keep them as text.
    if (/^[=+\-@\t\r]/.test(text)) text = "'" + text;
    return /[",\r\n]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
  }

  function historyCsv() {
    const classes = [];
    for (const entry of history) {
      for (const name of Object.keys(entry.answer.probabilities || {})) {
        if (!classes.includes(name)) classes.push(name);
      }
    }
    const header = ["time", "file", "size_bytes", "format", "width", "height", "verdict", "suspicious", "label",
      "confidence", "prediction_set", "uncertain"]
      .concat(classes.map((name) => "p_" + name))
      .concat(["threshold", "model_name", "model_version", "model_sha256", "request_id"]);
    const lines = [header.map(csvField).join(",")];
    for (const entry of history) {
      const answer = entry.answer;
      const input = answer.input || {};
      const model = answer.model || {};
      const row = [
        entry.time.toISOString(),
        entry.file,
        entry.sizeBytes,
        input.format,
        input.width,
        input.height,
        answer.verdict,
        answer.suspicious ? "true" : "false",
        answer.label,
        answer.confidence,
        predictionSetText(answer).replace(/, /g, "|"),
        answer.uncertain === undefined || answer.uncertain === null ? "" : String(answer.uncertain),
      ]
        .concat(classes.map((name) => (answer.probabilities || {})[name]))
        .concat([answer.threshold, model.name, model.version, model.sha256, answer.request_id]);
      lines.push(row.map(csvField).join(","));
    }
    return "\ufeff" + lines.join("\r\n") + "\r\n"; // BOM: spreadsheets then read UTF-8 names right
  }

  function exportCsv() {
    if (!history.length) {
      announce("Nothing to export yet.");
      return;
    }
    const blob = new Blob([historyCsv()], { type: "text/csv;charset=utf-8" });
    const url = URL.createObjectURL(blob);
    const link = document.createElement("a");
    link.href = url;
    link.download = "lungscan-results-" + new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19) + ".csv";
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    announce("Exported " + history.length + (history.length === 1 ? " scan" : " scans") + " as CSV.");
  }

  function clearHistory() {
    history.length = 0;
    ui.historyBody.replaceChildren();
    ui.historyScroll.hidden = true;
    ui.historyEmpty.hidden = false;
    announce("The list of classified scans was cleared.");
    updateControls();
  }

  // ------------------------------------------------------------------ models served

  async function loadModels() {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), MODEL_LIST_TIMEOUT_MS);
    try {
      const response = await fetch(config.apiUrl + "/model", {
        headers: apiHeaders(),
        signal: controller.signal,
        credentials: "omit",
      });
      const body = await response.json().catch(() => null);
      if (!response.ok || !body || !Array.isArray(body.models)) {
        const described = describeHttpError(response.status, body);
        showServiceNote("The service answered, but no model is ready: " + described.title);
        return;
      }
      if (body.models.length > 1) {
        ui.modelSelect.replaceChildren();
        for (const model of body.models) {
          const option = document.createElement("option");
          option.value = model.name;
          option.textContent = model.name + " (version " + model.version + ")" + (model.default ? ", default" : "");
          option.selected = Boolean(model.default);
          ui.modelSelect.append(option);
        }
        ui.modelPicker.hidden = false;
      }
    } catch (error) {
      showServiceNote(
        "The LungScan service cannot be reached right now. You can still add files; " +
          "classifying them will show an error until the service answers."
      );
    } finally {
      clearTimeout(timer);
    }
  }

  function showServiceNote(text) {
    ui.serviceNote.textContent = text;
    ui.serviceNote.hidden = false;
  }

  // ------------------------------------------------------------------ wiring

  ui.maxSize.textContent = formatLimit(config.maxUploadBytes);

  ui.fileInput.addEventListener("change", () => {
    addFiles(ui.fileInput.files);
    ui.fileInput.value = ""; // the same file can be added again
  });

  ui.classifyButton.addEventListener("click", () => {
    if (!isEnabled(ui.classifyButton)) {
      announce(running ? "Already classifying: please wait." : "Add CT slices first.");
      return;
    }
    startQueue();
  });

  ui.clearQueueButton.addEventListener("click", () => {
    if (!isEnabled(ui.clearQueueButton)) return;
    for (const item of items.filter((entry) => entry.state === "waiting" || entry.state === "refused")) {
      removeItem(item);
    }
    announce("Unsent files removed.");
  });

  ui.exportButton.addEventListener("click", () => {
    if (isEnabled(ui.exportButton)) exportCsv();
    else announce("Nothing to export yet.");
  });

  ui.clearHistoryButton.addEventListener("click", () => {
    if (isEnabled(ui.clearHistoryButton)) clearHistory();
  });

  // Drops are accepted anywhere on the page, so a missed drop never navigates away from the results.
  let dragDepth = 0;
  const hasFiles = (event) => Boolean(event.dataTransfer) && Array.from(event.dataTransfer.types || []).includes("Files");
  window.addEventListener("dragenter", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    dragDepth++;
    ui.dropZone.classList.add("dragging");
  });
  window.addEventListener("dragover", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  });
  window.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (!dragDepth) ui.dropZone.classList.remove("dragging");
  });
  window.addEventListener("drop", (event) => {
    event.preventDefault();
    dragDepth = 0;
    ui.dropZone.classList.remove("dragging");
    if (event.dataTransfer && event.dataTransfer.files.length) addFiles(event.dataTransfer.files);
  });

  updateControls();
  loadModels();
})();
