"""Train the bundled default model ``iq-oth-3class`` and write its bundle.

    python -m training.train_default --data-dir ../shared/data/iq-oth-nccd --output-dir models/iq-oth-3class

Steps: scan the IQ-OTH/NCCD folders, deduplicate by sha256, split each class by contiguous
blocks of file numbers (see :mod:`training.datasets`), preprocess every image with the core
package (``decode_upload`` + ``preprocess_image``, the chain ``model.json`` declares), train a
small grayscale CNN per candidate input size, keep the size with the best validation
macro-F1, save ``model.h5``, then load the bundle with :class:`lungscan.predict.Classifier`
and measure validation and held-out test metrics on the saved artifact exactly as it is served.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from lungscan.bundle import (
    MODEL_FILE,
    BundleMetadata,
    InputSpec,
    NormalisationSpec,
    PreprocessingSpec,
    ResizeSpec,
    write_metadata,
)
from lungscan.transforms import build_preprocess
from lungscan.uploads import decode_upload
from training.datasets import (
    CLASSES,
    SPLITS,
    Sample,
    block_split,
    deduplicate,
    drop_near_duplicates,
    load_arrays,
    scan_dataset,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO_ROOT / ".." / "shared" / "data" / "iq-oth-nccd"
DEFAULT_OUTPUT_DIR = REPO_ROOT / "models" / "iq-oth-3class"
MODEL_NAME = "iq-oth-3class"
POSITIVE_CLASSES = ["malignant"]
THRESHOLD = 0.5
MODEL_CARD_FILE = "MODEL_CARD.md"

DATASET = {
    "name": "IQ-OTH/NCCD lung cancer dataset",
    "authors": "Alyasriy & Al-Huseiny",
    "doi": "10.17632/bhmdr45bh2",
    "url": "https://doi.org/10.17632/bhmdr45bh2",
    "licence": "CC BY 4.0",
    "source": "Iraq-Oncology Teaching Hospital / National Center for Cancer Diseases, fall 2019",
    "attribution": (
        "Trained on the IQ-OTH/NCCD lung cancer dataset by Hamdalla Alyasriy and Muayed Al-Huseiny "
        "(Mendeley Data, doi:10.17632/bhmdr45bh2), licensed CC BY 4.0."
    ),
}


# --------------------------------------------------------------------------- metrics


def classification_metrics(
    labels: np.ndarray, probabilities: np.ndarray, classes: list[str], threshold: float = THRESHOLD
) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1 (argmax label), confusion matrix, and
    the suspicious flag's sensitivity/specificity (P(positive classes) >= threshold)."""
    predicted = probabilities.argmax(axis=1)
    k = len(classes)
    confusion = np.zeros((k, k), dtype=int)
    for true, pred in zip(labels, predicted, strict=True):
        confusion[true, pred] += 1
    per_class = {}
    f1s = []
    for i, name in enumerate(classes):
        tp = confusion[i, i]
        support = confusion[i].sum()
        predicted_count = confusion[:, i].sum()
        precision = tp / predicted_count if predicted_count else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        f1s.append(f1)
        per_class[name] = {
            "precision": round(float(precision), 4),
            "recall": round(float(recall), 4),
            "f1": round(float(f1), 4),
            "support": int(support),
        }
    positive_index = [classes.index(name) for name in POSITIVE_CLASSES]
    suspicion = probabilities[:, positive_index].sum(axis=1)
    flagged = suspicion >= threshold
    positive = np.isin(labels, positive_index)
    sensitivity = (flagged & positive).sum() / positive.sum() if positive.any() else 0.0
    specificity = (~flagged & ~positive).sum() / (~positive).sum() if (~positive).any() else 0.0
    return {
        "n": len(labels),
        "accuracy": round(float((predicted == labels).mean()), 4),
        "macro_f1": round(float(np.mean(f1s)), 4),
        "per_class": per_class,
        "malignant_recall": round(float(sensitivity), 4),
        "malignant_specificity": round(float(specificity), 4),
        "suspicious_flag": {
            "positive_classes": POSITIVE_CLASSES,
            "threshold": threshold,
            "sensitivity": round(float(sensitivity), 4),
            "specificity": round(float(specificity), 4),
            "true_positive": int((flagged & positive).sum()),
            "false_negative": int((~flagged & positive).sum()),
            "true_negative": int((~flagged & ~positive).sum()),
            "false_positive": int((flagged & ~positive).sum()),
        },
        "confusion_matrix": {"rows_true_columns_predicted": classes, "matrix": confusion.tolist()},
    }


