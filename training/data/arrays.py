"""Image files as arrays: decoded and preprocessed by the core package, as a served request is."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from lungscan.inputs.dicom import DicomOptions
from lungscan.model.transforms import Compose, preprocess_image
from lungscan.uploads import decode_upload
from training.data.layouts import CLASSES, Sample


def load_arrays(
    samples: Sequence[Sample],
    preprocess: Compose,
    classes: Sequence[str] = CLASSES,
    *,
    dicom: DicomOptions | None = None,
    progress: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode and preprocess files with the core package; returns (N,H,W,C float32, N int labels).

    Args:
        dicom: how DICOM files are read; a bundle's is ``lungscan.uploads.bundle_dicom_options(metadata)``,
            the one serving uses, so a bundle trained with its own window is served with it.
        progress: a label for a tqdm progress bar (on stderr); None loads silently.
    """
    arrays = []
    for sample in _progress(samples, progress):
        decoded = decode_upload(sample.path.read_bytes(), dicom=dicom)
        array, _ = preprocess_image(decoded, preprocess)
        arrays.append(array)
    labels = np.array([classes.index(s.label) for s in samples], dtype=np.int64)
    return np.stack(arrays).astype(np.float32), labels


def _progress(items: Sequence, label: str | None) -> Iterable:
    if label is None:
        return items
    from tqdm import tqdm  # a training-only dependency: the core never imports it

    return tqdm(items, desc=label, unit="img", leave=False, dynamic_ncols=True)
