"""Evaluation metrics (plain numpy) against hand-computed values."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from lungscan.model.calibration import CalibrationSpec, apply_calibration
from training.data.layouts import Sample
from training.measure.calibrate import choose_calibration, fit_calibration, neighbour_folds
from training.measure.metrics import (
    apply_temperature,
    balanced_class_weights,
    classification_metrics,
    ece_uncertainty,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    roc_auc,
)
from training.measure.model_card import wilson_interval


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


def _shifted_task(n: int = 1500, seed: int = 1):
    """Calibrated 3-class probabilities, then a model that learned the wrong class priors."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    logits = rng.normal(0, 1, (n, 3))
    logits[np.arange(n), labels] += 1.5
    calibrated = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    wrong_priors = CalibrationSpec(family="class_bias", scale=[1, 1, 1], bias=[-1.5, 1.5, 0.0])
    return labels, apply_calibration(calibrated, wrong_priors)


def test_class_bias_recovers_the_priors_a_model_got_wrong() -> None:
    labels, shifted = _shifted_task()
    spec = fit_calibration(labels, shifted, "class_bias")
    assert spec.scale == [1.0, 1.0, 1.0]
    np.testing.assert_allclose(spec.bias, [1.5, -1.5, 0.0], atol=0.25)  # the shift undone, centred
    corrected = apply_calibration(shifted, spec)
    assert negative_log_likelihood(labels, corrected) < negative_log_likelihood(labels, shifted) - 0.1
    # unlike a temperature, a bias moves the most probable class: class 1 was over-predicted
    assert (corrected.argmax(axis=1) == labels).mean() > (shifted.argmax(axis=1) == labels).mean() + 0.05


def test_vector_scaling_softens_and_fits_at_least_as_well_as_its_special_cases() -> None:
    labels, shifted = _shifted_task()
    sharp = apply_calibration(shifted, CalibrationSpec(family="vector_scaling", scale=[2.0] * 3, bias=[0] * 3))
    families = ("temperature", "class_bias", "vector_scaling")
    fitted = {family: fit_calibration(labels, sharp, family) for family in families}
    assert max(fitted["vector_scaling"].scale) < 1.0 and fitted["temperature"].scale[0] < 1.0  # twice too sharp
    loss = {family: negative_log_likelihood(labels, apply_calibration(sharp, spec)) for family, spec in fitted.items()}
    assert loss["vector_scaling"] <= min(loss["temperature"], loss["class_bias"]) + 1e-3
    assert loss["temperature"] < negative_log_likelihood(labels, sharp)


def test_the_calibration_family_is_chosen_by_cross_validation_never_by_test() -> None:
    labels, shifted = _shifted_task()
    folds = np.arange(len(labels)) % 5
    test_a = _shifted_task(300, seed=2)
    test_b = (test_a[0], np.full_like(test_a[1], 1 / 3))  # a test split that would favour anything else
    chosen, table = choose_calibration((labels, shifted), folds, test_a)
    chosen_b, table_b = choose_calibration((labels, shifted), folds, test_b)
    assert chosen.family == chosen_b.family != "temperature"  # a temperature cannot undo wrong priors
    by_family = {row["family"]: row for row in table}
    assert by_family[chosen.family]["chosen"] and sum(bool(row.get("chosen")) for row in table) == 1
    assert by_family[chosen.family]["cross_validated_nll"] < by_family["temperature"]["cross_validated_nll"]
    assert chosen == fit_calibration(labels, shifted, chosen.family).model_copy(update={"method": chosen.method})
    assert [row["cross_validated_nll"] for row in table] == [row["cross_validated_nll"] for row in table_b]


def test_calibration_spec_must_fit_the_classes() -> None:
    spec = CalibrationSpec(family="class_bias", scale=[1, 1], bias=[0, 0])
    with pytest.raises(ValueError, match="one scale and one bias per class"):
        spec.check_classes(["a", "b", "c"])
    with pytest.raises(ValueError, match="one scale and one bias per class"):  # the scale alone too short
        spec.model_copy(update={"bias": [0, 0, 0]}).check_classes(["a", "b", "c"])
    short = (([1], [0]), ([1], [0, 0]), ([1, 1], [0]))  # two classes at least, a scale and a bias for each
    refused = (*short, ([1, 0], [0, 0]), ([1, 1e300], [0, 0]), ([1, float("nan")], [0, 0]), ([1, 1], [0, -1e9]))
    for scale, bias in refused:
        with pytest.raises(ValueError):  # an overflowing or meaningless rescaling never reaches the server
            CalibrationSpec(family="vector_scaling", scale=scale, bias=bias)
    # the family the card describes is the one served: a "temperature" never moves the most probable class
    for family, scale, bias in (("temperature", [2, 1], [0, 0]), ("temperature", [2, 2], [0.5, -0.5])):
        with pytest.raises(ValueError, match="a temperature is one scale"):
            CalibrationSpec(family=family, scale=scale, bias=bias)
    with pytest.raises(ValueError, match="a class bias keeps every scale at 1"):
        CalibrationSpec(family="class_bias", scale=[1, 2], bias=[0, 0])


def test_ece_uncertainty_brackets_the_estimate_and_knows_the_small_sample_floor() -> None:
    rng = np.random.default_rng(3)
    probabilities = rng.dirichlet([2, 2, 2], 60)
    cumulative = np.cumsum(probabilities, axis=1)
    calibrated_labels = (rng.random((60, 1)) > cumulative).sum(axis=1).clip(max=2)  # labels drawn from the rows
    result = ece_uncertainty(calibrated_labels, probabilities, draws=300)
    low, high = result["bootstrap_95"]
    assert low <= expected_calibration_error(calibrated_labels, probabilities) <= high
    assert high - low > 0.1  # 60 images: a 95% interval, not a point or an interquartile range
    # 60 perfectly calibrated answers still measure an ECE well above zero: the floor a small split puts under ECE
    assert 0.05 < result["if_perfectly_calibrated"] < 0.2
    wrong = np.argmin(probabilities, axis=1)  # always the least likely class: badly calibrated
    assert ece_uncertainty(wrong, probabilities, draws=300)["bootstrap_95"][0] > result["if_perfectly_calibrated"]


