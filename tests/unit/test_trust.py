"""Answers a clinician can trust: the suspicious rule, conformal prediction sets, capped confidence,
and the preprocessing steps a bundle declares (pad to square, percentile scaling)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import build_bundle, metadata
from PIL import Image

from lungscan.bundle.metadata import PreprocessingSpec, ResizeSpec
from lungscan.inputs.imaging import DecodedImage
from lungscan.model.classifier import MAX_SHOWN_PROBABILITY, Classifier
from lungscan.model.conformal import ConformalSpec, prediction_set, set_mask
from lungscan.model.transforms import Compose, build_preprocess
from training.measure.calibrate import fit_conformal, set_report

CLASSES = ["normal", "benign", "malignant"]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Classifier:
    """A multi-class bundle (3 classes, malignant positive) with conformal thresholds."""
    conformal = ConformalSpec(coverage=0.9, thresholds=dict.fromkeys(CLASSES, 0.5))
    return Classifier(build_bundle(tmp_path_factory.mktemp("trust"), conformal=conformal))


def configure(classifier: Classifier, threshold: float, thresholds: dict[str, float] | None) -> Classifier:
    classifier.metadata.threshold = threshold
    classifier.metadata.conformal = thresholds and ConformalSpec(coverage=0.9, thresholds=thresholds)
    return classifier


HALF = {"normal": 0.5, "benign": 0.5, "malignant": 0.5}


# Each case is decided by exactly one branch of the rule: deleting that branch changes its tier, flag or set.
@pytest.mark.parametrize(
    ("why", "threshold", "thresholds", "probabilities", "expected_set", "tier", "uncertain"),
    [
        # malignant on top: the label is a flagged class (in a set of one: sure, and suspicious)
        ("flagged label", 0.5, HALF, [0.2, 0.1, 0.7], ["malignant"], "suspicious", False),
        # malignant on top at 0.4 < 0.5, in a bundle without conformal sets
        ("flagged label, no set", 0.5, None, [0.3, 0.3, 0.4], None, "suspicious", None),
        # malignant neither on top nor over the threshold, but it could not be ruled out (0.75 <= 0.8)
        (
            "flagged class in the set",
            0.5,
            {**HALF, "malignant": 0.8},
            [0.7, 0.05, 0.25],
            ["normal", "malignant"],
            "not_excluded",
            True,
        ),
        # summed positive probability 0.35 >= 0.3; normal on top; malignant outside the conformal set
        # (0.65 > 0.5): the set is widened to hold it, so set, tier and flag agree
        ("threshold met", 0.3, HALF, [0.6, 0.05, 0.35], ["normal", "malignant"], "not_excluded", True),
        # the same without a set: the threshold alone says not excluded
        ("threshold met, no set", 0.3, None, [0.6, 0.05, 0.35], None, "not_excluded", None),
        # nothing flagged: a set of one unflagged class
        ("clear", 0.5, HALF, [0.9, 0.06, 0.04], ["normal"], "clear", False),
        ("clear, no set", 0.5, None, [0.9, 0.06, 0.04], None, "clear", None),
        # {normal, benign}: two unflagged classes are not uncertainty about malignancy
        ("unflagged pair", 0.5, {**HALF, "benign": 0.8}, [0.7, 0.25, 0.05], ["normal", "benign"], "clear", False),
    ],
)
def test_each_branch_of_the_tier_rule(
    classifier, why, threshold, thresholds, probabilities, expected_set, tier, uncertain
):
    prediction = configure(classifier, threshold, thresholds).interpret(np.array(probabilities))
    assert prediction.prediction_set == expected_set, why
    assert prediction.tier == tier, why
    assert prediction.suspicious is (tier != "clear"), why
    assert prediction.uncertain is uncertain, why
    assert prediction.verdict == ("No Cancer Detected" if tier == "clear" else "Cancer Detected"), why
    assert prediction.unfamiliar is None, why


def test_an_unflagged_pair_says_what_it_means(classifier):
    prediction = configure(classifier, 0.5, {**HALF, "benign": 0.8}).interpret(np.array([0.7, 0.25, 0.05]))
    assert len(prediction.notes) == 1 and "normal from benign" in prediction.notes[0]
    assert "no doubt about malignancy" in prediction.notes[0]
    assert configure(classifier, 0.5, HALF).interpret(np.array([0.9, 0.06, 0.04])).notes == []


@pytest.mark.parametrize("thresholds", [HALF, None])
def test_an_unfamiliar_slice_is_uncertain_and_its_set_holds_every_flagged_class(classifier, thresholds):
    prediction = configure(classifier, 0.5, thresholds).interpret(np.array([0.9, 0.06, 0.04]), unfamiliar=True)
    assert prediction.unfamiliar is True and prediction.uncertain is True
    assert prediction.notes[0] == (
        "This scan looks unlike the scans this model learned from; its answer is unreliable."
    )
    if thresholds is not None:
        assert prediction.prediction_set == ["normal", "malignant"]  # the label first, then the flagged class
        assert (prediction.tier, prediction.suspicious) == ("not_excluded", True)
    familiar = classifier.interpret(np.array([0.9, 0.06, 0.04]), unfamiliar=False)
    assert familiar.unfamiliar is False and familiar.uncertain is (False if thresholds else None)


def test_the_tier_words_are_the_pages():
    from lungscan.model.classifier import TIER_WORDS

    assert TIER_WORDS == {
        "suspicious": "Suspicious — review first",
        "not_excluded": "Malignancy not excluded — review",
        "clear": "No suspicious finding",
    }


def test_confidence_is_never_shown_as_certain(classifier):
    configure(classifier, 0.5, dict.fromkeys(CLASSES, 0.5))
    prediction = classifier.interpret(np.array([1.0 - 1e-7, 5e-8, 5e-8]))
    assert prediction.confidence == MAX_SHOWN_PROBABILITY < 1.0
    assert max(prediction.probabilities.values()) < 1.0


def test_spec_must_name_the_models_classes():
    with pytest.raises(ValueError, match="conformal"):
        metadata(conformal=ConformalSpec(coverage=0.9, thresholds={"normal": 0.5, "cancer": 0.5}))
    with pytest.raises(ValueError):
        ConformalSpec(coverage=0.9, thresholds={"normal": 1.5})


def test_the_label_is_always_in_the_set_and_comes_first():
    spec = ConformalSpec(coverage=0.9, thresholds={"normal": 0.0, "benign": 0.9, "malignant": 0.9})
    assert prediction_set(np.array([0.5, 0.3, 0.2]), CLASSES, spec) == ["normal", "benign", "malignant"]
    assert set_mask(np.array([[0.6, 0.2, 0.2]]), np.zeros(3)).tolist() == [[True, False, False]]


def simulate(rng: np.random.Generator, n: int, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A task with a known answer: the model's probabilities are the true chances of each class."""
    probabilities = rng.dirichlet(np.full(k, 0.7), size=n)
    labels = (rng.random(n)[:, None] > np.cumsum(probabilities, axis=1)).sum(axis=1)
    return labels, probabilities


