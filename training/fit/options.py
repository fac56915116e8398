"""The ``train`` subcommand's options, resolved into a :class:`TrainConfig`: command line over the preset's
recipe over ``DEFAULTS`` (:mod:`training.presets`)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Literal

from training.data.layouts import LAYOUTS
from training.presets import DEFAULTS, PRESETS, REPO_ROOT, Preset

DEFAULT_RUNS_DIR = REPO_ROOT / "training" / "runs"

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
    switch = partial(model.add_argument, action=argparse.BooleanOptionalAction, default=None)  # --x / --no-x
    switch(
        "--crop-to-body",
        help="crop to a square around the patient's body before resizing (declared in model.json)",
    )
    switch("--pad-to-square", help="pad to a square before resizing instead of stretching (declared in model.json)")
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
    switch(
        "--refit",
        help="fit the shipped model on train + validation (the recipe chosen beforehand on validation); "
        "calibration and test stay unseen",
    )
    switch("--batch-norm", help="BatchNormalization after convs")
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
    crop_to_body: bool
    pad_to_square: bool
    intensity: Literal["fixed", "percentile"]
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
            "crop_to_body": self.crop_to_body,
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
        crop_to_body=bool(pick("crop_to_body")),
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
