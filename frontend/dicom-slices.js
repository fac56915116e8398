// The user's own slices, decoded in this browser for the study viewer: DICOM (16-bit, in Hounsfield units, shown
// through a display window) with the vendored dicom-parser, PNG and JPEG with the browser's own decoder.
// Nothing here is sent anywhere; only pixel-related tags are read (never the patient's).

const PARSER_URL = "vendor/dicom-parser/dicomParser.min.js";

// The usual CT display windows (centre and width in HU).
export const WINDOWS = {
  lung: { center: -600, width: 1500, label: "Lung" },
  mediastinum: { center: 40, width: 400, label: "Mediastinum" },
  bone: { center: 400, width: 1800, label: "Bone" },
};

// Uncompressed transfer syntaxes: what a browser can show without a codec (others fall back to the API's preview).
const UNCOMPRESSED = new Set(["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"]);

let parserLoad = null;

// dicom-parser is a UMD script, not an ES module: loaded once, as a same-origin classic script (allowed by the
// page's CSP), the first time a DICOM slice is shown.
function parser() {
  if (!parserLoad) {
    parserLoad = new Promise((resolve, reject) => {
      if (window.dicomParser) {
        resolve(window.dicomParser);
        return;
      }
      const script = document.createElement("script");
      script.src = PARSER_URL;
      script.onload = () => (window.dicomParser ? resolve(window.dicomParser) : reject(new Error("no parser")));
      script.onerror = () => reject(new Error("parser did not load"));
      document.head.append(script);
    });
  }
  return parserLoad;
}

// Whether the first bytes are DICOM Part 10 ("DICM" after the 128-byte preamble), or the name says .dcm.
export async function looksLikeDicom(file) {
  if (/\.dcm$/i.test(file.name || "")) return true;
  if (file.size < 132) return false;
  const head = new Uint8Array(await file.slice(128, 132).arrayBuffer());
  return String.fromCharCode(...head) === "DICM";
}

function number(dataSet, tag, fallback) {
  const value = dataSet.floatString(tag);
  return Number.isFinite(value) ? value : fallback;
}

// A DICOM file -> {kind: "dicom", width, height, hu (Float32Array), window}. Throws when it cannot be shown here.
async function decodeDicom(file) {
  const dicomParser = await parser();
  const bytes = new Uint8Array(await file.arrayBuffer());
  const dataSet = dicomParser.parseDicom(bytes, { untilTag: "x7fe00010" });
  const syntax = (dataSet.string("x00020010") || "1.2.840.10008.1.2").replace(/\0/g, "").trim();
  const pixels = dataSet.elements.x7fe00010;
  const width = dataSet.uint16("x00280011");
  const height = dataSet.uint16("x00280010");
  const bits = dataSet.uint16("x00280100");
  if (!UNCOMPRESSED.has(syntax) || !pixels || !width || !height || (bits !== 16 && bits !== 8)) {
    throw new Error("unsupported");
  }
  if (dataSet.uint16("x00280002") > 1) throw new Error("unsupported"); // colour
  const count = width * height;
  const start = pixels.dataOffset;
  if (start + count * (bits / 8) > bytes.length) throw new Error("truncated");
  const signed = dataSet.uint16("x00280103") === 1;
  const bigEndian = syntax === "1.2.840.10008.1.2.2";
  const view = new DataView(bytes.buffer, bytes.byteOffset + start, count * (bits / 8));
  const slope = number(dataSet, "x00281053", 1);
  const intercept = number(dataSet, "x00281052", 0);
  const hu = new Float32Array(count);
  for (let i = 0; i < count; i++) {
    let stored;
    if (bits === 8) stored = view.getUint8(i);
    else stored = signed ? view.getInt16(i * 2, !bigEndian) : view.getUint16(i * 2, !bigEndian);
    hu[i] = stored * slope + intercept;
  }
  return { kind: "dicom", width: width, height: height, hu: hu };
}

// PNG or JPEG -> {kind: "image", width, height, bitmap}.
async function decodeImage(file) {
  const bitmap = await createImageBitmap(file);
  return { kind: "image", width: bitmap.width, height: bitmap.height, bitmap: bitmap };
}

export async function decodeSlice(file) {
  return (await looksLikeDicom(file)) ? decodeDicom(file) : decodeImage(file);
}

// Draws a decoded slice on `canvas`; a DICOM one through `window` ({center, width} in HU).
export function drawSlice(canvas, slice, window) {
  canvas.width = slice.width;
  canvas.height = slice.height;
  const context = canvas.getContext("2d");
  if (slice.kind === "image") {
    context.drawImage(slice.bitmap, 0, 0);
    return;
  }
  const image = context.createImageData(slice.width, slice.height);
  const low = window.center - window.width / 2;
  const scale = 255 / window.width;
  for (let i = 0, j = 0; i < slice.hu.length; i++, j += 4) {
    const grey = Math.max(0, Math.min(255, (slice.hu[i] - low) * scale));
    image.data[j] = image.data[j + 1] = image.data[j + 2] = grey;
    image.data[j + 3] = 255;
  }
  context.putImageData(image, 0, 0);
}
