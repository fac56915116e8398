"""The not-CT gate: images that are not CT slices get 422 not_ct_like; CT slices get their verdict.

Everything here is generated from what packages ship (scikit-image's sample images, pydicom's
test files, matplotlib, Pillow) or committed under tests/fixtures; nothing reads the datasets.
The handler uses the committed default bundle, whose model.json carries a gate fitted by
``python -m training gate``.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    BUNDLED_MODEL,
    FIXTURES_DIR,
    cli,
    ct_dataset,
    ct_hounsfield,
    ct_like_image,
    encode,
    evaluated_bundle,
    hand_made_spec,
    keys,
    make_event,
)
from PIL import Image, ImageDraw
from pydicom.data import get_testdata_file

from lungscan.bundle.store import read_metadata
from lungscan.errors import NotACTSliceError, NotCTLikeError
from lungscan.inputs.imaging import DecodedImage, to_8bit
from lungscan.model.gate import FEATURE_NAMES, GateSpec, check_ct_like, gate_features, gate_scores, is_ct_like
from training.gate import generators as non_ct_generators
from training.gate import non_ct


def call(app_module, lambda_context, image_bytes: bytes) -> tuple[int, dict]:
    event = make_event(
        body=json.dumps({"image": base64.b64encode(image_bytes).decode()}), content_type="application/json"
    )
    result = app_module.lambda_handler(event, lambda_context)
    return result["statusCode"], json.loads(result["body"])


def skimage_sample(name: str) -> Image.Image:
    return next(image for _, sample, image in non_ct.skimage_samples() if sample == name)


def bar_chart() -> Image.Image:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 4), dpi=80)
    axes.bar(["normal", "benign", "malignant"], [12, 5, 9], color=["tab:green", "tab:orange", "tab:red"])
    axes.set_title("Scans per class")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return Image.open(io.BytesIO(buffer.getvalue()))


def text_image() -> Image.Image:
    image = Image.new("L", (480, 320), 255)
    draw = ImageDraw.Draw(image)
    for row in range(12):
        draw.text((10, 10 + row * 25), "Patient report: chest CT reviewed, no acute findings.", fill=0)
    return image


def logo_drawing() -> Image.Image:
    image = Image.new("RGB", (300, 300), "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse((30, 30, 270, 270), fill=(0, 90, 180))
    draw.text((150, 150), "LS", fill="white", anchor="mm", font_size=90)
    return image


def mr_png() -> Image.Image:
    """pydicom's MR_small as a PNG: the gate, not the DICOM modality check, must refuse it."""
    return next(image for _, name, image in non_ct.pydicom_samples() if name == "MR_small.dcm")


NON_CT = {
    "photo_astronaut": lambda: skimage_sample("astronaut"),
    "photo_coffee": lambda: skimage_sample("coffee"),
    "photo_cat": lambda: skimage_sample("chelsea"),
    "photo_grey_cameraman": lambda: skimage_sample("camera"),
    "photo_grey_moon": lambda: skimage_sample("moon"),
    "scanned_page": lambda: skimage_sample("page"),
    "silhouette_horse": lambda: skimage_sample("horse"),
    "bar_chart": bar_chart,
    "training_curve": lambda: non_ct.generate("chart", 5, seed=7)[4],
    "text": text_image,
    "logo": logo_drawing,
    "lung_cartoon": lambda: non_ct_generators.lung_cartoon(np.random.default_rng(3)),
    "screenshot": lambda: non_ct_generators.screenshot(np.random.default_rng(3)),
    "noise_uniform": lambda: Image.fromarray(np.random.default_rng(1).integers(0, 256, (256, 256), dtype=np.uint8)),
    "noise_gaussian_colour": lambda: non_ct_generators.noise_gaussian(np.random.default_rng(2)),
    "stripes": lambda: non_ct_generators.stripes(np.random.default_rng(5)),
    "colour_gradient": lambda: non_ct_generators.gradient(np.random.default_rng(4)),
    "xray_like": lambda: non_ct_generators.radiograph(np.random.default_rng(6)),
    "mr_dicom_as_png": mr_png,
}


