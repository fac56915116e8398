"""What is fitted on the calibration split: the served probability calibration, then the conformal sets.

Probability calibration: a temperature, a per-class bias and vector scaling (``fit_calibration``),
the one with the lowest cross-validated negative log-likelihood within the split kept
(``choose_calibration``); serving applies it with :func:`lungscan.model.calibration.apply_calibration`.

Conformal sets: split-conformal thresholds fitted with ``crepes``, and the sets they give measured.
Non-conformity score: ``1 - p(class)`` on the served (calibrated) probabilities. Mondrian
(class-conditional) calibration: each class's threshold comes from the calibration images of that
class, so every class, the rare ones included, gets about the target coverage, and a missed cancer
is not traded for a well-covered majority class. A class with too few calibration images for a
finite threshold at the target (fewer than ``1 / (1 - coverage) - 1``) gets the larger of the pooled
threshold and the largest score among its own calibration images: every one of them would have
had the class in its set (a guarantee of n / (n + 1) for n images), where the pooled threshold
alone can leave a rare class out of every set. The spec says so.

Serving applies the stored thresholds in numpy (:mod:`lungscan.model.conformal`). ``calibrate`` runs both
for ``training.measure.evaluate``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from lungscan.model.calibration import CalibrationFamily, CalibrationSpec, apply_calibration
from lungscan.model.classifier import MAX_SHOWN_PROBABILITY
from lungscan.model.conformal import ConformalSpec, set_mask
from training.data.layouts import Sample
from training.data.splits import evaluation_fingerprint
from training.measure.metrics import (
    ECE_BINS,
    ece_uncertainty,
    expected_calibration_error,
    fit_temperature,
    four_places,
    negative_log_likelihood,
)

COVERAGE = 0.9  # conformal target: the true class in the set for 9 cases in 10


@dataclass
class SplitOutputs:
    """One evaluation split through the served model: inputs, labels, the model's outputs, probabilities."""

    samples: list[Sample]
    inputs: np.ndarray  # preprocessed exactly as a request is (served_inputs)
    labels: np.ndarray
    outputs: np.ndarray  # the model's raw outputs (runtime.forward), before the calibration
    raw: np.ndarray  # probabilities as trained (uncalibrated)
    # Probabilities with the fitted calibration: what the function serves. Set by calibrate(), unset before.
    served: np.ndarray = field(init=False)


def _largest_included_score(calibration_scores: np.ndarray, coverage: float, bins=None, bin_value=None) -> float | None:
    """The largest calibration score whose (non-smoothed) crepes p-value still exceeds 1 - coverage.

    p-values fall as the score grows, so every score up to it is in the set and every score above
    it is out; None when even a score above all calibration scores would be in (too few images).
    """
    from crepes import ConformalClassifier

    classifier = ConformalClassifier().fit(calibration_scores, bins=bins)
    candidates = np.unique(calibration_scores if bins is None else calibration_scores[bins == bin_value])
    above = np.array([candidates.max() + 1e-6])  # a score beyond every calibration score
    test_bins = None if bins is None else np.full(len(candidates), bin_value)
    p_values = classifier.predict_p(candidates, bins=test_bins, smoothing=False)
    p_above = classifier.predict_p(above, bins=None if bins is None else np.array([bin_value]), smoothing=False)
    alpha = 1.0 - coverage + 1e-9  # 1 - 0.9 is 0.0999...: without the margin p = 1/10 would count as above it
    if p_above[0] > alpha:
        return None
    return float(candidates[p_values > alpha].max())


