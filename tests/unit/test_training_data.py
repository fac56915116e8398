"""The training data pipeline on tiny generated data: dedup, block split, split layouts, no leaks.

No TensorFlow, no ../shared/data: images are generated into a temporary folder.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lungscan.model.transforms import build_preprocess
from training.data.arrays import load_arrays
from training.data.datasets import prepare_dataset
from training.data.dedup import deduplicate, deduplicate_across_splits, near_duplicate_groups, near_duplicate_preprocess
from training.data.layouts import (
    CLASSES,
    class_name_from_folder,
    detect_layout,
    file_number,
    samples_from_manifest,
    scan_class_folders,
    scan_dataset,
    scan_split_layout,
)
from training.data.splits import SPLITS, block_split, drop_near_duplicates, evaluation_fingerprint, group_holdout

FILE_PREFIX = {"normal": "Normal case", "benign": "Bengin case", "malignant": "Malignant case"}
PER_CLASS = {"normal": 40, "benign": 26, "malignant": 52}


def _image_bytes(seed: int, fmt: str) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(40, 40), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """A fake IQ-OTH/NCCD folder: distinct images per class, plus one byte-identical duplicate."""
    seed = 0
    for label in CLASSES:
        folder = tmp_path / label
        folder.mkdir()
        for number in range(1, PER_CLASS[label] + 1):
            seed += 1
            fmt, suffix = ("PNG", ".png") if number % 3 else ("JPEG", ".jpg")
            (folder / f"{FILE_PREFIX[label]} ({number}){suffix}").write_bytes(_image_bytes(seed, fmt))
    # Malignant 40 becomes a byte-identical copy of malignant 6 (as in the real data: far-apart numbers).
    malignant = tmp_path / "malignant"
    (malignant / "Malignant case (40).png").unlink()
    shutil.copyfile(malignant / "Malignant case (6).jpg", malignant / "Malignant case (40).jpg")
    (tmp_path / "normal" / "notes.txt").write_text("not an image")
    (tmp_path / "normal" / "unnumbered.png").write_bytes(_image_bytes(10_000, "PNG"))
    return tmp_path


def test_file_number() -> None:
    assert file_number("Malignant case (17).jpg") == 17
    assert file_number("Bengin case (1).jpg") == 1
    assert file_number("scan.jpg") is None


def test_scan_reads_numbered_images_only(dataset: Path) -> None:
    samples, unnumbered = scan_dataset(dataset)
    assert len(samples) == sum(PER_CLASS.values())
    assert [p.name for p in unnumbered] == ["unnumbered.png"]
    for sample in samples:
        assert sample.sha256 == hashlib.sha256(sample.path.read_bytes()).hexdigest()


def test_deduplicate_drops_byte_identical_copy(dataset: Path) -> None:
    samples, _ = scan_dataset(dataset)
    unique, report = deduplicate(samples)
    assert report.files == len(samples)
    assert report.dropped == 1
    assert report.conflicting == 0
    assert report.kept == len(unique) == len(samples) - 1
    assert report.dropped_files == ["malignant/Malignant case (40).jpg"]  # the lowest number is kept
    assert len({s.sha256 for s in unique}) == len(unique)


def test_deduplicate_drops_all_copies_with_conflicting_labels(dataset: Path) -> None:
    shutil.copyfile(dataset / "normal" / "Normal case (5).png", dataset / "benign" / "Bengin case (99).png")
    unique, report = deduplicate(scan_dataset(dataset)[0])
    assert report.conflicting == 2
    names = {s.path.name for s in unique}
    assert "Normal case (5).png" not in names and "Bengin case (99).png" not in names


@pytest.mark.parametrize("gap", [0, 1, 2, 3])
def test_block_split_is_contiguous_with_gaps_and_leak_free(dataset: Path, gap: int) -> None:
    unique, _ = deduplicate(scan_dataset(dataset)[0])
    split = block_split(unique, n_blocks=6, gap=gap, seed=3)

    # Every unique file is in exactly one split or dropped as a gap.
    placed = [s for name in SPLITS for s in split.by_name(name)] + split.gap_dropped
    assert sorted(s.path for s in placed) == sorted(s.path for s in unique)

    # No content hash in two splits.
    hashes = {name: {s.sha256 for s in split.by_name(name)} for name in SPLITS}
    assert not hashes["train"] & hashes["validation"]
    assert not hashes["train"] & hashes["test"]
    assert not hashes["validation"] & hashes["test"]

    for label in CLASSES:
        where = {s.number: name for name in SPLITS for s in split.by_name(name) if s.label == label}
        dropped = {s.number for s in split.gap_dropped if s.label == label}
        members = sorted(s.number for s in unique if s.label == label)
        # Blocks: contiguous number ranges, each wholly in one split.
        blocks = split.blocks[label]
        assert len(blocks) == 6
        assert blocks[0]["first"] == members[0] and blocks[-1]["last"] == members[-1]
        for block in blocks:
            inside = [n for n in members if block["first"] <= n <= block["last"]]
            assert {where[n] for n in inside if n in where} <= {block["split"]}
        for before, after in itertools.pairwise(blocks):
            assert before["last"] < after["first"]
        # All three splits are used, each by whole blocks.
        assert {b["split"] for b in blocks} == set(SPLITS)
        # Walking the sorted numbers, a change of split is always separated by `gap` dropped files.
        position = {n: i for i, n in enumerate(members)}
        kept = sorted(where)
        for a, b in itertools.pairwise(kept):
            if where[a] != where[b]:
                between = [n for n in members if a < n < b]
                assert position[b] - position[a] - 1 == gap
                assert set(between) <= dropped
        assert len(dropped) == gap * sum(1 for x, y in itertools.pairwise(blocks) if x["split"] != y["split"])


def test_block_split_is_deterministic_and_seeded(dataset: Path) -> None:
    unique, _ = deduplicate(scan_dataset(dataset)[0])
    first = block_split(unique, n_blocks=6, seed=1)
    again = block_split(unique, n_blocks=6, seed=1)
    assert [s.path for s in first.test] == [s.path for s in again.test]
    assert first.blocks == again.blocks
    other = {
        seed: [b["split"] for b in block_split(unique, n_blocks=6, seed=seed).blocks["normal"]] for seed in range(8)
    }
    assert len({tuple(v) for v in other.values()}) > 1


def test_block_split_shares_follow_fractions(dataset: Path) -> None:
    unique, _ = deduplicate(scan_dataset(dataset)[0])
    split = block_split(unique, n_blocks=13, gap=0)
    for label in CLASSES:
        assignments = [b["split"] for b in split.blocks[label]]
        # (0.6, 0.1, 0.15, 0.15) of 13 blocks: round-half-up 1, 2 and 2 held out, the rest trains
        assert assignments.count("validation") == 1 and assignments.count("calibration") == 2
        assert assignments.count("test") == 2 and assignments.count("train") == 8
    assert "contiguous blocks" in split.method and "13" in split.method


def test_block_split_refuses_too_few_files(dataset: Path) -> None:
    unique, _ = deduplicate(scan_dataset(dataset)[0])
    with pytest.raises(ValueError):
        block_split(unique, n_blocks=30)


def test_load_arrays_uses_the_core_preprocessing(dataset: Path) -> None:
    unique, _ = deduplicate(scan_dataset(dataset)[0])
    chain = build_preprocess(
        {
            "colour": "grayscale",
            "resize": {"height": 16, "width": 16, "method": "bilinear"},
            "normalisation": {"scale": 1 / 255, "offset": 0.0},
        }
    )
    arrays, labels = load_arrays(unique[:5] + unique[-5:], chain)
    assert arrays.shape == (10, 16, 16, 1) and arrays.dtype == np.float32
    assert arrays.min() >= 0.0 and arrays.max() <= 1.0
    assert labels.tolist() == [0] * 5 + [2] * 5


def test_near_duplicates_of_training_images_leave_validation_and_test(dataset: Path) -> None:
    unique, _ = deduplicate(scan_dataset(dataset)[0])
    split = block_split(unique, n_blocks=6, gap=2, seed=3)
    twin = split.train[0]
    pixels = np.asarray(Image.open(twin.path), dtype=np.int16)
    near = np.clip(pixels + np.where(pixels < 128, 1, -1), 0, 255).astype(np.uint8)  # new bytes, same picture
    target = split.test[0]
    Image.fromarray(near, mode="L").save(target.path, format="PNG" if target.path.suffix == ".png" else "JPEG")
    assert hashlib.sha256(target.path.read_bytes()).hexdigest() != twin.sha256

    chain = build_preprocess({"colour": "grayscale", "resize": {"height": 32, "width": 32}})
    filtered = drop_near_duplicates(split, chain, threshold=0.02)
    assert [d["file"] for d in filtered.near_duplicates_dropped] == [f"{target.label}/{target.path.name}"]
    assert filtered.near_duplicates_dropped[0]["nearest_train_file"] == f"{twin.label}/{twin.path.name}"
    assert target not in filtered.test and len(filtered.test) == len(split.test) - 1
    assert filtered.validation == split.validation and filtered.train == split.train


# --------------------------------------------------------------------------- split layouts (Kaggle)

KAGGLE_FOLDERS = {
    "adenocarcinoma": "adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib",
    "large_cell_carcinoma": "large.cell.carcinoma_left.hilum_T2_N2_M0_IIIa",
    "squamous_cell_carcinoma": "squamous.cell.carcinoma_left.hilum_T1_N2_M0_IIIa",
    "normal": "normal",
}
KAGGLE_CLASSES = ("adenocarcinoma", "large_cell_carcinoma", "squamous_cell_carcinoma", "normal")


def test_class_names_are_the_folder_name_before_the_first_underscore() -> None:
    assert class_name_from_folder("adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib") == "adenocarcinoma"
    assert class_name_from_folder("large.cell.carcinoma_left.hilum_T2_N2_M0_IIIa") == "large_cell_carcinoma"
    assert class_name_from_folder("squamous.cell.carcinoma") == "squamous_cell_carcinoma"  # Kaggle's test/ names
    assert class_name_from_folder("normal") == "normal"


@pytest.fixture
def kaggle(tmp_path: Path) -> Path:
    """train/ (10 per class) and valid/ (3 per class) with the traps of the real download."""
    seed = 500
    for split, count in (("train", 10), ("valid", 3)):
        for label in KAGGLE_CLASSES:
            folder = tmp_path / split / KAGGLE_FOLDERS[label]
            folder.mkdir(parents=True)
            for index in range(count):
                seed += 1
                (folder / f"{index:06d}.png").write_bytes(_image_bytes(seed, "PNG"))
    normal_train, normal_valid = tmp_path / "train" / "normal", tmp_path / "valid" / "normal"
    shutil.copyfile(normal_train / "000001.png", normal_train / "1 - Copy.png")  # copy inside train
    shutil.copyfile(normal_train / "000002.png", normal_valid / "000002 - Copy.png")  # valid copy of a train image
    large = tmp_path / "train" / KAGGLE_FOLDERS["large_cell_carcinoma"]
    squamous = tmp_path / "train" / KAGGLE_FOLDERS["squamous_cell_carcinoma"]
    shutil.copyfile(large / "000003.png", squamous / "sq2.png")  # one image, two labels
    return tmp_path


def test_kaggle_layout_is_detected_and_classes_normalised(kaggle: Path) -> None:
    assert detect_layout(kaggle) == "kaggle"
    by_origin, classes = scan_split_layout(kaggle, KAGGLE_CLASSES)
    assert classes == KAGGLE_CLASSES
    assert {s.label for s in by_origin["valid"]} == set(KAGGLE_CLASSES)
    assert {s.origin for s in by_origin["train"]} == {"train"}


def test_deduplication_across_splits(kaggle: Path) -> None:
    by_origin, _ = scan_split_layout(kaggle, KAGGLE_CLASSES)
    deduplicated, report = deduplicate_across_splits(by_origin)
    assert report.files == 4 * 10 + 4 * 3 + 3
    assert report.conflicting == 2  # both copies of the two-label image, everywhere
    assert report.dropped == 2 and report.cross_split == {"valid": 1}
    assert report.kept == report.files - report.dropped - report.conflicting
    names = {(s.origin, s.label, s.path.name) for split in deduplicated.values() for s in split}
    assert ("valid", "normal", "000002 - Copy.png") not in names and ("train", "normal", "000002.png") in names
    assert not any(n in {"sq2.png"} or (label, n) == ("large_cell_carcinoma", "000003.png") for _, label, n in names)
    all_hashes = [s.sha256 for split in deduplicated.values() for s in split]
    assert len(all_hashes) == len(set(all_hashes))


def test_kaggle_split_tests_on_valid_and_carves_validation_and_calibration_out_of_train(kaggle: Path) -> None:
    """Source-disjoint: the dataset's valid/ (other sources) is the test split; selection and calibration
    come from train/."""
    prepared = prepare_dataset(kaggle, classes=KAGGLE_CLASSES, seed=3)
    split = prepared.split
    assert prepared.layout == "kaggle" and prepared.classes == KAGGLE_CLASSES
    assert {s.origin for s in split.test} == {"valid"}
    assert {s.origin for s in split.train} == {s.origin for s in split.validation} == {"train"}
    assert {s.origin for s in split.calibration} == {"train"}
    counts = split.counts()
    # 10 adenocarcinoma files in train/: 15% validation (2), 20% calibration (2 of the 8 left), 6 train
    assert (counts["validation"]["adenocarcinoma"], counts["calibration"]["adenocarcinoma"]) == (2, 2)
    assert counts["train"]["adenocarcinoma"] == 6
    hashes = {name: {s.sha256 for s in split.by_name(name)} for name in SPLITS}
    for first, second in itertools.combinations(SPLITS, 2):
        assert not hashes[first] & hashes[second], (first, second)
    again = prepare_dataset(kaggle, classes=KAGGLE_CLASSES, seed=3)
    assert [s.path for s in again.split.calibration] == [s.path for s in split.calibration]
    summary = prepared.summary()
    assert summary["deduplication"]["cross_split_dropped"] == {"valid": 1}
    assert summary["split"]["test_fingerprint"] == evaluation_fingerprint(split.test)
    assert summary["split"]["calibration_fingerprint"] == evaluation_fingerprint(split.calibration)
    manifest = prepared.manifest()
    assert manifest["splits"]["test"][0]["file"].startswith("valid/")
    assert manifest["splits"]["calibration"][0]["file"].startswith("train/")


def test_a_kaggle_test_folder_joins_valid_in_the_test_split(kaggle: Path) -> None:
    for label in KAGGLE_CLASSES:  # Kaggle's test/ uses the short class names
        folder = kaggle / "test" / label.replace("_", ".")
        folder.mkdir(parents=True)
        for index in range(2):
            (folder / f"t{index}.png").write_bytes(_image_bytes(9000 + 10 * len(label) + index, "PNG"))
    split = prepare_dataset(kaggle, classes=KAGGLE_CLASSES).split
    assert {s.origin for s in split.test} == {"valid", "test"}
    assert sum(s.origin == "test" for s in split.test) == 8
    # all of train/, less one copy and the two-label pair, is shared by train, validation and calibration
    assert len(split.train) + len(split.validation) + len(split.calibration) == 4 * 10 + 2 - 1 - 2


def test_near_copies_stay_on_one_side_of_a_carved_split(tmp_path: Path) -> None:
    """A chain of near-identical pictures (re-encoded, slightly changed) is one group."""
    folder = tmp_path / "normal"
    folder.mkdir()
    base = np.asarray(Image.open(io.BytesIO(_image_bytes(1, "PNG"))), dtype=np.int16)
    for index in range(6):
        near = np.clip(base + index % 2, 0, 255).astype(np.uint8)  # 1 grey level apart: new bytes, same picture
        Image.fromarray(near).save(folder / f"copy{index}.png" if index else folder / "copy0.png")
    for index in range(6, 20):
        (folder / f"other{index}.png").write_bytes(_image_bytes(100 + index, "PNG"))
    samples, classes = scan_class_folders(tmp_path)
    groups = near_duplicate_groups(samples, near_duplicate_preprocess(), 0.02)
    copies = {groups[i] for i, s in enumerate(samples) if s.path.name.startswith("copy")}
    assert len(copies) == 1 and len(set(groups)) == 1 + 14
    for seed in range(5):
        kept, held = group_holdout(samples, groups, 0.3, seed, classes)
        sides = {"held" if s in held else "kept" for s in samples if s.path.name.startswith("copy")}
        assert len(sides) == 1
        assert len(kept) + len(held) == len(samples)


def test_generic_class_folders_use_numbers_in_names(tmp_path: Path) -> None:
    for label in ("b_class", "a"):
        (tmp_path / label).mkdir()
        for number in (3, 1, 2):
            (tmp_path / label / f"slice_{number:03d}.png").write_bytes(_image_bytes(number + len(label), "PNG"))
    samples, classes = scan_class_folders(tmp_path)
    assert classes == ("a", "b")
    assert sorted(s.number for s in samples if s.label == "a") == [1, 2, 3]
    assert detect_layout(tmp_path) == "folders"
    with pytest.raises(ValueError):
        scan_class_folders(tmp_path, ["a"])  # an unexpected class folder is an error, not silently skipped


def test_samples_from_manifest_refuse_changed_files(dataset: Path) -> None:
    prepared = prepare_dataset(dataset, layout="iq-oth", blocks=6, gap=0)
    manifest = prepared.manifest()
    samples = samples_from_manifest(manifest, dataset)
    assert [s.sha256 for s in samples["test"]] == [s.sha256 for s in prepared.split.test]
    target = dataset / manifest["splits"]["test"][0]["file"]
    target.write_bytes(_image_bytes(77_777, "PNG"))
    with pytest.raises(ValueError, match="changed since training"):
        samples_from_manifest(manifest, dataset)
