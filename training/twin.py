"""``python -m training twin BUNDLE``: derive ``model.onnx``, the runtime twin of ``model.h5``.

The function serves the twin with onnxruntime and never imports TensorFlow for it (a cold
start of ~0.8 s instead of ~7 s); ``model.h5`` stays the artifact of record.

The twin graph (tf2onnx, ONNX opset 17) has one input and three outputs:

- ``probabilities``: the model's own output, as ``model.h5`` gives it;
- ``features``: the last 4D activations A (N, h, w, K), the layer Grad-CAM explains;
- ``cam_weights``: Grad-CAM's channel weights for every class (N, classes, K).

The weights are exact, without differentiating anything at serving time: the models end in
``GlobalAveragePooling2D -> Dropout -> Dense(softmax)``, so with g = mean over (h, w) of A,
z = W^T g + b and p = softmax(z),

    d p_c / d A[i, j, k] = (1 / hw) * p_c * (W[k, c] - sum_j p_j W[k, j])
                         = (1 / hw) * p_c * sum_j p_j (W[k, c] - W[k, j])      (sum_j p_j = 1)

which is the same at every (i, j): its spatial mean, Grad-CAM's weight, is that expression.
The graph uses the second form: when p_c is near 1 the first cancels in float32 (TensorFlow's
own gradient, which does, is off by up to ~2e-3 on a [0, 1] map then), the second does not.
For one sigmoid output p (class 1; class 0 scores 1 - p) it is +-(1 / hw) p (1 - p) W[k, 0].
Any other head is refused (:class:`TwinUnsupportedError`): that bundle is served by Keras.

Parity is measured before anything is written: on the bundle's smoke set (held-out inputs,
``report/smoke.npz``; seeded random inputs when there is none) the served probabilities of the
twin and of Keras must agree within 1e-5 with the same labels, and the Grad-CAM maps of every
class within 1e-2 (see GRADCAM_TOLERANCE). Then ``model.onnx`` is written and ``model.json``
gains ``twin`` (sha256, opset, converter, parity figures).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from lungscan.bundle import METADATA_FILE, file_sha256, read_metadata, write_metadata
from lungscan.errors import InvalidBundleError, LungScanError
from lungscan.runtime import CAM_WEIGHTS, FEATURES, PROBABILITIES, TWIN_FILE, OnnxRuntime, TwinParity, TwinSpec

OPSET = 17
PROBABILITY_TOLERANCE = 1e-5  # max |served probability difference|, twin vs Keras
# max |Grad-CAM map difference| (maps in [0, 1]) from TensorFlow's: its float32 gradient is itself off by up to
# ~2e-3 for a class with p near 1 (see above); a wrong derivation (sign, weighting) differs by 0.1 or more.
GRADCAM_TOLERANCE = 1e-2
GRADCAM_CHECKED_INPUTS = 6  # Grad-CAM is compared on this many parity inputs, every class
RANDOM_INPUTS = 16  # parity inputs when the bundle has no smoke set


class TwinUnsupportedError(LungScanError):
    """The model's head is not one whose Grad-CAM the twin can reproduce: serve it with Keras."""

    code = "twin_unsupported"


def add_arguments(parser) -> None:
    parser.add_argument("bundle", type=Path, help="bundle folder (model.h5, model.json)")


def has_current_twin(bundle_dir: Path | str) -> bool:
    """True when model.json declares a twin of the model.h5 beside it, and the file matches."""
    from lungscan.runtime import verify_twin

    metadata = read_metadata(Path(bundle_dir))
    if metadata.twin is None or metadata.twin.source_sha256 != metadata.sha256:
        return False
    try:
        verify_twin(Path(bundle_dir), metadata.twin)
    except InvalidBundleError:
        return False
    return True


def explained_head(model):
    """(index of the feature layer among the non-input layers, the Dense layer) of a GAP -> Dropout* -> Dense model.

    Raises:
        TwinUnsupportedError: another head (its Grad-CAM weights would not be exact).
    """
    import keras

    from lungscan.explain import last_conv_layer_index

    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    feature_index = last_conv_layer_index(layers)
    head = layers[feature_index + 1 :]
    kinds = [type(layer).__name__ for layer in head]
    supported = (
        len(head) >= 2
        and isinstance(head[0], keras.layers.GlobalAveragePooling2D)
        and not head[0].keepdims
        and all(isinstance(layer, keras.layers.Dropout) for layer in head[1:-1])
        and isinstance(head[-1], keras.layers.Dense)
        and head[-1].activation.__name__ in ("softmax", "sigmoid")
    )
    if not supported:
        raise TwinUnsupportedError(
            f"the model's head after its last feature maps is {' -> '.join(kinds) or 'empty'}; a twin needs "
            "GlobalAveragePooling2D -> Dropout* -> Dense(softmax|sigmoid) to reproduce Grad-CAM exactly"
        )
    return feature_index, head[-1]