def balanced_class_weights(labels: np.ndarray, k: int) -> dict[int, float]:
    counts = np.bincount(labels, minlength=k)
    return {i: float(len(labels) / (k * counts[i])) for i in range(k)}


# --------------------------------------------------------------------------- model


def build_model(size: int, n_classes: int):
    """A small grayscale CNN: 3 conv/pool stages, one last conv (Grad-CAM target), GAP, softmax."""
    import keras
    from keras import layers

    inputs = keras.Input((size, size, 1), name="image")
    x = inputs
    for stage, filters in enumerate((16, 32, 64), start=1):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{stage}")(x)
        x = layers.BatchNormalization(name=f"bn{stage}")(x)
        x = layers.ReLU(name=f"relu{stage}")(x)
        x = layers.MaxPooling2D(name=f"pool{stage}")(x)
    x = layers.Conv2D(96, 3, padding="same", use_bias=False, name="last_conv")(x)
    x = layers.BatchNormalization(name="bn_last")(x)
    x = layers.ReLU(name="relu_last")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(0.3, name="dropout")(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=f"{MODEL_NAME.replace('-', '_')}_{size}")


AUGMENTATION = (
    "training only, in the tf.data pipeline (not saved in the model): random horizontal flip, "
    "rotation +-0.03 turn, zoom +-10%, translation +-5%, brightness +-0.05 and contrast +-15%, clipped to [0, 1]"
)


