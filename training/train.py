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
    BundleMetadata,
    InputSpec,
    NormalisationSpec,
    PreprocessingSpec,
    ResizeSpec,
    write_metadata,
)
from lungscan.transforms import build_preprocess
from training.datasets import LAYOUTS, PreparedDataset, load_arrays, prepare_dataset
from training.metrics import balanced_class_weights
from training.presets import PRESETS, Preset

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RUNS_DIR = REPO_ROOT / "training" / "runs"
REPORT_DIR = "report"
SPLIT_MANIFEST = f"{REPORT_DIR}/split.json"
TRAINING_LOG = f"{REPORT_DIR}/training.json"

# Defaults for a dataset without a preset; a preset's recipe replaces them, the command line wins.
DEFAULTS = {
    "image_size": 96,
    "epochs": 40,
    "patience": 0,
    "warmup_epochs": 10,
    "batch_size": 32,
    "learning_rate": 1e-3,
    "augment": "none",
    "batch_norm": False,
    "filters": "16,32,64",
    "last_filters": 96,
    "dropout": 0.3,
    "seed": 42,
    "blocks": 13,
    "gap": 2,
    "near_duplicate_rmse": 0.02,
    "test_fraction": 0.2,
    "threshold": 0.5,
    "layout": "auto",
}

