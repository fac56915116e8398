"""Leave one source out: the screening recipe trained on one hospital, tested on the other.

For a bundle trained on several datasets (``multi`` layout), ``evaluate`` also refits the same recipe
on each dataset alone (the bundle's own frozen HOG front end, its head refitted as the same
class-balanced logistic regression on that dataset's train + validation files) and measures it on the
other dataset's test split, the closest thing here to a new hospital. The flag is the fitted model's
malignant probability at the threshold chosen, as the shipped bundle's is, on the training dataset's
own calibration split for the sensitivity target (no probability calibration or conformal set: those
would be fitted on the same split). The shipped bundle's own test figures on each dataset sit beside.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.data.layouts import Sample, samples_from_manifest
from training.fit.hog import fit_hog_head


def _by_source(samples: list[Sample], data_dir: Path) -> dict[str, list[Sample]]:
    groups: dict[str, list[Sample]] = {}
    for sample in samples:
        groups.setdefault(sample.path.relative_to(data_dir).parts[0], []).append(sample)
    return groups


def _threshold(positive: np.ndarray, scores: np.ndarray, target: float) -> float:
    """The largest threshold (0.01 grid, from 0.5 down) whose flag reaches ``target`` sensitivity."""
    for threshold in np.round(np.arange(0.5, 0.0, -0.01), 2):
        if (scores[positive] >= threshold).mean() >= target:
            return float(threshold)
    return 0.01


def _rates(positive: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    flags = scores >= threshold
    from sklearn.metrics import roc_auc_score

    both = 0 < positive.sum() < len(positive)
    return {
        "n": len(positive),
        "positives": int(positive.sum()),
        "sensitivity": round(float(flags[positive].mean()), 4) if positive.any() else None,
        "specificity": round(float((~flags[~positive]).mean()), 4) if (~positive).any() else None,
        "roc_auc": round(float(roc_auc_score(positive, scores)), 4) if both else None,
    }


def leave_one_source_out(classifier, manifest: dict, data_dir: Path, target: float, inputs_of) -> dict:
    """Per held-out dataset: the recipe fitted on the others, measured on its test split.

    Args:
        inputs_of: ``(samples, name) -> preprocessed inputs`` read as a request is (``served_inputs``).
    """
    from lungscan.bundle.files import MODEL_FILE
    from lungscan.model.runtime import load_keras_model

    splits = samples_from_manifest(manifest, data_dir)
    grouped = {name: _by_source(splits[name], data_dir) for name in ("train", "validation", "calibration", "test")}
    sources = sorted(grouped["test"])
    classes = classifier.metadata.classes
    positive_index = classes.index(classifier.metadata.positive_classes[0])
    result = {}
    for held_out in sources:
        trained_on = [name for name in sources if name != held_out]
        fit = [s for name in trained_on for split in ("train", "validation") for s in grouped[split].get(name, [])]
        calibration = [s for name in trained_on for s in grouped["calibration"].get(name, [])]
        test = grouped["test"][held_out]
        model = load_keras_model(classifier.bundle_dir / MODEL_FILE)  # a copy whose head is refitted
        labels = np.array([classes.index(s.label) for s in fit])
        fit_hog_head(model, inputs_of(fit, f"fit on {'+'.join(trained_on)}"), labels, len(classes), seed=42)

        def scores(samples: list[Sample], name: str, model=model) -> np.ndarray:
            return model.predict(inputs_of(samples, name), batch_size=64, verbose=0)[:, positive_index]

        positive = np.array([s.label == classes[positive_index] for s in calibration])
        threshold = _threshold(positive, scores(calibration, "calibration"), target)
        test_positive = np.array([s.label == classes[positive_index] for s in test])
        result[held_out] = {
            "trained_on": trained_on,
            "fit_images": len(fit),
            "threshold": threshold,
            "threshold_from": f"calibration split of {'+'.join(trained_on)} (n={len(calibration)})",
            "test": _rates(test_positive, scores(test, f"test {held_out}"), threshold),
        }
    return result