@pytest.mark.parametrize("kind", sorted(NON_CT))
def test_non_ct_images_are_refused_with_422_not_ct_like(app_module, lambda_context, kind):
    image = NON_CT[kind]()
    status, answer = call(app_module, lambda_context, encode(image.convert("RGB") if image.mode == "P" else image))
    assert status == 422, (kind, answer)
    assert answer["error"]["code"] == "not_ct_like"
    assert answer["error"]["message"].startswith("This does not look like a CT slice of the chest")
    assert "label" not in answer and "verdict" not in answer


def dicom_bytes(dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, implicit_vr=False, little_endian=True)
    return buffer.getvalue()


def as_ct_dicom(image: Image.Image, **tags) -> bytes:
    """A picture wrapped the way a PACS might send it: Modality CT, ORIGINAL/PRIMARY/AXIAL, its grey levels
    stored as the HU the lung window shows as those levels."""
    grey = np.asarray(image.convert("L"), np.float32)
    return dicom_bytes(ct_dataset([(grey / 255.0 * 1500.0 - 1350.0).round().astype(np.int16)], **tags))


def ct_fixtures() -> dict[str, bytes]:
    slices = {path.name: path.read_bytes() for path in sorted(FIXTURES_DIR.glob("ct_*")) if path.suffix != ".md"}
    for seed, size in ((0, 256), (1, 512), (2, 128), (3, 300)):
        slices[f"ct_like_{seed}_{size}"] = encode(ct_like_image(size, seed=seed))
    slices["ct_like_rgb_jpeg"] = encode(ct_like_image(320, seed=4, mode="RGB"), "JPEG", quality=85)
    slices["ct_dicom_hu_512"] = dicom_bytes(ct_dataset([ct_hounsfield(512)]))
    slices["ct_dicom_hu_256"] = dicom_bytes(ct_dataset())
    return slices


@pytest.mark.parametrize("name", sorted(ct_fixtures()))
def test_ct_slices_pass_the_gate_and_get_a_verdict(app_module, lambda_context, name):
    status, answer = call(app_module, lambda_context, ct_fixtures()[name])
    assert status == 200, (name, answer)
    assert answer["tier"] in ("suspicious", "not_excluded", "clear")


@pytest.mark.parametrize(
    "kind", ["photo_cat", "photo_grey_cameraman", "bar_chart", "text", "screenshot", "noise_uniform", "mr_dicom_as_png"]
)
def test_a_picture_wrapped_in_a_ct_dicom_faces_the_gate(app_module, lambda_context, kind):
    """Modality CT proves nothing: the pixels decide, whatever the wrapper."""
    status, answer = call(app_module, lambda_context, as_ct_dicom(NON_CT[kind]()))
    assert (status, answer.get("error", {}).get("code")) == (422, "not_ct_like"), (kind, answer)
    assert "label" not in answer and "tier" not in answer


@pytest.mark.parametrize("air_hu", [-1024, -1000])
@pytest.mark.parametrize("window", [None, {"center": 40, "width": 400}])
def test_a_ct_dicom_whose_air_is_grey_through_its_window_passes_the_gate(app_module, lambda_context, air_hu, window):
    """Through the lung window air (-1000 HU) is grey 60, not the black of an export: the gate levels a DICOM so
    that air is black before it judges it (it would refuse every real CT DICOM otherwise)."""
    data = dicom_bytes(ct_dataset([np.maximum(ct_hounsfield(512), air_hu).astype(np.int16)]))
    payload = {"image": base64.b64encode(data).decode(), **({"window": window} if window else {})}
    event = make_event(body=json.dumps(payload), content_type="application/json")
    result = app_module.lambda_handler(event, lambda_context)
    assert result["statusCode"] == 200, result["body"]


def test_pydicoms_ct_small_a_small_field_of_view_crop_is_refused_as_not_ct_like(app_module, lambda_context):
    """A 128x128 crop of a CT slice (no body outline, no air around it): the README says it is refused."""
    status, answer = call(app_module, lambda_context, Path(get_testdata_file("CT_small.dcm")).read_bytes())
    assert (status, answer["error"]["code"]) == (422, "not_ct_like"), answer


