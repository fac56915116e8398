"""The core package: decoding limits, preprocessing, bundles, the legacy model's meaning."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from helpers import build_bundle, ct_like_image, encode, hand_made_spec, metadata, tiny_cnn
from PIL import Image

from lungscan.bundle.metadata import PreprocessingSpec, ResizeSpec, served_differences
from lungscan.bundle.store import read_metadata, write_metadata
from lungscan.errors import InvalidBundleError, MalformedInputError, NotACTSliceError, PayloadTooLargeError
from lungscan.inputs.imaging import ImageLimits, decode_base64, decode_image
from lungscan.model.calibration import CalibrationSpec, apply_calibration
from lungscan.model.classifier import Classifier
from lungscan.model.conformal import ConformalSpec
from lungscan.model.transforms import build_preprocess, preprocess_image
from lungscan.uploads import UploadOptions, classify_upload


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    return build_bundle(tmp_path_factory.mktemp("bundle"))


def test_the_byte_limit_is_decided_before_decoding(tiny_bundle, monkeypatch):
    """classify_upload checks every file's size first, for one image and for each file of a study."""
    import lungscan.uploads

    classifier = Classifier(tiny_bundle)
    small, large = encode(ct_like_image(64)), encode(ct_like_image(256))
    limits = ImageLimits(max_bytes=len(large) - 1)
    monkeypatch.setattr(lungscan.uploads, "open_image", None)  # no header may be read
    monkeypatch.setattr(lungscan.uploads, "decode_image", None)
    for files, study in [([large], False), ([small, large], True)]:
        with pytest.raises(PayloadTooLargeError):
            classify_upload(classifier, files, UploadOptions(), study=study, limits=limits)


def test_base64_is_decoded_strictly():
    assert decode_base64("data:image/png;base64," + base64.b64encode(b"abc").decode()) == b"abc"
    with pytest.raises(MalformedInputError):
        decode_base64("@@@@")


def test_decompression_bomb_refused_before_pixels_are_allocated():
    huge = Image.new("L", (5000, 5000))
    data = encode(huge, "PNG", optimize=True)
    with pytest.raises(NotACTSliceError) as error:
        decode_image(data, ImageLimits(max_pixels=4000 * 4000))
    assert error.value.code == "too_many_pixels"


@pytest.mark.parametrize(
    ("size", "refused"), [((128, 32), False), ((32, 128), False), ((129, 32), True), ((32, 129), True)]
)
def test_the_aspect_limit_is_4_to_1_either_way(size, refused):
    """Exactly 4:1 is a slice (the datasets reach 2.6:1); anything longer, wide or tall, is refused from the header."""
    data = encode(Image.linear_gradient("L").resize(size))
    if not refused:
        assert decode_image(data).image.size == size
        return
    with pytest.raises(NotACTSliceError) as error:
        decode_image(data)
    assert error.value.code == "implausible_shape"


def test_sixteen_bit_images_are_stretched_to_full_range():
    pixels = (np.asarray(ct_like_image(64)).astype(np.uint16) * 4) + 1000  # values 1000..2020
    decoded = decode_image(encode(Image.fromarray(pixels)))
    array, _ = preprocess_image(
        decoded, build_preprocess({"colour": "grayscale", "resize": {"height": 64, "width": 64}})
    )
    assert array.min() == pytest.approx(0.0) and array.max() == pytest.approx(1.0)


def test_preprocessing_records_each_step_and_matches_the_model_input():
    decoded = decode_image(encode(ct_like_image(300, mode="RGBA")))
    chain = build_preprocess(metadata().preprocessing.model_dump())
    array, trace = preprocess_image(decoded, chain)
    assert array.shape == (32, 32, 1) and array.dtype == np.float32
    assert array.min() >= 0.0 and array.max() <= 1.0
    assert [step["name"] for step in trace["applied_operations"]] == ["ToColour", "Resize", "ScaleIntensity"]


