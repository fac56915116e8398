"""The runtime twin (model.onnx): derived from model.h5, served by onnxruntime without TensorFlow,
giving the same probabilities and Grad-CAM as Keras; a bundle without one is still served by Keras."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from helpers import BUNDLED_MODEL, FIXTURES_DIR, MODEL_BUCKET, REPO_ROOT, build_bundle, tiny_cnn
from PIL import Image

from infrastructure.emulation import with_function_path
from lungscan.bundle.files import SMOKE_FILE, TWIN_FILE
from lungscan.bundle.metadata import CAM_WEIGHTS, FEATURES, BundleMetadata, InputSpec, PreprocessingSpec, ResizeSpec
from lungscan.bundle.smoke import smoke_inputs
from lungscan.bundle.store import read_metadata, write_metadata
from lungscan.errors import InvalidBundleError
from lungscan.inputs.imaging import DecodedImage
from lungscan.model.classifier import Classifier
from lungscan.model.explain import gradcam_from_weights
from lungscan.registry import bundles as registry
from lungscan.registry import keys as registry_keys
from lungscan.uploads import decode_upload
from training.cli import EXIT_FAILED, main
from training.release.twin import (
    PROBABILITY_TOLERANCE,
    TwinUnsupportedError,
    derive_twin,
    explained_head,
    has_current_twin,
)

SHIPPED = [BUNDLED_MODEL, REPO_ROOT / "models" / "chest-ct-4class"]
FIXTURES = sorted(p for p in FIXTURES_DIR.iterdir() if p.suffix in (".png", ".jpg"))


def quiet(_message: str) -> None:
    pass


def bundle_with(model: keras.Model, path, **overrides):
    return build_bundle(path, model=model, **overrides)


# ---------------------------------------------------------------- the shipped bundles


@pytest.mark.parametrize("bundle", SHIPPED, ids=lambda p: p.name)
def test_shipped_bundles_carry_a_verified_twin_that_matches_keras(bundle):
    """Same labels and probabilities within 1e-5 on the smoke set and on every fixture; same Grad-CAM."""
    meta = read_metadata(bundle)
    assert meta.twin is not None and meta.twin.source_sha256 == meta.sha256
    assert has_current_twin(bundle)
    assert meta.twin.parity.max_abs_diff <= PROBABILITY_TOLERANCE and meta.twin.parity.labels_equal
    twin, reference = Classifier(bundle), Classifier(bundle, runtime="keras")
    assert (twin.runtime.name, reference.runtime.name) == ("onnxruntime", "keras")
    with np.load(bundle / SMOKE_FILE) as smoke:
        inputs = smoke_inputs(smoke)
    fixtures = np.stack([twin.prepare(decode_upload(path.read_bytes()))[0] for path in FIXTURES])
    for batch in (inputs, fixtures):
        served, expected = twin.predict_batch(batch), reference.predict_batch(batch)
        assert np.abs(served - expected).max() <= PROBABILITY_TOLERANCE
        assert (served.argmax(axis=1) == expected.argmax(axis=1)).all()
    model = reference.runtime.model
    head = explained_head(model)
    head_input = keras.Model(model.inputs, head.denses[0].input)
    for array in fixtures:
        maps, _ = twin.runtime.session.run([FEATURES, CAM_WEIGHTS], {twin.runtime.input_name: array[np.newaxis]})
        inputs = np.asarray(head_input(array[np.newaxis]))[0]
        for class_index in range(len(meta.classes)):
            cam = twin.gradcam(array, class_index)
            expected = exact_map(maps[0], inputs, head, class_index)
            np.testing.assert_allclose(cam, expected, atol=1e-5)
            # TensorFlow's float32 gradient itself is off by up to ~2e-3 for a class with p near 1.
            np.testing.assert_allclose(cam, reference.gradcam(array, class_index), atol=1e-2)


def exact_map(maps: np.ndarray, inputs: np.ndarray, head, class_index: int) -> np.ndarray:
    """The explanation in float64, by finite differences of the head itself (the heads' softmax outputs
    averaged), no formula shared: Grad-CAM for a pooling head, gradient x input for a flattening one."""
    maps = np.float64(maps)
    weights = [[np.float64(w) for w in dense.get_weights()] for dense in head.denses]

    def probability(batch):  # (n, inputs) -> (n,) averaged softmax probability of the class
        result = 0.0
        for kernel, bias in weights:
            logits = batch @ kernel + bias
            exp = np.exp(logits - logits.max(axis=1, keepdims=True))
            result = result + exp[:, class_index] / exp.sum(axis=1)
        return result / len(weights)

    rows = maps.size if head.pool == "flatten" else maps.shape[-1]
    step = 1e-6
    shifts = np.zeros((rows, len(inputs)))
    shifts[np.arange(rows), np.arange(rows)] = step
    gradient = (probability(inputs + shifts) - probability(inputs - shifts)) / (2 * step)
    if head.pool == "flatten":
        cam = np.maximum((maps * gradient.reshape(maps.shape)).sum(axis=-1), 0.0)
    else:  # d p / d A[i, j, k] is the same at every (i, j)
        cam = np.maximum(maps @ (gradient / (maps.shape[0] * maps.shape[1])), 0.0)
    return cam / (cam.max() + 1e-8)


@pytest.mark.parametrize("bundle", SHIPPED, ids=lambda p: p.name)
def test_the_function_answers_without_ever_importing_tensorflow(bundle):
    """A cold function process (app import = init phase) answers a prediction with a heatmap; no TF loaded."""
    script = textwrap.dedent(
        f"""
        import base64, json, sys
        import app
        from infrastructure.emulation import LambdaContext, proxy_event

        image = base64.b64encode(open({str(FIXTURES[0])!r}, "rb").read()).decode()
        event = proxy_event("POST", "/predict", body=json.dumps({{"image": image, "explain": True}}),
                            headers={{"Content-Type": "application/json"}})
        response = app.lambda_handler(event, LambdaContext("cold"))
        body = json.loads(response["body"])
        print(json.dumps({{"status": response["statusCode"], "heatmap": bool(body.get("heatmap")),
                          "set": body.get("prediction_set", [None])[0] == body.get("label"),
                          "uncertain": isinstance(body.get("uncertain"), bool),
                          "tensorflow": "tensorflow" in sys.modules, "keras": "keras" in sys.modules}}))
        """
    )
    env = with_function_path(  # PYTHONPATH: the repository root and functions/classifier (import app)
        {
            **os.environ,
            "MODEL_DIR": str(bundle),
            "MODEL_NAME": read_metadata(bundle).name,
            "POWERTOOLS_TRACE_DISABLED": "1",
            "POWERTOOLS_METRICS_NAMESPACE": "LungScan",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    env.pop("MODEL_BUCKET", None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {
        "status": 200,
        "heatmap": True,
        "set": True,
        "uncertain": True,
        "tensorflow": False,
        "keras": False,
    }


# ---------------------------------------------------------------- deriving, choosing, refusing


@pytest.fixture(scope="module")
def twin_bundle(tmp_path_factory):
    """A tiny softmax bundle (no smoke set: parity on seeded random inputs) with a derived twin."""
    keras.utils.set_random_seed(3)
    bundle = bundle_with(tiny_cnn((32, 32, 1), 3, "softmax"), tmp_path_factory.mktemp("twin"))
    derive_twin(bundle, out=quiet)
    return bundle


def test_derive_twin_records_sha256_opset_and_parity(twin_bundle):
    meta = read_metadata(twin_bundle)
    assert meta.twin.file == TWIN_FILE and (twin_bundle / TWIN_FILE).is_file()
    assert meta.twin.opset == 17 and meta.twin.converter.startswith("tf2onnx")
    assert meta.twin.parity.n == 16 and "random" in meta.twin.parity.on
    assert meta.twin.parity.max_abs_diff <= PROBABILITY_TOLERANCE
    assert meta.twin.parity.gradcam_max_abs_diff <= 1e-4
    classifier = Classifier(twin_bundle)
    assert classifier.runtime.name == "onnxruntime"
    batch = np.random.default_rng(5).uniform(0, 1, (4, 32, 32, 1)).astype(np.float32)
    np.testing.assert_allclose(
        classifier.predict_batch(batch), Classifier(twin_bundle, runtime="keras").predict_batch(batch), atol=1e-6
    )


def test_a_sigmoid_model_gets_a_twin_with_both_classes_explained(tmp_path):
    bundle = bundle_with(
        tiny_cnn((32, 32, 1), 1, "sigmoid"),
        tmp_path / "sigmoid",
        classes=["cancer", "normal"],
        positive_classes=["cancer"],
        output="sigmoid",
    )
    twin = derive_twin(bundle, out=quiet)  # refuses unless Grad-CAM of both classes matches Keras
    assert twin.parity.gradcam_max_abs_diff <= 1e-4
    classifier = Classifier(bundle)
    assert classifier.runtime.name == "onnxruntime"
    assert classifier.predict_batch(np.zeros((2, 32, 32, 1), np.float32)).shape == (2, 2)


def test_a_bare_h5_or_a_bundle_without_twin_is_served_by_keras(tmp_path, twin_bundle):
    bare = tmp_path / "bare"
    bare.mkdir()
    tiny_cnn((64, 64, 3), 1, "sigmoid").save(bare / "model.h5")
    assert Classifier(bare).runtime.name == "keras"
    plain = bundle_with(tiny_cnn((32, 32, 1), 3, "softmax"), tmp_path / "plain")
    assert Classifier(plain).runtime.name == "keras"


def test_a_stale_or_missing_twin_falls_back_to_keras_and_a_corrupt_one_is_refused(tmp_path, twin_bundle):
    import shutil

    stale = shutil.copytree(twin_bundle, tmp_path / "stale")
    meta = read_metadata(stale)
    tiny_cnn((32, 32, 1), 3, "softmax").save(stale / "model.h5")  # retrained in place; twin is of the old one
    write_metadata(stale, meta)
    assert not has_current_twin(stale)
    assert Classifier(stale).runtime.name == "keras"

    missing = shutil.copytree(twin_bundle, tmp_path / "missing")
    (missing / TWIN_FILE).unlink()
    assert Classifier(missing).runtime.name == "keras"

    corrupt = shutil.copytree(twin_bundle, tmp_path / "corrupt")
    (corrupt / TWIN_FILE).write_bytes((corrupt / TWIN_FILE).read_bytes()[:-10] + b"0123456789")
    with pytest.raises(InvalidBundleError, match="sha256"):
        Classifier(corrupt)


def test_a_head_the_twin_cannot_explain_gets_no_twin(tmp_path):
    model = keras.Sequential(
        [
            keras.Input((32, 32, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.GlobalMaxPooling2D(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    bundle = bundle_with(model, tmp_path / "max")
    before = (bundle / "model.json").read_text()
    with pytest.raises(TwinUnsupportedError, match="GlobalMaxPooling2D"):
        derive_twin(bundle, out=quiet)
    assert not (bundle / TWIN_FILE).exists() and (bundle / "model.json").read_text() == before
    assert not list(bundle.glob(".model-*"))  # no scratch file left behind


def test_twin_command(tmp_path, capsys):
    bundle = bundle_with(tiny_cnn((32, 32, 1), 3, "softmax"), tmp_path / "cli")
    assert main(["twin", str(bundle)]) == 0
    assert "model.onnx: opset 17" in capsys.readouterr().out
    assert has_current_twin(bundle)
    bare = tmp_path / "bare"
    bare.mkdir()
    tiny_cnn((64, 64, 3), 1, "sigmoid").save(bare / "model.h5")
    assert main(["twin", str(bare)]) == EXIT_FAILED
    assert capsys.readouterr().err.startswith("error: ")


def test_the_registry_verifies_the_twin_it_serves(s3, twin_bundle, tmp_path):
    meta = registry.publish_bundle(s3, MODEL_BUCKET, twin_bundle)
    key = f"{registry_keys.version_prefix(meta.name, meta.version)}/{TWIN_FILE}"
    local = registry.download_bundle(s3, MODEL_BUCKET, meta.name, meta.version, tmp_path / "ok")
    assert Classifier(local).runtime.name == "onnxruntime"
    s3.put_object(Bucket=MODEL_BUCKET, Key=key, Body=b"not the twin")
    with pytest.raises(InvalidBundleError, match=r"model\.onnx"):
        registry.verify_published(s3, MODEL_BUCKET, meta.name, meta.version)
    with pytest.raises(InvalidBundleError, match=r"model\.onnx"):
        registry.download_bundle(s3, MODEL_BUCKET, meta.name, meta.version, tmp_path / "bad")
    assert not (tmp_path / "bad" / meta.name / meta.version).exists()


def test_a_cached_copy_from_before_the_twin_is_downloaded_again(s3, twin_bundle, tmp_path):
    meta = registry.publish_bundle(s3, MODEL_BUCKET, twin_bundle)
    cached = tmp_path / "cache" / meta.name / meta.version
    cached.mkdir(parents=True)
    (cached / "model.h5").write_bytes((twin_bundle / "model.h5").read_bytes())
    without_twin = json.loads((twin_bundle / "model.json").read_text())
    del without_twin["twin"]
    (cached / "model.json").write_text(json.dumps(without_twin))
    assert Classifier(cached).runtime.name == "keras"
    local = registry.download_bundle(s3, MODEL_BUCKET, meta.name, meta.version, tmp_path / "cache")
    assert local == cached and Classifier(local).runtime.name == "onnxruntime"


# ---------------------------------------------------------------- Grad-CAM follows the evidence, not the brightness

SIZE, PATCH, SQUARE = 32, 6, 8


def scene(rng) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """Dim noise, a bright 8x8 square (in every image, whatever the class: not evidence) and, in the
    other half, a dimmer 6x6 checkerboard: the only thing that makes the class "pattern"."""
    image = rng.uniform(0.0, 0.2, (SIZE, SIZE)).astype(np.float32)
    top = bool(rng.integers(0, 2))
    row = int(rng.integers(1, SIZE // 2 - SQUARE)) + (0 if top else SIZE // 2)
    col = int(rng.integers(1, SIZE - SQUARE - 1))
    image[row : row + SQUARE, col : col + SQUARE] = 1.0
    square = (row + SQUARE / 2 - 0.5, col + SQUARE / 2 - 0.5)
    row = int(rng.integers(2, SIZE // 2 - PATCH - 1)) + (SIZE // 2 if top else 0)
    col = int(rng.integers(2, SIZE - PATCH - 2))
    rows, cols = np.indices((PATCH, PATCH))
    image[row : row + PATCH, col : col + PATCH] = np.where((rows + cols) % 2 == 0, 0.55, 0.25)
    return image, (row + PATCH / 2 - 0.5, col + PATCH / 2 - 0.5), square


@pytest.fixture(scope="module")
def evidence_bundle(tmp_path_factory):
    """A hand-built conv -> GAP -> Dropout -> Dense model: channel 0 detects the checkerboard (zero on flat
    areas, however bright), channel 1 measures brightness (3x stronger activations, on the square) and
    weighs slightly against "pattern"."""
    inputs = keras.Input((SIZE, SIZE, 1))
    features = keras.layers.Conv2D(2, 3, padding="same", activation="relu", name="last_conv")(inputs)
    pooled = keras.layers.Dropout(0.2)(keras.layers.GlobalAveragePooling2D()(features))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(pooled))
    checker = np.array([[1, -1, 1], [-1, 1, -1], [1, -1, 1]], np.float32) * 5
    brightness = np.ones((3, 3), np.float32)
    model.layers[1].set_weights([np.stack([checker, brightness], -1)[:, :, None, :], np.array([-5.0, 0.0], np.float32)])
    model.layers[-1].set_weights([np.array([[-60, 60], [0.2, -0.2]], np.float32), np.array([1.15, -1.15], np.float32)])
    bundle = tmp_path_factory.mktemp("evidence")
    model.save(bundle / "model.h5")
    write_metadata(
        bundle,
        BundleMetadata(
            name="evidence",
            version="v1",
            classes=["plain", "pattern"],
            positive_classes=["pattern"],
            input=InputSpec(height=SIZE, width=SIZE, channels=1, colour="grayscale"),
            preprocessing=PreprocessingSpec(colour="grayscale", resize=ResizeSpec(height=SIZE, width=SIZE)),
        ),
    )
    derive_twin(bundle, out=quiet)
    return bundle


def near(cam: np.ndarray, centre: tuple[float, float], radius: float) -> bool:
    peak = np.unravel_index(np.argmax(cam), cam.shape)
    return cam.max() > 0 and np.hypot(peak[0] - centre[0], peak[1] - centre[1]) <= radius


def test_heatmap_marks_the_evidence_not_the_brightest_thing(evidence_bundle):
    classifier = Classifier(evidence_bundle)
    assert classifier.runtime.name == "onnxruntime"
    pattern = classifier.metadata.classes.index("pattern")
    rng = np.random.default_rng(11)
    on_evidence = unweighted_on_evidence = inverted_on_evidence = on_square_unweighted = 0
    for _ in range(10):
        image, evidence, square = scene(rng)
        decoded = DecodedImage(image=Image.fromarray(np.uint8(image * 255)), format="PNG")
        prediction = classifier.classify(decoded, explain=True)
        assert prediction.label == "pattern" and prediction.heatmap is not None
        array, _ = classifier.prepare(decoded)
        on_evidence += near(classifier.gradcam(array, pattern), evidence, 3)
        # The same feature maps, explained wrongly, must not pass the same check: the test can tell.
        session = classifier.runtime.session
        maps, weights = session.run([FEATURES, CAM_WEIGHTS], {classifier.runtime.input_name: array[np.newaxis]})
        unweighted = gradcam_from_weights(maps[0], np.ones_like(weights[0, pattern]))
        unweighted_on_evidence += near(unweighted, evidence, 3)
        on_square_unweighted += near(unweighted, square, SQUARE / 2 + 1)
        inverted_on_evidence += near(gradcam_from_weights(maps[0], -weights[0, pattern]), evidence, 3)
    assert on_evidence >= 9, f"the heatmap marked the checkerboard in only {on_evidence}/10 scenes"
    assert unweighted_on_evidence <= 1 and on_square_unweighted >= 9  # brightness, not evidence
    assert inverted_on_evidence <= 1


def test_a_plain_scene_is_plain(evidence_bundle):
    """The hand-built model is a real classifier: no checkerboard, no "pattern"."""
    classifier = Classifier(evidence_bundle)
    rng = np.random.default_rng(12)
    for _ in range(5):
        image, (row, col), _ = scene(rng)
        image[int(row - 2.5) : int(row + 3.5), int(col - 2.5) : int(col + 3.5)] = 0.4  # flat patch instead
        decoded = DecodedImage(image=Image.fromarray(np.uint8(image * 255)), format="PNG")
        assert classifier.classify(decoded).label == "plain"


def test_the_image_bakes_the_twin_beside_model_h5():
    """The Dockerfile copies the baked bundle's model.onnx, and every file it copies exists."""
    lines = (REPO_ROOT / "functions" / "classifier" / "Dockerfile").read_text().splitlines()
    sources = [source for line in lines if line.startswith("COPY ") for source in line.split()[1:-1]]
    assert {"models/malignancy-screen/model.onnx", "models/malignancy-screen/model.h5"} <= set(sources)  # the default
    assert all(list(REPO_ROOT.glob(source)) for source in sources)  # a COPY may name a glob
    assert "onnxruntime==" in (REPO_ROOT / "functions" / "classifier" / "requirements.txt").read_text()