def fit_conformal(
    labels: np.ndarray,
    probabilities: np.ndarray,
    classes: Sequence[str],
    coverage: float = 0.9,
    *,
    mondrian: bool = True,
) -> ConformalSpec:
    """Thresholds from calibration labels ``(N,)`` and probabilities ``(N, K)``."""
    labels = np.asarray(labels, int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    scores = 1.0 - probabilities[np.arange(len(labels)), labels]
    pooled = _largest_included_score(scores, coverage)
    pooled = 1.0 if pooled is None else pooled
    thresholds, fallback = {}, []
    for k, name in enumerate(classes):
        threshold = _largest_included_score(scores, coverage, labels, k) if mondrian and (labels == k).any() else None
        if threshold is None:
            threshold = pooled
            if mondrian:
                threshold = max(pooled, float(scores[labels == k].max(initial=pooled)))
                fallback.append(name)
        # rounded up: a stored threshold never drops the calibration score it came from out of the set
        thresholds[name] = min(max(math.ceil(threshold * 1e6) / 1e6, 0.0), 1.0)
    counts = {name: int((labels == k).sum()) for k, name in enumerate(classes)}
    method = (
        f"split conformal, {'Mondrian (class-conditional)' if mondrian else 'pooled'} thresholds at "
        f"{coverage:.0%} coverage, fitted with crepes ConformalClassifier (non-smoothed p-values) on the "
        "calibration split; a class is in the set when 1 - p(class) <= its threshold, and the most "
        "probable class always is"
    )
    if fallback:
        method += (
            f"; {', '.join(fallback)}: too few calibration images for a {coverage:.0%} class-conditional "
            "threshold, so the class is in the set whenever its score is within the largest of its own calibration "
            "images (or the pooled threshold, if larger)"
        )
    return ConformalSpec(
        coverage=coverage,
        mondrian=mondrian,
        thresholds=thresholds,
        method=method,
        calibration={"n": len(labels), "per_class": counts, "pooled_fallback": fallback},
    )


def set_report(labels: np.ndarray, probabilities: np.ndarray, classes: Sequence[str], spec: ConformalSpec) -> dict:
    """Empirical coverage (true class in the set) and mean set size, overall and per true class."""
    labels = np.asarray(labels, int)
    thresholds = np.array([spec.thresholds[name] for name in classes])
    inside = set_mask(probabilities, thresholds)
    covered = inside[np.arange(len(labels)), labels]
    sizes = inside.sum(axis=1)

    def summary(mask: np.ndarray) -> dict:
        if not mask.any():
            return {"n": 0, "coverage": None, "mean_set_size": None, "uncertain_share": None}
        return {
            "n": int(mask.sum()),
            "coverage": round(float(covered[mask].mean()), 4),
            "mean_set_size": round(float(sizes[mask].mean()), 4),
            "uncertain_share": round(float((sizes[mask] > 1).mean()), 4),
        }

    everything = np.ones(len(labels), bool)
    return summary(everything) | {"per_class": {name: summary(labels == k) for k, name in enumerate(classes)}}


CALIBRATION_FAMILIES: tuple[CalibrationFamily, ...] = ("temperature", "class_bias", "vector_scaling")
CALIBRATION_WORDS = {
    "temperature": "one temperature shared by all classes (the most probable class is unchanged)",
    "class_bias": "a bias per class on the log-probabilities (corrects the class priors the model learned)",
    "vector_scaling": "a scale and a bias per class on the log-probabilities",
}


def fit_calibration(labels: np.ndarray, probabilities: np.ndarray, family: CalibrationFamily) -> CalibrationSpec:
    """The served rescaling of one family, fitted by negative log-likelihood.

    The bias and the log-scale carry a small L2 penalty: a class with a handful of calibration
    images cannot drive them to extremes (and the bias, defined up to a constant, is centred).
    """
    from scipy.optimize import minimize

    k = probabilities.shape[1]
    if len(labels) == 0:  # nothing to fit on (a cross-validation fold holding every image): no rescaling
        return CalibrationSpec(family=family, scale=[1.0] * k, bias=[0.0] * k)
    if family == "temperature":
        temperature = fit_temperature(labels, probabilities)
        return CalibrationSpec(family=family, scale=[round(1.0 / temperature, 6)] * k, bias=[0.0] * k)
    per_class_scale = family == "vector_scaling"

    def spec_of(theta: np.ndarray) -> CalibrationSpec:
        scale = np.exp(theta[:k]) if per_class_scale else np.ones(k)
        bias = theta[-k:] - theta[-k:].mean()
        return CalibrationSpec(family=family, scale=list(scale), bias=list(bias))

    def loss(theta: np.ndarray) -> float:
        penalty = 1e-3 * float(np.sum(theta**2))
        return negative_log_likelihood(labels, apply_calibration(probabilities, spec_of(theta))) + penalty

    start = np.zeros(2 * k if per_class_scale else k)
    bounds = [(-3.0, 3.0)] * k * per_class_scale + [(-20.0, 20.0)] * k  # scales e^-3..e^3: never overflow
    fitted = spec_of(minimize(loss, start, method="L-BFGS-B", bounds=bounds).x)
    return fitted.model_copy(
        update={"scale": [round(v, 6) for v in fitted.scale], "bias": [round(v, 6) for v in fitted.bias]}
    )


def choose_calibration(
    calibration: tuple[np.ndarray, np.ndarray], folds: np.ndarray, test: tuple[np.ndarray, np.ndarray]
) -> tuple[CalibrationSpec, list[dict]]:
    """The family with the lowest cross-validated NLL on the calibration split, refitted on all of it.

    ``calibration`` and ``test`` are ``(labels, probabilities as trained)``; ``folds`` gives each
    calibration image a fold (blocks of neighbouring files, so a patient's slices stay together).
    Neither validation (which chose the recipe, and is training data in a refitted bundle) nor
    test is used to choose: test is only scored, for the report's table of what was tried.
    Returns the chosen spec and that table.
    """
    labels, probabilities = calibration
    if len(np.unique(folds)) < 2:  # e.g. one image per class: every block is fold 0; leave one out instead
        folds = np.arange(len(labels))
    candidates, table = [], []
    for family in CALIBRATION_FAMILIES:
        held_out = np.zeros_like(probabilities, dtype=np.float64)  # each image served by a fit that never saw it
        for fold in np.unique(folds):
            inside = folds != fold
            held_out[~inside] = apply_calibration(
                probabilities[~inside], fit_calibration(labels[inside], probabilities[inside], family)
            )
        spec = fit_calibration(labels, probabilities, family)
        served_test = apply_calibration(test[1], spec)
        row = {
            "family": family,
            "cross_validated_nll": four_places(negative_log_likelihood(labels, held_out)),
            "calibration_ece": four_places(expected_calibration_error(labels, apply_calibration(probabilities, spec))),
            "test_nll": four_places(negative_log_likelihood(test[0], served_test)),
            "test_ece": four_places(expected_calibration_error(test[0], served_test)),
        }
        candidates.append(spec)
        table.append(row)
    best = min(range(len(candidates)), key=lambda i: (table[i]["cross_validated_nll"], i))
    table[best]["chosen"] = True
    chosen = candidates[best]
    chosen.method = (
        f"{CALIBRATION_WORDS[chosen.family]}; fitted on the calibration split by negative log-likelihood, "
        f"chosen among {', '.join(CALIBRATION_FAMILIES)} by the lowest {len(np.unique(folds))}-fold "
        "cross-validated negative log-likelihood within that split"
    )
    return chosen, table


def calibrate(classifier, splits: dict[str, SplitOutputs]):
    """Fit the calibration, then the conformal sets, on the calibration split; both go in the served metadata.

    The calibration split was never seen by training or selection; cross-validation within it
    chooses the calibration family (``choose_calibration``). The served probabilities come
    from the function serving applies (``Classifier.probabilities_from``).

    Returns:
        the conformal spec and the table of calibration candidates.
    """
    metadata = classifier.metadata
    calibration, test = splits["calibration"], splits["test"]
    metadata.calibration, candidates = choose_calibration(
        (calibration.labels, calibration.raw), neighbour_folds(calibration.samples), (test.labels, test.raw)
    )
    for split in splits.values():
        split.served = classifier.probabilities_from(split.outputs)
    conformal = fit_conformal(calibration.labels, calibration.served, metadata.classes, COVERAGE)
    conformal.calibration["fingerprint"] = evaluation_fingerprint(calibration.samples)
    conformal.evaluation = {
        name: set_report(splits[name].labels, splits[name].served, metadata.classes, conformal)
        for name in ("test", "validation", "calibration")
    }
    metadata.conformal = conformal  # the served flag includes the prediction-set rule
    return conformal, candidates


def choose_threshold(classifier, calibration: SplitOutputs, target_sensitivity: float) -> dict:
    """The flag's threshold for a sensitivity target, chosen on the calibration split (never on test).

    The largest threshold on a 0.01 grid whose served flag (``Classifier.interpret``: the label, the
    conformal set and the threshold) reaches the target on the calibration split's positive images: the
    most specific flag that meets it there. Sets ``metadata.threshold``.
    """
    metadata = classifier.metadata
    positives = np.isin(np.array(metadata.classes)[calibration.labels], metadata.positive_classes)
    chosen = {"threshold": 0.01, "sensitivity": None, "specificity": None}
    for threshold in np.round(np.arange(0.5, 0.0, -0.01), 2):
        metadata.threshold = float(threshold)
        flags = np.array([classifier.interpret(row).suspicious for row in calibration.served])
        sensitivity = float(flags[positives].mean())
        chosen = {
            "threshold": float(threshold),
            "sensitivity": round(sensitivity, 4),
            "specificity": round(float((~flags[~positives]).mean()), 4) if (~positives).any() else None,
        }
        if sensitivity >= target_sensitivity:
            break
    metadata.threshold = chosen["threshold"]
    return chosen | {
        "target_sensitivity": target_sensitivity,
        "method": "the largest threshold (0.01 grid, from 0.5 down) whose served flag reaches the target "
        f"sensitivity on the calibration split (n={len(calibration.labels)}; positives {int(positives.sum())})",
    }


def neighbour_folds(samples: list[Sample], folds: int = 5) -> np.ndarray:
    """A fold per image: each class's files in number order, cut into ``folds`` contiguous blocks.

    Neighbouring numbers are usually slices of one patient (the datasets' README), so a block
    keeps most of a patient on one side of each cross-validation cut.
    """
    assigned = np.zeros(len(samples), int)
    for label in {s.label for s in samples}:
        members = sorted((i for i, s in enumerate(samples) if s.label == label), key=lambda i: samples[i].number)
        for rank, index in enumerate(members):
            assigned[index] = rank * folds // len(members)
    return assigned


def calibration_report(spec: CalibrationSpec, candidates: list[dict], splits: dict[str, SplitOutputs]) -> dict:
    """The chosen calibration, every candidate, and the expected calibration error before and after on each split."""
    report = {
        "method": spec.method,
        "family": spec.family,
        "scale": spec.scale,
        "bias": spec.bias,
        "fitted_on": "calibration",
        "chosen_on": "calibration split, cross-validated over blocks of neighbouring files",
        "candidates": candidates,
        "ece_bins": ECE_BINS,
    }
    validation, calibration, test = splits["validation"], splits["calibration"], splits["test"]
    for name, split in (("calibration", calibration), ("validation", validation), ("test", test)):
        report[f"{name}_ece_before"] = four_places(expected_calibration_error(split.labels, split.raw))
        report[f"{name}_ece_after"] = four_places(expected_calibration_error(split.labels, split.served))
    report["test_ece_after_uncertainty"] = ece_uncertainty(test.labels, test.served)
    report["displayed_confidence_cap"] = MAX_SHOWN_PROBABILITY
    return report
