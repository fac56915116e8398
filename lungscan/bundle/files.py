"""Every file of a bundle, named once, and their checksums.

A bundle folder::

    model.h5             the Keras model, the artifact of record
    model.onnx           its runtime twin, served without TensorFlow (training/release/twin.py)
    model.json           what the model is and how to use it (lungscan.bundle.metadata)
    MODEL_CARD.md        for people (training/measure/model_card.py); published, never served
    report/split.json    which files trained, calibrated and tested it (training/data/layouts.py)
    report/smoke.npz     held-out inputs and the probabilities they gave: publish re-checks them
    report/training.json the loss curves of the fit
    report/...           figures and per-image predictions of the evaluation
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Final

MODEL_FILE = "model.h5"
TWIN_FILE: Final = "model.onnx"  # Final: typed as the literal TwinSpec.file requires
METADATA_FILE = "model.json"
CARD_FILE = "MODEL_CARD.md"
REPORT_DIR = "report"  # evaluation figures, split lists, smoke set: for people and tools, not served
SPLIT_FILE = f"{REPORT_DIR}/split.json"
SMOKE_FILE = f"{REPORT_DIR}/smoke.npz"
TRAINING_LOG_FILE = f"{REPORT_DIR}/training.json"

# Registry names and versions become S3 keys and local folders: no "/", no "." or ".." alone.
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def report_files(bundle_dir: Path) -> dict[str, str]:
    """sha256 of every file under report/ and of the model card: publish uploads and checks them."""
    bundle_dir = Path(bundle_dir)
    files = sorted(p for p in (bundle_dir / REPORT_DIR).rglob("*") if p.is_file())
    card = bundle_dir / CARD_FILE
    if card.is_file():
        files.append(card)
    return {p.relative_to(bundle_dir).as_posix(): file_sha256(p) for p in files}