@pytest.mark.parametrize(
    ("tags", "code"),
    [
        ({"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}, "not_ct_localizer"),
        ({"ImageType": ["ORIGINAL", "PRIMARY", "TOPOGRAM"]}, "not_ct_localizer"),
        ({"ImageType": ["DERIVED", "SECONDARY", "SCREEN SAVE"]}, "not_ct_dose_report"),
        ({"ImageType": ["ORIGINAL", "PRIMARY", "OTHER"], "SeriesDescription": "Dose Report"}, "not_ct_dose_report"),
        (
            {"ImageType": ["ORIGINAL", "PRIMARY", "OTHER"], "SeriesDescription": "Patient Protocol"},
            "not_ct_dose_report",
        ),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}, "not_ct_secondary_capture"),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7.4"}, "not_ct_secondary_capture"),
        ({"ImageType": ["DERIVED", "SECONDARY", "MIP"]}, "not_ct_derived"),
        ({"ImageType": ["DERIVED", "SECONDARY", "CORONAL"]}, "not_ct_derived"),
        ({"ImageType": ["DERIVED", "SECONDARY", "OTHER"]}, "not_ct_derived"),
        ({"ImageType": ["ORIGINAL", "PRIMARY", "VOLUME"]}, "not_ct_derived"),
    ],
)
def test_localizers_dose_screens_captures_and_renderings_are_refused_with_their_code(
    app_module, lambda_context, tags, code
):
    """Even with real CT pixels: these are not axial slices of the patient (each says so in its header)."""
    status, answer = call(app_module, lambda_context, dicom_bytes(ct_dataset(**tags)))
    assert (status, answer["error"]["code"]) == (422, code), answer
    assert answer["error"]["message"].endswith("Send an axial slice of the chest CT series.")


@pytest.mark.parametrize("image_type", [["DERIVED", "PRIMARY", "AXIAL"], ["ORIGINAL", "PRIMARY", "AXIAL", "HELIX"]])
def test_a_derived_axial_reconstruction_is_a_slice(app_module, lambda_context, image_type):
    status, answer = call(app_module, lambda_context, dicom_bytes(ct_dataset(ImageType=image_type)))
    assert status == 200, answer


def test_a_dicom_of_another_modality_keeps_its_own_refusal(app_module, lambda_context):
    status, answer = call(app_module, lambda_context, dicom_bytes(ct_dataset(Modality="MR")))
    assert (status, answer["error"]["code"]) == (422, "not_ct_modality")


def test_a_ct_dicom_faces_the_gate_like_any_image():
    refusing = hand_made_spec(probability_threshold=0.99)
    image = ct_like_image(128)
    for decoded in (
        DecodedImage(image=image, format="DICOM", meta={"modality": "CT"}),  # the header proves nothing
        DecodedImage(image=image, format="DICOM", meta={"modality": "MR"}),  # let in with allow_non_ct
        DecodedImage(image=image, format="DICOM", meta={"modality": ""}),  # no modality tag
        DecodedImage(image=image, format="PNG", meta={}),
    ):
        with pytest.raises(NotCTLikeError):
            check_ct_like(decoded, refusing)


# ---------------------------------------------------------------- the feature and score functions


def test_features_are_finite_and_see_colour():
    grey = gate_features(ct_like_image(256))
    ramp = np.linspace(0, 255, 256, dtype=np.float32)[None, :, None] * np.array([1.0, 0.2, 0.0]) + [0, 0, 120]
    colour = gate_features(Image.fromarray(np.repeat(ramp, 200, axis=0).astype(np.uint8)))
    assert grey.shape == colour.shape == (len(FEATURE_NAMES),)
    assert np.isfinite(grey).all() and np.isfinite(colour).all()
    chroma = FEATURE_NAMES.index("chroma_mean")
    assert grey[chroma] == 0.0
    assert gate_features(ct_like_image(256, mode="RGB"))[chroma] == 0.0  # grey pixels stored as RGB
    assert colour[chroma] > 0.05
    # a 16-bit export of a slice looks to the gate like the 8-bit copy the decoder makes of it
    pixels = np.asarray(ct_like_image(256)).copy()
    image16 = Image.fromarray(pixels.astype(np.uint16) * 257)
    np.testing.assert_allclose(gate_features(image16), gate_features(to_8bit(image16)), atol=1e-6)