# ---------------------------------------------------------------- fold ensembles and per-cell linear heads


def hand_built(kind: str) -> keras.Model:
    """Random-weight models with the heads the shipped bundles use: several softmax heads averaged (on pooled
    or flattened maps) and a flattened map concatenated with other features (the HOG bundles' histogram)."""
    keras.utils.set_random_seed(7)
    inputs = keras.Input((16, 16, 1))
    features = keras.layers.Conv2D(3, 3, strides=2, padding="same", activation="relu", name="last_conv")(inputs)
    if kind == "ensemble-gap":
        pooled = keras.layers.GlobalAveragePooling2D()(features)
    else:
        pooled = keras.layers.Flatten()(features)
    if kind == "flatten-concat":
        other = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 1, name="other")(inputs))
        pooled = keras.layers.Dropout(0.2)(keras.layers.Concatenate()([pooled, other]))
        return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(pooled))
    heads = [keras.layers.Dense(3, activation="softmax", name=f"member{m}")(pooled) for m in range(3)]
    return keras.Model(inputs, keras.layers.Average()(heads))


@pytest.mark.parametrize("kind", ["ensemble-gap", "ensemble-flatten", "flatten-concat"])
def test_ensembles_and_per_cell_heads_get_a_twin_with_the_exact_explanation(tmp_path, kind):
    model = hand_built(kind)
    for layer in model.layers:  # weights large enough that the classes and the cells differ clearly
        if isinstance(layer, keras.layers.Dense):
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel * 8, bias])
    bundle = bundle_with(
        model,
        tmp_path / kind,
        input=InputSpec(height=16, width=16, channels=1, colour="grayscale"),
        preprocessing=PreprocessingSpec(colour="grayscale", resize=ResizeSpec(height=16, width=16)),
    )
    twin = derive_twin(bundle, out=quiet)
    assert twin.explain == ("gradcam-gap-dense" if kind == "ensemble-gap" else "gradient-input-flatten-dense")
    classifier = Classifier(bundle)
    assert classifier.runtime.name == "onnxruntime"
    keras_model = Classifier(bundle, runtime="keras").runtime.model
    head = explained_head(keras_model)
    head_input = keras.Model(keras_model.inputs, head.denses[0].input)
    for array in np.random.default_rng(8).uniform(0, 1, (3, 16, 16, 1)).astype(np.float32):
        maps, _ = classifier.runtime.session.run([FEATURES, CAM_WEIGHTS], {classifier.runtime.input_name: array[None]})
        inputs = np.asarray(head_input(array[None]))[0]
        for class_index in range(3):
            expected = exact_map(maps[0], inputs, head, class_index)
            np.testing.assert_allclose(classifier.gradcam(array, class_index), expected, atol=1e-5)


