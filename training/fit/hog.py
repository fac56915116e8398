"""The HOG recipe: a histogram-of-oriented-gradients front end in frozen Keras layers (scikit-image's
recipe, rebuilt so the bundle stays one ``model.h5``) and its softmax head, fitted as scikit-learn's
logistic regression."""

from __future__ import annotations

import numpy as np

from training.fit.options import TrainConfig

HOG_BINS = 9  # unsigned orientations over 180 degrees, as in Dalal & Triggs and scikit-image
HOG_BLOCK = 3  # cells per block side (scikit-image's default, 3x3)
HISTOGRAM_BINS = 16  # intensity histogram bins over [0, 1]
HOG_EPSILON = 1e-5  # block normalisation floor (scikit-image's)
HOG_C = 1.0  # inverse L2 strength of the logistic-regression head (scikit-learn's default)


def hog_features(inputs, config: TrainConfig):
    """A histogram of oriented gradients plus an intensity histogram, in frozen Keras layers.

    The data README's floor recipe (scikit-image ``hog``: 9 orientations, 16-pixel cells, 3x3-cell
    blocks, L2-Hys) rebuilt from standard layers, so the bundle stays one plain ``model.h5`` and
    converts to ONNX: central-difference derivatives (one fixed 3x3 conv); each pixel's gradient
    magnitude voted to the orientation bins within one bin width of its angle, linearly (a unit
    vector from ``UnitNormalization`` projected on 18 directions, rectified, folded to 9 unsigned
    bins); averaged over ``hog_cell`` pixel cells; 3x3-cell blocks L2 normalised, clipped at 0.2,
    normalised again (L2-Hys); plus a 16-bin soft intensity histogram. All weights are constants:
    only the head that follows is fitted. The block map is ``last_conv``, the explained layer.
    """
    import keras
    from keras import layers

    def fixed(layer_type, weights, **kwargs):
        initialisers = [keras.initializers.Constant(w) for w in weights]
        extra = {"kernel_initializer": initialisers[0]}
        if len(weights) > 1:
            extra["bias_initializer"] = initialisers[1]
        else:
            extra["use_bias"] = False
        return layer_type(trainable=False, **kwargs, **extra)

    n = HISTOGRAM_BINS
    centres = (np.arange(n) + 0.5) / n
    signed = np.concatenate([np.full(n, n), np.full(n, -n)]).astype(np.float32).reshape(1, 1, 1, 2 * n)
    signed_bias = np.concatenate([-n * centres, n * centres]).astype(np.float32)
    fold = np.zeros((1, 1, 2 * n, n), np.float32)
    fold[0, 0, np.arange(n), np.arange(n)] = -1.0
    fold[0, 0, n + np.arange(n), np.arange(n)] = -1.0
    # Triangular bins: relu(1 - |n x - (k + 0.5)|), from two rectified ramps.
    x = fixed(layers.Conv2D, [signed, signed_bias], filters=2 * n, kernel_size=1, name="histogram_ramps")(inputs)
    x = layers.ReLU(name="histogram_relu")(x)
    x = fixed(layers.Conv2D, [fold, np.ones(n, np.float32)], filters=n, kernel_size=1, name="histogram_bins")(x)
    x = layers.ReLU(name="histogram_triangles")(x)
    histogram = layers.GlobalAveragePooling2D(name="histogram")(x)

    derivatives = np.zeros((3, 3, 1, 2), np.float32)  # (d/dx, d/dy) by central differences
    derivatives[1, 0, 0, 0], derivatives[1, 2, 0, 0] = -1.0, 1.0
    derivatives[0, 1, 0, 1], derivatives[2, 1, 0, 1] = -1.0, 1.0
    angles = np.pi * np.arange(2 * HOG_BINS) / HOG_BINS  # 18 directions, 20 degrees apart
    width = np.cos(np.pi / HOG_BINS)  # a vote reaches the bins within one bin width of the angle
    projections = (np.stack([np.cos(angles), np.sin(angles)])[None, None] / (1.0 - width)).astype(np.float32)
    unsigned = np.zeros((1, 1, 2 * HOG_BINS, HOG_BINS), np.float32)
    unsigned[0, 0, np.arange(2 * HOG_BINS), np.arange(2 * HOG_BINS) % HOG_BINS] = 1.0
    per_block = HOG_BLOCK * HOG_BLOCK * HOG_BINS
    blocks = np.zeros((HOG_BLOCK, HOG_BLOCK, HOG_BINS, per_block), np.float32)
    for i in range(HOG_BLOCK):
        for j in range(HOG_BLOCK):
            blocks[i, j, np.arange(HOG_BINS), (HOG_BLOCK * i + j) * HOG_BINS + np.arange(HOG_BINS)] = 1.0
    g = fixed(layers.Conv2D, [derivatives], filters=2, kernel_size=3, padding="same", name="gradients")(inputs)
    direction = layers.UnitNormalization(axis=-1, name="gradient_direction")(g)
    magnitude = fixed(layers.Conv2D, [np.ones((1, 1, 2, 1), np.float32)], filters=1, kernel_size=1, name="magnitude")(
        layers.Multiply(name="gradient_squared")([g, direction])
    )
    votes = fixed(
        layers.Conv2D,
        [projections, np.full(2 * HOG_BINS, -width / (1.0 - width), np.float32)],
        filters=2 * HOG_BINS,
        kernel_size=1,
        name="directions",
    )(direction)
    votes = layers.Multiply(name="votes")([layers.ReLU(name="directions_relu")(votes), magnitude])
    g = fixed(layers.Conv2D, [unsigned], filters=HOG_BINS, kernel_size=1, name="orientations")(votes)
    g = layers.AveragePooling2D(config.hog_cell, name="cells")(g)
    g = fixed(layers.Conv2D, [blocks], filters=per_block, kernel_size=HOG_BLOCK, name="blocks")(g)
    floor = fixed(
        layers.Conv2D,
        [np.zeros((1, 1, per_block, 1), np.float32), np.full(1, HOG_EPSILON, np.float32)],
        filters=1,
        kernel_size=1,
        name="block_floor",
    )(g)
    g = layers.Concatenate(name="blocks_with_floor")([g, floor])
    g = layers.UnitNormalization(axis=-1, name="block_l2")(g)
    g = layers.ReLU(max_value=0.2, name="block_clip")(g)
    g = layers.UnitNormalization(axis=-1, name="last_conv")(g)
    return layers.Concatenate(name="features")([layers.Flatten(name="hog")(g), histogram])


def hog_head(n_classes: int, prefix: str = ""):
    from keras import layers

    return layers.Dense(n_classes, activation="softmax", name=prefix + "probabilities")


def fit_hog_head(model, x: np.ndarray, y: np.ndarray, n_classes: int, seed: int) -> None:
    """Fit the HOG model's softmax head as scikit-learn's class-balanced logistic regression on the frozen
    features (the data README's recipe), and copy its weights into the Dense layer."""
    import keras
    from sklearn.linear_model import LogisticRegression

    dense = next(layer for layer in model.layers if isinstance(layer, keras.layers.Dense))
    features = keras.Model(model.inputs, dense.input).predict(x, batch_size=64, verbose=0)
    fitted = LogisticRegression(C=HOG_C, class_weight="balanced", max_iter=5000, random_state=seed).fit(features, y)
    if list(fitted.classes_) != list(range(n_classes)):
        raise ValueError("every class needs training images for the logistic-regression head")
    kernel, bias = fitted.coef_.T, fitted.intercept_
    if n_classes == 2:  # one logit z for class 1: softmax over (-z/2, z/2) is its sigmoid
        kernel, bias = np.concatenate([-kernel, kernel], axis=1) / 2, np.concatenate([-bias, bias]) / 2
    dense.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
