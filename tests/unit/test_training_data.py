"""The training data pipeline on tiny generated data: dedup, block split, no leaks.

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

from lungscan.transforms import build_preprocess
from training.datasets import (
    CLASSES,
    SPLITS,
    block_split,
    deduplicate,
    drop_near_duplicates,
    file_number,
    load_arrays,
    scan_dataset,
)

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
        assert assignments.count("test") == 2 and assignments.count("validation") == 2
        assert assignments.count("train") == 9
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
