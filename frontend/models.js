// The model picker: shown only when the API serves more than one model; a note when none answers.

import { describeHttpError, listModels } from "./api.js";
import { byId } from "./dom.js";

const ui = {
  picker: byId("model-picker"),
  select: byId("model-select"),
  serviceNote: byId("service-note"),
  purpose: byId("model-purpose"),
};

let described = [];

// What the chosen model is for (which images, which question), under the picker.
function showPurpose() {
  const model = described.find((entry) => entry.name === ui.select.value);
  ui.purpose.textContent = model && model.purpose ? model.purpose : "";
  ui.purpose.hidden = !ui.purpose.textContent;
}

function showServiceNote(text) {
  ui.serviceNote.textContent = text;
  ui.serviceNote.hidden = false;
}

export async function loadModels() {
  try {
    const result = await listModels();
    const body = result.body;
    if (!result.ok || !body || !Array.isArray(body.models)) {
      const described = describeHttpError(result.status, body);
      showServiceNote("The service answered, but no model is ready: " + described.title);
      return;
    }
    if (body.models.length > 1) {
      described = body.models;
      ui.select.replaceChildren();
      for (const model of body.models) {
        const option = document.createElement("option");
        option.value = model.name;
        option.textContent =
          (model.default ? "Default: " : "") + model.name + " — " + model.classes.join(", ") + " (version " + model.version + ")";
        option.selected = Boolean(model.default);
        ui.select.append(option);
      }
      ui.picker.hidden = false;
      ui.select.addEventListener("change", showPurpose);
      showPurpose();
    }
  } catch (error) {
    showServiceNote(
      "The LungScan service cannot be reached right now. You can still add files; " +
        "classifying them will show an error until the service answers."
    );
  }
}

// The model a request names: "" (the API's default) while the picker is hidden.
export function chosenModel() {
  return ui.picker.hidden ? "" : ui.select.value;
}