def test_conformal_sets_cover_the_true_class_at_the_target_rate_in_every_class():
    rng = np.random.default_rng(0)
    labels, probabilities = simulate(rng, 3000)
    spec = fit_conformal(labels, probabilities, CLASSES, 0.9)
    test_labels, test_probabilities = simulate(rng, 30000)
    report = set_report(test_labels, test_probabilities, CLASSES, spec)
    assert report["coverage"] == pytest.approx(0.9, abs=0.015)
    for name in CLASSES:
        assert report["per_class"][name]["coverage"] == pytest.approx(0.9, abs=0.025), name
    assert 1.0 < report["mean_set_size"] < 3.0  # informative: neither always one class nor always all


def test_thresholds_are_the_split_conformal_quantile_per_class():
    rng = np.random.default_rng(1)
    labels, probabilities = simulate(rng, 500)
    spec = fit_conformal(labels, probabilities, CLASSES, 0.9)
    scores = 1.0 - probabilities[np.arange(len(labels)), labels]
    for k, name in enumerate(CLASSES):
        ranked = np.sort(scores[labels == k])
        rank = int(np.ceil((len(ranked) + 1) * 0.9))  # the textbook ceil((n + 1)(1 - alpha))-th smallest
        # stored to 6 places, rounded up: the calibration image the quantile came from stays in its set
        assert ranked[rank - 1] <= spec.thresholds[name] < ranked[rank - 1] + 1e-6, name
    assert spec.calibration["pooled_fallback"] == []
    covered = set_mask(probabilities, np.array([spec.thresholds[name] for name in CLASSES]))[np.arange(500), labels]
    for k, name in enumerate(CLASSES):
        assert covered[labels == k].sum() >= int(np.ceil(((labels == k).sum() + 1) * 0.9)), name


