"""A dataset prepared for training: scanned, deduplicated and split without leaks.

Three layouts are read (see :func:`prepare_dataset`):

- ``iq-oth``: the IQ-OTH/NCCD folders (``normal/ benign/ malignant/`` or the published
  ``Normal cases/ Bengin cases/ Malignant cases/``), numbered ``Malignant case (17).jpg``;
- ``folders``: any folder of class folders (class = folder name);
- ``kaggle``: a split layout (``train/ valid/ [test/]``, each a folder of class folders) such
  as Kaggle's *Chest CT-Scan images*, whose class folders carry staging suffixes
  (``adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib``): the class is the part before the first ``_``.

Nothing here imports TensorFlow, so the split logic is cheap to test. Every image goes
through the core package's :func:`lungscan.uploads.decode_upload` and
:func:`lungscan.model.transforms.preprocess_image`, exactly as a served request does.

Why a block split: the file numbers (``Malignant case (17).jpg``) run in scan order, so
neighbouring numbers are usually slices of the same patient, and there are no patient ids.
A random per-image split puts slices of one patient on both sides and inflates every
metric. Instead each class is sorted by file number, cut into contiguous blocks, and
whole blocks go to train, validation or test; at every boundary where the split changes
a few files are dropped, so that neighbouring slices never straddle two splits.

The steps live in :mod:`training.data.layouts` (reading the files), :mod:`training.data.dedup` (copies and
near-copies), :mod:`training.data.splits` (the splits) and :mod:`training.data.arrays` (decoding and
preprocessing through the core package).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from training.data.dedup import DedupReport, deduplicate, deduplicate_across_splits, near_duplicate_preprocess
from training.data.layouts import (
    CLASSES,
    LAYOUTS,
    Sample,
    detect_layout,
    scan_class_folders,
    scan_dataset,
    scan_split_layout,
)
from training.data.sources import CLASSES as MALIGNANCY_CLASSES
from training.data.sources import SOURCES, combine
from training.data.splits import (
    SPLITS,
    Split,
    block_split,
    drop_near_duplicates,
    evaluation_fingerprint,
    split_layout_split,
)


@dataclass
class PreparedDataset:
    """A dataset scanned, deduplicated and split, with everything a model card needs to say about it."""

    layout: str
    data_dir: Path
    classes: tuple[str, ...]
    split: Split
    dedup: DedupReport
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """What ``model.json`` records about the data (file lists go to ``report/split.json``)."""
        per_class_kept = {
            label: sum(1 for name in SPLITS for s in self.split.by_name(name) if s.label == label)
            for label in self.classes
        }
        return {
            "layout": self.layout,
            "deduplication": {
                "method": "sha256 of file bytes, before splitting"
                + (" and across the dataset's split folders" if self.layout == "kaggle" else ""),
                "files": self.dedup.files,
                "dropped": self.dedup.dropped,
                "cross_split_dropped": self.dedup.cross_split,
                "conflicting_labels_dropped": self.dedup.conflicting,
                "kept": self.dedup.kept,
            },
            "split": {
                "method": self.split.method,
                "counts": self.split.counts(),
                "per_class_used": per_class_kept,
                "gap_dropped": len(self.split.gap_dropped),
                "near_duplicates_dropped": len(self.split.near_duplicates_dropped),
                "test_fingerprint": evaluation_fingerprint(self.split.test),
                "validation_fingerprint": evaluation_fingerprint(self.split.validation),
                "calibration_fingerprint": evaluation_fingerprint(self.split.calibration),
            },
            "skipped_files": len(self.skipped),
        }

    def manifest(self) -> dict:
        """Every file of every split (path relative to the data folder, label, sha256), for ``evaluate``."""

        def entry(sample: Sample) -> dict:
            return {
                "file": sample.path.relative_to(self.data_dir).as_posix(),
                "label": sample.label,
                "sha256": sample.sha256,
            }

        return {
            "layout": self.layout,
            "classes": list(self.classes),
            "splits": {name: [entry(s) for s in self.split.by_name(name)] for name in SPLITS},
            "gap_dropped": [entry(s) for s in self.split.gap_dropped],
            "near_duplicates_dropped": self.split.near_duplicates_dropped,
            "deduplication_dropped": self.dedup.dropped_files,
            "blocks": self.split.blocks,
            "skipped": self.skipped,
        }


def prepare_dataset(
    data_dir: Path | str,
    *,
    layout: str = "auto",
    classes: Sequence[str] | None = None,
    seed: int = 42,
    blocks: int = 13,
    gap: int = 2,
    near_duplicate_rmse: float = 0.02,
    test_fraction: float = 0.2,
    fractions: Sequence[float] = (0.6, 0.1, 0.15, 0.15),
) -> PreparedDataset:
    """Scan, deduplicate and split a dataset in any of :data:`LAYOUTS`.

    ``iq-oth`` and ``folders`` are split per class by contiguous blocks of file numbers
    (:func:`block_split`, then :func:`drop_near_duplicates`); ``kaggle`` by
    :func:`split_layout_split`.
    """
    data_dir = Path(data_dir)
    if layout == "auto":
        layout = detect_layout(data_dir)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {LAYOUTS}")
    if layout == "multi":  # several datasets, each split as its own preset splits it (training.data.sources)
        found = [name for name in SOURCES if (data_dir / name).is_dir()]
        if len(found) < 2:
            raise FileNotFoundError(f"the multi layout needs the datasets {sorted(SOURCES)} in {data_dir}")
        parts = {
            name: prepare_dataset(
                data_dir / name, layout=SOURCES[name][0], near_duplicate_rmse=near_duplicate_rmse, **SOURCES[name][1]
            )
            for name in found
        }
        split, report = combine({n: p.split for n, p in parts.items()}, {n: p.dedup for n, p in parts.items()})
        return PreparedDataset(layout, data_dir, MALIGNANCY_CLASSES, split, report, [])
    skipped: list[str] = []
    if layout == "kaggle":
        by_origin, classes = scan_split_layout(data_dir, classes)
        by_origin, report = deduplicate_across_splits(by_origin)
        split = split_layout_split(
            by_origin, classes, seed=seed, test_fraction=test_fraction, near_duplicate_rmse=near_duplicate_rmse
        )
        return PreparedDataset(layout, data_dir, tuple(classes), split, report, skipped)
    if layout == "iq-oth":
        classes = tuple(classes or CLASSES)
        samples, unnumbered = scan_dataset(data_dir, classes)
        skipped = [path.relative_to(data_dir).as_posix() for path in unnumbered]
    else:
        samples, classes = scan_class_folders(data_dir, classes)
    unique, report = deduplicate(samples)
    split = block_split(unique, n_blocks=blocks, gap=gap, seed=seed, fractions=fractions, classes=classes)
    split = drop_near_duplicates(split, near_duplicate_preprocess(), near_duplicate_rmse)
    return PreparedDataset(layout, data_dir, tuple(classes), split, report, skipped)
