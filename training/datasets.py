"""Loading the IQ-OTH/NCCD slices for training: scan, deduplicate, split by blocks, preprocess.

Nothing here imports TensorFlow, so the split logic is cheap to test. Every image goes
through the core package's :func:`lungscan.uploads.decode_upload` and
:func:`lungscan.transforms.preprocess_image`, exactly as a served request does.

Why a block split: the file numbers (``Malignant case (17).jpg``) run in scan order, so
neighbouring numbers are usually slices of the same patient, and there are no patient ids.
A random per-image split puts slices of one patient on both sides and inflates every
metric. Instead each class is sorted by file number, cut into contiguous blocks, and
whole blocks go to train, validation or test; at every boundary where the split changes
a few files are dropped, so that neighbouring slices never straddle two splits.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from lungscan.transforms import Compose, preprocess_image
from lungscan.uploads import decode_upload

CLASSES = ("normal", "benign", "malignant")
SPLITS = ("train", "validation", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm")

# Folder names as this repository's data README lays them out, and as the dataset
# is published on Mendeley Data ("Bengin" is the original spelling).
CLASS_FOLDERS: dict[str, tuple[str, ...]] = {
    "normal": ("normal", "Normal cases"),
    "benign": ("benign", "Bengin cases", "Benign cases"),
    "malignant": ("malignant", "Malignant cases"),
}

_NUMBER = re.compile(r"\((\d+)\)")


@dataclass(frozen=True)
class Sample:
    """One image file: its class, its scan-order number, and the sha256 of its bytes."""

    path: Path
    label: str
    number: int
    sha256: str


@dataclass
class DedupReport:
    files: int = 0
    kept: int = 0
    dropped: int = 0  # byte-identical copies of a kept file (same class)
    conflicting: int = 0  # files whose identical copies carry different classes: all dropped
    dropped_files: list[str] = field(default_factory=list)


@dataclass
class Split:
    """Which samples went where, and which were left out as gaps between blocks."""

    train: list[Sample]
    validation: list[Sample]
    test: list[Sample]
    gap_dropped: list[Sample]
    blocks: dict[str, list[dict]]  # per class: [{"first", "last", "files", "split"}, ...]
    method: str
    near_duplicates_dropped: list[dict] = field(default_factory=list)

    def by_name(self, name: str) -> list[Sample]:
        return {"train": self.train, "validation": self.validation, "test": self.test}[name]

    def counts(self) -> dict[str, dict[str, int]]:
        return {
            name: {label: sum(1 for s in self.by_name(name) if s.label == label) for label in CLASSES}
            | {"total": len(self.by_name(name))}
            for name in SPLITS
        }


def file_number(name: str) -> int | None:
    """The scan-order number in ``'Normal case (12).jpg'``, or None if there is none."""
    match = _NUMBER.search(name)
    return int(match.group(1)) if match else None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def class_folder(data_dir: Path, label: str) -> Path:
    for name in CLASS_FOLDERS.get(label, (label,)):
        if (data_dir / name).is_dir():
            return data_dir / name
    raise FileNotFoundError(f"no folder for class {label!r} in {data_dir} (tried {CLASS_FOLDERS.get(label)})")


def scan_dataset(data_dir: Path | str, classes: Sequence[str] = CLASSES) -> tuple[list[Sample], list[Path]]:
    """List the numbered image files per class; returns (samples, files without a number)."""
    data_dir = Path(data_dir)
    samples: list[Sample] = []
    unnumbered: list[Path] = []
    for label in classes:
        for path in sorted(class_folder(data_dir, label).iterdir()):
            if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            number = file_number(path.name)
            if number is None:
                unnumbered.append(path)
                continue
            samples.append(Sample(path=path, label=label, number=number, sha256=_sha256(path)))
    samples.sort(key=lambda s: (classes.index(s.label), s.number, s.path.name))
    return samples, unnumbered


def deduplicate(samples: Sequence[Sample]) -> tuple[list[Sample], DedupReport]:
    """Keep one file per content hash (the lowest-numbered one).

    If identical bytes appear under two classes, the label is unknowable: every copy is dropped.
    """
    by_hash: dict[str, list[Sample]] = {}
    for sample in samples:
        by_hash.setdefault(sample.sha256, []).append(sample)
    report = DedupReport(files=len(samples))
    kept: list[Sample] = []
    for copies in by_hash.values():
        copies = sorted(copies, key=lambda s: (s.label, s.number, s.path.name))
        if len({s.label for s in copies}) > 1:
            report.conflicting += len(copies)
            report.dropped_files += [f"{s.label}/{s.path.name}" for s in copies]
            continue
        kept.append(copies[0])
        report.dropped += len(copies) - 1
        report.dropped_files += [f"{s.label}/{s.path.name}" for s in copies[1:]]
    order = {s: i for i, s in enumerate(samples)}
    kept.sort(key=lambda s: order[s])
    report.kept = len(kept)
    return kept, report


def _block_counts(n_blocks: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """Blocks for (train, validation, test): validation and test each get round-half-up of
    their share, at least one; train gets the rest (at least one)."""
    n_val = max(1, int(fractions[1] * n_blocks + 0.5))
    n_test = max(1, int(fractions[2] * n_blocks + 0.5))
    n_train = n_blocks - n_val - n_test
    if n_train < 1:
        raise ValueError(f"{n_blocks} blocks are too few for fractions {tuple(fractions)}")
    return n_train, n_val, n_test


def block_split(
    samples: Sequence[Sample],
    *,
    n_blocks: int = 13,
    gap: int = 2,
    seed: int = 42,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    classes: Sequence[str] = CLASSES,
) -> Split:
    """Split each class into contiguous blocks of file numbers and assign whole blocks.

    Per class: sort by file number, cut into ``n_blocks`` contiguous blocks of (nearly) equal
    file count, shuffle the block indices with ``numpy.random.default_rng(seed + class index)``,
    and give the first blocks of that order to test, the next to validation, the rest to train.
    At every boundary between two adjacent blocks that landed in different splits, the ``gap``
    files nearest the boundary are dropped (``ceil(gap/2)`` from the end of the earlier block,
    ``floor(gap/2)`` from the start of the later one).
    """
    n_train, n_val, n_test = _block_counts(n_blocks, fractions)
    out: dict[str, list[Sample]] = {name: [] for name in SPLITS}
    dropped: list[Sample] = []
    blocks_report: dict[str, list[dict]] = {}
    for class_index, label in enumerate(classes):
        members = sorted((s for s in samples if s.label == label), key=lambda s: (s.number, s.path.name))
        if len(members) < n_blocks:
            raise ValueError(f"class {label!r} has {len(members)} files, fewer than {n_blocks} blocks")
        blocks = [list(chunk) for chunk in np.array_split(np.arange(len(members)), n_blocks)]
        order = np.random.default_rng(seed + class_index).permutation(n_blocks)
        assignment = [""] * n_blocks
        for rank, block_index in enumerate(order):
            assignment[block_index] = "test" if rank < n_test else "validation" if rank < n_test + n_val else "train"
        drop: set[int] = set()
        for b in range(n_blocks - 1):
            if assignment[b] != assignment[b + 1]:
                before, after = (gap + 1) // 2, gap // 2
                drop.update(blocks[b][len(blocks[b]) - before :] if before else [])
                drop.update(blocks[b + 1][:after])
        blocks_report[label] = []
        for b, indices in enumerate(blocks):
            kept = [members[i] for i in indices if i not in drop]
            out[assignment[b]].extend(kept)
            dropped.extend(members[i] for i in indices if i in drop)
            blocks_report[label].append(
                {
                    "first": members[indices[0]].number,
                    "last": members[indices[-1]].number,
                    "files": len(kept),
                    "split": assignment[b],
                }
            )
    method = (
        f"Per class: after deduplication by sha256, files sorted by their scan-order number and cut into "
        f"{n_blocks} contiguous blocks of near-equal size; block order shuffled with numpy default_rng(seed + "
        f"class index, seed={seed}); {n_test} blocks to test, {n_val} to validation, {n_train} to train "
        f"(target {fractions[0]:.0%}/{fractions[1]:.0%}/{fractions[2]:.0%}). At every boundary between "
        f"adjacent blocks in different splits the {gap} files nearest the boundary are dropped, so "
        f"neighbouring slices never fall in two splits. No per-image random split."
    )
    return Split(out["train"], out["validation"], out["test"], dropped, blocks_report, method)


def load_arrays(
    samples: Sequence[Sample], preprocess: Compose, classes: Sequence[str] = CLASSES
) -> tuple[np.ndarray, np.ndarray]:
    """Decode and preprocess files with the core package; returns (N,H,W,C float32, N int labels)."""
    arrays = []
    for sample in samples:
        decoded = decode_upload(sample.path.read_bytes())
        array, _ = preprocess_image(decoded, preprocess)
        arrays.append(array)
    labels = np.array([classes.index(s.label) for s in samples], dtype=np.int64)
    return np.stack(arrays).astype(np.float32), labels


def drop_near_duplicates(split: Split, preprocess: Compose, threshold: float = 0.02) -> Split:
    """Remove validation/test images that are near-copies of a training image.

    Byte-identical copies are gone after :func:`deduplicate`, but the same patient's slices can
    still be on both sides (a block boundary inside a patient, or a patient's run of slices
    repeated under other numbers). An evaluation image whose root-mean-square difference to its
    nearest training image, after ``preprocess`` (small, grayscale, x/255), is below
    ``threshold`` is dropped from its split: it would be a memory test, not a new patient.
    """
    train, _ = load_arrays(split.train, preprocess)
    train = train.reshape(len(train), -1).astype(np.float64)
    train_sq = (train**2).sum(axis=1)
    kept: dict[str, list[Sample]] = {}
    dropped: list[dict] = []
    for name in ("validation", "test"):
        samples = split.by_name(name)
        kept[name] = list(samples)
        if not samples:
            continue
        arrays, _ = load_arrays(samples, preprocess)
        arrays = arrays.reshape(len(arrays), -1).astype(np.float64)
        squared = (arrays**2).sum(axis=1)[:, None] + train_sq[None, :] - 2.0 * arrays @ train.T
        rmse = np.sqrt(np.maximum(squared, 0.0) / arrays.shape[1])
        nearest = rmse.argmin(axis=1)
        kept[name] = [s for i, s in enumerate(samples) if rmse[i, nearest[i]] >= threshold]
        dropped += [
            {
                "split": name,
                "file": f"{s.label}/{s.path.name}",
                "nearest_train_file": f"{split.train[nearest[i]].label}/{split.train[nearest[i]].path.name}",
                "rmse": round(float(rmse[i, nearest[i]]), 4),
            }
            for i, s in enumerate(samples)
            if rmse[i, nearest[i]] < threshold
        ]
    return replace(split, validation=kept["validation"], test=kept["test"], near_duplicates_dropped=dropped)