def test_classifier_uses_the_same_preprocessing_as_training(tiny_bundle):
    """Training calls build_preprocess + preprocess_image; serving must produce the same array."""
    classifier = Classifier(tiny_bundle)
    decoded = decode_image(encode(ct_like_image(200, seed=9)))
    served, _ = classifier.prepare(decoded)
    trained, _ = preprocess_image(decoded, build_preprocess(read_metadata(tiny_bundle).preprocessing.model_dump()))
    np.testing.assert_array_equal(served, trained)
    # ...and the tf.function answers exactly what the Keras model answers.
    expected = classifier.runtime.model(served[np.newaxis], training=False).numpy()[0]
    np.testing.assert_allclose(classifier.predict_batch(served[np.newaxis])[0], expected, rtol=1e-5)


def test_bare_h5_keeps_the_original_apps_meaning(tmp_path):
    """No model.json: 64x64 RGB, x/255, one sigmoid output, below 0.5 = cancer."""
    model = tiny_cnn((64, 64, 3), 1, "sigmoid")
    model.layers[-1].set_weights([np.zeros((4, 1)), np.array([-2.0])])  # sigmoid(-2) = 0.12 -> cancer
    model.save(tmp_path / "model.h5")
    classifier = Classifier(tmp_path)
    assert classifier.input_shape == (64, 64, 3)
    prediction = classifier.classify(decode_image(encode(ct_like_image(128))))
    assert prediction.verdict == "Cancer Detected" and prediction.label == "cancer"
    assert prediction.probabilities["normal"] == pytest.approx(0.1192, abs=1e-3)
    model.layers[-1].set_weights([np.zeros((4, 1)), np.array([2.0])])
    model.save(tmp_path / "model.h5")
    assert Classifier(tmp_path).classify(decode_image(encode(ct_like_image(128)))).verdict == "No Cancer Detected"


