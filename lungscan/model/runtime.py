"""How a bundle's model is run: onnxruntime on its runtime twin, or Keras on ``model.h5``.

``model.h5`` is the artifact of record. ``python -m training twin`` (``training/release/twin.py``)
derives ``model.onnx`` from it, checks that both give the same answers, and records the twin in
``model.json`` (:class:`~lungscan.bundle.metadata.TwinSpec`). Serving prefers the twin: onnxruntime starts in well
under a second, where ``import tensorflow`` alone takes ~5 s. A bundle without a usable twin
(the original app's bare ``model.h5``, an older published version) is run by Keras, imported
only then.

Both runtimes answer the same two questions: :meth:`forward` (the model's raw outputs for a
batch) and :meth:`gradcam` (a Grad-CAM map for one input and class). Nothing outside this
module knows which one is in use.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from lungscan.bundle.files import MODEL_FILE, file_sha256
from lungscan.bundle.metadata import CAM_WEIGHTS, FEATURES, PROBABILITIES, TwinSpec
from lungscan.errors import InvalidBundleError

if TYPE_CHECKING:
    from lungscan.model.explain import GradCam

logger = logging.getLogger(__name__)


class ModelRuntime(Protocol):
    name: str  # "onnxruntime" or "keras"
    input_shape: tuple[int, ...]  # (h, w, c) the model takes
    output_width: int  # columns of forward()'s result

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """The model's raw outputs (float32, (N, output_width)) for a preprocessed batch."""

    def gradcam(self, array: np.ndarray, class_index: int) -> np.ndarray:
        """A Grad-CAM map in [0, 1] at the feature maps' resolution, for one preprocessed input."""

    def forward_with_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``forward``'s outputs and the explained feature maps (N, h, w, K) averaged over space (N, K)."""

    def explained_forward(self, array: np.ndarray) -> tuple[np.ndarray, np.ndarray, Callable[[int], np.ndarray]]:
        """For one preprocessed input: :meth:`forward_with_features`'s outputs (1, output_width) and pooled features
        (1, K), and class index -> its Grad-CAM map (the twin answers all three from one run of its graph)."""


# ---------------------------------------------------------------- Keras (model.h5)


def load_keras_model(model_path: Path):
    """Load a Keras ``.h5`` for inference only (no optimizer state, no compile)."""
    import keras  # deferred: importing TensorFlow takes seconds

    try:
        return keras.models.load_model(model_path, compile=False)
    except Exception as error:  # h5py/keras raise many types for a bad file
        raise InvalidBundleError(f"{model_path} could not be loaded as a Keras model: {error}") from error


class KerasRuntime:
    """model.h5 through one traced ``tf.function``: Keras' ``model.predict`` costs ~50 ms per call."""

    name = "keras"

    def __init__(self, model_path: Path, sigmoid_output: bool) -> None:
        import tensorflow as tf

        self.model = load_keras_model(model_path)
        self.sigmoid_output = sigmoid_output
        self.input_shape = tuple(self.model.inputs[0].shape[1:])  # may hold None: the shape check refuses it
        self.output_width = int(self.model.outputs[0].shape[-1])
        self._forward = tf.function(
            lambda batch: self.model(batch, training=False),
            input_signature=[tf.TensorSpec((None, *self.input_shape), tf.float32)],
            reduce_retracing=True,
        )
        self._gradcam: GradCam | None = None  # traced on first use: cold starts stay short
        self._gradcam_lock = threading.Lock()
        self._with_features: Any = None  # (feature maps, outputs), built on first use

    def forward(self, batch: np.ndarray) -> np.ndarray:
        return self._forward(np.asarray(batch, dtype=np.float32)).numpy()

    def forward_with_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from lungscan.model.explain import gradient_model
        from lungscan.model.familiarity import pool_features

        with self._gradcam_lock:
            if self._with_features is None:
                self._with_features = gradient_model(self.model)  # (feature maps, outputs), as Grad-CAM's
        features, outputs = self._with_features(np.asarray(batch, dtype=np.float32), training=False)
        return np.asarray(outputs), pool_features(np.asarray(features))

    def gradcam(self, array: np.ndarray, class_index: int) -> np.ndarray:
        from lungscan.model.explain import GradCam

        with self._gradcam_lock:
            if self._gradcam is None:
                self._gradcam = GradCam(self.model, self.input_shape, self.sigmoid_output)
        return self._gradcam(array, class_index)

    def explained_forward(self, array: np.ndarray) -> tuple[np.ndarray, np.ndarray, Callable[[int], np.ndarray]]:
        raw, pooled = self.forward_with_features(np.asarray(array)[np.newaxis])
        return raw, pooled, lambda class_index: self.gradcam(array, class_index)