def test_a_class_with_too_few_calibration_images_covers_all_of_them_and_at_least_the_pooled_threshold():
    rng = np.random.default_rng(2)
    labels, probabilities = simulate(rng, 400)
    rare = np.flatnonzero(labels == 1)[:5]  # 5 benign images: no finite 90% class-conditional threshold
    keep = np.r_[np.flatnonzero(labels != 1), rare]
    spec = fit_conformal(labels[keep], probabilities[keep], CLASSES, 0.9)
    pooled = fit_conformal(labels[keep], probabilities[keep], CLASSES, 0.9, mondrian=False)
    assert spec.calibration["pooled_fallback"] == ["benign"]
    own_largest = float((1.0 - probabilities[rare, 1]).max())
    assert spec.thresholds["benign"] == pytest.approx(max(pooled.thresholds["benign"], own_largest), abs=1e-6)
    assert "largest of its own calibration images" in spec.method
    # A rare class the model squashes (its images all score above the pooled threshold) is still in their sets.
    squashed = probabilities[keep].copy()
    squashed[-5:, 1] = 0.01
    squashed[-5:] /= squashed[-5:].sum(axis=1, keepdims=True)
    spec = fit_conformal(labels[keep], squashed, CLASSES, 0.9)
    assert set_report(labels[keep][-5:], squashed[-5:], CLASSES, spec)["coverage"] == 1.0
    # ...and one the model gets right with confidence never gets a tighter threshold than the pooled one
    confident = probabilities[keep].copy()
    confident[-5:] = [0.01, 0.98, 0.01]
    spec = fit_conformal(labels[keep], confident, CLASSES, 0.9)
    pooled = fit_conformal(labels[keep], confident, CLASSES, 0.9, mondrian=False).thresholds["benign"]
    assert spec.thresholds["benign"] == pytest.approx(pooled, abs=1e-6) and pooled > 0.02 + 1e-6


def test_pad_to_square_keeps_the_aspect_ratio():
    wide = np.zeros((40, 80), np.uint8)
    wide[:, :] = 200  # a bright 2:1 picture
    chain = build_preprocess(
        PreprocessingSpec(colour="grayscale", pad_to_square=True, resize=ResizeSpec(height=40, width=40)).model_dump()
    )
    data = chain({"image": Image.fromarray(wide)})
    rows = data["array"][..., 0].mean(axis=1)
    assert rows[:8].max() == 0.0 and rows[-8:].max() == 0.0  # black bands above and below
    assert rows[12:28].min() == pytest.approx(200 / 255, abs=0.01)  # the picture itself, not stretched
    assert [step["name"] for step in data["applied_operations"]] == [
        "ToColour",
        "PadToSquare",
        "Resize",
        "ScaleIntensity",
    ]


def ct_like_field(body: tuple[int, int, int, int], size: tuple[int, int] = (512, 512)) -> Image.Image:
    """A black field with a speckled "body" (a windowed slice is mostly black specks) and a thin couch below."""
    rng = np.random.default_rng(5)
    pixels = np.zeros(size[::-1], np.uint8)
    left, top, right, bottom = body
    pixels[top:bottom, left:right] = np.where(rng.random((bottom - top, right - left)) < 0.3, 220, 0)
    pixels[size[1] - 30 : size[1] - 27, 20 : size[0] - 20] = 200  # the couch: a separate thin region
    return Image.fromarray(pixels)


def crop_chain():
    spec = PreprocessingSpec(colour="grayscale", crop_to_body=True, resize=ResizeSpec(height=64, width=64))
    return build_preprocess(spec.model_dump())


def test_crop_to_body_frames_the_body_not_the_couch_or_the_field():
    from lungscan.model.transforms import preprocess_image

    image = ct_like_field((100, 150, 400, 350))  # a 300x200 body off-centre in 512x512
    array, trace = preprocess_image(DecodedImage(image=image, format="PNG"), crop_chain())
    left, top, right, bottom = trace["view"]
    assert right - left == bottom - top  # a square, so nothing is stretched
    assert abs(left - 100) <= 12 and abs(right - 400) <= 12  # the body's width, plus the smoothing's margin
    assert abs((top + bottom) / 2 - 250) <= 6  # centred on the body, not pulled down to the couch at 482
    assert bottom < 482
    rows = array[..., 0].mean(axis=1)
    assert rows[:8].max() == 0.0 and rows[-8:].max() == 0.0  # above and below the body: black fill
    assert rows[24:40].min() > 0.1  # the body fills the width: it is magnified, 300 px over 64
    assert [step["name"] for step in trace["applied_operations"]][:2] == ["ToColour", "CropToBody"]


