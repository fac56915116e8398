"""``python -m training twin BUNDLE``: derive ``model.onnx``, the runtime twin of ``model.h5``.

The function serves the twin with onnxruntime and never imports TensorFlow for it (a cold
start of ~0.8 s instead of ~7 s); ``model.h5`` stays the artifact of record.

The twin graph (tf2onnx, ONNX opset 17) has one input and three outputs:

- ``probabilities``: the model's own output, as ``model.h5`` gives it;
- ``features``: the last 4D activations A (N, h, w, K), the layer Grad-CAM explains;
- ``cam_weights``: the explanation's weights for every class: Grad-CAM's channel weights
  (N, classes, K), or per-cell weights (N, classes, h, w, K) for a flattening head.

The weights are exact, without differentiating anything at serving time. For a head
``GlobalAveragePooling2D -> Dropout -> Dense(softmax)``, with g = mean over (h, w) of A,
z = W^T g + b and p = softmax(z),

    d p_c / d A[i, j, k] = (1 / hw) * p_c * (W[k, c] - sum_j p_j W[k, j])
                         = (1 / hw) * p_c * sum_j p_j (W[k, c] - W[k, j])      (sum_j p_j = 1)

which is the same at every (i, j): its spatial mean, Grad-CAM's weight, is that expression.
The graph uses the second form: when p_c is near 1 the first cancels in float32 (TensorFlow's
own gradient, which does, is off by up to ~2e-3 on a [0, 1] map then), the second does not.
For one sigmoid output p (class 1; class 0 scores 1 - p) it is +-(1 / hw) p (1 - p) W[k, 0].

Two more heads, both linear up to the softmax:

- a fold ensemble, M such heads on the same pooled maps whose softmax outputs are averaged
  (p = mean_m p_m): d p_c / d A is the mean over m of each head's expression above (with its
  own p_m and W_m), so the map is the ensemble probability's Grad-CAM;
- a per-cell linear head, ``Flatten -> [Concatenate] -> Dropout* -> Dense(softmax)`` (the HOG
  bundles; one or several averaged): z_c = sum_{i,j,k} W[(i,j,k), c] A[i,j,k] + (other inputs),
  so d p_c / d A[i, j, k] = p_c sum_j p_j (W[(i,j,k), c] - W[(i,j,k), j]) differs per cell. Its
  spatial mean would blur the cells' own weights away; the map is gradient x input instead,
  sum_k A[i, j, k] d p_c / d A[i, j, k] = p_c (z_c(i, j) - sum_j p_j z_j(i, j)): cell (i, j)'s share
  of the logit of c against the probability-weighted mean logit, exactly (the logit decomposition;
  p_c cancels when the map is scaled to [0, 1]).

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lungscan.bundle.files import METADATA_FILE, SMOKE_FILE, TWIN_FILE, file_sha256
from lungscan.bundle.metadata import CAM_WEIGHTS, FEATURES, PROBABILITIES, TwinParity, TwinSpec
from lungscan.bundle.smoke import smoke_inputs
from lungscan.bundle.store import edit_metadata, read_metadata
from lungscan.errors import InvalidBundleError, LungScanError
from lungscan.model.runtime import KerasRuntime, OnnxRuntime

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
    from lungscan.model.runtime import verify_twin

    metadata = read_metadata(Path(bundle_dir))
    if metadata.twin is None or metadata.twin.source_sha256 != metadata.sha256:
        return False
    try:
        verify_twin(Path(bundle_dir), metadata.twin)
    except InvalidBundleError:
        return False
    return True


@dataclass
class ExplainedHead:
    """The linear softmax head(s) between the explained feature maps A (N, h, w, K) and the output.

    ``pool``: "gap" (the heads see mean over (h, w) of A) or "flatten" (they see A itself, flattened
    first in their input, other features such as an intensity histogram after it). ``denses``: one
    Dense layer, or the members of an ensemble whose softmax outputs are averaged.
    """

    pool: str
    denses: list
    feature_shape: tuple[int, int, int]  # (h, w, K)

    def kernels(self) -> list[np.ndarray]:
        """Each head's kernel rows that read A: (K, outputs) for "gap", (h * w * K, outputs) for "flatten"."""
        rows = int(np.prod(self.feature_shape)) if self.pool == "flatten" else self.feature_shape[-1]
        return [np.asarray(dense.kernel, np.float32)[:rows] for dense in self.denses]