def make_datasets(x_train, y_train, x_val, y_val, batch_size: int, seed: int):
    import keras
    import tensorflow as tf
    from keras import layers

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

    train = (
        tf.data.Dataset.from_tensor_slices((x_train, y_train))
        .shuffle(len(x_train), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        .map(apply, num_parallel_calls=1, deterministic=True)
        .prefetch(2)
    )
    # Validation loss weighted per class, so early stopping follows the balanced objective.
    weights = balanced_class_weights(y_val, len(CLASSES))
    val_weights = np.array([weights[int(y)] for y in y_val], dtype=np.float32)
    validation = tf.data.Dataset.from_tensor_slices((x_val, y_val, val_weights)).batch(128)
    return train, validation


def train_one(size: int, train: list[Sample], validation: list[Sample], args) -> dict:
    import keras

    keras.utils.set_random_seed(args.seed)
    metadata = make_metadata(size)
    chain = build_preprocess(metadata.preprocessing.model_dump())
    started = time.perf_counter()
    x_train, y_train = load_arrays(train, chain)
    x_val, y_val = load_arrays(validation, chain)
    print(
        f"[{size}px] preprocessed {len(x_train)} train + {len(x_val)} validation images "
        f"in {time.perf_counter() - started:.1f}s",
        flush=True,
    )

    model = build_model(size, len(CLASSES))
    model.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    class_weight = balanced_class_weights(y_train, len(CLASSES))
    train_ds, val_ds = make_datasets(x_train, y_train, x_val, y_val, args.batch_size, args.seed)
    callbacks = [
        keras.callbacks.EarlyStopping(
            monitor="val_loss",
            patience=args.patience,
            restore_best_weights=True,
            start_from_epoch=args.warmup_epochs,
        ),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=max(2, args.patience // 2)),
    ]
    started = time.perf_counter()
    history = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=args.epochs,
        class_weight=class_weight,
        callbacks=callbacks,
        verbose=2,
    )
    wall = time.perf_counter() - started
    val_loss = history.history["val_loss"]
    best_epoch = int(np.argmin(val_loss)) + 1
    probabilities = model.predict(x_val, batch_size=128, verbose=0)
    val_metrics = classification_metrics(y_val, probabilities, list(CLASSES))
    print(
        f"[{size}px] {len(val_loss)} epochs in {wall:.0f}s, best epoch {best_epoch} "
        f"(val_loss {val_loss[best_epoch - 1]:.4f}); validation macro-F1 {val_metrics['macro_f1']:.4f}",
        flush=True,
    )
    return {
        "size": size,
        "model": model,
        "metadata": metadata,
        "val_macro_f1": val_metrics["macro_f1"],
        "training": {
            "epochs_run": len(val_loss),
            "best_epoch": best_epoch,
            "best_val_loss": round(float(val_loss[best_epoch - 1]), 4),
            "wall_time_s": round(wall, 1),
            "parameters": int(model.count_params()),
            "class_weight": {CLASSES[i]: round(w, 4) for i, w in class_weight.items()},
        },
    }


# --------------------------------------------------------------------------- bundle


def make_metadata(size: int) -> BundleMetadata:
    now = datetime.now(UTC)
    return BundleMetadata(
        name=MODEL_NAME,
        version=now.strftime("%Y-%m-%dT%H-%M-%SZ"),
        created_at=now.isoformat(timespec="seconds").replace("+00:00", "Z"),
        classes=list(CLASSES),
        positive_classes=POSITIVE_CLASSES,
        threshold=THRESHOLD,
        output="softmax",
        input=InputSpec(height=size, width=size, channels=1, colour="grayscale"),
        preprocessing=PreprocessingSpec(
            colour="grayscale",
            resize=ResizeSpec(height=size, width=size, method="bilinear"),
            normalisation=NormalisationSpec(scale=1.0 / 255.0, offset=0.0),
        ),
        intended_use="research, not diagnosis",
    )


def evaluate_bundle(classifier, samples: list[Sample]) -> dict:
    """Metrics of the saved bundle, through the serving path (decode_upload -> prepare -> predict_batch)."""
    arrays = [classifier.prepare(decode_upload(s.path.read_bytes()))[0] for s in samples]
    probabilities = classifier.predict_batch(np.stack(arrays))
    labels = np.array([classifier.metadata.classes.index(s.label) for s in samples])
    return classification_metrics(labels, probabilities, classifier.metadata.classes, classifier.metadata.threshold)


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def write_model_card(bundle_dir: Path, metadata: BundleMetadata, command: str) -> None:
    test = metadata.metrics["test"]
    val = metadata.metrics["validation"]
    counts = metadata.metrics["counts"]
    dataset = metadata.dataset
    size = metadata.input.height
    rows = "\n".join(
        f"| {name} | {_pct(test['per_class'][name]['precision'])} | {_pct(test['per_class'][name]['recall'])} "
        f"| {test['per_class'][name]['support']} | {_pct(val['per_class'][name]['recall'])} "
        f"| {val['per_class'][name]['support']} |"
        for name in metadata.classes
    )
    matrix = test["confusion_matrix"]["matrix"]
    matrix_rows = "\n".join(
        f"| **{name}** | " + " | ".join(str(v) for v in matrix[i]) + " |" for i, name in enumerate(metadata.classes)
    )
    split_rows = "\n".join(
        f"| {split} | " + " | ".join(str(counts[split][c]) for c in metadata.classes) + f" | {counts[split]['total']} |"
        for split in SPLITS
    )
    selection = ", ".join(
        f"{s}x{s}: {f1:.3f}" for s, f1 in metadata.training["image_size_selection"]["validation_macro_f1"].items()
    )
    window = metadata.preprocessing.dicom_window
    window = f"center {window['center']:g} HU, width {window['width']:g} HU"
    gap_note = ""
    if val["macro_f1"] - test["macro_f1"] > 0.1:
        gap_note = (
            f"\n\nValidation and test disagree strongly (macro-F1 {val['macro_f1']:.3f} vs {test['macro_f1']:.3f}). "
            "Each split holds only a handful of patients per class, so the figures depend heavily on which "
            "patients fall where; the test figure is the honest one (validation was used for early stopping "
            "and selection), and neither is a reliable estimate of performance on new patients."
        )
    text = f"""# Model card: {metadata.name} ({metadata.version})

**Research tool. Not a diagnosis.** This model is a first-pass screening aid for research and
triage experiments on 2D lung CT slices. A clinician must review every scan; the model's output
never replaces a radiologist's reading.

## What it does

- Input: one axial CT slice, converted to 8-bit grayscale, resized to {size}x{size} (bilinear,
  aspect ratio ignored), scaled by 1/255 — the `lungscan` core package's chain, declared in `model.json`.
  DICOM input is windowed first ({window}).
- Output: softmax probabilities over `{metadata.classes}`; the label is the most probable class.
- Suspicious flag ("Cancer Detected"): raised when P(malignant) >= {metadata.threshold}.
  `positive_classes` is `["malignant"]` because "suspicious" means *likely cancer*. Benign nodules
  are not cancer, so they do not raise the cancer flag, but the answer still shows the label
  "benign" and its probability, so a benign finding is visible to the clinician.
  The threshold is the default 0.5, not tuned on validation or test data. The label (argmax) and
  the flag can disagree when no class is above 0.5 (e.g. malignant 0.45, benign 0.40).
- Architecture: small CNN (3 conv/BN/ReLU/max-pool stages of 16/32/64 filters, a last 96-filter
  conv layer `last_conv` used for Grad-CAM, global average pooling, dropout 0.3, dense softmax),
  {metadata.training["parameters"]:,} parameters. Input size chosen by validation macro-F1 among
  the sizes trained in this run ({selection}).

## Data

{dataset["attribution"]} Dataset page: [doi:{dataset["doi"]}]({dataset["url"]}).
Source: {dataset["source"]}. 512x512 grayscale JPEG slices from a Siemens SOMATOM scanner, 110 patients
(55 normal, 15 benign, 40 malignant) in the original publication.

- Deduplication: {dataset["deduplication"]["files"]} files, {dataset["deduplication"]["dropped"]}
  byte-identical duplicates dropped (sha256 of the file bytes; the lowest-numbered copy is kept),
  {dataset["deduplication"]["kept"]} unique images.
- Split (no random per-image split — neighbouring file numbers are slices of the same patient):
  {dataset["split"]["method"]}
  {dataset["split"]["gap_dropped"]} files were dropped as gaps.
- Leak check: {len(dataset["split"]["near_duplicates_dropped"])} validation/test images were dropped because a training
  image is a near-copy of them (RMSE below {dataset["split"]["near_duplicate_rmse"]} at 32x32 grayscale): the same
  patient's slices reappear elsewhere in the numbering, and a block boundary can cut through a patient.

| split | normal | benign | malignant | total |
|---|---:|---:|---:|---:|
{split_rows}

Training: Adam, class-weighted cross-entropy (balanced weights), light augmentation
({metadata.training["augmentation"]}), early stopping on the class-weighted validation loss (best weights restored),
seed {metadata.training["seed"]}.

## Measured performance

Measured on the held-out **test** split (never used for training, early stopping or model
selection), by loading the saved bundle with `lungscan.predict.Classifier` and running every
image through the serving path. Small numbers: the test split holds {counts["test"]["total"]} images
from only a few patients per class ({counts["test"]["benign"]} benign images, probably 1-2 patients),
so every figure has a wide uncertainty.{gap_note}

| | test | validation |
|---|---:|---:|
| accuracy | {_pct(test["accuracy"])} | {_pct(val["accuracy"])} |
| macro-F1 | {test["macro_f1"]:.3f} | {val["macro_f1"]:.3f} |
| malignant recall (suspicious-flag sensitivity) | {_pct(test["malignant_recall"])} | {_pct(val["malignant_recall"])} |
| suspicious-flag specificity | {_pct(test["malignant_specificity"])} | {_pct(val["malignant_specificity"])} |

| class | test precision | test recall | test n | validation recall | validation n |
|---|---:|---:|---:|---:|---:|
{rows}

Test confusion matrix (rows: true class, columns: predicted class):

| | {" | ".join(metadata.classes)} |
|---|{"---:|" * len(metadata.classes)}
{matrix_rows}

## Limitations

- Single source: one hospital, one scanner model, one export pipeline (JPEG screenshots of
  windowed slices). Expect lower performance on other scanners, other windows, or raw DICOM.
- 2D slices, not volumes: the model sees one slice and knows nothing of its neighbours.
- Small benign class ({dataset["deduplication"]["per_class_kept"]["benign"]} unique images from 15 patients):
  benign recall is the least reliable figure above.
- No patient ids: the block split by file number approximates a per-patient split. A block
  boundary can still fall inside one patient's run of slices (the gaps reduce, not remove, this),
  and some duplicated files show that the numbering is not strictly one patient after another.
- Some malignant files are non-square (623x512, 801x512, all in one run of file numbers) and are
  stretched to a square like every input; no other class has them, which is a possible shortcut.
- The metrics are from one split with one seed; they are not a clinical validation.

## Reproduce

```
{command}
```

Framework: TensorFlow {metadata.framework["tensorflow"]}, Keras {metadata.framework["keras"]},
Python {metadata.framework["python"]}. `model.h5` sha256: `{metadata.sha256}`.
"""
    (bundle_dir / MODEL_CARD_FILE).write_text(text)


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="IQ-OTH/NCCD folder (class subfolders)")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR, help="bundle folder to write")
    parser.add_argument(
        "--image-size",
        type=int,
        nargs="+",
        default=[64],
        choices=[64, 96, 128],
        help="input size(s); with several, the best validation macro-F1 wins",
    )
    parser.add_argument("--epochs", type=int, default=40, help="maximum epochs (early stopping usually ends sooner)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--patience", type=int, default=8, help="early stopping patience (epochs)")
    parser.add_argument("--warmup-epochs", type=int, default=10, help="epochs before early stopping may act")
    parser.add_argument("--blocks", type=int, default=13, help="contiguous blocks per class for the split")
    parser.add_argument("--gap", type=int, default=2, help="files dropped at each boundary between splits")
    parser.add_argument(
        "--near-duplicate-rmse",
        type=float,
        default=0.02,
        help="drop validation/test images this close (RMSE at 32x32) to a training image",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = " ".join(["python -m training.train_default", *(sys.argv[1:] if argv is None else argv)])
    started = time.perf_counter()

    import keras
    import tensorflow as tf

    from lungscan.predict import Classifier

    keras.utils.set_random_seed(args.seed)
    tf.config.experimental.enable_op_determinism()

    samples, unnumbered = scan_dataset(args.data_dir)
    if unnumbered:
        print(f"skipped {len(unnumbered)} files without a '(number)' in their name", flush=True)
    unique, dedup = deduplicate(samples)
    print(
        f"{dedup.files} files, {dedup.dropped} byte-identical duplicates dropped, "
        f"{dedup.conflicting} dropped for conflicting labels, {dedup.kept} unique",
        flush=True,
    )
    split = block_split(unique, n_blocks=args.blocks, gap=args.gap, seed=args.seed)
    near_chain = build_preprocess(
        {"colour": "grayscale", "resize": {"height": 32, "width": 32}, "normalisation": {"scale": 1 / 255}}
    )
    split = drop_near_duplicates(split, near_chain, args.near_duplicate_rmse)
    counts = split.counts()
    for name in SPLITS:
        print(f"  {name:<10} {counts[name]}", flush=True)
    print(f"  {len(split.gap_dropped)} files dropped as gaps between splits", flush=True)
    for near in split.near_duplicates_dropped:
        print(
            f"  dropped from {near['split']}: {near['file']} ~ train {near['nearest_train_file']} "
            f"(rmse {near['rmse']})",
            flush=True,
        )

    candidates = [train_one(size, split.train, split.validation, args) for size in args.image_size]
    best = max(candidates, key=lambda c: (c["val_macro_f1"], -c["size"]))  # ties: the smaller, faster input
    print(f"selected {best['size']}x{best['size']} (validation macro-F1 {best['val_macro_f1']:.4f})", flush=True)

    bundle_dir: Path = args.output_dir
    bundle_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("model.json", MODEL_CARD_FILE):
        (bundle_dir / stale).unlink(missing_ok=True)
    staging = bundle_dir / (MODEL_FILE + ".tmp.h5")
    best["model"].save(staging, include_optimizer=False)  # inference only: smaller file
    shutil.move(staging, bundle_dir / MODEL_FILE)

    metadata: BundleMetadata = best["metadata"]
    metadata.framework = {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    per_class_kept = {c: sum(1 for s in unique if s.label == c) for c in CLASSES}
    metadata.dataset = DATASET | {
        "deduplication": {
            "method": "sha256 of file bytes, before splitting; lowest-numbered copy kept",
            "files": dedup.files,
            "dropped": dedup.dropped,
            "conflicting_labels_dropped": dedup.conflicting,
            "kept": dedup.kept,
            "per_class_kept": per_class_kept,
        },
        "split": {
            "method": split.method,
            "blocks": args.blocks,
            "gap": args.gap,
            "seed": args.seed,
            "gap_dropped": len(split.gap_dropped),
            "near_duplicate_check": (
                f"validation/test images whose RMSE to the nearest training image (32x32 grayscale, x/255) "
                f"is below {args.near_duplicate_rmse} are dropped from their split (same patient's slice)"
            ),
            "near_duplicate_rmse": args.near_duplicate_rmse,
            "near_duplicates_dropped": split.near_duplicates_dropped,
            "blocks_by_class": split.blocks,
        },
    }
    metadata.training = best["training"] | {
        "seed": args.seed,
        "batch_size": args.batch_size,
        "max_epochs": args.epochs,
        "optimizer": f"Adam(learning_rate={args.learning_rate}), ReduceLROnPlateau(0.5)",
        "early_stopping": (
            f"val_loss (class-weighted), patience {args.patience} from epoch {args.warmup_epochs}, restore_best_weights"
        ),
        "augmentation": AUGMENTATION,
        "image_size_selection": {
            "criterion": "validation macro-F1",
            "validation_macro_f1": {str(c["size"]): c["val_macro_f1"] for c in candidates},
            "selected": best["size"],
        },
        "command": command,
    }
    write_metadata(bundle_dir, metadata)

    classifier = Classifier(bundle_dir)  # the saved artifact, exactly as it will be served
    validation_metrics = evaluate_bundle(classifier, split.validation)
    test_metrics = evaluate_bundle(classifier, split.test)
    metadata.metrics = {
        "evaluated_on": "held-out test split (never trained on, early-stopped on or used for selection)",
        **{key: test_metrics[key] for key in ("accuracy", "macro_f1", "malignant_recall", "malignant_specificity")},
        "test": test_metrics,
        "validation": validation_metrics,
        "counts": counts,
    }
    metadata.training["total_wall_time_s"] = round(time.perf_counter() - started, 1)
    write_metadata(bundle_dir, metadata)
    write_model_card(bundle_dir, metadata, command)
    Classifier(bundle_dir)  # the final model.json must load and verify

    print(f"\nbundle written to {bundle_dir} (model.h5 {(bundle_dir / MODEL_FILE).stat().st_size / 1024:.0f} KiB)")
    for name, m in (("validation", validation_metrics), ("test", test_metrics)):
        recalls = ", ".join(f"{c} {m['per_class'][c]['recall']:.3f}" for c in CLASSES)
        print(
            f"{name:>10}: n={m['n']} accuracy {m['accuracy']:.3f}  macro-F1 {m['macro_f1']:.3f}  "
            f"recall [{recalls}]  malignant recall {m['malignant_recall']:.3f}  "
            f"specificity {m['malignant_specificity']:.3f}"
        )
    print(f"confusion (test, rows true {list(CLASSES)}): {test_metrics['confusion_matrix']['matrix']}")
    print(f"total wall time {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