def test_crop_to_body_squares_a_tall_body_on_its_height():
    from lungscan.model.transforms import preprocess_image

    image = ct_like_field((200, 60, 300, 420))  # 100 wide, 360 tall: the square's side is the height
    _, trace = preprocess_image(DecodedImage(image=image, format="PNG"), crop_chain())
    left, top, right, bottom = trace["view"]
    assert right - left == bottom - top and abs(top - 60) <= 12 and abs(bottom - 420) <= 12
    assert abs((left + right) / 2 - 250) <= 6  # centred across the body


def test_crop_to_body_joins_a_sparse_body_into_one_region():
    """A body drawn as isolated dots (a windowed slice's speckle at its sparsest) is one body, not its first dot."""
    from lungscan.model.transforms import preprocess_image

    pixels = np.zeros((512, 512), np.uint8)
    pixels[150:350:8, 100:400:8] = 220  # one bright pixel every 8: isolated on the 128-px thumbnail
    pixels[150:350:8, 101:400:8] = 220
    pixels[151:350:8, 100:400:8] = 220
    pixels[151:350:8, 101:400:8] = 220
    _, trace = preprocess_image(DecodedImage(image=Image.fromarray(pixels), format="PNG"), crop_chain())
    left, top, right, bottom = trace["view"]
    assert abs(left - 100) <= 12 and abs(right - 400) <= 12 and abs((top + bottom) / 2 - 250) <= 6


def test_the_view_stays_in_the_uploads_pixels_when_steps_compose():
    """Each step's box is in the previous step's image: the view adds them up to the upload's pixels."""
    from lungscan.model.transforms import CropToBody, PadToSquare, Resize, ScaleIntensity, ToColour

    image = ct_like_field((100, 30, 400, 170), size=(512, 256))  # wide: padded by 128 rows above and below
    chain = Compose([ToColour("grayscale"), PadToSquare(), CropToBody(), Resize(64, 64), ScaleIntensity()])
    data = chain({"image": image, "view": (0, 0, 512, 256)})
    crop = next(step["box"] for step in data["applied_operations"] if step["name"] == "CropToBody")
    assert data["view"] == (crop[0], crop[1] - 128, crop[2], crop[3] - 128)
    left, top, right, bottom = data["view"]
    assert abs(left - 100) <= 12 and abs(right - 400) <= 12 and abs((top + bottom) / 2 - 100) <= 6


@pytest.mark.parametrize("pixels", [np.zeros((50, 80), np.uint8), np.full((50, 80), 5, np.uint8)])
def test_crop_to_body_leaves_an_image_without_a_body_whole(pixels):
    from lungscan.model.transforms import preprocess_image

    _, trace = preprocess_image(DecodedImage(image=Image.fromarray(pixels), format="PNG"), crop_chain())
    assert trace["view"] == (0, 0, 80, 50)
    assert trace["applied_operations"][1] == {"name": "CropToBody", "box": None}


def test_percentile_scaling_ignores_the_window_of_the_export():
    rng = np.random.default_rng(3)
    anatomy = rng.random((64, 64))
    spec = PreprocessingSpec(
        colour="grayscale", resize=ResizeSpec(height=64, width=64), intensity={"method": "percentile"}
    )
    chain = build_preprocess(spec.model_dump())
    dark = chain({"image": Image.fromarray((20 + 100 * anatomy).astype(np.uint8))})["array"]
    bright = chain({"image": Image.fromarray((120 + 120 * anatomy).astype(np.uint8))})["array"]
    assert dark.min() == 0.0 and dark.max() == 1.0
    assert np.abs(dark - bright).mean() < 0.02  # two windows of one slice look alike to the model
    fixed = build_preprocess(PreprocessingSpec(colour="grayscale", resize=ResizeSpec(height=64, width=64)).model_dump())
    assert [type(step).__name__ for step in fixed.transforms] == ["ToColour", "Resize", "ScaleIntensity"]