def test_exact_zeros_are_a_tiny_probability_never_a_nan() -> None:
    """float32 softmax outputs underflow to exactly 0; a broken model may even answer all zeros."""
    spec = CalibrationSpec(family="vector_scaling", scale=[0.5, 2.0, 1.0], bias=[0.3, 0.0, -0.3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no log(0)
        served = apply_calibration(np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.5, 0.5, 0.0]]), spec)
    assert np.isfinite(served).all()
    np.testing.assert_allclose(served.sum(axis=1), 1.0)
    assert served[0, 0] > 0.0  # p = 0 is read as 1e-12, so softening (scale < 1) lifts it


def test_the_fits_stay_inside_their_bounds_and_a_class_without_images_is_not_driven_to_an_extreme() -> None:
    rng = np.random.default_rng(5)
    labels = np.repeat([0, 1, 2], 20)
    never_class_2 = rng.dirichlet([2, 2, 2], 60)
    never_class_2[:, 2] = 0.0  # a third of the images are class 2, which the model never gives any probability
    never_class_2 /= never_class_2.sum(axis=1, keepdims=True)
    for family in ("class_bias", "vector_scaling"):
        spec = fit_calibration(labels, never_class_2, family)
        assert max(abs(b) for b in spec.bias) <= 20.0 and np.exp(-3) - 1e-6 <= min(spec.scale), family
        assert max(spec.scale) <= np.exp(3) + 1e-6, family
    # a class absent from the calibration split: the small penalty keeps its bias moderate (NLL alone runs to -20)
    absent = fit_calibration(rng.integers(0, 2, 40), rng.dirichlet([2, 2, 2], 40), "class_bias")
    assert -5.0 < absent.bias[2] < 0.0


def _calibrated_sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    probabilities = rng.dirichlet([1, 1, 1], n)
    return (rng.random((n, 1)) > np.cumsum(probabilities, axis=1)).sum(axis=1).clip(max=2), probabilities


def test_cross_validation_holds_each_fold_out_and_the_lowest_held_out_nll_wins() -> None:
    labels, probabilities = _calibrated_sample(45, seed=0)  # already calibrated: extra parameters only overfit
    chosen, table = choose_calibration((labels, probabilities), np.arange(45) % 5, (labels, probabilities))
    by_family = {row["family"]: row for row in table}
    assert chosen.family == min(table, key=lambda row: row["cross_validated_nll"])["family"] == "temperature"
    # here test is the calibration split itself, so test_nll is the in-sample NLL: the most flexible family
    # fits it best, and only held-out folds reveal that it does not generalise
    assert min(table, key=lambda row: row["test_nll"])["family"] == "vector_scaling"
    vector = by_family["vector_scaling"]
    assert vector["cross_validated_nll"] > vector["test_nll"] + 0.05


@pytest.mark.parametrize(
    "labels",
    [[0, 1, 2], [0], [0, 0, 0, 0, 1, 1, 1, 1, 2], [0, 0, 1, 1, 0, 1]],
    ids=["one-per-class", "one-image", "a-class-with-one", "a-class-with-none"],
)
@pytest.mark.parametrize("kind", ["random", "identical", "exact-zeros"])
def test_a_tiny_calibration_split_still_gives_a_finite_choice(labels, kind) -> None:
    labels = np.array(labels)
    probabilities = np.random.default_rng(1).dirichlet([1, 1, 1], len(labels))
    if kind == "identical":
        probabilities = np.full_like(probabilities, 1 / 3)
    if kind == "exact-zeros":
        probabilities[:, 2] = 0.0
        probabilities /= probabilities.sum(axis=1, keepdims=True)
    samples = [Sample(Path(f"{n}.png"), "abc"[label], n, "") for n, label in enumerate(labels)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no mean of an empty fold, no log(0)
        chosen, table = choose_calibration((labels, probabilities), neighbour_folds(samples), (labels, probabilities))
    assert all(np.isfinite(value) for row in table for key, value in row.items() if key not in ("family", "chosen"))
    assert np.isfinite(apply_calibration(probabilities, chosen)).all()
    if kind == "random" and len(labels) > 1:  # held-out images were scored by fits on the others, not all as fitted
        assert len({row["cross_validated_nll"] for row in table}) > 1


def test_neighbour_folds_are_contiguous_blocks_of_file_numbers_per_class() -> None:
    rng = np.random.default_rng(0)
    numbers = {"a": rng.permutation(100)[:23], "b": rng.permutation(100)[:7]}
    samples = [Sample(Path(f"{c}{n}.png"), c, int(n), "") for c in numbers for n in numbers[c]]
    order = rng.permutation(len(samples))
    shuffled = [samples[i] for i in order]
    folds = neighbour_folds(samples)
    np.testing.assert_array_equal(neighbour_folds(shuffled), folds[order])  # by number, not by list order
    for label, count in (("a", 23), ("b", 7)):
        mine = [(s.number, int(f)) for s, f in zip(samples, folds, strict=True) if s.label == label]
        by_number = [f for _, f in sorted(mine)]
        assert by_number == sorted(by_number)  # contiguous: neighbours share a fold
        assert set(by_number) == set(range(5))  # every fold holds some of every class
        assert max(np.bincount(by_number)) - min(np.bincount(by_number)) <= 1, count
