// What was dropped or chosen: files, or whole folders (a DICOM series), read from the drop's entries; and whether
// they are one study (study.js) or separate slices (queue.js).

import { looksLikeDicom } from "./dicom-slices.js";

// Names a series folder holds beside its slices that are not slices: hidden files, the DICOMDIR index.
const NOT_SLICES = /^(\..*|DICOMDIR|Thumbs\.db|desktop\.ini)$/i;

function readAll(reader) {
  // readEntries answers in batches (100 in Chromium) until an empty one.
  return new Promise((resolve, reject) => {
    const entries = [];
    const next = () =>
      reader.readEntries((batch) => {
        if (!batch.length) resolve(entries);
        else {
          entries.push(...batch);
          next();
        }
      }, reject);
    next();
  });
}

async function walk(entry, files) {
  if (entry.isFile) {
    files.push(await new Promise((resolve, reject) => entry.file(resolve, reject)));
  } else if (entry.isDirectory) {
    const children = await readAll(entry.createReader());
    children.sort((a, b) => a.name.localeCompare(b.name, undefined, { numeric: true }));
    for (const child of children) await walk(child, files);
  }
}

// The drop's files: {files, fromFolder}. The entries must be taken before the drop handler returns.
export function filesFromDrop(dataTransfer) {
  const entries = Array.from(dataTransfer.items || [])
    .filter((item) => item.kind === "file")
    .map((item) => (item.webkitGetAsEntry ? item.webkitGetAsEntry() : null));
  const fromFolder = entries.some((entry) => entry && entry.isDirectory);
  if (!fromFolder) return Promise.resolve({ files: Array.from(dataTransfer.files || []), fromFolder: false });
  return (async () => {
    const files = [];
    for (const entry of entries) if (entry) await walk(entry, files);
    return { files: files.filter((file) => !NOT_SLICES.test(file.name)), fromFolder: true };
  })();
}

// A chosen folder (<input webkitdirectory>): its files, in path order, without the non-slices.
export function filesFromFolderInput(fileList) {
  return Array.from(fileList || [])
    .filter((file) => !NOT_SLICES.test(file.name))
    .sort((a, b) =>
      (a.webkitRelativePath || a.name).localeCompare(b.webkitRelativePath || b.name, undefined, { numeric: true })
    );
}

// A folder, or two DICOM files or more, is one study; anything else is separate slices.
export async function isStudy(files, fromFolder) {
  if (files.length < 2) return false;
  if (fromFolder) return true;
  let dicom = 0;
  for (const file of files) {
    if (await looksLikeDicom(file)) dicom++;
    if (dicom >= 2) return true;
  }
  return false;
}
