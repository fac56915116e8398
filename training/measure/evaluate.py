"""``python -m training evaluate BUNDLE``: measure a saved bundle exactly as it is served.

The bundle is loaded with :class:`lungscan.model.classifier.Classifier`; every validation, calibration and
test image (the files ``report/split.json`` lists, checked against their sha256) goes through the
serving path: ``decode_upload`` -> ``Classifier.prepare`` -> ``Classifier.predict_batch`` ->
``Classifier.interpret`` for the suspicious flag. So the figures are the served artifact's.

Calibration, on the calibration split only (never trained on, never used to select a recipe):
a temperature, a per-class bias and vector scaling are each fitted by negative log-likelihood;
the one with the lowest cross-validated negative log-likelihood within the calibration split is
stored in ``model.json`` (``calibration``) and applied by ``predict_batch`` (a per-class bias can
change the most probable class: a correction of the class priors). Then split-conformal
thresholds (``training.measure.calibrate``, Mondrian per class) are stored as ``conformal``. The expected
calibration error is reported before and after, the sets' empirical coverage and size per class
on the test split.

Everything is measured in memory; then ``report/`` (confusion matrix, ROC and reliability PNGs,
per-image test predictions, ``smoke.npz``) and ``MODEL_CARD.md`` are written, and ``model.json``
(``calibration``, ``conformal``, ``metrics``, ``report``) once, last.
"""

from __future__ import annotations

import csv
import io
import os
import time
from functools import partial
from pathlib import Path

import numpy as np

from lungscan.bundle.files import MODEL_FILE, REPORT_DIR, SMOKE_FILE, file_sha256
from lungscan.bundle.metadata import BundleMetadata, BundleMetrics, TrainingRecord
from lungscan.bundle.smoke import SMOKE_TOLERANCE, smoke_inputs
from lungscan.bundle.store import read_metadata, write_metadata
from lungscan.uploads import bundle_dicom_options, decode_upload
from training.data.layouts import Sample, load_split_manifest, samples_from_manifest
from training.data.splits import evaluation_fingerprint
from training.measure.calibrate import SplitOutputs, calibrate, calibration_report, choose_threshold
from training.measure.metrics import classification_metrics
from training.measure.plots import plot_confusion, plot_reliability, plot_roc
from training.presets import PRESETS, REPO_ROOT


def add_arguments(parser) -> None:
    parser.add_argument("bundle", type=Path, help="bundle folder (model.h5, model.json, report/split.json)")
    parser.add_argument(
        "--data-dir", type=Path, help="dataset folder (default: the one recorded at training, report/split.json)"
    )
    parser.add_argument("--smoke-size", type=int, default=24, help="held-out images kept in report/smoke.npz")
    parser.add_argument(
        "--version",
        help="a new bundle version (default: keep it); needed to publish a re-evaluation that serves differently",
    )


def served_inputs(classifier, samples: list[Sample], label: str) -> np.ndarray:
    """Preprocess files exactly as a request is: bytes -> decode_upload (the bundle's DICOM window) -> prepare."""
    from tqdm import tqdm

    dicom = bundle_dicom_options(classifier.metadata)
    arrays = [
        classifier.prepare(decode_upload(sample.path.read_bytes(), dicom=dicom))[0]
        for sample in tqdm(samples, desc=label, unit="img", leave=False, dynamic_ncols=True)
    ]
    return np.stack(arrays).astype(np.float32)


def majority_baseline(train_labels: list[str], test_labels: np.ndarray, classes: list[str]) -> dict:
    """Always answering the training split's commonest class: the floor a model must beat."""
    commonest = max(classes, key=train_labels.count)
    return {
        "class": commonest,
        "accuracy": round(float((test_labels == classes.index(commonest)).mean()), 4),
        "method": "always answer the commonest class of the training split, scored on the test split",
    }


