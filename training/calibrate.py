"""Fit split-conformal thresholds with ``crepes`` and measure the sets they give.

Non-conformity score: ``1 - p(class)`` on the served (calibrated) probabilities. Mondrian
(class-conditional) calibration: each class's threshold comes from the calibration images of that
class, so every class, the rare ones included, gets about the target coverage, and a missed cancer
is not traded for a well-covered majority class. A class with too few calibration images for a
finite threshold at the target (fewer than ``1 / (1 - coverage) - 1``) gets the larger of the pooled
threshold and the largest score among its own calibration images: every one of them would have
had the class in its set (a guarantee of n / (n + 1) for n images), where the pooled threshold
alone can leave a rare class out of every set. The spec says so.

Serving applies the stored thresholds in numpy (:mod:`lungscan.conformal`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from lungscan.conformal import ConformalSpec, set_mask


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