def _inputs(layer) -> list:
    tensors = layer.input
    return list(tensors) if isinstance(tensors, list | tuple) else [tensors]


def explained_head(model) -> ExplainedHead:
    """The head after the explained feature maps, when the twin can reproduce its explanation exactly.

    Supported: ``GlobalAveragePooling2D -> Dropout* -> Dense(softmax|sigmoid)``; ``Flatten ->
    [Concatenate, flattened maps first] -> Dropout* -> Dense(softmax)`` (a per-cell linear head);
    either with several softmax Dense heads on the same input averaged (a fold ensemble).

    Raises:
        TwinUnsupportedError: another head (its explanation would not be exact).
    """
    import keras

    from lungscan.model.explain import feature_layer

    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    features = feature_layer(model)
    if isinstance(model, keras.Sequential):  # a chain: what follows the feature layer
        downstream = layers[layers.index(features) + 1 :]
    else:  # everything downstream of the feature maps, in graph order
        reached, downstream = {id(features.output)}, []
        for layer in layers:
            if any(id(tensor) in reached for tensor in _inputs(layer)):
                downstream.append(layer)
                reached.add(id(layer.output))
    kinds = [type(layer).__name__ for layer in downstream]
    denses = [layer for layer in downstream if isinstance(layer, keras.layers.Dense)]
    pool = downstream[0] if downstream else None
    flatten = isinstance(pool, keras.layers.Flatten)
    allowed = (keras.layers.Dropout, keras.layers.Dense, keras.layers.Average, keras.layers.Concatenate)
    gap = isinstance(pool, keras.layers.GlobalAveragePooling2D) and not pool.keepdims
    activations = {dense.activation.__name__ for dense in denses}
    supported = (
        (gap or flatten)
        and all(isinstance(layer, allowed) for layer in downstream[1:])
        and (activations == {"softmax"} or (activations == {"sigmoid"} and gap and len(denses) == 1))
    )
    averaged = [layer for layer in downstream if isinstance(layer, keras.layers.Average)]
    if supported and isinstance(model, keras.Sequential):
        supported = len(denses) == 1 and downstream[-1] is denses[0]
    elif supported and len(denses) > 1:  # an ensemble: the heads' outputs averaged into the model's output
        supported = len(averaged) == 1 and averaged[0].output is model.outputs[0]
        supported = supported and {id(t) for t in _inputs(averaged[0])} == {id(d.output) for d in denses}
    elif supported:
        supported = not averaged and denses[0].output is model.outputs[0]
    concatenated = [layer for layer in downstream if isinstance(layer, keras.layers.Concatenate)]
    if supported and concatenated and pool is not None:  # the flattened maps must come first in the heads' input
        supported = flatten and len(concatenated) == 1 and _inputs(concatenated[0])[0] is pool.output
    if supported and pool is not None:  # every head reads the pooled maps (through dropout/concatenation only)
        width = int(np.prod(pool.output.shape[1:]))
        supported = all(int(dense.kernel.shape[0]) >= width for dense in denses)
    if not supported:
        raise TwinUnsupportedError(
            f"the model's head after its feature maps is {' -> '.join(kinds) or 'empty'}; a twin needs "
            "GlobalAveragePooling2D or Flatten -> Dropout* -> Dense(softmax) (one, or several averaged) to "
            "reproduce the explanation exactly"
        )
    height, width, channels = (int(d) for d in features.output.shape[1:])
    return ExplainedHead("flatten" if flatten else "gap", denses, (height, width, channels))


