"""Evaluation metrics (plain numpy) against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from training.metrics import (
    apply_temperature,
    balanced_class_weights,
    classification_metrics,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    roc_auc,
)
from training.model_card import wilson_interval


def test_roc_auc_counts_ties_as_half() -> None:
    assert roc_auc(np.array([1, 1, 0, 0]), np.array([0.9, 0.8, 0.2, 0.1])) == pytest.approx(1.0)
    assert roc_auc(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.2, 0.1])) == pytest.approx(0.75)
    assert roc_auc(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    assert roc_auc(np.array([1, 1]), np.array([0.5, 0.2])) is None


def test_classification_metrics_by_hand() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    probabilities = np.array(
        [[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.1, 0.6, 0.3], [0.1, 0.1, 0.8], [0.3, 0.1, 0.6]]
    )
    suspicious = probabilities[:, 2] >= 0.5
    metrics = classification_metrics(labels, probabilities, ["n", "b", "m"], suspicious, ["m"])
    assert metrics["accuracy"] == pytest.approx(5 / 6, abs=1e-4)
    assert metrics["confusion_matrix"]["matrix"] == [[1, 1, 0], [0, 2, 0], [0, 0, 2]]
    assert metrics["per_class"]["n"] == {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "roc_auc": 0.875, "support": 2}
    assert metrics["per_class"]["b"]["precision"] == pytest.approx(0.6667, abs=1e-4)
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 1.0) / 3, abs=1e-4)
    flag = metrics["suspicious_flag"]
    assert (flag["sensitivity"], flag["specificity"], flag["false_positive"]) == (1.0, 1.0, 0)


def test_expected_calibration_error() -> None:
    labels = np.array([0, 0, 0, 0])
    confident_and_right = np.array([[1.0, 0.0]] * 4)
    assert expected_calibration_error(labels, confident_and_right) == pytest.approx(0.0)
    half_right_at_90 = np.array([[0.9, 0.1], [0.9, 0.1], [0.1, 0.9], [0.1, 0.9]])
    assert expected_calibration_error(labels, half_right_at_90) == pytest.approx(abs(0.5 - 0.9))


def test_temperature_scaling_softens_an_overconfident_model() -> None:
    rng = np.random.default_rng(0)
    n, k = 400, 3
    labels = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), labels] += 1.0  # right ~60% of the time...
    calibrated = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    overconfident = apply_temperature(calibrated, 1 / 3)  # ...but three times too sharp
    temperature = fit_temperature(labels, overconfident)
    assert temperature == pytest.approx(3.0, rel=0.15)
    rescaled = apply_temperature(overconfident, temperature)
    assert negative_log_likelihood(labels, rescaled) < negative_log_likelihood(labels, overconfident)
    assert expected_calibration_error(labels, rescaled) < expected_calibration_error(labels, overconfident)
    assert (rescaled.argmax(axis=1) == overconfident.argmax(axis=1)).all()  # labels never change


def test_balanced_class_weights() -> None:
    assert balanced_class_weights(np.array([0, 0, 0, 1]), 2) == {0: pytest.approx(4 / 6), 1: 2.0}


def test_wilson_interval() -> None:
    low, high = wilson_interval(8, 8)
    assert high == 1.0 and 0.6 < low < 0.7
    assert wilson_interval(0, 0) == (0.0, 1.0)
