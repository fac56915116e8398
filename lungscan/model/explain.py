"""Grad-CAM: which regions of the slice drove the model's score for a class.

Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization" (ICCV 2017): weight the last convolutional feature maps by the spatial mean
of the class score's gradient, keep the positive part, upsample to the image.

A model whose head flattens the feature maps into a linear softmax layer (the HOG bundles:
each cell has its own weights, so the gradient is not the same at every cell) is explained by
gradient x input at each cell instead of the spatial mean of the gradient: for a linear head
that is exactly each cell's share of the class logit (relative to the probability-weighted mean
logit), where Grad-CAM's mean would blur the cells' own weights away.

Two ways to the same map: :class:`GradCam` differentiates a Keras model with TensorFlow;
a runtime twin (``lungscan.model.runtime``) outputs the feature maps and the channel weights
itself, and :func:`gradcam_from_weights` finishes in numpy. This module imports neither
TensorFlow nor Keras at import time: the serving path must not pay for them.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from lungscan.errors import InvalidBundleError

# A perceptually ordered blue -> cyan -> yellow -> red ramp (anchors of a "turbo"-like map).
_ANCHORS = np.array(
    [[48, 18, 59], [40, 119, 230], [32, 200, 200], [120, 240, 90], [250, 200, 40], [220, 60, 20], [122, 4, 3]],
    dtype=np.float32,
)
COLOUR_MAP = np.stack(
    [np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_ANCHORS)), _ANCHORS[:, c]) for c in range(3)], axis=1
).astype(np.uint8)
_PALETTE = COLOUR_MAP.tobytes()  # 256 RGB triples


def last_conv_layer_index(layers) -> int:
    """Index of the last layer with a 4D (N, H, W, C) output: where spatial detail still lives."""
    for index in range(len(layers) - 1, -1, -1):
        shape = getattr(layers[index], "output", None)
        shape = getattr(shape, "shape", None)
        if shape is not None and len(shape) == 4:
            return index
    raise InvalidBundleError("the model has no convolutional layer: Grad-CAM needs one")


FEATURE_LAYER = "last_conv"  # a model may name its explained feature maps; else the last 4D layer is used


def feature_layer(model):
    """The layer whose 4D activations are explained: the one named ``last_conv``, else the last 4D one."""
    layers = [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]
    named = [layer for layer in layers if layer.name == FEATURE_LAYER]
    return named[0] if named else layers[last_conv_layer_index(layers)]


def flattens_features(model) -> bool:
    """True when the explained feature maps are flattened into the head (a per-cell linear head).

    Functional models only: a Sequential loaded from .h5 (the original app's) keeps Grad-CAM."""
    if type(model).__name__ == "Sequential":
        return False
    features = feature_layer(model).output
    return any(
        type(layer).__name__ == "Flatten" and layer.input is features
        for layer in model.layers
        if type(layer).__name__ != "InputLayer"
    )


def gradient_model(model):
    """A model returning (last conv feature maps, predictions).

    Keras 3 cannot use ``model.input`` on a Sequential loaded from .h5, so a Sequential is
    rebuilt as a functional graph by calling its layers on a fresh Input.
    """
    import keras

    if isinstance(model, keras.Sequential):
        inputs = keras.Input(shape=model.inputs[0].shape[1:])
        conv_index = last_conv_layer_index(model.layers)
        features = outputs = inputs
        for index, layer in enumerate(model.layers):
            outputs = layer(outputs)
            if index == conv_index:
                features = outputs
        return keras.Model(inputs, [features, outputs])
    return keras.Model(model.inputs, [feature_layer(model).output, model.outputs[0]])


def gradcam_from_weights(features: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Grad-CAM from one input's feature maps (h, w, K) and its channel weights (K,), or its
    per-cell weights (h, w, K) for a flattening head (gradient x input): ReLU of the weighted
    sum, scaled to [0, 1] (the same arithmetic as :class:`GradCam`)."""
    features, weights = np.asarray(features, np.float32), np.asarray(weights, np.float32)
    cam = np.maximum(features @ weights if weights.ndim == 1 else (features * weights).sum(axis=-1), 0.0)
    return cam / (cam.max() + np.float32(1e-8))


class GradCam:
    """Grad-CAM for one loaded model, traced once as a ``tf.function``."""

    def __init__(self, model, input_shape: tuple[int, int, int], sigmoid_output: bool) -> None:
        import tensorflow as tf

        grad_model = gradient_model(model)
        per_cell = flattens_features(model)  # gradient x input instead of the gradient's spatial mean

        def class_score(predictions, class_index):
            if sigmoid_output:  # one output = P(class 1); class 0 scores 1 - p
                positive = predictions[:, 0]
                return tf.where(class_index == 1, positive, 1.0 - positive)
            return predictions[:, class_index]

        @tf.function(input_signature=[tf.TensorSpec((1, *input_shape), tf.float32), tf.TensorSpec((), tf.int32)])
        def compute(batch, class_index):
            with tf.GradientTape() as tape:
                features, predictions = grad_model(batch, training=False)
                score = class_score(predictions, class_index)
            gradients = tape.gradient(score, features)
            weights = gradients if per_cell else tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
            cam = tf.nn.relu(tf.reduce_sum(features * weights, axis=-1))[0]
            return cam / (tf.reduce_max(cam) + 1e-8)

        self._compute = compute

    def __call__(self, array: np.ndarray, class_index: int) -> np.ndarray:
        """A (h, w) map in [0, 1] at the feature maps' resolution, for one preprocessed image."""
        return self._compute(np.asarray(array, np.float32)[np.newaxis], np.int32(class_index)).numpy()


def heatmap_overlay(
    image: Image.Image, cam: np.ndarray, view: tuple[int, int, int, int] | None = None, opacity: float = 0.45
) -> Image.Image:
    """Blend the coloured map over the image, at the image's own size (RGB).

    Args:
        view: the region of ``image`` (left, top, right, bottom) the model saw, from the preprocessing trace;
            the map is drawn there (a padded or cropped input's map would be misplaced stretched over the
            whole image). Parts of the image the model did not see get no heat. None: the whole image.
    """
    base = image.convert("RGB")
    left, top, right, bottom = view or (0, 0, *base.size)
    size = (max(1, int(right - left)), max(1, int(bottom - top)))
    cam_image = Image.fromarray(np.uint8(np.clip(cam, 0, 1) * 255)).resize(size, Image.Resampling.BILINEAR)
    placed = Image.new("L", base.size, 0)
    placed.paste(cam_image, (int(left), int(top)))  # PIL clips what falls outside the image
    placed.putpalette(_PALETTE)  # the colour map as Pillow's lookup table: COLOUR_MAP[levels], in C
    return Image.blend(base, placed.convert("RGB"), opacity)
