"""Conformal prediction sets at serving time: stored thresholds applied in numpy.

A split-conformal set holds every class whose non-conformity score ``1 - p(class)`` is at most
that class's threshold. The thresholds are calibrated at training time (``training/measure/calibrate.py``,
with the ``crepes`` library) on a split that training and model selection never used, so that the
set contains the true class in about ``coverage`` of new cases (per class, for Mondrian
thresholds). Serving needs no library: one comparison per class.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, Field, model_validator

# Thresholds are stored rounded; a score equal to its threshold must stay in the set.
_TOLERANCE = 1e-9


class ConformalSpec(BaseModel):
    """``model.json``'s ``conformal``: how to build a prediction set from the served probabilities."""

    model_config = {"extra": "allow"}

    coverage: float = Field(gt=0.0, lt=1.0)  # target: P(true class in the set)
    score: str = "1 - probability of the class (after the bundle's calibration)"
    mondrian: bool = True  # one threshold per class (class-conditional coverage)
    thresholds: dict[str, float]  # class -> largest score that still puts the class in the set
    method: str = ""
    calibration: dict = {}  # which split, how many images per class, its fingerprint
    evaluation: dict = {}  # empirical coverage and set size, per class, on held-out splits

    @model_validator(mode="after")
    def _thresholds_in_range(self) -> ConformalSpec:
        if not self.thresholds:
            raise ValueError("conformal.thresholds is empty")
        bad = {name: value for name, value in self.thresholds.items() if not 0.0 <= value <= 1.0}
        if bad:
            raise ValueError(f"conformal thresholds must lie in [0, 1], not {bad}")
        return self

    def check_classes(self, classes: Sequence[str]) -> None:
        if set(self.thresholds) != set(classes):
            raise ValueError(f"conformal thresholds are for {sorted(self.thresholds)}, the model has {list(classes)}")


def set_mask(probabilities: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Boolean (N, K) membership for probabilities (N, K) and per-class thresholds (K,).

    The most probable class is always in the set, so the answer's label is one of its classes and a
    set is never empty (class-conditional thresholds alone can leave out the top class, or every
    class); that can only raise coverage.
    """
    probabilities = np.atleast_2d(np.asarray(probabilities, dtype=np.float64))
    inside = (1.0 - probabilities) <= np.asarray(thresholds, dtype=np.float64)[None, :] + _TOLERANCE
    inside[np.arange(len(probabilities)), probabilities.argmax(axis=1)] = True
    return inside


def prediction_set(probabilities: np.ndarray, classes: Sequence[str], spec: ConformalSpec) -> list[str]:
    """The classes of one answer's conformal set, most probable first."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    thresholds = np.array([spec.thresholds[name] for name in classes])
    inside = set_mask(probabilities[np.newaxis], thresholds)[0]
    order = np.argsort(-probabilities, kind="stable")
    return [classes[i] for i in order if inside[i]]
