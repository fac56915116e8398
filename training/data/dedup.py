"""Duplicates: byte-identical copies (by sha256, within one folder tree or across a layout's split
folders) and near-copies (re-encoded or resized images of one picture, by RMSE at 32x32)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from lungscan.model.transforms import Compose, build_preprocess
from training.data.arrays import load_arrays
from training.data.layouts import SPLIT_FOLDERS, Sample

# Near-duplicate checks compare images at this small size (grayscale, x/255): re-encoded or
# resized copies of one picture land within a few grey levels of each other.
NEAR_DUPLICATE_PREPROCESS = {
    "colour": "grayscale",
    "resize": {"height": 32, "width": 32, "method": "bilinear"},
    "normalisation": {"scale": 1.0 / 255.0, "offset": 0.0},
}


@dataclass
class DedupReport:
    files: int = 0
    kept: int = 0
    dropped: int = 0  # byte-identical copies of a kept file (same class)
    conflicting: int = 0  # files whose identical copies carry different classes: all dropped
    dropped_files: list[str] = field(default_factory=list)
    # Of ``dropped``: copies found in a later split folder than the kept one (split layouts only),
    # e.g. {"valid": 8}: eight validation files were byte-identical to a training file.
    cross_split: dict[str, int] = field(default_factory=dict)


def near_duplicate_preprocess() -> Compose:
    return build_preprocess(NEAR_DUPLICATE_PREPROCESS)


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


def deduplicate_across_splits(
    by_origin: dict[str, list[Sample]],
) -> tuple[dict[str, list[Sample]], DedupReport]:
    """Deduplicate by content hash over all split folders at once.

    One copy of each image is kept, in the earliest split folder that has it (train, then
    valid, then test), so a validation or test file byte-identical to a training file leaves
    validation/test (it would be a memory test). Identical bytes under two classes have no
    knowable label: every copy is dropped, in every split.
    """
    order = [split for split in SPLIT_FOLDERS if split in by_origin]
    everything = [sample for split in order for sample in by_origin[split]]
    by_hash: dict[str, list[Sample]] = {}
    for sample in everything:
        by_hash.setdefault(sample.sha256, []).append(sample)
    report = DedupReport(files=len(everything), cross_split=dict.fromkeys(order[1:], 0))
    keep: set[Sample] = set()
    for copies in by_hash.values():
        if len({s.label for s in copies}) > 1:
            report.conflicting += len(copies)
            report.dropped_files += [f"{s.origin}/{s.label}/{s.path.name}" for s in copies]
            continue
        copies = sorted(copies, key=lambda s: (order.index(s.origin), s.path.name))
        kept = copies[0]
        keep.add(kept)
        for copy in copies[1:]:
            report.dropped += 1
            report.dropped_files.append(f"{copy.origin}/{copy.label}/{copy.path.name}")
            if copy.origin != kept.origin:
                report.cross_split[copy.origin] += 1
    result = {split: [s for s in by_origin[split] if s in keep] for split in order}
    report.kept = sum(len(samples) for samples in result.values())
    return result, report


def near_duplicate_groups(samples: Sequence[Sample], preprocess: Compose, threshold: float) -> list[int]:
    """Group images that are near-copies (RMSE below ``threshold`` after ``preprocess``).

    Returns one group id per sample: the connected components of the "near-copy" relation, so
    a chain of resized/re-encoded copies of one picture is one group and never straddles a split.
    """
    if not samples:
        return []
    arrays, _ = load_arrays(samples, preprocess, sorted({s.label for s in samples}))
    flat = arrays.reshape(len(arrays), -1).astype(np.float64)
    squared = (flat**2).sum(axis=1)
    distance = squared[:, None] + squared[None, :] - 2.0 * flat @ flat.T
    rmse = np.sqrt(np.maximum(distance, 0.0) / flat.shape[1])
    parent = list(range(len(samples)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(rmse < threshold, k=1)), strict=True):
        parent[root(int(i))] = root(int(j))
    roots: dict[int, int] = {}
    return [roots.setdefault(root(i), len(roots)) for i in range(len(samples))]
