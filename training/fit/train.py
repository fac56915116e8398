"""``python -m training train``: train a small grayscale CNN and write a model bundle.

Steps: scan the dataset, deduplicate by sha256, split without leaks (see
:mod:`training.data.datasets`), preprocess every image with the core package
(``decode_upload`` + ``build_preprocess``/``preprocess_image``, the chain ``model.json``
declares, so training and serving share one implementation), train with balanced class
weights, optional augmentation, fixed seeds, TensorBoard logs and optional early stopping,
then save ``model.h5`` + ``model.json`` (+ ``report/split.json``, ``report/training.json``)
and, unless ``--no-evaluate``, run :mod:`training.measure.evaluate` on the saved bundle.

This module runs those steps; the options are :mod:`training.fit.options`'s, the networks
:mod:`training.fit.networks`' (the HOG recipe :mod:`training.fit.hog`'s), the members' fitting
:mod:`training.fit.fitting`'s.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np

from lungscan.bundle.files import CARD_FILE, METADATA_FILE, MODEL_FILE, REPORT_DIR, SPLIT_FILE, TRAINING_LOG_FILE
from lungscan.bundle.metadata import (
    INTENDED_USE,
    BundleMetadata,
    InputSpec,
    IntensitySpec,
    NormalisationSpec,
    PreprocessingSpec,
    ResizeSpec,
    TrainingRecord,
    utc_timestamp,
)
from lungscan.bundle.store import write_metadata
from lungscan.model.transforms import build_preprocess
from lungscan.uploads import bundle_dicom_options
from training.data.arrays import load_arrays
from training.data.datasets import PreparedDataset, prepare_dataset
from training.data.splits import SPLITS
from training.fit.fitting import fit_members
from training.fit.hog import HISTOGRAM_BINS, HOG_BINS, HOG_BLOCK, HOG_C
from training.fit.networks import assemble_ensemble
from training.fit.options import AUGMENTATIONS, TrainConfig
from training.measure.metrics import balanced_class_weights
from training.presets import REPO_ROOT


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
            crop_to_body=config.crop_to_body,
            pad_to_square=config.pad_to_square,
            resize=ResizeSpec(height=size, width=size, method="bilinear"),
            intensity=IntensitySpec(method=config.intensity, low=1.0, high=99.0),
            normalisation=NormalisationSpec(scale=1.0 / 255.0, offset=0.0),
        ),
        intended_use=INTENDED_USE,
        purpose=config.preset.purpose if config.preset else "",
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
        from training.measure.evaluate import evaluate_bundle

        evaluate_bundle(bundle_dir, config.data_dir, smoke_size=config.smoke_size, metadata=metadata)
    else:
        write_metadata(bundle_dir, metadata)
    print(f"total wall time {time.perf_counter() - started:.0f}s", flush=True)
    return bundle_dir


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
    for stale in (METADATA_FILE, CARD_FILE):
        (bundle_dir / stale).unlink(missing_ok=True)
    (bundle_dir / REPORT_DIR).mkdir()
    staging = bundle_dir / (MODEL_FILE + ".tmp.h5")
    model.save(staging, include_optimizer=False)
    shutil.move(staging, bundle_dir / MODEL_FILE)
    manifest = prepared.manifest() | {"data_dir": repo_relative(config.data_dir)}
    (bundle_dir / SPLIT_FILE).write_text(json.dumps(manifest, indent=1) + "\n")
    history_log = [
        {key: [round(float(v), 5) for v in values] for key, values in history.items()} for history in histories
    ]
    (bundle_dir / TRAINING_LOG_FILE).write_text(json.dumps({"history": history_log}, indent=1) + "\n")
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
