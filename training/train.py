"""``python -m training train``: train a small grayscale CNN and write a model bundle.

Steps: scan the dataset, deduplicate by sha256, split without leaks (see
:mod:`training.datasets`), preprocess every image with the core package
(``decode_upload`` + ``build_preprocess``/``preprocess_image``, the chain ``model.json``
declares, so training and serving share one implementation), train with balanced class
weights, optional augmentation, fixed seeds, TensorBoard logs and optional early stopping,
then save ``model.h5`` + ``model.json`` (+ ``report/split.json``, ``report/training.json``)
and, unless ``--no-evaluate``, run :mod:`training.evaluate` on the saved bundle.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from lungscan.bundle import (
    INTENDED_USE,
    MODEL_FILE,
    REPORT_DIR,
    BundleMetadata,
    InputSpec,
    IntensitySpec,
    NormalisationSpec,
    PreprocessingSpec,
    ResizeSpec,
    TrainingRecord,
    utc_timestamp,
    write_metadata,
)
from lungscan.transforms import build_preprocess
from lungscan.uploads import bundle_dicom_options
from training.datasets import LAYOUTS, SPLITS, PreparedDataset, load_arrays, prepare_dataset
from training.metrics import balanced_class_weights
from training.presets import DEFAULTS, PRESETS, REPO_ROOT, Preset

DEFAULT_RUNS_DIR = REPO_ROOT / "training" / "runs"
SPLIT_MANIFEST = f"{REPORT_DIR}/split.json"
TRAINING_LOG = f"{REPORT_DIR}/training.json"

AUGMENTATIONS = {
    "none": "none",
    "light": (
        "training batches only, in the tf.data pipeline (not saved in the model): random horizontal flip, "
        "rotation +-0.03 turn (~11 degrees), zoom +-10%, translation +-5%, brightness +-0.05 and contrast +-15%, "
        "clipped to [0, 1]"
    ),
    "strong": (
        "training batches only, in the tf.data pipeline (not saved in the model): geometric (horizontal flip, "
        "rotation +-0.04 turn, zoom +-12%, translation +-6%, black fill) and intensity (gamma exp(U(-0.4, 0.4)), "
        "window/level jitter: black point U(-0.1, 0.15) and white point U(0.85, 1.1) rescaled to [0, 1], "
        "Gaussian blur (sigma 0.8) on a random third of the images, Gaussian noise sigma U(0, 0.04)), "
        "clipped to [0, 1]"
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``train`` subcommand's options (defaults None: filled from the preset, then DEFAULTS)."""
    data = parser.add_argument_group("data")
    data.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="start from a shipped model's recipe, names, classes and credits (command-line options win)",
    )
    data.add_argument("--data-dir", type=Path, help="dataset folder (default: the preset's, under ../shared/data)")
    data.add_argument(
        "--layout",
        choices=LAYOUTS,
        help="iq-oth: IQ-OTH/NCCD class folders; folders: any class folders; kaggle: train/ valid/ [test/] "
        "split folders of class folders (class = folder name before the first '_'); auto: detect (default)",
    )
    data.add_argument("--classes", help="comma-separated class order (default: the preset's, else folder names)")
    data.add_argument("--positive-classes", help="comma-separated classes that make a case suspicious")
    data.add_argument("--threshold", type=float, help="flag threshold on the summed positive-class probability")
    data.add_argument("--blocks", type=int, help="block split: contiguous blocks per class (13)")
    data.add_argument("--gap", type=int, help="block split: files dropped at each boundary between splits (2)")
    data.add_argument(
        "--near-duplicate-rmse", type=float, help="drop validation/test images this close to a training image (0.02)"
    )
    data.add_argument("--test-fraction", type=float, help="split layouts without test/: share of train held out (0.2)")

    model = parser.add_argument_group("model and training")
    model.add_argument("--name", help="model name in the registry (default: the preset's)")
    model.add_argument("--version", help="bundle version (default: the UTC time, 2026-11-27T10-00-00Z)")
    model.add_argument("--output-dir", type=Path, help="bundle folder to write (default: models/<name>)")
    model.add_argument("--image-size", type=int, help="square input size in pixels: 64 (the original), 96 or 128")
    model.add_argument("--epochs", type=int, help="epochs (the maximum, with early stopping)")
    model.add_argument("--patience", type=int, help="early stopping patience in epochs on val_loss; 0 = fixed epochs")
    model.add_argument("--warmup-epochs", type=int, help="epochs before early stopping may act (10)")
    model.add_argument("--batch-size", type=int)
    model.add_argument("--learning-rate", type=float)
    model.add_argument("--augment", choices=sorted(AUGMENTATIONS), help="training augmentation (none | light | strong)")
    model.add_argument(
        "--pad-to-square",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="pad to a square before resizing instead of stretching (declared in model.json)",
    )
    model.add_argument(
        "--intensity",
        choices=("fixed", "percentile"),
        help="fixed: x/255; percentile: the 1st/99th percentiles of each image to 0/1 (declared in model.json)",
    )
    model.add_argument("--label-smoothing", type=float, help="label smoothing of the cross-entropy (0)")
    model.add_argument(
        "--ensemble",
        type=int,
        help="members averaged inside one model: member k trains without fold k of the training split (1 = one "
        "network on all of it)",
    )
    model.add_argument("--lr-schedule", choices=("constant", "cosine"), help="learning rate over the epochs")
    model.add_argument(
        "--architecture",
        choices=("cnn", "hog"),
        help="cnn: conv/pool stages, global average pooling, softmax; hog: a fixed histogram-of-oriented-gradients "
        "front end built from Keras layers (frozen) with a trained softmax (logistic regression) head",
    )
    model.add_argument("--hog-cell", type=int, help="hog: cell size in pixels (16)")
    model.add_argument(
        "--refit",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fit the shipped model on train + validation (the recipe chosen beforehand on validation); "
        "calibration and test stay unseen",
    )
    model.add_argument(
        "--batch-norm", action=argparse.BooleanOptionalAction, default=None, help="BatchNormalization after convs"
    )
    model.add_argument("--filters", help="filters of the conv/pool stages, comma-separated (16,32,64)")
    model.add_argument("--last-filters", type=int, help="filters of the last conv layer (Grad-CAM's target) (96)")
    model.add_argument("--dropout", type=float)
    model.add_argument("--seed", type=int, help="seed for the split, weights, shuffling and augmentation (42)")
    model.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR, help="TensorBoard logs (training/runs)")
    model.add_argument("--no-evaluate", action="store_true", help="write the bundle without evaluating it")
    model.add_argument("--smoke-size", type=int, default=24, help="held-out images kept in report/smoke.npz")


