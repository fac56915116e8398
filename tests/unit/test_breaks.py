"""One-line breaks that every other test let through (issue 24), each caught here by a test that feeds the case the
broken line gets wrong: an explained photo, two flagged classes, a speck before the body, slices that score apart,
a negative pre-activation, a multi-frame DICOM, a gate feature drifting."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from helpers import FIXTURES_DIR, ct_dataset, dicom_bytes, encode, frame, hand_made_spec, make_event
from PIL import Image, ImageDraw

from infrastructure.emulation import REPO_ROOT
from lungscan.errors import PayloadTooLargeError
from lungscan.model.classifier import Classifier
from lungscan.model.gate import FEATURE_NAMES, gate_features, gate_scores
from lungscan.model.transforms import CropToBody
from lungscan.uploads import plan_study
from training.gate import generators as non_ct_generators

# gate_features of tests/fixtures/ct_normal_256.png, summed and projected on fixed random weights: a feature that
# drifts changes what the fitted gate reads. On purpose (a new feature, a refitted gate): paste the new pair.
GATE_FEATURES_FINGERPRINT = {1: (24.9266, -1.7766), 2: (25.1242, -1.839)}  # by features version


def call(app_module, lambda_context, payload: dict) -> tuple[int, dict]:
    event = make_event(body=json.dumps(payload), content_type="application/json")
    result = app_module.lambda_handler(event, lambda_context)
    return result["statusCode"], json.loads(result["body"])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize("explain", [False, True])
def test_the_not_ct_gate_holds_whether_or_not_a_heatmap_is_asked_for(app_module, lambda_context, explain):
    screenshot = non_ct_generators.screenshot(np.random.default_rng(3))
    status, answer = call(app_module, lambda_context, {"image": b64(encode(screenshot)), "explain": explain})
    assert (status, answer.get("error", {}).get("code")) == (422, "not_ct_like"), answer
    assert "heatmap" not in answer and "label" not in answer


def test_positive_probability_sums_every_flagged_class():
    classifier = Classifier(REPO_ROOT / "models" / "chest-ct-4class")
    assert len(classifier.metadata.positive_classes) == 3
    probabilities = np.zeros(4)
    for name, share in zip(classifier.metadata.positive_classes, (0.2, 0.15, 0.1), strict=True):
        probabilities[classifier.metadata.classes.index(name)] = share
    probabilities[classifier.metadata.classes.index("normal")] = 0.55
    prediction = classifier.interpret(probabilities)
    assert prediction.label == "normal"
    assert prediction.positive_probability == pytest.approx(0.45)  # the max (0.2) would hide most of it


def test_the_body_is_the_largest_region_not_the_first():
    image = Image.new("L", (512, 512), 0)
    draw = ImageDraw.Draw(image)
    draw.rectangle((8, 8, 60, 40), fill=255)  # burned-in text in a corner: first in scan order
    draw.ellipse((96, 150, 416, 430), fill=140)  # the body, far larger
    left, top, right, bottom = CropToBody().body_box(image, CropToBody.BACKGROUND_LEVEL)
    assert left <= 100 and right >= 412 and top <= 154 and bottom >= 426
    assert not (left <= 8 and top <= 8)  # the corner block is not what the square was drawn around


def test_a_study_focuses_on_its_most_suspicious_slice_and_explains_that_one(app_module, lambda_context):
    normal = b64((FIXTURES_DIR / "ct_normal_256.png").read_bytes())
    malignant = b64((FIXTURES_DIR / "ct_malignant_256.jpg").read_bytes())
    status, answer = call(app_module, lambda_context, {"images": [normal, malignant, normal], "explain": True})
    assert status == 200, answer
    scores = [item["positive_probability"] for item in answer["slices"]]
    assert scores[1] > scores[0] == scores[2]  # the slices score apart: a wrong index cannot tie
    assert answer["study"]["most_suspicious_slice"] == 1
    assert answer["study"]["max_positive_probability"] == scores[1]
    assert [item["heatmap"] is not None for item in answer["slices"]] == [False, True, False]
    assert answer["slices"][1]["explained_class"] == answer["slices"][1]["label"]


def test_the_gates_hidden_layer_is_rectified():
    """A hidden unit whose pre-activation is negative contributes nothing: without the ReLU it would lower the logit."""
    spec = hand_made_spec()
    features = np.zeros((2, len(FEATURE_NAMES)))
    features[0, 0] = -4.0  # standardised -2: rectified to 0, so the logit is the output bias alone
    features[1, 0] = 4.0  # standardised +2: hidden 2, logit 3 * 2 - 1.5
    probability, _ = gate_scores(features, spec)
    np.testing.assert_allclose(probability, [1 / (1 + np.exp(1.5)), 1 / (1 + np.exp(-4.5))])


def test_a_studys_pixel_budget_counts_every_frame_of_a_multi_frame_dicom():
    data = dicom_bytes(ct_dataset([frame(-600 + index) for index in range(4)]))  # 4 frames of 64x64
    assert len(plan_study([data], max_pixels=4 * 64 * 64)) == 4
    with pytest.raises(PayloadTooLargeError):
        plan_study([data], max_pixels=4 * 64 * 64 - 1)  # once per file would count 64x64 only


@pytest.mark.parametrize("version", sorted(GATE_FEATURES_FINGERPRINT))
def test_gate_features_of_a_fixture_are_pinned(version: int):
    """Both versions: a bundle fitted on version 1 is still served with version 1's features."""
    features = gate_features(Image.open(FIXTURES_DIR / "ct_normal_256.png"), version=version)
    weights = np.random.default_rng(0).normal(size=features.shape)
    fingerprint = (round(float(features.sum()), 4), round(float(features @ weights), 4))
    expected = GATE_FEATURES_FINGERPRINT[version]
    assert fingerprint == pytest.approx(expected, abs=2e-4), f"gate features v{version} now {fingerprint}"
