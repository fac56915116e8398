"""Splitting without leaks: whole blocks of scan-order numbers per class (IQ-OTH and class folders), or
source-disjoint test with near-duplicate-group hold-outs (split layouts); then near-copies of training
images leave the held-out splits."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from lungscan.model.transforms import Compose
from training.data.arrays import load_arrays
from training.data.dedup import near_duplicate_groups, near_duplicate_preprocess
from training.data.layouts import CLASSES, Sample

# calibration: fits the probability calibration and the conformal thresholds; never trained on or used to select.
SPLITS = ("train", "validation", "calibration", "test")


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
    classes: tuple[str, ...] = CLASSES
    calibration: list[Sample] = field(default_factory=list)

    def by_name(self, name: str) -> list[Sample]:
        return {
            "train": self.train,
            "validation": self.validation,
            "calibration": self.calibration,
            "test": self.test,
        }[name]

    def counts(self) -> dict[str, dict[str, int]]:
        return {
            name: {label: sum(1 for s in self.by_name(name) if s.label == label) for label in self.classes}
            | {"total": len(self.by_name(name))}
            for name in SPLITS
        }


def _block_counts(n_blocks: int, fractions: Sequence[float]) -> dict[str, int]:
    """Blocks per split for fractions (train, validation, test) or (train, validation, calibration,
    test): every held-out split gets round-half-up of its share, at least one; train gets the rest
    (at least one)."""
    names = ("train", "validation", "test") if len(fractions) == 3 else SPLITS
    if len(fractions) not in (3, 4):
        raise ValueError(f"fractions are (train, validation, [calibration,] test), not {tuple(fractions)}")
    counts = {name: max(1, int(share * n_blocks + 0.5)) for name, share in zip(names, fractions, strict=True)}
    counts["train"] = n_blocks - sum(v for k, v in counts.items() if k != "train")
    if counts["train"] < 1:
        raise ValueError(f"{n_blocks} blocks are too few for fractions {tuple(fractions)}")
    return counts


def block_split(
    samples: Sequence[Sample],
    *,
    n_blocks: int = 13,
    gap: int = 2,
    seed: int = 42,
    fractions: Sequence[float] = (0.6, 0.1, 0.15, 0.15),
    classes: Sequence[str] = CLASSES,
) -> Split:
    """Split each class into contiguous blocks of file numbers and assign whole blocks.

    Per class: sort by file number, cut into ``n_blocks`` contiguous blocks of (nearly) equal
    file count, shuffle the block indices with ``numpy.random.default_rng(seed + class index)``,
    and give the first blocks of that order to test, the next to validation, then (with four
    fractions) to calibration, the rest to train.
    At every boundary between two adjacent blocks that landed in different splits, the ``gap``
    files nearest the boundary are dropped (``ceil(gap/2)`` from the end of the earlier block,
    ``floor(gap/2)`` from the start of the later one).
    """
    counts = _block_counts(n_blocks, fractions)
    # Held-out splits take the first shuffled blocks (test, validation, calibration), train the rest.
    ranks = [name for name in ("test", "validation", "calibration") if name in counts]
    plan = [name for name in ranks for _ in range(counts[name])]
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
            assignment[block_index] = plan[rank] if rank < len(plan) else "train"
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
    shares = ", ".join(f"{counts[name]} to {name}" for name in (*ranks, "train"))
    targets = "/".join(f"{share:.0%}" for share in fractions)
    method = (
        f"Per class: after deduplication by sha256, files sorted by their scan-order number and cut into "
        f"{n_blocks} contiguous blocks of near-equal size; block order shuffled with numpy default_rng(seed + "
        f"class index, seed={seed}); {shares} (target {targets}). At every boundary between "
        f"adjacent blocks in different splits the {gap} files nearest the boundary are dropped, so "
        f"neighbouring slices never fall in two splits. No per-image random split."
    )
    return Split(
        out["train"],
        out["validation"],
        out["test"],
        dropped,
        blocks_report,
        method,
        classes=tuple(classes),
        calibration=out["calibration"],
    )


def drop_near_duplicates(split: Split, preprocess: Compose, threshold: float = 0.02) -> Split:
    """Remove validation/test images that are near-copies of a training image.

    Calibration images too. Byte-identical copies are gone after :func:`deduplicate`, but the same patient's slices can
    still be on both sides (a block boundary inside a patient, or a patient's run of slices
    repeated under other numbers). An evaluation image whose root-mean-square difference to its
    nearest training image, after ``preprocess`` (small, grayscale, x/255), is below
    ``threshold`` is dropped from its split: it would be a memory test, not a new patient.
    """
    train, _ = load_arrays(split.train, preprocess, split.classes)
    train = train.reshape(len(train), -1).astype(np.float64)
    train_sq = (train**2).sum(axis=1)
    kept: dict[str, list[Sample]] = {}
    dropped: list[dict] = []
    for name in ("validation", "calibration", "test"):
        samples = split.by_name(name)
        kept[name] = list(samples)
        if not samples:
            continue
        arrays, _ = load_arrays(samples, preprocess, split.classes)
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
    return replace(
        split,
        validation=kept["validation"],
        calibration=kept["calibration"],
        test=kept["test"],
        near_duplicates_dropped=dropped,
    )


def group_holdout(
    samples: Sequence[Sample],
    groups: Sequence[int],
    fraction: float,
    seed: int,
    classes: Sequence[str],
) -> tuple[list[Sample], list[Sample]]:
    """Hold out about ``fraction`` of each class, whole near-duplicate groups at a time.

    Per class (stratified): the class's groups are shuffled with ``default_rng(seed + class
    index)`` and taken in that order until the held-out share reaches ``round(fraction * n)``
    images (a group that would overshoot is skipped). A group that spans classes stays in the
    first part. Returns (kept, held_out), each in the input order.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), not {fraction}")
    members: dict[int, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    held: set[int] = set()
    for class_index, label in enumerate(classes):
        class_groups = sorted(
            group for group, indices in members.items() if {samples[i].label for i in indices} == {label}
        )
        total = sum(1 for s in samples if s.label == label)
        target = int(fraction * total + 0.5)
        taken = 0
        for position in np.random.default_rng(seed + class_index).permutation(len(class_groups)):
            indices = members[class_groups[position]]
            if taken >= target:
                break
            if taken + len(indices) > target and taken > 0:
                continue
            held.update(indices)
            taken += len(indices)
    kept = [s for i, s in enumerate(samples) if i not in held]
    held_out = [s for i, s in enumerate(samples) if i in held]
    return kept, held_out


def split_layout_split(
    by_origin: dict[str, list[Sample]],
    classes: Sequence[str],
    *,
    seed: int = 42,
    test_fraction: float = 0.2,
    validation_fraction: float = 0.15,
    calibration_fraction: float = 0.2,
    near_duplicate_rmse: float = 0.02,
) -> Split:
    """Train/validation/calibration/test for a split layout, after :func:`deduplicate_across_splits`.

    Source-disjoint: the dataset's own ``valid``/``test`` folders come from other sources than
    ``train`` (other patients, other image sizes), so together they are the test split, the honest
    measure of how the model does on new sources. Validation (selection) and calibration
    (probability calibration, conformal thresholds) are carved out of ``train``: seeded, stratified hold-outs of
    ``validation_fraction`` and ``calibration_fraction`` of each class, by whole near-duplicate groups
    (images whose RMSE at 32x32 is below ``near_duplicate_rmse``, chained), so re-encoded or resized
    copies of one picture never sit on both sides. Without ``valid``/``test`` folders the test split is
    carved the same way (``test_fraction``). Finally held-out images that are near-copies of a training
    image are dropped.
    """
    chain = near_duplicate_preprocess()
    train = list(by_origin["train"])
    test = [*by_origin.get("valid", []), *by_origin.get("test", [])]
    if test:
        folders = " and ".join(f"{name}/" for name in ("valid", "test") if by_origin.get(name))
        notes = [f"test: the dataset's own {folders} folder(s), other sources than train/ (source-disjoint)"]
    else:
        train, test = group_holdout(
            train, near_duplicate_groups(train, chain, near_duplicate_rmse), test_fraction, seed, classes
        )
        notes = [f"test: carved out of train/ ({test_fraction:.0%}, seed {seed}), there being no valid/ or test/"]
    share = validation_fraction
    train, validation = group_holdout(
        train, near_duplicate_groups(train, chain, near_duplicate_rmse), share, seed + 1000, classes
    )
    share = calibration_fraction / (1.0 - validation_fraction)  # of what is left after validation
    train, calibration = group_holdout(
        train, near_duplicate_groups(train, chain, near_duplicate_rmse), share, seed + 2000, classes
    )
    notes.append(
        f"validation ({validation_fraction:.0%}) and calibration ({calibration_fraction:.0%}): carved out of "
        f"train/ by seeded (numpy default_rng(seed + 1000/2000 + class index), seed={seed}), per-class hold-outs "
        f"of whole near-duplicate groups (RMSE < {near_duplicate_rmse} at 32x32 grayscale, chained)"
    )
    method = (
        "Split layout (train/ valid/ [test/]): deduplicated by sha256 across all split folders first (a "
        "valid/test file byte-identical to a train file is dropped from valid/test; an image under two "
        "labels is dropped everywhere). The file names carry no usable patient or scan order, so there is "
        "no block split. " + "; ".join(notes) + "; train: the rest of train/. Held-out images that are "
        f"near-copies of a training image (RMSE < {near_duplicate_rmse} at 32x32) are then dropped."
    )
    split = Split(train, validation, test, [], {}, method, classes=tuple(classes), calibration=calibration)
    return drop_near_duplicates(split, chain, near_duplicate_rmse)


def evaluation_fingerprint(samples: Iterable[Sample]) -> str:
    """sha256 over the sorted content hashes of an evaluation set: equal fingerprints, same images."""
    return hashlib.sha256("\n".join(sorted(s.sha256 for s in samples)).encode()).hexdigest()