def test_scores_follow_the_stored_parameters():
    spec = hand_made_spec()
    features = np.zeros((2, len(FEATURE_NAMES)))
    features[1, 0] = 2.0  # standardised: 1.0 -> hidden 1.0 -> logit 1.5
    features[1, 1] = -4.0  # standardised: -2.0, ReLU keeps it out of the classifier but not the distance
    probability, distance = gate_scores(features, spec)
    np.testing.assert_allclose(probability, [1 / (1 + np.exp(1.5)), 1 / (1 + np.exp(-1.5))])
    np.testing.assert_allclose(distance, [0.0, 0.5 * (1.0 + 4.0)])
    assert is_ct_like(features, spec).tolist() == [False, True]
    assert is_ct_like(features, hand_made_spec(distance_threshold=2.0)).tolist() == [False, False]
    assert is_ct_like(features, hand_made_spec(probability_threshold=0.1)).tolist() == [True, True]


def test_check_ct_like_raises_a_not_a_ct_slice_error_in_plain_words():
    refusing = hand_made_spec(probability_threshold=0.99)
    decoded = DecodedImage(image=ct_like_image(128), format="PNG")
    with pytest.raises(NotCTLikeError) as raised:
        check_ct_like(decoded, refusing)
    assert isinstance(raised.value, NotACTSliceError)  # so the adapters map it to 422
    assert raised.value.code == "not_ct_like"
    assert "CT slice of the chest" in raised.value.message and "DICOM" in raised.value.message
    check_ct_like(decoded, read_metadata(BUNDLED_MODEL).gate)  # the shipped gate lets it through


def test_a_gate_fitted_on_other_features_is_refused_at_load():
    fields = hand_made_spec().model_dump()
    with pytest.raises(ValueError, match="refit"):
        GateSpec.model_validate({**fields, "feature_names": [*FEATURE_NAMES[:-1], "something_else"]})
    with pytest.raises(ValueError, match="feature count"):
        GateSpec.model_validate({**fields, "mean": fields["mean"][:-1]})


def test_the_shipped_bundles_carry_a_gate_with_its_measured_rates():
    for bundle in sorted(BUNDLED_MODEL.parent.glob("*/model.json")):
        gate = read_metadata(bundle.parent).gate
        assert gate is not None, bundle
        assert gate.evaluation["held_out_ct"] and gate.evaluation["non_ct"]


def test_a_bundle_without_a_gate_is_served_as_before(tmp_path):
    from infrastructure.emulation import standin_bundle
    from lungscan.model.classifier import Classifier

    classifier = Classifier(standin_bundle(tmp_path / "legacy"))
    assert classifier.metadata.gate is None
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 256, (128, 128), dtype=np.uint8))
    assert classifier.classify(DecodedImage(image=noise, format="PNG")).label in classifier.metadata.classes


def test_publish_refuses_a_bundle_without_a_gate(s3, tmp_path, capsys):
    from lungscan.bundle.store import write_metadata

    bundle = evaluated_bundle(tmp_path / "gated", "v1")
    assert cli(s3, capsys, "publish", str(bundle))[0] == 0
    ungated = evaluated_bundle(tmp_path / "ungated", "v2", macro_f1=0.9)
    metadata = read_metadata(ungated)
    metadata.gate = None
    write_metadata(ungated, metadata)
    code, _, err = cli(s3, capsys, "publish", str(ungated))
    assert code == 1 and "no not-CT gate" in err and "python -m training gate" in err
    assert not any("/v2/" in key for key in keys(s3))
