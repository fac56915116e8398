"""The screening model's data: two datasets as one (the ``multi`` layout), each split as its own preset splits
it, mapped onto malignant/normal with benign left out; and the flag's threshold chosen on calibration data."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from training.data.datasets import prepare_dataset
from training.measure.calibrate import choose_threshold


def image(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(value).integers(0, 255, (40, 40)).astype(np.uint8)  # every file distinct
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    seed = 0
    for folder, stem in (("normal", "Normal"), ("benign", "Bengin"), ("malignant", "Malignant")):
        for number in range(1, 61):
            seed += 1
            image(root / "iq-oth-nccd" / folder / f"{stem} case ({number}).png", seed)
    for split, count in (("train", 30), ("valid", 6)):
        for folder in (
            "adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib",
            "normal",
            "squamous.cell.carcinoma_left.hilum_T1_N2_M0_IIIa",
        ):
            for number in range(count):
                seed += 1
                image(root / "chest-ct-scan" / split / folder / f"{number:06d}.png", seed)
    return root


def test_two_datasets_become_one_screening_question_with_both_test_splits_held_out(two_datasets):
    prepared = prepare_dataset(two_datasets, layout="multi")
    assert prepared.classes == ("normal", "malignant")
    every = [
        sample for name in ("train", "validation", "calibration", "test") for sample in prepared.split.by_name(name)
    ]
    assert {sample.label for sample in every} == {"normal", "malignant"}
    assert not any("benign" in sample.path.parts or "Bengin" in sample.path.name for sample in every)  # left out
    sources = {sample.path.relative_to(two_datasets).parts[0] for sample in every}
    assert sources == {"iq-oth-nccd", "chest-ct-scan"}
    # Chest CT-Scan's test split is its own valid/ folder; IQ-OTH/NCCD's is its own block split: as alone.
    chest_test = [s for s in prepared.split.test if s.path.relative_to(two_datasets).parts[0] == "chest-ct-scan"]
    assert chest_test and all(s.path.relative_to(two_datasets).parts[1] == "valid" for s in chest_test)
    alone = prepare_dataset(two_datasets / "iq-oth-nccd", layout="iq-oth", blocks=20, gap=2, seed=42)
    iq_test = {s.path for s in prepared.split.test if s.path.relative_to(two_datasets).parts[0] == "iq-oth-nccd"}
    assert iq_test == {s.path for s in alone.split.test if s.label != "benign"}
    # Carcinomas are malignant; nothing is in two splits; the manifest lists files under the datasets' folder.
    assert {s.label for s in chest_test} == {"normal", "malignant"}
    paths = [s.path for s in every]
    assert len(paths) == len(set(paths))
    assert all(entry["file"].split("/")[0] in sources for entry in prepared.manifest()["splits"]["test"])


def test_the_threshold_is_the_largest_that_meets_the_sensitivity_target_on_calibration():
    interpreted = []

    class Stub:  # the served flag: positive probability at or above the threshold
        metadata = SimpleNamespace(classes=["normal", "malignant"], positive_classes=["malignant"], threshold=0.5)

        def interpret(self, row):
            interpreted.append(self.metadata.threshold)
            return SimpleNamespace(suspicious=bool(row[1] >= self.metadata.threshold))

    scores = np.array([0.9, 0.8, 0.7, 0.35, 0.3, 0.2, 0.1, 0.05])
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    calibration = SimpleNamespace(labels=labels, served=np.stack([1 - scores, scores], axis=1))
    stub = Stub()
    chosen = choose_threshold(stub, calibration, 0.95)
    assert chosen["threshold"] == 0.35 == stub.metadata.threshold  # all four positives flagged, the most specific
    assert chosen["sensitivity"] == 1.0 and chosen["specificity"] == 1.0
    assert max(interpreted) == 0.5  # searched from 0.5 down, never above
    assert choose_threshold(stub, calibration, 0.75)["threshold"] == 0.5  # three of four already at 0.5
