"""``python -m training`` end to end on a tiny generated dataset: train -> evaluate -> publish.

3 classes x 12 generated 40x40 PNGs, a 32x32 input and 2 epochs: the real CLI, the real
preprocessing and the real bundle, in a few seconds. No ../shared/data, no network (moto).
"""

from __future__ import annotations

import io
import itertools
import json
from pathlib import Path

import boto3
import numpy as np
import pytest
from moto import mock_aws
from PIL import Image

import lungscan.model.classifier
import lungscan.model.transforms
import training.data.arrays
import training.data.layouts
import training.fit.train
import training.measure.evaluate
from lungscan.bundle.store import read_metadata
from lungscan.model.classifier import Classifier
from lungscan.registry import bundles as registry
from lungscan.registry import pointer as registry_pointer
from lungscan.uploads import decode_upload
from training.cli import build_parser, main
from training.release.twin import derive_twin

CLASS_ROWS = {"alpha": 5, "beta": 15, "gamma": 25}  # each class: a bright bar at its own height
CLASS_ORDER = sorted(CLASS_ROWS)
BUCKET = "lungscan-models-test"


def make_dataset(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for label, row in CLASS_ROWS.items():
        (root / label).mkdir(parents=True)
        for number in range(1, 13):
            pixels = rng.integers(0, 60, (40, 40)).astype(np.uint8)
            pixels[row : row + 10, 5:35] = 200
            mode = "RGBA" if number % 4 == 0 else "L"  # screenshots arrive as RGBA: grayscale makes them alike
            Image.fromarray(pixels).convert(mode).save(root / label / f"{label} ({number}).png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """Train once for the module, through the CLI, with a spy on the shared preprocessing function."""
    root = tmp_path_factory.mktemp("training")
    data = make_dataset(root / "data")
    bundle = root / "bundle"
    calls: list[str] = []
    original = lungscan.model.transforms.preprocess_image

    def spy(decoded, preprocess):
        calls.append("call")
        return original(decoded, preprocess)

    patch = pytest.MonkeyPatch()
    # Training (training.data.arrays) and serving (lungscan.model.classifier) both bound the core function at import.
    assert training.data.arrays.preprocess_image is original is lungscan.model.classifier.preprocess_image
    patch.setattr(training.data.arrays, "preprocess_image", spy)
    patch.setattr(lungscan.model.classifier, "preprocess_image", spy)
    writes: list[Path] = []  # model.json is written once per run, after evaluation
    for module in (training.fit.train, training.measure.evaluate):
        original_write = module.write_metadata
        patch.setattr(
            module, "write_metadata", lambda path, meta, write=original_write: [writes.append(path), write(path, meta)]
        )
    loads: list[Path] = []  # evaluate loads the classifier to measure, then once to check what it wrote

    class CountedClassifier(Classifier):
        def __init__(self, bundle_dir, **kwargs):
            loads.append(bundle_dir)
            super().__init__(bundle_dir, **kwargs)

    patch.setattr(lungscan.model.classifier, "Classifier", CountedClassifier)
    try:
        argv = [
            "train",
            *("--data-dir", str(data), "--name", "tiny-cli", "--positive-classes", "gamma"),
            *("--image-size", "32", "--epochs", "2", "--blocks", "6", "--gap", "0", "--seed", "7"),
            *("--output-dir", str(bundle), "--runs-dir", str(root / "runs"), "--smoke-size", "6"),
            *("--version", "v1"),
        ]
        code = main(argv)
    finally:
        patch.undo()
    return {
        "code": code,
        "bundle": bundle,
        "data": data,
        "runs": root / "runs",
        "calls": len(calls),
        "writes": len(writes),
        "loads": len(loads),
    }


def test_train_writes_a_bundle_that_the_classifier_serves(trained):
    assert trained["code"] == 0
    assert trained["writes"] == 1 and trained["loads"] == 2  # evaluated in memory, written once, checked once
    bundle = trained["bundle"]
    classifier = Classifier(bundle)
    meta = classifier.metadata
    assert (meta.name, meta.version, meta.classes, meta.positive_classes) == ("tiny-cli", "v1", CLASS_ORDER, ["gamma"])
    assert classifier.input_shape == (32, 32, 1)
    # The served calibration is the chosen candidate, refitted on the whole calibration split.
    assert meta.temperature == 1.0 and meta.calibration is not None
    chosen = [row for row in meta.metrics["calibration"]["candidates"] if row.get("chosen")]
    assert [row["family"] for row in chosen] == [meta.calibration.family]
    assert meta.metrics["calibration"]["scale"] == meta.calibration.scale
    for key in ("accuracy", "macro_f1", "macro_roc_auc", "suspicious_sensitivity", "suspicious_specificity"):
        assert key in meta.metrics
    test = meta.metrics["test"]
    assert set(test["per_class"]) == set(CLASS_ROWS)
    assert {"precision", "recall", "roc_auc"} <= set(test["per_class"]["alpha"])
    calibration = meta.metrics["calibration"]
    assert {"test_ece_before", "test_ece_after", "validation_ece_before", "validation_ece_after"} <= set(calibration)
    assert calibration["fitted_on"] == "calibration"
    for split, measured in (("test", "test"), ("validation", "validation"), ("calibration", "calibration_split")):
        assert calibration[f"{split}_ece_after"] == meta.metrics[measured]["ece"], split  # "after" is what is served
    # Conformal thresholds, fitted on the calibration split, with coverage and set size measured per class.
    assert meta.conformal is not None and set(meta.conformal.thresholds) == set(CLASS_ROWS)
    assert meta.conformal.calibration["fingerprint"] == meta.dataset["split"]["calibration_fingerprint"]
    for split in ("test", "validation", "calibration"):
        report = meta.conformal.evaluation[split]
        assert 0.0 <= report["coverage"] <= 1.0 and 1.0 <= report["mean_set_size"] <= len(CLASS_ROWS)
        assert set(report["per_class"]) == set(CLASS_ROWS)
    assert meta.metrics["majority_baseline"]["class"] in CLASS_ROWS
    fingerprint = meta.metrics["evaluation_set"]["fingerprint"]
    assert len(fingerprint) == 64 and fingerprint == meta.dataset["split"]["test_fingerprint"]
    for name in ("confusion_matrix.png", "roc.png", "reliability.png", "smoke.npz", "split.json", "training.json"):
        assert (bundle / "report" / name).is_file(), name
    assert (bundle / "report" / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (bundle / "MODEL_CARD.md").read_text()
    assert "Not a diagnosis" in card and "macro-F1" in card and "Limitations" in card
    assert set(registry.declared_report_files(meta)) >= {"report/smoke.npz", "MODEL_CARD.md"}
    assert list(trained["runs"].glob("tiny-cli-v1/train/events.out.tfevents.*"))  # TensorBoard logs


def test_training_and_serving_call_the_same_preprocessing(trained):
    # Train loaded 24 + 6 images, evaluate served 6 + 6 through Classifier.prepare: all via one function.
    assert trained["calls"] >= 24 + 6 + 6 + 6
    manifest = json.loads((trained["bundle"] / "report" / "split.json").read_text())
    files = [trained["data"] / item["file"] for item in manifest["splits"]["train"][:4]]
    samples = training.data.layouts.samples_from_manifest(
        {"splits": {"train": manifest["splits"]["train"][:4]}}, trained["data"]
    )["train"]
    classifier = Classifier(trained["bundle"])
    trained_on, _ = training.data.arrays.load_arrays(samples, classifier.preprocess, CLASS_ORDER)
    served = np.stack([classifier.prepare(decode_upload(path.read_bytes()))[0] for path in files])
    assert np.array_equal(trained_on, served)


def test_the_split_has_no_content_in_two_places(trained):
    manifest = json.loads((trained["bundle"] / "report" / "split.json").read_text())
    hashes = {name: {item["sha256"] for item in items} for name, items in manifest["splits"].items()}
    for first, second in itertools.combinations(hashes, 2):
        assert not hashes[first] & hashes[second], (first, second)
    assert set(hashes) == {"train", "validation", "calibration", "test"} and all(hashes.values())
    assert sum(len(items) for items in manifest["splits"].values()) == 36


def test_evaluate_again_reproduces_the_metrics(trained, tmp_path):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(trained["bundle"], copy)
    before = json.loads((copy / "model.json").read_text())["metrics"]
    assert main(["evaluate", str(copy), "--data-dir", str(trained["data"]), "--smoke-size", "6"]) == 0
    after = json.loads((copy / "model.json").read_text())["metrics"]
    assert after["test"] == before["test"] and after["calibration"] == before["calibration"]
    # --version: a re-evaluation to publish beside the old one (published versions are immutable)
    assert main(["evaluate", str(copy), "--data-dir", str(trained["data"]), "--version", "v1-re"]) == 0
    assert read_metadata(copy).version == "v1-re" and "(v1-re)" in (copy / "MODEL_CARD.md").read_text()
    assert main(["evaluate", str(copy), "--data-dir", str(trained["data"]), "--version", "../v2"]) == 1
    assert read_metadata(copy).version == "v1-re"  # a bad version changes nothing


def test_gate_then_publish_accepts_the_trained_bundle(trained, capsys):
    # publish refuses a bundle without the not-CT gate; `gate` fits it on the bundle's training split.
    argv = ["gate", str(trained["bundle"]), "--negatives-per-kind", "3", "--augmented-copies", "1"]
    assert main(argv) == 0
    gate = Classifier(trained["bundle"]).metadata.gate
    assert gate is not None and gate.fitted_on["ct"]["bundles"] == {"bundle": 18}
    assert set(gate.evaluation["held_out_ct"]) == {"data/test"} and "photo" in gate.evaluation["non_ct"]
    assert "held-out CT refused" in capsys.readouterr().out
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        assert main(["publish", str(trained["bundle"]), "--bucket", BUCKET], s3=s3) == 0
        assert registry_pointer.latest_version(s3, BUCKET, "tiny-cli") == "v1"
        assert main(["list", "--bucket", BUCKET], s3=s3) == 0
    out = capsys.readouterr().out
    assert "* v1" in out


def test_train_without_data_fails_with_one_line(tmp_path, capsys):
    code = main(["train", "--data-dir", str(tmp_path / "nowhere"), "--name", "x", "--positive-classes", "a"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err


def test_every_subcommand_explains_itself(capsys):
    parser = build_parser()
    for command in ("train", "evaluate", "gate", "publish", "promote", "rollback", "list"):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([command, "--help"])
        assert exit_info.value.code == 0
        assert len(capsys.readouterr().out) > 300


def test_a_hog_ensemble_with_declared_preprocessing_trains_and_serves(tmp_path):
    """The shipped recipe's pieces on a tiny set: frozen HOG front end, two fold heads averaged in one
    model.h5, pad-to-square and percentile scaling declared in model.json and used by serving."""
    data = make_dataset(tmp_path / "data")
    bundle = tmp_path / "bundle"
    argv = [
        "train",
        *("--data-dir", str(data), "--name", "tiny-hog", "--positive-classes", "gamma", "--version", "v1"),
        *("--architecture", "hog", "--image-size", "32", "--hog-cell", "8", "--ensemble", "2", "--epochs", "3"),
        *("--pad-to-square", "--intensity", "percentile", "--augment", "strong", "--label-smoothing", "0.1"),
        *("--blocks", "6", "--gap", "0", "--output-dir", str(bundle), "--runs-dir", str(tmp_path / "runs")),
        *("--smoke-size", "6"),
    ]
    assert main(argv) == 0
    classifier = Classifier(bundle)
    preprocessing = classifier.metadata.preprocessing
    assert preprocessing.pad_to_square and preprocessing.intensity.method == "percentile"
    model = Classifier(bundle, runtime="keras").runtime.model
    names = [layer.name for layer in model.layers]
    assert {"member1_probabilities", "member2_probabilities", "last_conv"} <= set(names)
    frozen = model.get_layer("gradients")
    assert not frozen.trainable and frozen.get_weights()[0].shape == (3, 3, 1, 2)  # d/dx, d/dy
    assert classifier.metadata.training["optimizer"].startswith("scikit-learn LogisticRegression")
    derive_twin(bundle, out=lambda _: None)  # two averaged heads over the flattened block map
    classifier = Classifier(bundle)
    assert classifier.runtime.name == "onnxruntime"
    assert classifier.metadata.twin.explain == "gradient-input-flatten-dense"
    wide = Image.fromarray(np.tile(np.linspace(0, 255, 120, dtype=np.uint8), (60, 1)))
    buffer = io.BytesIO()
    wide.save(buffer, format="PNG")
    prediction = classifier.classify(decode_upload(buffer.getvalue()), explain=True)
    steps = [step["name"] for step in classifier.prepare(decode_upload(buffer.getvalue()))[1]]
    assert steps == ["ToColour", "PadToSquare", "Resize", "PercentileScale"]
    assert prediction.heatmap is not None and prediction.heatmap.size == (120, 60)
    assert prediction.prediction_set and prediction.prediction_set[0] == prediction.label


def test_training_and_evaluation_decode_dicom_with_the_bundles_window(tmp_path):
    """A bundle that declares its own DICOM window is trained, evaluated and served through that window."""
    from types import SimpleNamespace

    from helpers import ct_dataset, dicom_bytes, frame

    from infrastructure.emulation import standin_bundle
    from lungscan.bundle.metadata import DicomWindowSpec
    from lungscan.bundle.store import write_metadata
    from lungscan.uploads import UploadOptions, classify_upload
    from training.data.layouts import Sample
    from training.fit.train import training_arrays
    from training.measure.evaluate import served_inputs

    bundle = standin_bundle(tmp_path / "bundle", size=32)
    metadata = read_metadata(bundle)
    metadata.preprocessing.dicom_window = DicomWindowSpec(center=40.0, width=400.0)  # a soft-tissue window
    write_metadata(bundle, metadata)
    path = tmp_path / "slice.dcm"
    path.write_bytes(dicom_bytes(ct_dataset([frame(-300)])))  # HU -300 to 204: visible in both windows
    sample = Sample(path=path, label="malignant", number=1, sha256="")
    classifier = Classifier(bundle)

    def served(window) -> np.ndarray:
        upload = classify_upload(classifier, [path.read_bytes()], UploadOptions(window=window))
        return classifier.prepare(upload.focus_image)[0]

    trained_on = training_arrays(SimpleNamespace(split=SimpleNamespace(train=[sample], validation=[sample])), metadata)
    evaluated = served_inputs(classifier, [sample], "test")
    assert np.array_equal(trained_on[0][0], served(None)) and np.array_equal(evaluated[0], served(None))
    assert not np.array_equal(served(None), served({"center": -600.0, "width": 1500.0}))  # the window matters


def test_the_model_card_shows_every_calibration_tried_and_says_when_the_ece_cannot_be_trusted(trained):
    from training.measure.model_card import model_card

    meta = read_metadata(trained["bundle"])
    figures = meta.metrics["calibration"]
    card = model_card(meta, 1000)
    for row in figures["candidates"]:
        chosen = " (chosen)" if row["family"] == meta.calibration.family else ""
        assert f"| {row['family'].replace('_', ' ')}{chosen} | {row['cross_validated_nll']:.3f} |" in card
    assert card.count("(chosen)") == 1

    def card_with(before: float, after: float) -> str:
        uncertainty = {"bootstrap_95": [0.031, 0.212], "if_perfectly_calibrated": 0.087, "draws": 1000}
        figures.update(test_ece_before=before, test_ece_after=after, test_ece_after_uncertainty=uncertainty)
        return model_card(meta, 1000)

    worse = card_with(0.10, 0.15)
    assert "Calibration did not carry over" in worse and "(ECE 0.100 -> 0.150)" in worse
    above_target = card_with(0.20, 0.15)
    assert "did not carry over" not in above_target
    assert "95% bootstrap interval 0.031-0.212" in above_target and "would measure about 0.087" in above_target
    good = card_with(0.20, 0.04)
    assert "did not carry over" not in good and "bootstrap interval" not in good