# ---------------------------------------------------------------- onnxruntime (model.onnx)


class OnnxRuntime:
    """The twin graph under onnxruntime; Grad-CAM from its feature maps and channel weights, in numpy."""

    name = "onnxruntime"

    def __init__(self, model_path: Path) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # warnings about shape merging are noise here
        # One request at a time per function instance and a ~1 ms graph: a thread pool only adds wake-ups.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        try:
            self.session = onnxruntime.InferenceSession(
                str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own types for a bad graph
            raise InvalidBundleError(f"{model_path} could not be loaded by onnxruntime: {error}") from error
        inputs = self.session.get_inputs()
        outputs = {output.name: output for output in self.session.get_outputs()}
        missing = {PROBABILITIES, FEATURES, CAM_WEIGHTS} - set(outputs)
        if len(inputs) != 1 or missing:
            raise InvalidBundleError(f"{model_path} is not a LungScan twin (one input; outputs {sorted(missing)})")
        self.input_name = inputs[0].name
        shape = inputs[0].shape[1:]
        width = outputs[PROBABILITIES].shape[-1]
        if not all(isinstance(d, int) for d in [*shape, width]):
            raise InvalidBundleError(f"{model_path} has a dynamic input or output size")
        self.input_shape = tuple(shape)
        self.output_width = int(width)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        feed = {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        return self.session.run([PROBABILITIES], feed)[0]

    def forward_with_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from lungscan.model.familiarity import pool_features

        feed = {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        outputs, features = self.session.run([PROBABILITIES, FEATURES], feed)
        return outputs, pool_features(features)

    def gradcam(self, array: np.ndarray, class_index: int) -> np.ndarray:
        from lungscan.model.explain import gradcam_from_weights

        feed = {self.input_name: np.ascontiguousarray(np.asarray(array, np.float32)[np.newaxis])}
        features, weights = self.session.run([FEATURES, CAM_WEIGHTS], feed)
        return gradcam_from_weights(features[0], weights[0, class_index])

    def explained_forward(self, array: np.ndarray) -> tuple[np.ndarray, np.ndarray, Callable[[int], np.ndarray]]:
        from lungscan.model.explain import gradcam_from_weights
        from lungscan.model.familiarity import pool_features

        feed = {self.input_name: np.ascontiguousarray(np.asarray(array, np.float32)[np.newaxis])}
        raw, features, weights = self.session.run([PROBABILITIES, FEATURES, CAM_WEIGHTS], feed)
        return (
            raw,
            pool_features(features),
            lambda class_index: gradcam_from_weights(features[0], weights[0, class_index]),
        )


# ---------------------------------------------------------------- choosing one


def verify_twin(bundle_dir: Path, twin: TwinSpec) -> Path:
    """The twin's path once its sha256 matches model.json.

    Raises:
        InvalidBundleError: the file is missing or does not match.
    """

    path = Path(bundle_dir) / twin.file
    if not path.is_file():
        raise InvalidBundleError(f"{path} is declared in model.json but missing")
    if file_sha256(path) != twin.sha256:
        raise InvalidBundleError(f"sha256 of {path} does not match model.json")
    return path


def load_runtime(bundle_dir: Path, metadata, prefer: Literal["twin", "keras"] = "twin") -> ModelRuntime:
    """The runtime that serves a bundle: its twin when it has a current one, else Keras on model.h5.

    A twin derived from another model.h5 than the one beside it (retrained in place) or whose
    file is missing is skipped, with a warning: the bundle is still served, more slowly. A twin
    that is there but does not match its sha256 is refused (a corrupt download or an edit).

    Raises:
        InvalidBundleError: the chosen model file cannot be loaded or does not match.
    """

    bundle_dir = Path(bundle_dir)
    twin: TwinSpec | None = getattr(metadata, "twin", None)
    if prefer == "twin" and twin is not None:
        if twin.source_sha256 != metadata.sha256:
            logger.warning("runtime twin was derived from another model.h5; serving model.h5 with Keras")
        elif not (bundle_dir / twin.file).is_file():
            logger.warning("runtime twin declared but missing; serving model.h5 with Keras")
        else:
            return OnnxRuntime(verify_twin(bundle_dir, twin))
    return KerasRuntime(bundle_dir / MODEL_FILE, sigmoid_output=metadata.output == "sigmoid")