def evaluate_bundle(
    bundle_dir: Path | str,
    data_dir: Path | str | None = None,
    *,
    smoke_size: int = 24,
    metadata: BundleMetadata | None = None,
    version: str | None = None,
) -> dict:
    """Evaluate, calibrate, write the report and the model card, then ``model.json`` once.

    Args:
        metadata: the bundle's metadata when the caller holds it (``train``: not written yet);
            else read from ``model.json``.
        version: a new version for the bundle: published versions are immutable, so a
            re-evaluation whose calibration, sets or gate changed is published under a new one.

    Returns:
        ``model.json``'s metrics.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from lungscan.model.classifier import Classifier

    started = time.perf_counter()
    bundle_dir = Path(bundle_dir)
    manifest = load_split_manifest(bundle_dir)
    data_dir = resolve_data_dir(manifest, data_dir)
    samples = evaluation_samples(manifest, data_dir)

    # The model as trained (uncalibrated, no conformal sets), in memory: nothing is written until the end.
    metadata = as_trained(bundle_dir, metadata)
    if version is not None:
        metadata = BundleMetadata.model_validate(metadata.model_dump() | {"version": version})
    classifier = Classifier(bundle_dir, metadata=metadata)
    splits = {name: run_split(classifier, split, name) for name, split in samples.items()}
    test = splits["test"]
    conformal, candidates = calibrate(classifier, splits)  # sets metadata.calibration and .conformal: the served rule
    assert metadata.calibration is not None  # calibrate() set it
    preset = PRESETS.get((metadata.training.preset if metadata.training else None) or "")
    target = preset.extra.get("target_sensitivity") if preset else None
    threshold_choice = choose_threshold(classifier, splits["calibration"], target) if target else None
    cross = None
    if manifest.get("layout") == "multi" and target:  # trained on several hospitals: each left out in turn
        from training.measure.cross_source import leave_one_source_out

        cross = leave_one_source_out(classifier, manifest, data_dir, target, partial(served_inputs, classifier))
    measured = {name: measure(classifier, split.labels, split.served) for name, split in splits.items()}

    report = bundle_dir / REPORT_DIR
    report.mkdir(exist_ok=True)
    plot_confusion(report / "confusion_matrix.png", measured["test"], metadata)
    plot_roc(report / "roc.png", test.labels, test.served, metadata.classes, metadata)
    plot_reliability(report / "reliability.png", test.labels, test.raw, test.served, metadata)
    write_predictions(report / "test_predictions.csv", test.samples, data_dir, test.served, metadata.classes, conformal)
    smoke = write_smoke_set(
        bundle_dir / SMOKE_FILE, classifier, test.inputs, test.labels, test.samples, data_dir, smoke_size
    )

    train_labels = [entry["label"] for entry in manifest["splits"]["train"]]
    metrics = summary_metrics(manifest, splits, measured, conformal, metadata, train_labels) | {
        "calibration": calibration_report(metadata.calibration, candidates, splits),
        "test": measured["test"],
        "validation": measured["validation"],
        "calibration_split": measured["calibration"],
        "threshold_choice": threshold_choice,
        "leave_one_source_out": cross,
        "smoke": smoke,
        "served_path": (
            "Classifier(bundle): decode_upload -> prepare -> predict_batch (with the calibration) -> interpret "
            "(with the conformal set)"
        ),
    }
    metadata.metrics = BundleMetrics.model_validate(metrics)
    training = metadata.training.model_dump() if metadata.training else {}
    metadata.training = TrainingRecord.model_validate(
        training | {"evaluate_wall_time_s": round(time.perf_counter() - started, 1)}
    )
    # Other per-bundle derivations (the not-CT gate, the ONNX twin) belong here: they add their own
    # fields to `metadata` before the card is written and the single write below.
    from training.measure.model_card import refresh_card

    refresh_card(bundle_dir, metadata)
    write_metadata(bundle_dir, metadata)
    Classifier(bundle_dir)  # the written bundle must load and verify
    print_metrics(metadata)
    return metrics


def resolve_data_dir(manifest: dict, data_dir: Path | str | None) -> Path:
    """The dataset folder given, else the one ``train`` recorded (relative to the repository)."""
    if data_dir is not None:
        return Path(data_dir)
    recorded = Path(manifest["data_dir"])
    return recorded if recorded.is_absolute() else REPO_ROOT / recorded


def evaluation_samples(manifest: dict, data_dir: Path) -> dict[str, list[Sample]]:
    """The validation, calibration and test files the manifest lists (checked against their sha256)."""
    samples = samples_from_manifest(manifest, data_dir)
    validation, calibration, test = samples["validation"], samples.get("calibration", []), samples["test"]
    if not validation or not test:
        raise ValueError("the split has an empty validation or test set: nothing to evaluate on")
    if not calibration:
        raise ValueError(
            "the split has no calibration set: calibration and conformal sets need images that training and "
            "selection never used (retrain: `python -m training train` splits off a calibration set)"
        )
    return {"validation": validation, "calibration": calibration, "test": test}


def as_trained(bundle_dir: Path, metadata: BundleMetadata | None) -> BundleMetadata:
    """The bundle's metadata as ``model.json`` would hold it, without calibration or conformal sets."""
    if metadata is None:
        metadata = read_metadata(bundle_dir)
    else:  # as written and read back (JSON types), with the sha256 of the model.h5 beside it
        metadata = BundleMetadata.model_validate(metadata.model_dump(mode="json"))
        metadata.sha256 = file_sha256(bundle_dir / MODEL_FILE)
    metadata.temperature = 1.0
    metadata.calibration = None
    metadata.conformal = None
    return metadata