@dataclass
class TrainConfig:
    """Resolved options: command line over preset recipe over DEFAULTS."""

    preset: Preset | None
    data_dir: Path
    output_dir: Path
    name: str
    version: str
    layout: str
    classes: list[str] | None
    positive_classes: list[str]
    threshold: float
    image_size: int
    epochs: int
    patience: int
    warmup_epochs: int
    batch_size: int
    learning_rate: float
    augment: str
    pad_to_square: bool
    intensity: str
    label_smoothing: float
    ensemble: int
    lr_schedule: str
    architecture: str
    hog_cell: int
    refit: bool
    batch_norm: bool
    filters: list[int]
    last_filters: int
    dropout: float
    seed: int
    blocks: int
    gap: int
    near_duplicate_rmse: float
    test_fraction: float
    runs_dir: Path
    evaluate: bool
    smoke_size: int
    command: str

    def recipe(self) -> dict:
        return {
            "image_size": self.image_size,
            "epochs": self.epochs,
            "patience": self.patience,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "augment": self.augment,
            "pad_to_square": self.pad_to_square,
            "intensity": self.intensity,
            "label_smoothing": self.label_smoothing,
            "ensemble": self.ensemble,
            "lr_schedule": self.lr_schedule,
            "architecture": self.architecture,
            "hog_cell": self.hog_cell,
            "refit": self.refit,
            "batch_norm": self.batch_norm,
            "filters": ",".join(str(f) for f in self.filters),
            "last_filters": self.last_filters,
            "dropout": self.dropout,
            "seed": self.seed,
        }

    def matches_preset_recipe(self) -> bool:
        if self.preset is None:
            return False
        mine = self.recipe() | {"blocks": self.blocks, "gap": self.gap, "test_fraction": self.test_fraction}
        return all(mine.get(key) == value for key, value in self.preset.recipe.items())


