"""Reading a dataset's files by its layout: the IQ-OTH/NCCD folders, any folder of class folders, or a
split layout (``train/ valid/ [test/]`` of class folders, as Kaggle's *Chest CT-Scan images*); and the
files a bundle's split manifest lists. Each file becomes a :class:`Sample` (class, scan-order number,
sha256); splitting is :mod:`training.data.splits`' work."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lungscan.bundle.files import SPLIT_FILE, file_sha256

CLASSES = ("normal", "benign", "malignant")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm")

# Folder names as this repository's data README lays them out, and as the dataset
# is published on Mendeley Data ("Bengin" is the original spelling).
CLASS_FOLDERS: dict[str, tuple[str, ...]] = {
    "normal": ("normal", "Normal cases"),
    "benign": ("benign", "Bengin cases", "Benign cases"),
    "malignant": ("malignant", "Malignant cases"),
}

_NUMBER = re.compile(r"\((\d+)\)")
LAYOUTS = ("auto", "iq-oth", "folders", "kaggle", "multi")  # multi: training.data.sources
# The dataset's own split folders, in the order that decides which copy of a duplicate is kept.
SPLIT_FOLDERS: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "valid": ("valid", "val", "validation"),
    "test": ("test", "testing"),
}
_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")


@dataclass(frozen=True)
class Sample:
    """One image file: its class, its scan-order number, and the sha256 of its bytes."""

    path: Path
    label: str
    number: int
    sha256: str
    origin: str = ""  # the dataset's own split folder (``train``, ``valid``, ``test``) where it has one


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


def load_split_manifest(bundle_dir: Path) -> dict:
    """``report/split.json``: the files of every split as ``train`` recorded them (evaluate and the gate read it)."""
    path = Path(bundle_dir) / SPLIT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the bundle needs the split that `train` recorded")
    return json.loads(path.read_text())


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