def test_bundle_with_wrong_shapes_or_checksum_is_refused(tmp_path, tiny_bundle):
    (tmp_path / "model.h5").write_bytes((tiny_bundle / "model.h5").read_bytes())
    write_metadata(tmp_path, metadata(classes=["a", "b", "c", "d"], positive_classes=["d"]))
    with pytest.raises(InvalidBundleError, match="outputs"):
        Classifier(tmp_path)
    saved = json.loads((tiny_bundle / "model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps({**saved, "sha256": "0" * 64}))
    with pytest.raises(InvalidBundleError, match="sha256"):
        Classifier(tmp_path)
    (tmp_path / "model.h5").write_bytes(b"not hdf5")
    (tmp_path / "model.json").unlink()
    with pytest.raises(InvalidBundleError):
        Classifier(tmp_path)


def test_metadata_must_be_consistent():
    with pytest.raises(ValueError, match="positive_classes"):
        metadata(positive_classes=["cancer"])
    with pytest.raises(ValueError, match="resize"):
        metadata(preprocessing=PreprocessingSpec(colour="grayscale", resize=ResizeSpec(height=64, width=64)))


def test_a_calibration_spec_must_fit_the_bundle():
    bias = CalibrationSpec(family="class_bias", scale=[1, 1, 1], bias=[0.5, 0, -0.5])
    assert metadata(calibration=bias).calibration == bias
    with pytest.raises(ValueError, match="one scale and one bias per class"):
        metadata(calibration=bias.model_copy(update={"bias": [0, 0]}))
    with pytest.raises(ValueError, match="instead of a temperature"):  # never both: the served rescaling is one
        metadata(calibration=bias, temperature=2.0)
    with pytest.raises(ValueError, match="applies to a softmax output"):  # a sigmoid has no classes to rescale
        metadata(calibration=bias.model_copy(update={"scale": [1, 1], "bias": [0, 0]}), **SIGMOID)


SIGMOID = {"classes": ["cancer", "normal"], "positive_classes": ["cancer"], "output": "sigmoid"}


@pytest.mark.parametrize(
    "calibration",
    [
        {"family": "vector_scaling", "scale": [1, 1, "NaN"], "bias": [0, 0, 0]},
        {"family": "vector_scaling", "scale": [1, 1, 1], "bias": [0, 0, "-Infinity"]},
        {"family": "vector_scaling", "scale": [1, 1, 1e308], "bias": [0, 0, 0]},
        {"family": "class_bias", "scale": [1, 1, 1], "bias": [0, 0]},  # a list short of the classes
        {"family": "class_bias", "scale": [1, 1, 1], "bias": [0, 0, 0], "sigmoid": True},
        {"family": "platt", "scale": [1, 1, 1], "bias": [0, 0, 0]},
    ],
    ids=["nan", "inf", "huge", "short", "sigmoid", "unknown-family"],
)
def test_a_hostile_calibration_in_model_json_is_refused_at_load(tiny_bundle, tmp_path, calibration):
    (tmp_path / "model.h5").write_bytes((tiny_bundle / "model.h5").read_bytes())
    saved = json.loads((tiny_bundle / "model.json").read_text())
    if calibration.pop("sigmoid", False):
        saved |= SIGMOID
        calibration |= {"scale": [1, 1], "bias": [0, 0]}
    text = json.dumps({**saved, "calibration": calibration}).replace('"NaN"', "NaN").replace('"-Infinity"', "-Infinity")
    (tmp_path / "model.json").write_text(text)
    with pytest.raises(InvalidBundleError, match=r"not a valid model\.json"):
        read_metadata(tmp_path)


def test_a_preprocessing_step_this_version_does_not_know_is_refused_not_skipped(tiny_bundle, tmp_path):
    (tmp_path / "model.h5").write_bytes((tiny_bundle / "model.h5").read_bytes())
    saved = json.loads((tiny_bundle / "model.json").read_text())
    saved["preprocessing"]["lung_mask"] = True  # a step a later version might add
    (tmp_path / "model.json").write_text(json.dumps(saved))
    with pytest.raises(InvalidBundleError, match=r"not a valid model\.json"):
        read_metadata(tmp_path)


def test_served_differences_names_every_field_that_changes_the_answers():
    base = metadata(
        calibration=CalibrationSpec(family="class_bias", scale=[1, 1, 1], bias=[0.5, 0, -0.5]),
        conformal=ConformalSpec(coverage=0.9, thresholds={"normal": 0.5, "benign": 0.5, "malignant": 0.5}),
    )
    changed = {
        "classes": {"classes": ["benign", "normal", "malignant"]},
        "positive_classes": {"positive_classes": ["benign", "malignant"]},
        "threshold": {"threshold": 0.3},
        "temperature": {"temperature": 2.0, "calibration": None},
        "calibration": {"calibration": base.calibration.model_copy(update={"bias": [0.0, 0.0, 0.0]})},
        "input": {"input": base.input.model_copy(update={"dtype": "float16"})},
        "preprocessing": {"preprocessing": base.preprocessing.model_copy(update={"pad_to_square": True})},
        "gate": {"gate": hand_made_spec()},
        "conformal": {"conformal": base.conformal.model_copy(update={"thresholds": dict.fromkeys(base.classes, 0.6)})},
    }
    for field, update in changed.items():
        assert set(served_differences(base, base.model_copy(update=update))) == set(update), field
    sigmoid = metadata(**SIGMOID)
    assert set(served_differences(sigmoid, sigmoid.model_copy(update={"output": "softmax"}))) == {"output"}
    # what is only reported (metrics, dates, the model card's words) does not change the answers
    reported = {"created_at": "2026-11-29T00:00:00Z", "metrics": {"macro_f1": 0.9}, "dataset": {"name": "x"}}
    assert served_differences(base, base.model_copy(update=reported)) == []


def test_served_differences_ignore_how_a_part_was_fitted_and_float_noise_between_machines():
    gate = hand_made_spec()
    thresholds = {"normal": 0.5, "benign": 0.5, "malignant": 0.7138391}
    base = metadata(gate=gate, conformal=ConformalSpec(coverage=0.9, thresholds=thresholds))
    refitted = base.model_copy(
        update={
            "gate": gate.model_copy(update={"fitted_on": {"fitted_at": "later"}, "evaluation": {"non_ct": 0.97}}),
            "conformal": base.conformal.model_copy(
                update={
                    "thresholds": {**thresholds, "malignant": 0.7138391 + 3.4e-8},  # another machine's BLAS
                    "method": "reworded",
                    "calibration": {"n": 115},
                    "evaluation": {"test": {"coverage": 1.0}},
                }
            ),
        }
    )
    assert served_differences(base, refitted) == []
    moved = {"thresholds": {**thresholds, "malignant": 0.7139}}  # 6e-5: a real refit, answers can move
    assert served_differences(base, base.model_copy(update={"conformal": base.conformal.model_copy(update=moved)})) == [
        "conformal"
    ]
    nudged_gate = gate.model_copy(update={"output_bias": gate.output_bias + 1e-3})
    assert served_differences(base, base.model_copy(update={"gate": nudged_gate})) == ["gate"]


def test_the_served_probabilities_carry_the_bundles_calibration(tiny_bundle):
    classifier = Classifier(tiny_bundle)
    batch = np.random.default_rng(0).random((4, 32, 32, 1), dtype=np.float32)
    plain = classifier.predict_batch(batch)
    target = int(plain.mean(axis=0).argmin())  # the class the random model favours least
    bias = [40.0 if k == target else -20.0 for k in range(3)]
    towards_target = CalibrationSpec(family="class_bias", scale=[1, 1, 1], bias=bias)
    classifier.metadata.calibration = towards_target
    try:
        served = classifier.predict_batch(batch)
    finally:
        classifier.metadata.calibration = None
    np.testing.assert_allclose(served, apply_calibration(plain, towards_target), atol=1e-9)
    assert (served.argmax(axis=1) == target).all() and (plain.argmax(axis=1) != target).any()  # the label moves
    assert {classifier.interpret(row).label for row in served} == {classifier.metadata.classes[target]}


def test_temperature_softens_probabilities_without_changing_the_label(tiny_bundle, tmp_path):
    classifier = Classifier(tiny_bundle)
    batch = np.random.default_rng(0).random((4, 32, 32, 1), dtype=np.float32)
    plain = classifier.predict_batch(batch)
    classifier.metadata.temperature = 3.0
    softened = classifier.predict_batch(batch)
    np.testing.assert_array_equal(plain.argmax(axis=1), softened.argmax(axis=1))
    assert (softened.max(axis=1) <= plain.max(axis=1) + 1e-9).all()
    np.testing.assert_allclose(softened.sum(axis=1), 1.0)


def test_cropping_to_the_body_needs_no_scipy():
    """The crop finds the body in numpy (lungscan.model.regions): serving never imports scipy (~0.2 s of cold start)."""
    import subprocess
    import sys

    config = {"colour": "grayscale", "crop_to_body": True, "resize": {"height": 8, "width": 8}}
    code = (
        "import sys; from PIL import Image; from lungscan.inputs.imaging import DecodedImage; "
        "from lungscan.model.transforms import build_preprocess, preprocess_image; "
        "image = Image.new('L', (64, 48)); image.paste(200, (10, 8, 40, 30)); "
        f"_, trace = preprocess_image(DecodedImage(image=image, format='PNG'), build_preprocess({config!r})); "
        "print(trace['view'], any(name.split('.')[0] == 'scipy' for name in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "(8, 2, 41, 35) False"  # the block, smoothed and made square (as with scipy)


def test_edit_metadata_replaces_a_section_an_older_version_wrote_in_another_shape(tmp_path):
    from lungscan.bundle.store import edit_metadata

    bundle = build_bundle(tmp_path / "b")
    recorded = json.loads((bundle / "model.json").read_text())
    recorded["gate"] = {"features_version": 0, "weights": "a shape no version reads"}
    (bundle / "model.json").write_text(json.dumps(recorded))
    with pytest.raises(InvalidBundleError):
        read_metadata(bundle)  # as it is, the old section is refused
    with edit_metadata(bundle, replacing="gate") as edited:
        assert edited.gate is None
        edited.version = "v2"
    assert read_metadata(bundle).version == "v2"
    (bundle / "model.h5").write_bytes(b"another model")
    with pytest.raises(InvalidBundleError, match="sha256"), edit_metadata(bundle, replacing="gate"):
        pass  # still checked against the model.h5 beside it
