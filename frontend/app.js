// LungScan page: send one CT slice to POST /predict and show the answer.
"use strict";

const apiUrl = ((window.LUNGSCAN_CONFIG || {}).apiUrl || "").replace(/\/$/, "");
const form = document.getElementById("upload-form");
const fileInput = document.getElementById("file-input");
const dropZone = document.getElementById("drop-zone");
const statusLine = document.getElementById("status");
const submitButton = document.getElementById("submit-button");

function readAsBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
    reader.onerror = () => reject(new Error("The file could not be read."));
    reader.readAsDataURL(file);
  });
}

function showResult(answer) {
  document.getElementById("verdict").textContent = answer.verdict;
  document.getElementById("verdict").className = "verdict " + (answer.suspicious ? "suspicious" : "clear");
  document.getElementById("label").textContent = answer.label;
  document.getElementById("confidence").textContent = Math.round(answer.confidence * 100) + "%";
  const rows = document.getElementById("probabilities");
  rows.replaceChildren();
  for (const [name, probability] of Object.entries(answer.probabilities)) {
    const row = document.createElement("tr");
    const nameCell = document.createElement("td");
    const valueCell = document.createElement("td");
    nameCell.textContent = name;
    valueCell.textContent = (probability * 100).toFixed(1) + "%";
    row.append(nameCell, valueCell);
    rows.append(row);
  }
  document.getElementById("model-name").textContent = answer.model.name;
  document.getElementById("model-version").textContent = answer.model.version;
  document.getElementById("result-disclaimer").textContent = answer.disclaimer;
  document.getElementById("result").hidden = false;
}

async function classify(file) {
  statusLine.textContent = "Classifying…";
  submitButton.disabled = true;
  try {
    const image = await readAsBase64(file);
    const response = await fetch(apiUrl + "/predict", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ image: image }),
      signal: AbortSignal.timeout(30000),
    });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) {
      const message = (answer.error && answer.error.message) || "The service answered with status " + response.status + ".";
      throw new Error(message);
    }
    showResult(answer);
    statusLine.textContent = "Done.";
  } catch (error) {
    statusLine.textContent = error.name === "TimeoutError"
      ? "The service did not answer in time. Please try again."
      : "Could not classify this file: " + error.message;
  } finally {
    submitButton.disabled = false;
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  if (!fileInput.files.length) {
    statusLine.textContent = "Choose a file first.";
    return;
  }
  classify(fileInput.files[0]);
});

dropZone.addEventListener("dragover", (event) => {
  event.preventDefault();
  dropZone.classList.add("dragging");
});
dropZone.addEventListener("dragleave", () => dropZone.classList.remove("dragging"));
dropZone.addEventListener("drop", (event) => {
  event.preventDefault();
  dropZone.classList.remove("dragging");
  if (event.dataTransfer.files.length) {
    classify(event.dataTransfer.files[0]);
  }
});