def run_split(classifier, samples: list[Sample], name: str) -> SplitOutputs:
    """A split's files through the serving path, with the bundle as trained (uncalibrated)."""
    inputs = served_inputs(classifier, samples, name)
    labels = np.array([classifier.metadata.classes.index(s.label) for s in samples])
    outputs = classifier.runtime.forward(inputs)
    return SplitOutputs(samples, inputs, labels, outputs, classifier.probabilities_from(outputs))


def measure(classifier, labels: np.ndarray, probabilities: np.ndarray) -> dict:
    """A split's figures, flagged as the function flags (``Classifier.interpret``, with the conformal set)."""
    metadata = classifier.metadata
    predictions = [classifier.interpret(row) for row in probabilities]
    flags = np.array([prediction.suspicious for prediction in predictions])
    result = classification_metrics(labels, probabilities, metadata.classes, flags, metadata.positive_classes)
    result["uncertain_share"] = round(float(np.mean([prediction.uncertain for prediction in predictions])), 4)
    return result


def summary_metrics(manifest: dict, splits, measured: dict, conformal, metadata, train_labels: list[str]) -> dict:
    """The headline test figures ``publish`` and ``list`` compare, and what they were measured on."""
    test = splits["test"]
    flag = measured["test"].get("suspicious_flag", {})
    conformal_test = conformal.evaluation["test"]
    return {
        "evaluated_on": (
            "held-out test split: never trained on, never used for selection or calibration"
            + (" (source-disjoint: the dataset's own valid/ folder)" if manifest.get("layout") == "kaggle" else "")
        ),
        "accuracy": measured["test"]["accuracy"],
        "macro_f1": measured["test"]["macro_f1"],
        "macro_roc_auc": measured["test"]["macro_roc_auc"],
        "ece": measured["test"]["ece"],
        "suspicious_sensitivity": flag.get("sensitivity"),
        "suspicious_specificity": flag.get("specificity"),
        "majority_baseline": majority_baseline(train_labels, test.labels, metadata.classes),
        "conformal_coverage": conformal_test["coverage"],
        "conformal_mean_set_size": conformal_test["mean_set_size"],
        "evaluation_set": {
            "split": "test",
            "n": len(test.samples),
            "fingerprint": evaluation_fingerprint(test.samples),
            "fingerprint_method": "sha256 over the sorted sha256 of the test image files",
        },
    }


