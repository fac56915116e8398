"""Evaluation metrics and calibration fits on class probabilities: numpy and scipy, no TensorFlow.

Everything here takes integer labels ``(N,)`` and probabilities ``(N, K)`` (rows sum to 1) as
the served model returns them, so the figures describe the artifact that answers requests.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lungscan.calibration import CalibrationFamily, CalibrationSpec, apply_calibration
from lungscan.classifier import apply_temperature  # the served rescaling: the temperature is fitted with it

ECE_BINS = 15


def _round(value: float) -> float:
    return round(float(value), 4)


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, k: int) -> np.ndarray:
    """Rows: true class; columns: predicted class."""
    matrix = np.zeros((k, k), dtype=int)
    np.add.at(matrix, (np.asarray(labels, int), np.asarray(predicted, int)), 1)
    return matrix


def roc_curve(is_positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct score threshold (highest first), from (0, 0) to (1, 1)."""
    is_positive = np.asarray(is_positive, bool)
    scores = np.asarray(scores, float)
    order = np.argsort(-scores, kind="mergesort")
    scores, is_positive = scores[order], is_positive[order]
    last_of_tie = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]
    true_positives = np.cumsum(is_positive)[last_of_tie]
    false_positives = (last_of_tie + 1) - true_positives
    positives, negatives = is_positive.sum(), (~is_positive).sum()
    tpr = np.r_[0.0, true_positives / positives] if positives else np.zeros(len(last_of_tie) + 1)
    fpr = np.r_[0.0, false_positives / negatives] if negatives else np.zeros(len(last_of_tie) + 1)
    return fpr, tpr


def roc_auc(is_positive: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve (ties count one half); None when one side is empty."""
    is_positive = np.asarray(is_positive, bool)
    if is_positive.all() or not is_positive.any():
        return None
    fpr, tpr = roc_curve(is_positive, scores)
    return float(np.trapezoid(tpr, fpr))


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of the top-label confidence: sum over equal-width bins of |accuracy - confidence| x share."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            error += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(error)


def reliability(labels: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> list[dict]:
    """Per confidence bin: mean confidence, accuracy and count (for a reliability diagram)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    return [
        {
            "low": _round(edges[b]),
            "high": _round(edges[b + 1]),
            "confidence": _round(confidence[which == b].mean()),
            "accuracy": _round(correct[which == b].mean()),
            "count": int((which == b).sum()),
        }
        for b in range(bins)
        if (which == b).any()
    ]


def negative_log_likelihood(labels: np.ndarray, probabilities: np.ndarray) -> float:
    picked = probabilities[np.arange(len(labels)), np.asarray(labels, int)]
    return float(-np.log(np.clip(picked, 1e-12, 1.0)).mean())


def fit_temperature(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The temperature in [0.05, 20] minimising the negative log-likelihood (Guo et al., ICML 2017).

    A coarse log-spaced grid, then golden-section refinement around the best grid point:
    one parameter, so no optimiser library is needed.
    """
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 121))
    losses = [negative_log_likelihood(labels, apply_temperature(probabilities, t)) for t in grid]
    best = int(np.argmin(losses))
    low, high = np.log(grid[max(best - 1, 0)]), np.log(grid[min(best + 1, len(grid) - 1)])
    ratio = (np.sqrt(5.0) - 1.0) / 2.0

    def loss(log_t: float) -> float:
        return negative_log_likelihood(labels, apply_temperature(probabilities, float(np.exp(log_t))))

    for _ in range(40):
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        if loss(a) < loss(b):
            high = b
        else:
            low = a
    return round(float(np.exp((low + high) / 2.0)), 4)


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
    candidates, table = [], []
    for family in CALIBRATION_FAMILIES:
        held_out = np.zeros(len(labels))
        for fold in np.unique(folds):
            inside = folds != fold
            spec = fit_calibration(labels[inside], probabilities[inside], family)
            served = apply_calibration(probabilities[~inside], spec)
            held_out[~inside] = -np.log(np.clip(served[np.arange(len(served)), labels[~inside]], 1e-12, 1.0))
        spec = fit_calibration(labels, probabilities, family)
        row = {
            "family": family,
            "cross_validated_nll": _round(held_out.mean()),
            "calibration_ece": _round(expected_calibration_error(labels, apply_calibration(probabilities, spec))),
            "test_nll": _round(negative_log_likelihood(test[0], apply_calibration(test[1], spec))),
            "test_ece": _round(expected_calibration_error(test[0], apply_calibration(test[1], spec))),
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


def classification_metrics(
    labels: np.ndarray,
    probabilities: np.ndarray,
    classes: Sequence[str],
    suspicious: np.ndarray | None = None,
    positive_classes: Sequence[str] = (),
) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/ROC-AUC, confusion matrix, ECE, and the
    suspicious flag's sensitivity/specificity.

    Args:
        suspicious: the served flag per image (``Classifier.interpret(...).suspicious``); the
            flag's figures are left out without it.
        positive_classes: the classes that make a case suspicious (the flag's ground truth).
    """
    labels = np.asarray(labels, int)
    classes = list(classes)
    k = len(classes)
    predicted = probabilities.argmax(axis=1)
    matrix = confusion_matrix(labels, predicted, k)
    per_class = {}
    f1s, aucs = [], []
    for i, name in enumerate(classes):
        tp, support, predicted_count = matrix[i, i], matrix[i].sum(), matrix[:, i].sum()
        precision = tp / predicted_count if predicted_count else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        auc = roc_auc(labels == i, probabilities[:, i])
        f1s.append(f1)
        if auc is not None:
            aucs.append(auc)
        per_class[name] = {
            "precision": _round(precision),
            "recall": _round(recall),
            "f1": _round(f1),
            "roc_auc": None if auc is None else _round(auc),
            "support": int(support),
        }
    result = {
        "n": len(labels),
        "accuracy": _round((predicted == labels).mean()) if len(labels) else 0.0,
        "macro_f1": _round(np.mean(f1s)),
        "macro_roc_auc": _round(np.mean(aucs)) if aucs else None,
        "ece": _round(expected_calibration_error(labels, probabilities)),
        "nll": _round(negative_log_likelihood(labels, probabilities)),
        "per_class": per_class,
        "confusion_matrix": {"rows_true_columns_predicted": classes, "matrix": matrix.tolist()},
    }
    if suspicious is not None and positive_classes:
        flagged = np.asarray(suspicious, bool)
        positive = np.isin(labels, [classes.index(name) for name in positive_classes])
        sensitivity = (flagged & positive).sum() / positive.sum() if positive.any() else 0.0
        specificity = (~flagged & ~positive).sum() / (~positive).sum() if (~positive).any() else 0.0
        result["suspicious_flag"] = {
            "positive_classes": list(positive_classes),
            "sensitivity": _round(sensitivity),
            "specificity": _round(specificity),
            "true_positive": int((flagged & positive).sum()),
            "false_negative": int((~flagged & positive).sum()),
            "true_negative": int((~flagged & ~positive).sum()),
            "false_positive": int((flagged & ~positive).sum()),
        }
    return result


def balanced_class_weights(labels: np.ndarray, k: int) -> dict[int, float]:
    """n / (k x count) per class: every class weighs the same in the loss, whatever its size."""
    counts = np.bincount(np.asarray(labels, int), minlength=k)
    return {i: float(len(labels) / (k * counts[i])) if counts[i] else 0.0 for i in range(k)}
