"""Loading CT slices for training: scan, deduplicate, split without leaks, preprocess.

Three layouts are read (see :func:`prepare_dataset`):

- ``iq-oth``: the IQ-OTH/NCCD folders (``normal/ benign/ malignant/`` or the published
  ``Normal cases/ Bengin cases/ Malignant cases/``), numbered ``Malignant case (17).jpg``;
- ``folders``: any folder of class folders (class = folder name);
- ``kaggle``: a split layout (``train/ valid/ [test/]``, each a folder of class folders) such
  as Kaggle's *Chest CT-Scan images*, whose class folders carry staging suffixes
  (``adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib``): the class is the part before the first ``_``.

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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from lungscan.bundle import file_sha256
from lungscan.dicom import DicomOptions
from lungscan.transforms import Compose, build_preprocess, preprocess_image
from lungscan.uploads import decode_upload

CLASSES = ("normal", "benign", "malignant")
# calibration: fits the probability calibration and the conformal thresholds; never trained on, never used to select.
SPLITS = ("train", "validation", "calibration", "test")
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
    origin: str = ""  # the dataset's own split folder (``train``, ``valid``, ``test``) where it has one


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


def file_number(name: str) -> int | None:
    """The scan-order number in ``'Normal case (12).jpg'``, or None if there is none."""
    match = _NUMBER.search(name)
    return int(match.group(1)) if match else None


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
            samples.append(Sample(path=path, label=label, number=number, sha256=file_sha256(path)))
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


# --------------------------------------------------------------------------- other layouts

LAYOUTS = ("auto", "iq-oth", "folders", "kaggle")
# The dataset's own split folders, in the order that decides which copy of a duplicate is kept.
SPLIT_FOLDERS: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "valid": ("valid", "val", "validation"),
    "test": ("test", "testing"),
}
# Near-duplicate checks compare images at this small size (grayscale, x/255): re-encoded or
# resized copies of one picture land within a few grey levels of each other.
NEAR_DUPLICATE_PREPROCESS = {
    "colour": "grayscale",
    "resize": {"height": 32, "width": 32, "method": "bilinear"},
    "normalisation": {"scale": 1.0 / 255.0, "offset": 0.0},
}
_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")


def near_duplicate_preprocess() -> Compose:
    return build_preprocess(NEAR_DUPLICATE_PREPROCESS)


def class_name_from_folder(folder_name: str) -> str:
    """The class a folder holds: the part before the first ``_``, lower case, other separators as ``_``.

    ``large.cell.carcinoma_left.hilum_T2_N2_M0_IIIa`` -> ``large_cell_carcinoma`` (Kaggle's test
    split uses the short names alone, so both spellings meet on the same class).
    """
    head = folder_name.strip().split("_", 1)[0]
    name = re.sub(r"[^a-z0-9]+", "_", head.lower()).strip("_")
    if not name:
        raise ValueError(f"cannot derive a class name from folder {folder_name!r}")
    return name


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES
    )


def _class_folders(folder: Path) -> dict[str, list[Path]]:
    """Class name -> its folder(s) (two folders may normalise to one class)."""
    found: dict[str, list[Path]] = {}
    for child in sorted(folder.iterdir()):
        if child.is_dir() and not child.name.startswith("."):
            found.setdefault(class_name_from_folder(child.name), []).append(child)
    return found


def scan_class_folders(
    data_dir: Path | str, classes: Sequence[str] | None = None, *, origin: str = ""
) -> tuple[list[Sample], tuple[str, ...]]:
    """Every image of a folder of class folders; returns (samples, classes).

    A file's ``number`` is its ``(n)``, else the last number in its name, else its position in
    name order: block splits need an order, and a name's number is the best guess at scan order.

    Raises:
        FileNotFoundError: a requested class has no folder, or there are no class folders.
        ValueError: a class folder is not among ``classes``.
    """
    data_dir = Path(data_dir)
    folders = _class_folders(data_dir)
    if not folders:
        raise FileNotFoundError(f"{data_dir} holds no class folders")
    if classes is None:
        classes = tuple(sorted(folders))
    missing = [label for label in classes if label not in folders]
    if missing:
        raise FileNotFoundError(f"no folder for class(es) {missing} in {data_dir} (found {sorted(folders)})")
    unknown = sorted(set(folders) - set(classes))
    if unknown:
        raise ValueError(f"{data_dir} has folders for classes {unknown} that are not in {list(classes)}")
    samples: list[Sample] = []
    for label in classes:
        files = [path for folder in folders[label] for path in _image_files(folder)]
        for position, path in enumerate(sorted(files, key=lambda p: p.name)):
            number = file_number(path.name)
            if number is None:
                match = _LAST_NUMBER.search(path.stem)
                number = int(match.group(1)) if match else position
            samples.append(Sample(path=path, label=label, number=number, sha256=file_sha256(path), origin=origin))
    return samples, tuple(classes)


def split_folders(data_dir: Path | str) -> dict[str, Path]:
    """The split folders of a split layout (``train`` always, ``valid``/``test`` when present)."""
    data_dir = Path(data_dir)
    found = {}
    for split, names in SPLIT_FOLDERS.items():
        for name in names:
            if (data_dir / name).is_dir():
                found[split] = data_dir / name
                break
    return found


def detect_layout(data_dir: Path | str) -> str:
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir} is not a folder")
    folders = split_folders(data_dir)
    if "train" in folders and len(folders) > 1:
        return "kaggle"
    aliases = {alias for names in CLASS_FOLDERS.values() for alias in names}
    children = {child.name for child in data_dir.iterdir() if child.is_dir()}
    if all(any(alias in children for alias in CLASS_FOLDERS[label]) for label in CLASSES) and children <= aliases:
        return "iq-oth"
    return "folders"


def scan_split_layout(
    data_dir: Path | str, classes: Sequence[str] | None = None
) -> tuple[dict[str, list[Sample]], tuple[str, ...]]:
    """Samples per split folder (``train``, ``valid``, ``test``) of a split layout, and the classes.

    Without ``classes``, the classes are those of ``train`` in name order.
    """
    folders = split_folders(data_dir)
    if "train" not in folders:
        raise FileNotFoundError(f"{data_dir} has no train/ folder")
    train, classes = scan_class_folders(folders["train"], classes, origin="train")
    by_origin = {"train": train}
    for split in ("valid", "test"):
        if split in folders:
            by_origin[split], _ = scan_class_folders(folders[split], classes, origin=split)
    return by_origin, classes


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
    (temperature, conformal thresholds) are carved out of ``train``: seeded, stratified hold-outs of
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


def samples_from_manifest(manifest: dict, data_dir: Path | str) -> dict[str, list[Sample]]:
    """The samples of each split a bundle's ``report/split.json`` lists, checked against the files.

    Raises:
        FileNotFoundError: a listed file is missing.
        ValueError: a listed file's bytes changed since training.
    """
    data_dir = Path(data_dir)
    result: dict[str, list[Sample]] = {}
    for name, entries in manifest["splits"].items():
        samples = []
        for item in entries:
            path = data_dir / item["file"]
            if not path.is_file():
                raise FileNotFoundError(f"{path} (listed in the bundle's split manifest) does not exist")
            digest = file_sha256(path)
            if digest != item["sha256"]:
                raise ValueError(f"{path} changed since training (sha256 differs from the split manifest)")
            samples.append(Sample(path=path, label=item["label"], number=0, sha256=digest))
        result[name] = samples
    return result