def write_smoke_set(
    path: Path,
    classifier,
    inputs: np.ndarray,
    labels: np.ndarray,
    samples: list[Sample],
    data_dir: Path,
    size: int,
) -> dict:
    """A few preprocessed held-out inputs with the probabilities the bundle gives them.

    ``publish`` reloads the bundle and must reproduce these probabilities (and so the smoke
    accuracy recorded in ``model.json``): a bundle whose weights or calibration drifted from
    what was evaluated is refused. Picked round-robin over classes, in file order. The inputs
    are stored as their 8-bit grey levels plus the bundle's scale/offset (4x smaller than
    float32); the probabilities are computed on exactly the inputs :func:`smoke_inputs` rebuilds.
    """
    classes = classifier.metadata.classes
    by_class = [[i for i in range(len(labels)) if labels[i] == k] for k in range(len(classes))]
    chosen: list[int] = []
    while len(chosen) < min(size, len(labels)):
        for indices in by_class:
            if indices and len(chosen) < size:
                chosen.append(indices.pop(0))
    chosen.sort()
    normalisation = classifier.metadata.preprocessing.normalisation
    levels = np.rint((inputs[chosen] - normalisation.offset) / normalisation.scale)
    arrays = {
        "levels": np.clip(levels, 0, 255).astype(np.uint8),
        "scale": np.float64(normalisation.scale),
        "offset": np.float64(normalisation.offset),
        "labels": labels[chosen].astype(np.int64),
        "files": np.array([_relative(samples[i].path, data_dir) for i in chosen]),
    }
    arrays["probabilities"] = classifier.predict_batch(smoke_inputs(arrays))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    predicted = arrays["probabilities"].argmax(axis=1)
    return {
        "file": path.relative_to(path.parent.parent).as_posix(),
        "n": len(chosen),
        "accuracy": round(float((predicted == arrays["labels"]).mean()), 4),
        "tolerance": SMOKE_TOLERANCE,
    }


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).name


def write_predictions(
    path: Path, samples: list[Sample], data_dir: Path, probabilities: np.ndarray, classes: list[str], conformal
) -> None:
    from lungscan.model.conformal import prediction_set

    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["file", "label", "predicted", "prediction_set", *(f"p_{c}" for c in classes)])
        for sample, row in zip(samples, probabilities, strict=True):
            writer.writerow(
                [
                    _relative(sample.path, data_dir),
                    sample.label,
                    classes[int(row.argmax())],
                    "|".join(prediction_set(row, classes, conformal)),
                    *(f"{p:.4f}" for p in row),
                ]
            )


def print_metrics(metadata: BundleMetadata) -> None:
    metrics = metadata.metrics
    for name in ("validation", "calibration_split", "test"):
        m = metrics[name]
        recalls = ", ".join(f"{c} {m['per_class'][c]['recall']:.3f}" for c in metadata.classes)
        flag = m.get("suspicious_flag", {})
        print(
            f"{name:>10}: n={m['n']} accuracy {m['accuracy']:.3f}  macro-F1 {m['macro_f1']:.3f}  "
            f"AUC {m['macro_roc_auc']}  recall [{recalls}]  suspicious sensitivity {flag.get('sensitivity')} "
            f"specificity {flag.get('specificity')}",
            flush=True,
        )
    c = metrics["calibration"]
    print(
        f"calibration {c['family']} (fitted and chosen on calibration): test ECE {c['test_ece_before']} -> "
        f"{c['test_ece_after']}, validation ECE {c['validation_ece_before']} -> {c['validation_ece_after']}",
        flush=True,
    )
    print(f"majority baseline on test: {metrics['majority_baseline']}", flush=True)
    conformal = metadata.conformal
    assert conformal is not None  # every evaluated bundle has its conformal sets
    sets = conformal.evaluation["test"]
    per_class = ", ".join(
        f"{name} {v['coverage']}/{v['mean_set_size']}" for name, v in sets["per_class"].items() if v["n"]
    )
    print(
        f"conformal sets on test ({conformal.coverage:.0%} target): coverage {sets['coverage']}, "
        f"mean size {sets['mean_set_size']}; per class coverage/size: {per_class}",
        flush=True,
    )
    print(f"test confusion (rows true {metadata.classes}): {metrics['test']['confusion_matrix']['matrix']}")