AUGMENTATIONS = {
    "none": "none",
    "light": (
        "training batches only, in the tf.data pipeline (not saved in the model): random horizontal flip, "
        "rotation +-0.03 turn (~11 degrees), zoom +-10%, translation +-5%, brightness +-0.05 and contrast +-15%, "
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
    data.add_argument("--threshold", type=float, help="suspicion threshold on the summed positive probability")
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
    model.add_argument("--augment", choices=sorted(AUGMENTATIONS), help="training augmentation (none | light)")
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


def build_model(config: TrainConfig, n_classes: int):
    """A small grayscale CNN: conv/pool stages, one last conv (Grad-CAM's target), GAP, dropout, softmax.

    Without BatchNormalization by default: on these small datasets (a few hundred images, a
    handful of patients per validation split) BatchNorm made training erratic, and the plain
    network won a block-grouped cross-validation (see the IQ-OTH preset's recipe selection).
    """
    import keras
    from keras import layers

    size = config.image_size
    inputs = keras.Input((size, size, 1), name="image")
    x = inputs
    stages = [*config.filters, config.last_filters]
    for stage, filters in enumerate(stages, start=1):
        last = stage == len(stages)
        name = "last_conv" if last else f"conv{stage}"
        x = layers.Conv2D(filters, 3, padding="same", use_bias=not config.batch_norm, name=name)(x)
        if config.batch_norm:
            x = layers.BatchNormalization(name=f"bn{stage}")(x)
        x = layers.ReLU(name=f"relu{stage}")(x)
        if not last:
            x = layers.MaxPooling2D(name=f"pool{stage}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(config.dropout, name="dropout")(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=f"{config.name.replace('-', '_').replace('.', '_')}_{size}")


def make_datasets(x_train, y_train, x_val, y_val, config: TrainConfig, n_classes: int):
    """tf.data pipelines: shuffled (and augmented) training batches; class-weighted validation."""
    import keras
    import tensorflow as tf
    from keras import layers

    seed = config.seed
    train = tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(
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
    train = train.prefetch(tf.data.AUTOTUNE)
    # Validation loss weighted per class, so early stopping follows the balanced objective.
    weights = balanced_class_weights(y_val, n_classes)
    val_weights = np.array([weights[int(y)] for y in y_val], dtype=np.float32)
    validation = tf.data.Dataset.from_tensor_slices((x_val, y_val, val_weights)).batch(128)
    return train, validation


def make_metadata(config: TrainConfig, classes: list[str]) -> BundleMetadata:
    size = config.image_size
    return BundleMetadata(
        name=config.name,
        version=config.version,
        created_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        classes=classes,
        positive_classes=config.positive_classes,
        threshold=config.threshold,
        output="softmax",
        temperature=1.0,
        input=InputSpec(height=size, width=size, channels=1, colour="grayscale"),
        preprocessing=PreprocessingSpec(
            colour="grayscale",
            resize=ResizeSpec(height=size, width=size, method="bilinear"),
            normalisation=NormalisationSpec(scale=1.0 / 255.0, offset=0.0),
        ),
        intended_use=INTENDED_USE,
    )


def _tensorboard_callback(log_dir: Path):
    import keras

    if importlib.util.find_spec("tensorboard") is None:  # tf.summary needs the tensorboard package
        print("TensorBoard is not installed: no logs written (pip install -r requirements.txt)", file=sys.stderr)
        return None
    return keras.callbacks.TensorBoard(log_dir=str(log_dir), write_graph=False, profile_batch=0)


# --------------------------------------------------------------------------- run


def run(config: TrainConfig) -> Path:
    """Train and write the bundle; returns its folder."""
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
    chain = build_preprocess(metadata.preprocessing.model_dump())  # the chain the bundle declares
    x_train, y_train = load_arrays(prepared.split.train, chain, classes, progress="train images")
    x_val, y_val = load_arrays(prepared.split.validation, chain, classes, progress="validation images")
    print(f"preprocessed {len(x_train)} train + {len(x_val)} validation images", flush=True)

    model = build_model(config, len(classes))
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    class_weight = balanced_class_weights(y_train, len(classes))
    train_ds, val_ds = make_datasets(x_train, y_train, x_val, y_val, config, len(classes))
    log_dir = config.runs_dir / f"{config.name}-{config.version}"
    callbacks = [cb for cb in [_tensorboard_callback(log_dir)] if cb is not None]
    if config.patience > 0:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss",
                patience=config.patience,
                restore_best_weights=True,
                start_from_epoch=config.warmup_epochs,
            )
        )
    fit_started = time.perf_counter()
    history = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=config.epochs,
        class_weight=class_weight,
        callbacks=callbacks,
        shuffle=False,  # the tf.data pipeline shuffles, seeded
        verbose=1 if sys.stdout.isatty() else 2,  # Keras' own progress bar on a terminal, one line per epoch in logs
    )
    fit_wall = time.perf_counter() - fit_started
    val_loss = history.history["val_loss"]
    best_epoch = int(np.argmin(val_loss)) + 1 if config.patience > 0 else len(val_loss)

    bundle_dir = write_bundle(config, prepared, model, metadata)
    metadata.framework = {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    metadata.dataset = (config.preset.dataset if config.preset else {}) | prepared.summary()
    metadata.training = {
        "preset": config.preset.key if config.preset else None,
        "recipe": config.recipe(),
        "matches_preset_recipe": config.matches_preset_recipe(),
        "architecture": describe_architecture(config),
        "parameters": int(model.count_params()),
        "epochs_run": len(val_loss),
        "weights_from_epoch": best_epoch,
        "early_stopping": (
            f"val_loss (class-weighted), patience {config.patience} from epoch {config.warmup_epochs}, "
            "restore_best_weights"
            if config.patience > 0
            else f"none: fixed {config.epochs} epochs, last epoch's weights"
        ),
        "optimizer": f"Adam(learning_rate={config.learning_rate}), sparse categorical cross-entropy",
        "class_weight": {classes[i]: round(w, 4) for i, w in class_weight.items()},
        "augmentation": AUGMENTATIONS[config.augment],
        "seed": config.seed,
        "fit_wall_time_s": round(fit_wall, 1),
        "train_wall_time_s": round(time.perf_counter() - started, 1),
        "tensorboard_log_dir": repo_relative(log_dir),
        "command": config.command,
    }
    history_log = {key: [round(float(v), 5) for v in values] for key, values in history.history.items()}
    (bundle_dir / TRAINING_LOG).write_text(json.dumps({"history": history_log}, indent=1) + "\n")
    write_metadata(bundle_dir, metadata)
    print(
        f"trained {len(val_loss)} epochs in {fit_wall:.0f}s; bundle written to {bundle_dir} "
        f"(model.h5 {(bundle_dir / MODEL_FILE).stat().st_size / 1024:.0f} KiB)",
        flush=True,
    )
    if config.evaluate:
        from training.evaluate import evaluate_bundle

        evaluate_bundle(bundle_dir, config.data_dir, smoke_size=config.smoke_size)
    print(f"total wall time {time.perf_counter() - started:.0f}s", flush=True)
    return bundle_dir


def repo_relative(path: Path) -> str:
    """A path as the repository sees it (``../shared/data/...``), so bundles hold no machine-specific paths."""
    return Path(os.path.relpath(Path(path).resolve(), REPO_ROOT)).as_posix()


def describe_architecture(config: TrainConfig) -> str:
    norm = "Conv2D(no bias)+BatchNorm+ReLU" if config.batch_norm else "Conv2D(with bias)+ReLU"
    stages = "/".join(str(f) for f in config.filters)
    return (
        f"{config.image_size}x{config.image_size}x1 input; {len(config.filters)} stages of 3x3 {norm}+MaxPool "
        f"({stages} filters); last 3x3 conv `last_conv` ({config.last_filters} filters, Grad-CAM's target); "
        f"global average pooling; dropout {config.dropout}; dense softmax"
    )


def write_bundle(config: TrainConfig, prepared: PreparedDataset, model, metadata: BundleMetadata) -> Path:
    """model.h5 (inference only), the split manifest, and a first model.json (metrics come from evaluate)."""
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
    write_metadata(bundle_dir, metadata)
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
    for name in ("train", "validation", "test"):
        print(f"  {name:<10} {counts[name]}", flush=True)
    if split.gap_dropped:
        print(f"  {len(split.gap_dropped)} files dropped as gaps between blocks", flush=True)
    if split.near_duplicates_dropped:
        print(
            f"  {len(split.near_duplicates_dropped)} validation/test images dropped as near-copies of training images",
            flush=True,
        )