def twin_function(model, sigmoid_output: bool):
    """A ``tf.function``: image batch -> {probabilities, features, cam_weights} (see the module docstring)."""
    import tensorflow as tf

    from lungscan.explain import gradient_model

    _, dense = explained_head(model)
    grad_model = gradient_model(model)
    input_shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    kernel_values = np.asarray(dense.kernel, np.float32)  # (K, outputs)
    features_k, classes = kernel_values.shape
    difference_values = (kernel_values.T[None, :, :] - kernel_values.T[:, None, :]).reshape(classes, -1)
    _, height, width, _ = grad_model.outputs[0].shape
    spatial = float(height * width)

    @tf.function(input_signature=[tf.TensorSpec((None, *input_shape), tf.float32, name="image")])
    def twin(batch):
        features, probabilities = grad_model(batch, training=False)
        kernel = tf.constant(kernel_values)  # a constant in the graph (a captured tensor would become an input)
        if sigmoid_output:
            slope = probabilities[:, :1] * (1.0 - probabilities[:, :1]) * tf.transpose(kernel) / spatial  # (N, K)
            cam_weights = tf.stack([-slope, slope], axis=1)
        else:
            # differences[j, c * K + k] = W[k, c] - W[k, j]; p @ differences = sum_j p_j (W[k, c] - W[k, j])
            differences = tf.constant(difference_values)
            spread = tf.reshape(tf.matmul(probabilities, differences), (-1, classes, features_k))
            cam_weights = probabilities[:, :, None] * spread / spatial  # (N, classes, K)
        return {
            PROBABILITIES: tf.identity(probabilities),
            FEATURES: tf.identity(features),
            CAM_WEIGHTS: tf.identity(cam_weights),
        }

    return twin


def parity_inputs(bundle_dir: Path, input_shape: tuple[int, ...]) -> tuple[np.ndarray, str]:
    """The smoke set's held-out inputs, or seeded random ones when the bundle has none."""
    from training.evaluate import SMOKE_FILE, smoke_inputs

    path = bundle_dir / SMOKE_FILE
    if path.is_file():
        with np.load(path, allow_pickle=False) as smoke:
            inputs = smoke_inputs(smoke)
        return inputs, f"{SMOKE_FILE} ({len(inputs)} held-out test inputs)"
    rng = np.random.default_rng(0)
    inputs = rng.uniform(0.0, 1.0, (RANDOM_INPUTS, *input_shape)).astype(np.float32)
    return inputs, f"{RANDOM_INPUTS} seeded uniform random inputs (the bundle has no smoke set)"


def measure_parity(keras_classifier, twin_runtime: OnnxRuntime, inputs: np.ndarray, on: str) -> TwinParity:
    expected = keras_classifier.predict_batch(inputs)
    actual = keras_classifier.probabilities_from(twin_runtime.forward(inputs))
    cam_drift = 0.0
    for array in inputs[:GRADCAM_CHECKED_INPUTS]:
        for class_index in range(len(keras_classifier.metadata.classes)):
            reference = keras_classifier.gradcam(array, class_index)
            cam_drift = max(cam_drift, float(np.abs(twin_runtime.gradcam(array, class_index) - reference).max()))
    return TwinParity(
        on=on,
        n=len(inputs),
        max_abs_diff=float(np.abs(actual - expected).max()),
        labels_equal=bool((actual.argmax(axis=1) == expected.argmax(axis=1)).all()),
        tolerance=PROBABILITY_TOLERANCE,
        gradcam_max_abs_diff=cam_drift,
    )


def derive_twin(bundle_dir: Path | str, *, out=print) -> TwinSpec:
    """Convert model.h5 to model.onnx, check parity, write it and record it in model.json.

    Raises:
        InvalidBundleError: no model.json, or the twin does not reproduce model.h5 (nothing written).
        TwinUnsupportedError: the model's head is not GAP -> Dropout* -> Dense (nothing written).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tf2onnx

    from lungscan.predict import Classifier

    bundle_dir = Path(bundle_dir)
    if not (bundle_dir / METADATA_FILE).is_file():
        raise InvalidBundleError(f"{bundle_dir} has no model.json: a bare model.h5 is served by Keras")
    keras_classifier = Classifier(bundle_dir, runtime="keras")
    metadata = keras_classifier.metadata
    function = twin_function(keras_classifier.runtime.model, metadata.output == "sigmoid")
    handle, scratch = tempfile.mkstemp(prefix=".model-", suffix=".onnx", dir=bundle_dir)
    os.close(handle)
    scratch = Path(scratch)
    try:
        tf2onnx.convert.from_function(
            function, input_signature=function.input_signature, opset=OPSET, output_path=str(scratch)
        )
        inputs, on = parity_inputs(bundle_dir, keras_classifier.input_shape)
        parity = measure_parity(keras_classifier, OnnxRuntime(scratch), inputs, on)
        if not parity.labels_equal or parity.max_abs_diff > PROBABILITY_TOLERANCE:
            raise InvalidBundleError(
                f"the ONNX twin does not reproduce model.h5 on {on}: probabilities differ by up to "
                f"{parity.max_abs_diff:.2e} (tolerance {PROBABILITY_TOLERANCE:g}), labels equal: {parity.labels_equal}"
            )
        if parity.gradcam_max_abs_diff > GRADCAM_TOLERANCE:
            raise InvalidBundleError(
                f"the ONNX twin's Grad-CAM differs from Keras' by up to {parity.gradcam_max_abs_diff:.2e} "
                f"(tolerance {GRADCAM_TOLERANCE:g})"
            )
        scratch.chmod(0o644)  # mkstemp makes it owner-only; the image and the registry read it as any file
        os.replace(scratch, bundle_dir / TWIN_FILE)
    finally:
        scratch.unlink(missing_ok=True)
    twin = TwinSpec(
        sha256=file_sha256(bundle_dir / TWIN_FILE),
        source_sha256=metadata.sha256,
        opset=OPSET,
        converter=f"tf2onnx {tf2onnx.__version__}",
        parity=parity,
    )
    metadata.twin = twin
    write_metadata(bundle_dir, metadata)
    out(
        f"{bundle_dir / TWIN_FILE}: opset {OPSET}, sha256 {twin.sha256[:12]}; on {on}: probabilities within "
        f"{parity.max_abs_diff:.1e} of model.h5, labels equal {parity.labels_equal}, "
        f"Grad-CAM within {parity.gradcam_max_abs_diff:.1e}"
    )
    return twin