def test_a_per_cell_head_is_explained_where_its_weights_count(tmp_path):
    """A checkerboard counts as "pattern" only in the left half (zero weight on the right). A scene with a
    faint checkerboard left and a strong one right is "pattern" because of the left one: the map must mark
    it; Grad-CAM's spatial mean of the same weights marks the stronger, irrelevant one on the right."""
    inputs = keras.Input((SIZE, SIZE, 1))
    features = keras.layers.Conv2D(1, 3, padding="same", activation="relu", name="last_conv")(inputs)
    flat = keras.layers.Dropout(0.2)(keras.layers.Flatten()(features))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(flat))
    checker = np.array([[1, -1, 1], [-1, 1, -1], [1, -1, 1]], np.float32) * 5
    model.layers[1].set_weights([checker[:, :, None, None], np.array([-0.5], np.float32)])
    left = (np.arange(SIZE)[None, :] < SIZE // 2).repeat(SIZE, axis=0).reshape(-1)  # flattened (row, col)
    kernel = np.zeros((SIZE * SIZE, 2), np.float32)
    kernel[left] = np.array([-1.0, 1.0]) * 0.02  # small: a saturated softmax has no gradient to show
    model.layers[-1].set_weights([kernel, np.array([0.5, -0.5], np.float32)])
    bundle = bundle_with(model, tmp_path / "cells", classes=["plain", "pattern"], positive_classes=["pattern"])
    derive_twin(bundle, out=quiet)
    classifier = Classifier(bundle)
    rows, cols = np.indices((PATCH, PATCH))
    board = (rows + cols) % 2 == 0
    marked = blurred = 0
    for top in range(4, 20, 4):
        image = np.full((SIZE, SIZE), 0.1, np.float32)
        image[top : top + PATCH, 4 : 4 + PATCH] = np.where(board, 0.45, 0.25)  # faint, counts
        image[top : top + PATCH, 22 : 22 + PATCH] = np.where(board, 0.95, 0.05)  # strong, zero weight
        array = image[:, :, None]
        assert classifier.predict_batch(array[None])[0].argmax() == 1
        centre_left, centre_right = (top + PATCH / 2 - 0.5, 4 + PATCH / 2 - 0.5), (top + PATCH / 2 - 0.5, 24.5)
        marked += near(classifier.gradcam(array, 1), centre_left, 3)
        maps, weights = classifier.runtime.session.run(
            [FEATURES, CAM_WEIGHTS], {classifier.runtime.input_name: array[None]}
        )
        blurred += near(gradcam_from_weights(maps[0], weights[0, 1].mean(axis=(0, 1))), centre_right, 3)
    assert marked == 4 and blurred == 4
