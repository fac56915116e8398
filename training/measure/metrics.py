"""Evaluation metrics and calibration fits on class probabilities: numpy and scipy, no TensorFlow.

Everything here takes integer labels ``(N,)`` and probabilities ``(N, K)`` (rows sum to 1) as
the served model returns them, so the figures describe the artifact that answers requests.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lungscan.model.calibration import apply_temperature  # the rescaling older bundles serve

ECE_BINS = 15


def four_places(value: float | np.floating) -> float:
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


def ece_uncertainty(labels: np.ndarray, probabilities: np.ndarray, draws: int = 1000, seed: int = 0) -> dict:
    """How far a small split's ECE can be trusted: a 95% bootstrap interval of it, and the ECE the same
    split would show if these probabilities were perfectly calibrated (labels drawn from them), a
    floor that binning a few dozen images puts under any model."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels, int)
    n = len(labels)
    resampled = []
    for _ in range(draws):
        rows = rng.integers(0, n, n)
        resampled.append(expected_calibration_error(labels[rows], probabilities[rows]))
    cumulative = np.cumsum(probabilities, axis=1)
    last_class = probabilities.shape[1] - 1
    perfect = [  # each label drawn from its own row of probabilities (inverse of the cumulative)
        expected_calibration_error((rng.random((n, 1)) > cumulative).sum(axis=1).clip(max=last_class), probabilities)
        for _ in range(draws)
    ]
    return {
        "bootstrap_95": [four_places(np.percentile(resampled, 2.5)), four_places(np.percentile(resampled, 97.5))],
        "if_perfectly_calibrated": four_places(np.mean(perfect)),
        "draws": draws,
    }


def reliability(labels: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> list[dict]:
    """Per confidence bin: mean confidence, accuracy and count (for a reliability diagram)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    return [
        {
            "low": four_places(edges[b]),
            "high": four_places(edges[b + 1]),
            "confidence": four_places(confidence[which == b].mean()),
            "accuracy": four_places(correct[which == b].mean()),
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
            "precision": four_places(precision),
            "recall": four_places(recall),
            "f1": four_places(f1),
            "roc_auc": None if auc is None else four_places(auc),
            "support": int(support),
        }
    result = {
        "n": len(labels),
        "accuracy": four_places((predicted == labels).mean()) if len(labels) else 0.0,
        "macro_f1": four_places(np.mean(f1s)),
        "macro_roc_auc": four_places(np.mean(aucs)) if aucs else None,
        "ece": four_places(expected_calibration_error(labels, probabilities)),
        "nll": four_places(negative_log_likelihood(labels, probabilities)),
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
            "sensitivity": four_places(sensitivity),
            "specificity": four_places(specificity),
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