def twin_function(model, sigmoid_output: bool):
    """A ``tf.function``: image batch -> {probabilities, features, cam_weights} (see the module docstring)."""
    import keras
    import tensorflow as tf

    from lungscan.model.explain import feature_layer

    head = explained_head(model)
    # Outputs: the feature maps, each head's probabilities, the model's own output.
    grad_model = keras.Model(
        model.inputs, [feature_layer(model).output, *[dense.output for dense in head.denses], model.outputs[0]]
    )
    input_shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    height, width, channels = head.feature_shape
    kernels = head.kernels()
    rows, classes = kernels[0].shape
    # differences[j, c * rows + r] = W[r, c] - W[r, j]; p @ differences = sum_j p_j (W[r, c] - W[r, j])
    differences = [(kernel.T[None, :, :] - kernel.T[:, None, :]).reshape(classes, -1) for kernel in kernels]
    spatial = float(height * width)

    @tf.function(input_signature=[tf.TensorSpec((None, *input_shape), tf.float32, name="image")])
    def twin(batch):
        features, *heads, probabilities = grad_model(batch, training=False)
        if sigmoid_output:
            kernel = tf.constant(kernels[0])  # a constant in the graph (a captured tensor would become an input)
            slope = heads[0][:, :1] * (1.0 - heads[0][:, :1]) * tf.transpose(kernel) / spatial  # (N, K)
            cam_weights = tf.stack([-slope, slope], axis=1)
        else:
            # d p_c / d (pooled input) per head, averaged over the heads like their outputs.
            gradient = 0.0
            for head_probabilities, difference in zip(heads, differences, strict=True):
                spread = tf.reshape(tf.matmul(head_probabilities, tf.constant(difference)), (-1, classes, rows))
                gradient += head_probabilities[:, :, None] * spread
            gradient /= float(len(heads))
            if head.pool == "gap":  # the same at every cell: Grad-CAM's channel weights
                cam_weights = gradient / spatial  # (N, classes, K)
            else:  # a weight per cell and channel: the map is gradient x input
                cam_weights = tf.reshape(gradient, (-1, classes, height, width, channels))
        return {
            PROBABILITIES: tf.identity(probabilities),
            FEATURES: tf.identity(features),
            CAM_WEIGHTS: tf.identity(cam_weights),
        }

    return twin


def parity_inputs(bundle_dir: Path, input_shape: tuple[int, ...]) -> tuple[np.ndarray, str]:
    """The smoke set's held-out inputs, or seeded random ones when the bundle has none."""
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

    from lungscan.model.classifier import Classifier

    bundle_dir = Path(bundle_dir)
    if not (bundle_dir / METADATA_FILE).is_file():
        raise InvalidBundleError(f"{bundle_dir} has no model.json: a bare model.h5 is served by Keras")
    keras_classifier = Classifier(bundle_dir, runtime="keras")
    metadata = keras_classifier.metadata
    assert metadata.sha256 is not None  # read_metadata records the sha256 of the model.h5 beside it
    keras_runtime = keras_classifier.runtime
    assert isinstance(keras_runtime, KerasRuntime)  # runtime="keras" always serves model.h5 with Keras
    head = explained_head(keras_runtime.model)
    function = twin_function(keras_runtime.model, metadata.output == "sigmoid")
    handle, scratch_name = tempfile.mkstemp(prefix=".model-", suffix=".onnx", dir=bundle_dir)
    os.close(handle)
    scratch = Path(scratch_name)
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
        explain="gradcam-gap-dense" if head.pool == "gap" else "gradient-input-flatten-dense",
        parity=parity,
    )
    with edit_metadata(bundle_dir) as written:
        written.twin = twin
    out(
        f"{bundle_dir / TWIN_FILE}: opset {OPSET}, sha256 {twin.sha256[:12]}; on {on}: probabilities within "
        f"{parity.max_abs_diff:.1e} of model.h5, labels equal {parity.labels_equal}, "
        f"Grad-CAM within {parity.gradcam_max_abs_diff:.1e}"
    )
    return twin