def _csv(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def resolve_config(args: argparse.Namespace, argv: list[str]) -> TrainConfig:
    """Merge the command line, the preset and the defaults; check what can be checked early."""
    preset = PRESETS[args.preset] if args.preset else None
    base = DEFAULTS | (preset.recipe if preset else {})

    def pick(key: str):
        value = getattr(args, key, None)
        return base.get(key) if value is None else value

    data_dir = args.data_dir or (REPO_ROOT / preset.default_data_dir if preset else None)
    if data_dir is None:
        raise ValueError("--data-dir is required without --preset")
    name = args.name or (preset.model_name if preset else None)
    if not name:
        raise ValueError("--name is required without --preset")
    classes = _csv(args.classes) or (list(preset.classes) if preset else None)
    positive = _csv(args.positive_classes) or (list(preset.positive_classes) if preset else None)
    if not positive:
        raise ValueError("--positive-classes is required without --preset (which classes make a case suspicious)")
    now = datetime.now(UTC)
    if pick("architecture") == "hog" and int(pick("image_size")) % int(pick("hog_cell")):
        raise ValueError(f"--image-size {pick('image_size')} is not a multiple of --hog-cell {pick('hog_cell')}")
    if int(pick("ensemble")) < 1:
        raise ValueError(f"--ensemble must be at least 1, not {pick('ensemble')}")
    image_size = int(pick("image_size"))
    if not 16 <= image_size <= 512:
        raise ValueError(f"--image-size must be between 16 and 512, not {image_size}")
    return TrainConfig(
        preset=preset,
        data_dir=Path(data_dir),
        output_dir=Path(args.output_dir or REPO_ROOT / "models" / name),
        name=name,
        version=args.version or now.strftime("%Y-%m-%dT%H-%M-%SZ"),
        layout=args.layout or (preset.layout if preset else DEFAULTS["layout"]),
        classes=classes,
        positive_classes=positive,
        threshold=float(pick("threshold")),
        image_size=image_size,
        epochs=int(pick("epochs")),
        patience=int(pick("patience")),
        warmup_epochs=int(pick("warmup_epochs")),
        batch_size=int(pick("batch_size")),
        learning_rate=float(pick("learning_rate")),
        augment=pick("augment"),
        pad_to_square=bool(pick("pad_to_square")),
        intensity=pick("intensity"),
        label_smoothing=float(pick("label_smoothing")),
        ensemble=int(pick("ensemble")),
        lr_schedule=pick("lr_schedule"),
        architecture=pick("architecture"),
        hog_cell=int(pick("hog_cell")),
        refit=bool(pick("refit")),
        batch_norm=bool(pick("batch_norm")),
        filters=[int(f) for f in str(pick("filters")).split(",")],
        last_filters=int(pick("last_filters")),
        dropout=float(pick("dropout")),
        seed=int(pick("seed")),
        blocks=int(pick("blocks")),
        gap=int(pick("gap")),
        near_duplicate_rmse=float(pick("near_duplicate_rmse")),
        test_fraction=float(pick("test_fraction")),
        runs_dir=args.runs_dir,
        evaluate=not args.no_evaluate,
        smoke_size=args.smoke_size,
        command=" ".join(["python -m training", *argv]),
    )


# --------------------------------------------------------------------------- model


def build_model(config: TrainConfig, n_classes: int, prefix: str = ""):
    """A small grayscale CNN: conv/pool stages, one last conv (Grad-CAM's target), GAP, dropout, softmax.

    Without BatchNormalization by default: on these small datasets (a few hundred images, a
    handful of patients per validation split) BatchNorm made training erratic, and the plain
    network won a block-grouped cross-validation (see the IQ-OTH preset's recipe selection).
    ``prefix`` keeps layer names unique when ensemble members are assembled into one model.
    """
    import keras
    from keras import layers

    size = config.image_size
    if config.architecture == "hog":
        inputs = keras.Input((size, size, 1), name="image")
        features = layers.Dropout(config.dropout, name=prefix + "dropout")(hog_features(inputs, config))
        outputs = hog_head(n_classes, prefix)(features)
        return keras.Model(inputs, outputs, name=f"{prefix}{config.name.replace('-', '_').replace('.', '_')}_hog")
    inputs = keras.Input((size, size, 1), name="image")
    x = inputs
    stages = [*config.filters, config.last_filters]
    for stage, filters in enumerate(stages, start=1):
        last = stage == len(stages)
        name = "last_conv" if last else f"conv{stage}"
        x = layers.Conv2D(filters, 3, padding="same", use_bias=not config.batch_norm, name=prefix + name)(x)
        if config.batch_norm:
            x = layers.BatchNormalization(name=f"{prefix}bn{stage}")(x)
        x = layers.ReLU(name=f"{prefix}relu{stage}")(x)
        if not last:
            x = layers.MaxPooling2D(name=f"{prefix}pool{stage}")(x)
    x = layers.GlobalAveragePooling2D(name=prefix + "gap")(x)
    x = layers.Dropout(config.dropout, name=prefix + "dropout")(x)
    outputs = layers.Dense(n_classes, activation="softmax", name=prefix + "probabilities")(x)
    return keras.Model(inputs, outputs, name=f"{prefix}{config.name.replace('-', '_').replace('.', '_')}_{size}")


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


def make_datasets(x_train, y_train, x_val, y_val, config: TrainConfig, n_classes: int, seed: int):
    """tf.data pipelines: shuffled (and augmented) one-hot training batches; class-weighted validation."""
    import keras
    import tensorflow as tf
    from keras import layers

    train = tf.data.Dataset.from_tensor_slices((x_train, np.eye(n_classes, dtype=np.float32)[y_train])).shuffle(
        len(x_train), seed=seed, reshuffle_each_iteration=True
    )
    train = train.batch(config.batch_size)
    if config.augment == "light":
        augment = keras.Sequential(
            [
                layers.RandomFlip("horizontal", seed=seed),
                layers.RandomRotation(0.03, fill_mode="constant", seed=seed + 1),
                layers.RandomZoom(0.1, fill_mode="constant", seed=seed + 2),
                layers.RandomTranslation(0.05, 0.05, fill_mode="constant", seed=seed + 3),
                layers.RandomBrightness(0.05, value_range=(0.0, 1.0), seed=seed + 4),
                layers.RandomContrast(0.15, value_range=(0.0, 1.0), seed=seed + 5),
            ],
            name="augment",
        )

        def apply(images, labels):
            return tf.clip_by_value(augment(images, training=True), 0.0, 1.0), labels

        train = train.map(apply, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    elif config.augment == "strong":
        train = train.map(strong_augmentation(seed), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    train = train.prefetch(tf.data.AUTOTUNE)
    # Validation loss weighted per class, so its curve follows the balanced objective.
    weights = balanced_class_weights(y_val, n_classes)
    val_weights = np.array([weights[int(y)] for y in y_val], dtype=np.float32)
    validation = tf.data.Dataset.from_tensor_slices(
        (x_val, np.eye(n_classes, dtype=np.float32)[y_val], val_weights)
    ).batch(128)
    return train, validation


def strong_augmentation(seed: int):
    """Geometric plus intensity augmentation: what another scanner, window or export changes."""
    import keras
    import tensorflow as tf
    from keras import layers

    geometry = keras.Sequential(
        [
            layers.RandomFlip("horizontal", seed=seed),
            layers.RandomRotation(0.04, fill_mode="constant", seed=seed + 1),
            layers.RandomZoom(0.12, fill_mode="constant", seed=seed + 2),
            layers.RandomTranslation(0.06, 0.06, fill_mode="constant", seed=seed + 3),
        ],
        name="augment_geometry",
    )
    blur_kernel = np.exp(-0.5 * (np.arange(-2, 3) / 0.8) ** 2)
    blur_kernel = np.outer(blur_kernel, blur_kernel) / np.outer(blur_kernel, blur_kernel).sum()
    blur_kernel = tf.constant(blur_kernel[:, :, None, None], tf.float32)
    generator = tf.random.Generator.from_seed(seed + 10)

    def apply(images, labels):
        images = geometry(images, training=True)
        batch = tf.shape(images)[0]
        gamma = tf.exp(generator.uniform((batch, 1, 1, 1), -0.4, 0.4))
        images = tf.clip_by_value(images, 0.0, 1.0) ** gamma
        black = generator.uniform((batch, 1, 1, 1), -0.1, 0.15)
        white = generator.uniform((batch, 1, 1, 1), 0.85, 1.1)
        images = (images - black) / (white - black)
        blurred = tf.nn.conv2d(images, blur_kernel, strides=1, padding="SAME")
        images = tf.where(generator.uniform((batch, 1, 1, 1)) < 1.0 / 3.0, blurred, images)
        sigma = generator.uniform((batch, 1, 1, 1), 0.0, 0.04)
        images = images + sigma * generator.normal(tf.shape(images))
        return tf.clip_by_value(images, 0.0, 1.0), labels

    return apply


def assemble_ensemble(members: list, config: TrainConfig, n_classes: int):
    """One inference model that averages the members' softmax outputs.

    Each member's conv layers run on the shared input; their last conv maps are concatenated into
    one 4D layer ``last_conv`` (Grad-CAM's target, so a heatmap covers every member), pooled, and
    member k's dense head sees only its own channels (zero weights elsewhere). Only standard layers:
    the bundle stays one ``model.h5`` that any Keras (or converter) loads. A single member is
    returned unchanged.
    """
    import keras
    from keras import layers

    if len(members) == 1:
        return members[0]
    size = config.image_size
    inputs = keras.Input((size, size, 1), name="image")
    if config.architecture == "hog":  # one frozen front end is every member's: only the heads differ
        features = hog_features(inputs, config)
        outputs = []
        for k, member in enumerate(members):
            head = layers.Dense(n_classes, activation="softmax", name=f"member{k + 1}_probabilities")
            outputs.append(head(features))
            head.set_weights(member.get_layer(f"m{k + 1}_probabilities").get_weights())
        averaged = layers.Average(name="probabilities")(outputs)
        return keras.Model(
            inputs, averaged, name=f"{config.name.replace('-', '_').replace('.', '_')}_hog_x{len(members)}"
        )
    maps, heads = [], []
    for k, member in enumerate(members):
        x = inputs
        for layer in member.layers:
            if isinstance(layer, layers.InputLayer):
                continue
            if layer.name == f"m{k + 1}_gap":
                break
            x = layer(x)
        maps.append(x)
        heads.append(member.get_layer(f"m{k + 1}_probabilities").get_weights())
    features = layers.Concatenate(axis=-1, name="last_conv")(maps)
    pooled = layers.GlobalAveragePooling2D(name="gap")(features)
    width = config.last_filters
    outputs = []
    for k, (kernel, bias) in enumerate(heads):
        head = layers.Dense(n_classes, activation="softmax", name=f"member{k + 1}_probabilities")
        head.build((None, width * len(members)))
        full = np.zeros((width * len(members), n_classes), np.float32)
        full[k * width : (k + 1) * width] = kernel
        head.set_weights([full, bias])
        outputs.append(head(pooled))
    averaged = layers.Average(name="probabilities")(outputs)
    name = f"{config.name.replace('-', '_').replace('.', '_')}_{size}_x{len(members)}"
    return keras.Model(inputs, averaged, name=name)


def member_folds(labels: np.ndarray, members: int) -> list[np.ndarray]:
    """Training indices of each member: all but fold k, folds being contiguous chunks of each class.

    The training split is ordered by class and file number, so a contiguous chunk holds whole runs of
    neighbouring slices (patients, approximately) and members see different patients.
    """
    if members == 1:
        return [np.arange(len(labels))]
    folds = np.zeros(len(labels), int)
    for label in np.unique(labels):
        indices = np.flatnonzero(labels == label)
        for k, chunk in enumerate(np.array_split(indices, members)):
            folds[chunk] = k
    return [np.flatnonzero(folds != k) for k in range(members)]


def make_metadata(config: TrainConfig, classes: list[str]) -> BundleMetadata:
    size = config.image_size
    return BundleMetadata(
        name=config.name,
        version=config.version,
        created_at=utc_timestamp(),
        classes=classes,
        positive_classes=config.positive_classes,
        threshold=config.threshold,
        output="softmax",
        temperature=1.0,
        input=InputSpec(height=size, width=size, channels=1, colour="grayscale"),
        preprocessing=PreprocessingSpec(
            colour="grayscale",
            pad_to_square=config.pad_to_square,
            resize=ResizeSpec(height=size, width=size, method="bilinear"),
            intensity=IntensitySpec(method=config.intensity, low=1.0, high=99.0),
            normalisation=NormalisationSpec(scale=1.0 / 255.0, offset=0.0),
        ),
        intended_use=INTENDED_USE,
    )


def training_arrays(prepared: PreparedDataset, metadata: BundleMetadata) -> tuple[np.ndarray, ...]:
    """Train and validation arrays, read as serving will read the bundle: its DICOM window, its chain.

    Returns ``(x_train, y_train, x_val, y_val)``.
    """
    chain = build_preprocess(metadata.preprocessing.model_dump())
    dicom = bundle_dicom_options(metadata)
    classes = metadata.classes
    x_train, y_train = load_arrays(prepared.split.train, chain, classes, dicom=dicom, progress="train images")
    x_val, y_val = load_arrays(prepared.split.validation, chain, classes, dicom=dicom, progress="validation images")
    return x_train, y_train, x_val, y_val


def _tensorboard_callback(log_dir: Path):
    import keras

    if importlib.util.find_spec("tensorboard") is None:  # tf.summary needs the tensorboard package
        print("TensorBoard is not installed: no logs written (pip install -r requirements.txt)", file=sys.stderr)
        return None
    return keras.callbacks.TensorBoard(log_dir=str(log_dir), write_graph=False, profile_batch=0)


# --------------------------------------------------------------------------- run


def run(config: TrainConfig) -> Path:
    """Train and write the bundle (then evaluate it, which writes model.json once); returns its folder."""
    started = time.perf_counter()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()

    prepared: PreparedDataset = prepare_dataset(
        config.data_dir,
        layout=config.layout,
        classes=config.classes,
        seed=config.seed,
        blocks=config.blocks,
        gap=config.gap,
        near_duplicate_rmse=config.near_duplicate_rmse,
        test_fraction=config.test_fraction,
    )
    classes = list(prepared.classes)
    unknown = sorted(set(config.positive_classes) - set(classes))
    if unknown:
        raise ValueError(f"positive classes {unknown} are not among the classes {classes}")
    print_dataset(prepared)

    metadata = make_metadata(config, classes)
    x_train, y_train, x_val, y_val = training_arrays(prepared, metadata)
    print(f"preprocessed {len(x_train)} train + {len(x_val)} validation images", flush=True)

    if config.refit:  # the recipe was chosen beforehand: the shipped model learns from validation too
        x_fit, y_fit = np.concatenate([x_train, x_val]), np.concatenate([y_train, y_val])
        print(f"refit: fitting on train + validation ({len(x_fit)} images)", flush=True)
    else:
        x_fit, y_fit = x_train, y_train
    class_weight = balanced_class_weights(y_fit, len(classes))
    log_dir = config.runs_dir / f"{config.name}-{config.version}"
    fit_started = time.perf_counter()
    members, histories = fit_members(config, x_fit, y_fit, x_val, y_val, len(classes), class_weight, log_dir)
    model = assemble_ensemble(members, config, len(classes))
    fit_wall = time.perf_counter() - fit_started
    val_loss = histories[-1]["val_loss"] if histories else []
    best_epoch = int(np.argmin(val_loss)) + 1 if config.patience > 0 else len(val_loss)

    bundle_dir = write_bundle(config, prepared, model, histories)
    metadata.framework = {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    metadata.dataset = (config.preset.dataset if config.preset else {}) | prepared.summary()
    metadata.training = TrainingRecord.model_validate(
        training_record(config, model, classes, class_weight, val_loss, best_epoch)
        | {
            "fit_wall_time_s": round(fit_wall, 1),
            "train_wall_time_s": round(time.perf_counter() - started, 1),
            "tensorboard_log_dir": repo_relative(log_dir),
            "command": config.command,
        }
    )
    print(
        f"trained ({len(val_loss)} epochs) in {fit_wall:.0f}s; bundle written to {bundle_dir} "
        f"(model.h5 {(bundle_dir / MODEL_FILE).stat().st_size / 1024:.0f} KiB)",
        flush=True,
    )
    if config.evaluate:  # evaluate writes model.json, once, with its figures
        from training.evaluate import evaluate_bundle

        evaluate_bundle(bundle_dir, config.data_dir, smoke_size=config.smoke_size, metadata=metadata)
    else:
        write_metadata(bundle_dir, metadata)
    print(f"total wall time {time.perf_counter() - started:.0f}s", flush=True)
    return bundle_dir


def fit_members(
    config: TrainConfig,
    x_fit: np.ndarray,
    y_fit: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    n_classes: int,
    class_weight: dict,
    log_dir: Path,
) -> tuple[list, list[dict]]:
    """Train the ensemble's members, member k without fold k; returns them and their Keras histories."""
    import keras

    members, histories = [], []
    for k, indices in enumerate(member_folds(y_fit, config.ensemble)):
        seed = config.seed + k
        keras.utils.set_random_seed(seed)
        member = build_model(config, n_classes, prefix=f"m{k + 1}_" if config.ensemble > 1 else "")
        if config.ensemble > 1:
            print(f"member {k + 1}/{config.ensemble}: {len(indices)} training images, seed {seed}", flush=True)
        if config.architecture == "hog":  # a convex fit, no epochs: scikit-learn's logistic regression
            fit_hog_head(member, x_fit[indices], y_fit[indices], n_classes, seed)
            members.append(member)
            continue
        steps = config.epochs * int(np.ceil(len(indices) / config.batch_size))
        rate = (
            keras.optimizers.schedules.CosineDecay(config.learning_rate, steps)
            if config.lr_schedule == "cosine"
            else config.learning_rate
        )
        member.compile(
            optimizer=keras.optimizers.Adam(rate),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
            metrics=["accuracy"],
        )
        train_ds, val_ds = make_datasets(x_fit[indices], y_fit[indices], x_val, y_val, config, n_classes, seed)
        member_log = log_dir / f"member{k + 1}" if config.ensemble > 1 else log_dir
        callbacks = [cb for cb in [_tensorboard_callback(member_log)] if cb is not None]
        if config.patience > 0:
            callbacks.append(
                keras.callbacks.EarlyStopping(
                    monitor="val_loss",
                    patience=config.patience,
                    restore_best_weights=True,
                    start_from_epoch=config.warmup_epochs,
                )
            )
        history = member.fit(
            train_ds,
            validation_data=val_ds,
            epochs=config.epochs,
            class_weight=class_weight,
            callbacks=callbacks,
            shuffle=False,  # the tf.data pipeline shuffles, seeded
            verbose=1 if sys.stdout.isatty() else 2,  # a progress bar on a terminal, one line per epoch in logs
        )
        members.append(member)
        histories.append(history.history)
    return members, histories


def training_record(config: TrainConfig, model, classes, class_weight, val_loss, best_epoch) -> dict:
    """``model.json`` ``training``: how the model was made (the card's Training section reads it)."""
    return {
        "preset": config.preset.key if config.preset else None,
        "recipe": config.recipe(),
        "matches_preset_recipe": config.matches_preset_recipe(),
        "architecture": describe_architecture(config),
        "parameters": int(model.count_params()),
        "epochs_run": len(val_loss),
        "weights_from_epoch": best_epoch,
        "early_stopping": (
            "none: a convex fit to convergence"
            if config.architecture == "hog"
            else f"val_loss (class-weighted), patience {config.patience} from epoch {config.warmup_epochs}, "
            "restore_best_weights"
            if config.patience > 0
            else f"none: fixed {config.epochs} epochs, last epoch's weights"
        ),
        "optimizer": (
            f"scikit-learn LogisticRegression(C={HOG_C}, class_weight='balanced', lbfgs) on the frozen features"
            if config.architecture == "hog"
            else f"Adam(learning_rate={config.learning_rate}, {config.lr_schedule}), categorical cross-entropy"
            + (f" with label smoothing {config.label_smoothing}" if config.label_smoothing else "")
        ),
        "refit_on_validation": config.refit,
        "class_weight": {classes[i]: round(w, 4) for i, w in class_weight.items()},
        "augmentation": "none (a HOG head is fitted on the images as they are)"
        if config.architecture == "hog"
        else AUGMENTATIONS[config.augment],
        "seed": config.seed,
    }


def repo_relative(path: Path) -> str:
    """A path as the repository sees it (``../shared/data/...``), so bundles hold no machine-specific paths."""
    return Path(os.path.relpath(Path(path).resolve(), REPO_ROOT)).as_posix()


def describe_architecture(config: TrainConfig) -> str:
    if config.architecture == "hog":
        cells = config.image_size // config.hog_cell
        one = (
            f"{config.image_size}x{config.image_size}x1 input; frozen histogram-of-oriented-gradients front end in "
            f"Keras layers, scikit-image's recipe ({HOG_BINS} unsigned orientations from central differences, "
            f"votes interpolated between neighbouring bins, {config.hog_cell}-pixel cells ({cells}x{cells}), "
            f"{HOG_BLOCK}x{HOG_BLOCK}-cell blocks L2-Hys normalised; the block map `last_conv` is the explained "
            f"layer) plus a {HISTOGRAM_BINS}-bin intensity histogram; a dense softmax head over the flattened "
            f"features: multinomial logistic regression fitted by scikit-learn (class-balanced, C={HOG_C})"
        )
        if config.ensemble == 1:
            return one
        return (
            f"{one}; {config.ensemble} heads, head k trained without fold k of the training split (contiguous "
            "chunks of each class), averaged inside the one model (mean of their softmax outputs)"
        )
    norm = "Conv2D(no bias)+BatchNorm+ReLU" if config.batch_norm else "Conv2D(with bias)+ReLU"
    stages = "/".join(str(f) for f in config.filters)
    one = (
        f"{config.image_size}x{config.image_size}x1 input; {len(config.filters)} stages of 3x3 {norm}+MaxPool "
        f"({stages} filters); last 3x3 conv ({config.last_filters} filters); global average pooling; dropout "
        f"{config.dropout}; dense softmax"
    )
    if config.ensemble == 1:
        return one + " (the last conv is `last_conv`, Grad-CAM's target)"
    return (
        f"ensemble of {config.ensemble} members averaged inside one Keras model (mean of their softmax outputs); "
        f"member k trained on the training split without fold k (contiguous chunks of each class); each member: "
        f"{one}; the members' last conv maps concatenated as `last_conv` (Grad-CAM's target)"
    )


def write_bundle(config: TrainConfig, prepared: PreparedDataset, model, histories: list[dict]) -> Path:
    """model.h5 (inference only), the split manifest and the training log; model.json comes last (see run)."""
    bundle_dir = config.output_dir
    bundle_dir.mkdir(parents=True, exist_ok=True)
    # A bundle folder holds one version: stale evaluation output from an earlier run must go.
    shutil.rmtree(bundle_dir / REPORT_DIR, ignore_errors=True)
    for stale in ("model.json", "MODEL_CARD.md"):
        (bundle_dir / stale).unlink(missing_ok=True)
    (bundle_dir / REPORT_DIR).mkdir()
    staging = bundle_dir / (MODEL_FILE + ".tmp.h5")
    model.save(staging, include_optimizer=False)
    shutil.move(staging, bundle_dir / MODEL_FILE)
    manifest = prepared.manifest() | {"data_dir": repo_relative(config.data_dir)}
    (bundle_dir / SPLIT_MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    history_log = [
        {key: [round(float(v), 5) for v in values] for key, values in history.items()} for history in histories
    ]
    (bundle_dir / TRAINING_LOG).write_text(json.dumps({"history": history_log}, indent=1) + "\n")
    return bundle_dir


def print_dataset(prepared: PreparedDataset) -> None:
    dedup = prepared.dedup
    cross = ", ".join(f"{count} from {split}" for split, count in dedup.cross_split.items())
    cross = f" ({cross} were copies of an earlier split)" if cross else ""
    print(
        f"{prepared.layout} layout, classes {list(prepared.classes)}: {dedup.files} files, "
        f"{dedup.dropped} byte-identical duplicates dropped{cross}, "
        f"{dedup.conflicting} dropped for conflicting labels, {dedup.kept} kept",
        flush=True,
    )
    if prepared.skipped:
        print(f"skipped {len(prepared.skipped)} files without a '(number)' in their name", flush=True)
    split = prepared.split
    counts = split.counts()
    for name in SPLITS:
        print(f"  {name:<11} {counts[name]}", flush=True)
    if split.gap_dropped:
        print(f"  {len(split.gap_dropped)} files dropped as gaps between blocks", flush=True)
    if split.near_duplicates_dropped:
        print(
            f"  {len(split.near_duplicates_dropped)} validation/test images dropped as near-copies of training images",
            flush=True,
        )
