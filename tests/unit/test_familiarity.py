"""The unfamiliar-CT signal: the detector's arithmetic, its fit by ``python -m training unfamiliar`` on two
tiny generated "hospitals", and what an unfamiliar slice is answered (never refused)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO_ROOT
from PIL import Image

import training.measure.familiarity as familiarity_training
from lungscan.bundle.store import read_metadata
from lungscan.model.classifier import UNFAMILIAR_NOTE, Classifier
from lungscan.model.familiarity import FamiliaritySpec, familiarity_scores, is_unfamiliar
from lungscan.model.gate import FEATURE_NAMES
from lungscan.uploads import UploadOptions, classify_upload
from training.cli import main

WIDTH = len(FEATURE_NAMES) + 6


def test_the_threshold_lets_through_all_but_the_target_share_of_held_out_slices():
    rng = np.random.default_rng(0)
    train, held_out, test = (rng.normal(size=(n, WIDTH)) * np.linspace(1, 5, WIDTH) for n in (400, 200, 2000))
    spec = familiarity_training.fit_familiarity(train, held_out, target_share=0.05)
    assert np.mean(is_unfamiliar(held_out, spec)) <= 0.05
    assert 0.02 < np.mean(is_unfamiliar(test, spec)) < 0.10  # new slices from the same source: about 5%
    assert is_unfamiliar(test[:5] + 8 * np.linspace(1, 5, WIDTH), spec).all()  # far from the training data
    assert len(spec.variances) == familiarity_training.COMPONENTS  # compact: a few directions, not a covariance
    stored = FamiliaritySpec.model_validate_json(spec.model_dump_json())
    np.testing.assert_allclose(familiarity_scores(test, stored), familiarity_scores(test, spec), rtol=1e-5)


def test_a_detector_fitted_on_other_image_features_is_refused_at_load():
    spec = familiarity_training.fit_familiarity(np.random.default_rng(1).normal(size=(50, WIDTH)), np.zeros((5, WIDTH)))
    with pytest.raises(ValueError, match="refit"):
        FamiliaritySpec.model_validate({**spec.model_dump(), "image_features_version": 0})
    with pytest.raises(ValueError):
        FamiliaritySpec.model_validate({**spec.model_dump(), "scale": [1.0]})


def hospital(root: Path, name: str, background: int) -> Path:
    """Three classes told apart by a bright bar's height; each hospital draws them on its own background."""
    rng = np.random.default_rng(background)
    for label, row in {"alpha": 5, "beta": 15, "gamma": 25}.items():
        (root / name / label).mkdir(parents=True)
        for number in range(1, 13):
            pixels = (background + rng.integers(0, 40, (40, 40))).astype(np.uint8)
            pixels[row : row + 10, 5:35] = 230
            Image.fromarray(pixels).save(root / name / label / f"{label} ({number}).png")
    return root / name


def train(data: Path, bundle: Path, runs: Path) -> None:
    argv = [
        "train",
        *("--data-dir", str(data), "--name", f"tiny-{data.name}", "--positive-classes", "gamma"),
        *("--image-size", "32", "--epochs", "2", "--blocks", "6", "--gap", "0", "--seed", "7"),
        *("--output-dir", str(bundle), "--runs-dir", str(runs), "--smoke-size", "6", "--version", "v1"),
    ]
    assert main(argv) == 0


@pytest.fixture(scope="module")
def two_hospitals(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("hospitals")
    data = root / "data"
    train(hospital(data, "hospital-a", 10), root / "models" / "a", root / "runs")
    train(hospital(data, "hospital-b", 150), root / "models" / "b", root / "runs")
    calls: list[tuple[str, int]] = []
    original = familiarity_training.screening_figures

    def spy(classifier, samples, positives, name):
        calls.append((name, len(samples)))
        return original(classifier, samples, positives, name)

    patch = pytest.MonkeyPatch()
    patch.setattr(familiarity_training, "screening_figures", spy)
    try:
        code = main(["unfamiliar", str(root / "models" / "a"), "--data-dir", str(data)])
    finally:
        patch.undo()
    return {"code": code, "root": root, "data": data, "a": root / "models" / "a", "calls": calls}


def test_the_detector_is_fitted_stored_and_measured_across_sources_by_the_same_code(two_hospitals):
    assert two_hospitals["code"] == 0
    spec = read_metadata(two_hospitals["a"]).familiarity
    assert spec is not None and spec.fitted_on["split"] == "train"
    evaluation = spec.evaluation
    assert set(evaluation["own"]) == {"test"} and set(evaluation["other_sources"]) == {"hospital-b"}
    # one function measured both rows: the bundle's own test split, then every file of the other hospital
    other_files = sum(
        len(v)
        for v in json.loads((two_hospitals["root"] / "models/b/report/split.json").read_text())["splits"].values()
    )
    assert two_hospitals["calls"] == [("test", evaluation["own"]["test"]["n"]), ("hospital-b", other_files)]
    other = evaluation["other_sources"]["hospital-b"]
    assert other["unfamiliar"]["share"] == 1.0  # another background: every slice is unlike hospital a's
    assert other["cancer_confident_all_clear"]["share"] == 0.0
    card = (two_hospitals["a"] / "MODEL_CARD.md").read_text()
    assert "## Unfamiliar CT" in card and "another hospital: `hospital-b`" in card and UNFAMILIAR_NOTE in card


def test_a_slice_far_from_the_training_data_is_answered_unfamiliar_with_the_flagged_class_in_its_set(two_hospitals):
    classifier = Classifier(two_hospitals["a"])
    far = (two_hospitals["data"] / "hospital-b" / "alpha" / "alpha (1).png").read_bytes()
    near = (two_hospitals["data"] / "hospital-a" / "alpha" / "alpha (1).png").read_bytes()
    (answer,) = classify_upload(classifier, [far], UploadOptions()).predictions
    assert answer.unfamiliar is True and answer.uncertain is True
    assert "gamma" in answer.prediction_set and answer.suspicious is True
    assert answer.notes[0] == UNFAMILIAR_NOTE
    (answer,) = classify_upload(classifier, [near], UploadOptions()).predictions
    assert answer.unfamiliar is False


def test_a_multi_source_bundle_names_each_source_row_of_its_own_test_split():
    from lungscan.bundle.metadata import BundleMetadata
    from training.measure.familiarity_card import familiarity_section

    metadata = BundleMetadata.model_validate_json(
        (REPO_ROOT / "models" / "malignancy-screen" / "model.json").read_text()
    )
    section = familiarity_section(metadata)
    for source in ("chest-ct-scan", "iq-oth-nccd"):
        assert f"| own test split: {source} (`malignancy-screen`) |" in section
    assert section.count("| own test split (`malignancy-screen`) |") == 1
