"""Write ``MODEL_CARD.md`` from a bundle's ``model.json``: use, data and credit, split, metrics, limits."""

from __future__ import annotations

import math
from pathlib import Path

from lungscan.bundle.files import CARD_FILE, MODEL_FILE, report_files
from lungscan.bundle.metadata import BundleMetadata, ReportRecord
from training.measure.calibrate import CALIBRATION_WORDS
from training.measure.familiarity_card import familiarity_section, sources_section
from training.presets import PRESETS

GENERIC_LIMITATIONS = (
    "2D slices, not volumes: the model sees one slice and knows nothing of its neighbours.",
    "Trained and measured on one small public dataset; performance on other scanners, windows, exports or "
    "populations is unknown and probably lower.",
)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (honest error bars for small test sets)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _interval(successes: int, n: int) -> str:
    low, high = wilson_interval(successes, n)
    return f"{100 * low:.0f}-{100 * high:.0f}%"


def write_model_card(bundle_dir: Path, metadata: BundleMetadata) -> Path:
    text = model_card(metadata, (Path(bundle_dir) / MODEL_FILE).stat().st_size)
    path = Path(bundle_dir) / CARD_FILE
    path.write_text(text)
    return path


def refresh_card(bundle_dir: Path, metadata: BundleMetadata) -> None:
    """Re-render an evaluated bundle's card from ``metadata`` and record the report files' sha256 in it.

    Every stage that changes what the card shows (evaluate, the gate) calls this before its write of
    model.json, so the card and the checksums always describe the model.json written with them.
    """
    if not metadata.metrics.get("test"):  # not evaluated yet: no card to show
        return
    write_model_card(bundle_dir, metadata)
    metadata.report = ReportRecord(files=report_files(bundle_dir))


def model_card(metadata: BundleMetadata, model_bytes: int) -> str:
    """The card's sections, in order: use and model, data and split, performance, sets and gate, limits."""
    training = dict(getattr(metadata, "training", None) or {})
    preset = PRESETS.get(training.get("preset") or "")
    return (
        _use_section(metadata, training, preset, model_bytes)
        + _data_section(metadata, training, preset)
        + _performance_section(metadata, training)
        + _conformal_section(metadata)
        + _gate_section(metadata)
        + sources_section(metadata)
        + familiarity_section(metadata)
        + _limits_section(metadata, training, preset)
    )


def _use_section(metadata: BundleMetadata, training: dict, preset, model_bytes: int) -> str:
    """Title, intended use and what the model does (input, output, flag, architecture, training)."""
    classes = metadata.classes
    size = metadata.input.height
    window = metadata.preprocessing.dicom_window.model_dump()
    positives = ", ".join(f"`{c}`" for c in metadata.positive_classes)
    rationale = preset.positive_rationale if preset else f"`positive_classes` is [{positives}]."
    refit = bool(training.get("refit_on_validation"))
    preprocessing = metadata.preprocessing
    if preprocessing.crop_to_body:  # the crop is square: nothing is stretched
        resize_text = (
            "cropped to a square around the body (the largest region of non-black pixels once smoothed into one "
            f"blob; the couch and the empty field around are dropped), resized to {size}x{size} (bilinear)"
        )
    elif preprocessing.pad_to_square:
        resize_text = f"padded with black to a square (aspect ratio kept), resized to {size}x{size} (bilinear)"
    else:
        resize_text = f"resized to {size}x{size} (bilinear, aspect ratio ignored)"
    intensity = preprocessing.intensity
    scale_text = (
        f"intensities scaled so that the image's {intensity.low:g} and {intensity.high:g} percentiles map to 0 "
        "and 1 (clipped)"
        if intensity.method == "percentile"
        else "scaled by 1/255"
    )
    schedule = (
        f"batch {training.get('recipe', {}).get('batch_size')}, {training.get('epochs_run')} epochs (early stopping: "
        f"{training.get('early_stopping')}),"
        if training.get("epochs_run")
        else f"{training.get('early_stopping')},"
    )
    refit_text = " Fitted on train + validation (refit after the recipe was chosen)." if refit else ""
    calibration_words = CALIBRATION_WORDS[metadata.calibration.family] if metadata.calibration else "nothing"
    return f"""# Model card: {metadata.name} ({metadata.version})

**Research tool. Not a diagnosis.** This model is a first-pass screening aid for research and
triage experiments on 2D lung CT slices. It is not a medical device. A clinician must review every
scan; the model's output never replaces a radiologist's reading.

## Intended use

- Research, teaching and first-pass triage experiments on single axial lung CT slices, with a
  clinician reviewing every case. Not for diagnosis, treatment decisions or unsupervised screening.
- Not validated on other hospitals, scanners, windows, paediatric patients or non-CT images.

## What it does

- Input: one CT slice (PNG, JPEG, BMP, TIFF or DICOM), converted to 8-bit grayscale, {resize_text},
  {scale_text}: the `lungscan` core package's chain declared in `model.json`, the same code in training
  and serving. DICOM input is windowed first
  (center {window["center"]:g} HU, width {window["width"]:g} HU).
- Output: softmax probabilities over `{classes}`, calibrated by {calibration_words} (below); shown
  confidences are capped at 99.9%. With them, a conformal **prediction set** (below) and `uncertain`
  when it holds both a flagged and an unflagged class (or the slice is unfamiliar).
- Tier and suspicious flag: `suspicious` ("Suspicious — review first") when a positive class is the most
  probable one, `not_excluded` ("Malignancy not excluded — review") when one is in the prediction set
  (it could not be ruled out; the set is widened to hold one when the summed probability of {positives}
  reaches {metadata.threshold}), `clear` ("No suspicious finding") otherwise; the flag is raised for the
  first two. {rationale}
  The threshold is the default {metadata.threshold}, not tuned on validation or test data.
- Architecture: {training.get("architecture", "")}; {training.get("parameters", 0):,} parameters,
  `model.h5` {model_bytes / 1024:.0f} KiB.
- Training: {training.get("optimizer", "")}, balanced class weights
  ({", ".join(f"{k} {v}" for k, v in training.get("class_weight", {}).items())}), {schedule}
  augmentation: {training.get("augmentation")}; seed {training.get("seed")}.{refit_text}

"""


def _data_section(metadata: BundleMetadata, training: dict, preset) -> str:
    """Dataset credit, deduplication, the split and its counts, the recipe's evidence."""
    classes = metadata.classes
    dataset = metadata.dataset
    dedup, split = dataset["deduplication"], dataset["split"]
    counts = split["counts"]
    split_rows = "\n".join(
        f"| {name} | " + " | ".join(str(counts[name][c]) for c in classes) + f" | {counts[name]['total']} |"
        for name in ("train", "validation", "calibration", "test")
        if name in counts
    )

    cross = dedup.get("cross_split_dropped") or {}
    cross_text = (
        " Of these, "
        + ", ".join(
            f"{n} {name} file(s) were byte-identical to a file of an earlier split folder" for name, n in cross.items()
        )
        + " and left that split."
        if cross
        else ""
    )
    recipe_section = ""
    if preset and preset.recipe_selection:
        applies = (
            "This bundle was trained with exactly that recipe."
            if training.get("matches_preset_recipe")
            else "**This bundle was trained with other arguments than that recipe**: the evidence does not apply."
        )
        recipe_section = f"\n## Recipe selection\n\n{preset.recipe_selection}\n\n{applies}\n"
    credit = dataset.get("attribution") or "No dataset attribution recorded (trained without a preset)."
    link = f" Dataset page: <{dataset['url']}>." if dataset.get("url") else ""
    description = preset.data_description if preset else ""
    return f"""## Data and attribution

{credit}{link}
Licence: {dataset.get("licence", "see the dataset page").rstrip(".")}. Source: {dataset.get("source", "")}.
{description}

- Deduplication by content (sha256 of the file bytes): {dedup["files"]} files, {dedup["dropped"]} byte-identical
  copies dropped, {dedup["conflicting_labels_dropped"]} dropped because identical bytes carried two labels,
  {dedup["kept"]} unique images.{cross_text}
- Split: {split["method"]}
- {split["gap_dropped"]} files dropped as gaps between blocks; {split["near_duplicates_dropped"]} held-out
  images dropped as near-copies of a training image. Validation selects recipes; calibration fits the
  probability calibration and the conformal thresholds; test is only measured. The full file lists are in
  `report/split.json`.

| split | {" | ".join(classes)} | total |
|---|{"---:|" * len(classes)}---:|
{split_rows}
{recipe_section}
"""


def _performance_section(metadata: BundleMetadata, training: dict) -> str:
    """Test and validation figures with 95% intervals, per class, the confusion matrix, calibration."""
    metrics = metadata.metrics
    test, val = metrics["test"], metrics["validation"]
    classes = metadata.classes
    calibration = metrics["calibration"]
    flag_test, flag_val = test.get("suspicious_flag", {}), val.get("suspicious_flag", {})

    def class_row(i: int, c: str) -> str:
        t, v = test["per_class"][c], val["per_class"][c]
        recall_ci = _interval(test["confusion_matrix"]["matrix"][i][i], t["support"])
        return (
            f"| {c} | {_pct(t['precision'])} | {_pct(t['recall'])} ({recall_ci}) | {_num(t['f1'])} "
            f"| {_num(t['roc_auc'])} | {t['support']} | {_pct(v['recall'])} | {v['support']} |"
        )

    class_rows = "\n".join(class_row(i, c) for i, c in enumerate(classes))
    matrix = test["confusion_matrix"]["matrix"]
    matrix_rows = "\n".join(
        f"| **{c}** | " + " | ".join(str(v) for v in matrix[i]) + " |" for i, c in enumerate(classes)
    )
    correct = sum(matrix[i][i] for i in range(len(classes)))
    positives_n = flag_test.get("true_positive", 0) + flag_test.get("false_negative", 0)
    negatives_n = flag_test.get("true_negative", 0) + flag_test.get("false_positive", 0)
    sensitivity_ci = _interval(flag_test.get("true_positive", 0), positives_n)
    specificity_ci = _interval(flag_test.get("true_negative", 0), negatives_n)
    sensitivity_row = f"{_pct(flag_test.get('sensitivity'))} ({sensitivity_ci}) | {_pct(flag_val.get('sensitivity'))}"
    specificity_row = f"{_pct(flag_test.get('specificity'))} ({specificity_ci}) | {_pct(flag_val.get('specificity'))}"
    ece_before = f"{calibration['test_ece_before']:.3f} | {calibration['validation_ece_before']:.3f}"
    ece_after = f"{calibration['test_ece_after']:.3f} | {calibration['validation_ece_after']:.3f}"
    calibration_note = ""
    if calibration["test_ece_after"] > calibration["test_ece_before"]:
        assert metadata.calibration is not None  # the metrics' calibration report describes it
        calibration_note = (
            f"\n\nCalibration did not carry over: the {metadata.calibration.family.replace('_', ' ')} fitted on the "
            f"calibration split made the test calibration worse (ECE "
            f"{calibration['test_ece_before']:.3f} -> {calibration['test_ece_after']:.3f}). The calibration split "
            "holds few patients and is not like the test split; read the served probabilities as a ranking, not as "
            "calibrated chances."
        )
    elif calibration["test_ece_after"] > 0.05:
        uncertainty = calibration.get("test_ece_after_uncertainty") or {}
        low, high = uncertainty.get("bootstrap_95", (None, None))
        calibration_note = (
            f"\n\nThe test ECE after calibration is {calibration['test_ece_after']:.3f} (95% bootstrap interval "
            f"{_num(low)}-{_num(high)}), above the 0.05 target. On {test['n']} images even perfectly calibrated "
            f"probabilities would measure about {_num(uncertainty.get('if_perfectly_calibrated'))} (labels drawn "
            "from the served probabilities, the same bins): below that the figure cannot be read. On patients or "
            "sources like the test split the confidence is only approximately a probability."
        )
    gap_note = ""
    if val["macro_f1"] - test["macro_f1"] > 0.1:
        gap_note = (
            f"\n\nValidation and test disagree (macro-F1 {val['macro_f1']:.3f} vs {test['macro_f1']:.3f}). Each split "
            "holds few patients per class, so the figures depend on which patients fall where; the test figure is the "
            "honest one, and neither is a reliable estimate for new patients."
        )
    refit = bool(training.get("refit_on_validation"))
    if refit:
        gap_note = (
            "\n\nThe recipe was chosen on the validation split; the shipped model was then refitted on train + "
            "validation (more images, nothing else changed), so its **validation column is training data**, "
            "not a held-out figure. Calibration and test stayed unseen."
        )
    validation_header = "validation (seen in the refit)" if refit else "validation"
    baseline = metrics.get("majority_baseline")
    baseline_row = (
        f"| majority-class baseline (always `{baseline['class']}`) | {_pct(baseline['accuracy'])} | |\n"
        if baseline
        else ""
    )

    return f"""## Measured performance

Measured on the held-out **test** split ({metrics["evaluated_on"]}) by loading the saved
bundle with `lungscan.model.classifier.Classifier` and sending every image through the serving path (decode,
preprocess, predict with the calibration, flag, prediction set).
Intervals are 95% Wilson intervals: the test split is small ({test["n"]} images), so every figure is
uncertain.{gap_note}{calibration_note}

| | test | {validation_header} |
|---|---:|---:|
| accuracy | {_pct(test["accuracy"])} ({_interval(correct, test["n"])}) | {_pct(val["accuracy"])} |
{baseline_row}| macro-F1 | {test["macro_f1"]:.3f} | {val["macro_f1"]:.3f} |
| macro ROC-AUC (one vs rest) | {_num(test["macro_roc_auc"])} | {_num(val["macro_roc_auc"])} |
| suspicious-flag sensitivity | {sensitivity_row} |
| suspicious-flag specificity | {specificity_row} |
| expected calibration error, as trained | {ece_before} |
| expected calibration error, calibrated | {ece_after} |
| share of answers marked uncertain | {_pct(test.get("uncertain_share"))} | {_pct(val.get("uncertain_share"))} |

| class | test precision | test recall (95% CI) | test F1 | test ROC-AUC | test n | validation recall | validation n |
|---|---:|---:|---:|---:|---:|---:|---:|
{class_rows}

Test confusion matrix (rows: true class, columns: predicted class):

| | {" | ".join(classes)} |
|---|{"---:|" * len(classes)}
{matrix_rows}

{_calibration_table(calibration)}

Reliability (test split, before and after the calibration): `report/reliability.png`.

![reliability](report/reliability.png)
"""


def _calibration_table(calibration: dict) -> str:
    """Every calibration family tried: fitted and chosen on the calibration split, test only shown."""
    rows = "\n".join(
        f"| {row['family'].replace('_', ' ')}{' (chosen)' if row.get('chosen') else ''} | "
        f"{row['cross_validated_nll']:.3f} | {row['calibration_ece']:.3f} | {row['test_nll']:.3f} | "
        f"{row['test_ece']:.3f} |"
        for row in calibration["candidates"]
    )
    return f"""Calibration: {calibration["method"]}.
Scale {calibration["scale"]}, bias {calibration["bias"]} (per class, on the log-probabilities).
The families tried, each fitted on the calibration split; the test columns were not used to choose:

| calibration | cross-validated NLL (calibration split) | calibration ECE (in-sample) | test NLL | test ECE |
|---|---:|---:|---:|---:|
{rows}"""


def _limits_section(metadata: BundleMetadata, training: dict, preset) -> str:
    """Where the figures are, the limitations, and how to reproduce the bundle."""
    metrics = metadata.metrics
    limitations = "\n".join(f"- {item}" for item in (preset.limitations if preset else GENERIC_LIMITATIONS))
    framework = getattr(metadata, "framework", None) or {}
    return f"""
Figures: `report/confusion_matrix.png`, `report/roc.png`, `report/reliability.png`; per-image test
predictions: `report/test_predictions.csv`. Evaluation-set fingerprint (sha256 over the sorted test
image hashes): `{metrics["evaluation_set"]["fingerprint"]}`; `publish` compares models only on equal fingerprints.

## Limitations

{limitations}
- The metrics come from one split and one seed; they are not a clinical validation.

## Reproduce

```
{training.get("command", "")}
```

Framework: TensorFlow {framework.get("tensorflow")}, Keras {framework.get("keras")}, Python {framework.get("python")},
NumPy {framework.get("numpy")}. Training took {training.get("fit_wall_time_s")} s (fit) on the machine that made it.
`model.h5` sha256: `{metadata.sha256}`.
"""


def _conformal_section(metadata: BundleMetadata) -> str:
    spec = metadata.conformal
    if spec is None:
        return "\nNo conformal calibration: answers carry no prediction set.\n"
    rows = []
    for name in metadata.classes:
        cells = []
        for split in ("test", "validation", "calibration"):
            entry = spec.evaluation.get(split, {}).get("per_class", {}).get(name, {})
            cells.append(f"{_pct(entry.get('coverage'))} / {_num(entry.get('mean_set_size'))} (n={entry.get('n', 0)})")
        rows.append(f"| {name} | {spec.thresholds[name]:.4f} | " + " | ".join(cells) + " |")
    overall = " | ".join(
        f"{_pct(spec.evaluation.get(split, {}).get('coverage'))} / "
        f"{_num(spec.evaluation.get(split, {}).get('mean_set_size'))}"
        for split in ("test", "validation", "calibration")
    )
    table = "\n".join(rows)
    return f"""
## Prediction sets (conformal)

Each answer carries `prediction_set`: the classes that could not be ruled out at {spec.coverage:.0%}
coverage, and `uncertain: true` when it holds both a flagged and an unflagged class ("uncertain — needs review";
a set of unflagged classes only is no doubt about malignancy).
Method: {spec.method}. Calibration images per class: {spec.calibration.get("per_class")}.
Coverage is a guarantee only for cases exchangeable with the calibration split; on other sources
(the test split of a source-disjoint evaluation) it is measured below, not promised.

| class | threshold (max 1 - p) | test coverage / mean set size | validation | calibration |
|---|---:|---:|---:|---:|
{table}
| **all** | | {overall} |
"""


def _gate_section(metadata: BundleMetadata) -> str:
    """The not-CT gate's refusal rates, measured by ``python -m training gate`` on images its fit never saw."""
    gate = getattr(metadata, "gate", None)
    evaluation = (gate.evaluation or {}) if gate is not None else {}
    if not evaluation:
        return ""
    ct_rows = "\n".join(
        f"| held-out CT, `{source}` | {rate['n']} | {_pct(rate['refused'])} |"
        for source, rate in evaluation["held_out_ct"].items()
    )
    missed = ", ".join(f"`{name}`" for name in evaluation.get("non_ct_let_through", [])) or "none"
    ct_total = sum(rate["n"] for rate in evaluation["held_out_ct"].values())
    non_ct_total = sum(rate["n"] for rate in evaluation["non_ct"].values())
    return f"""
## Not-CT gate

Before any verdict, an image that does not look like a CT slice of the chest (photo, chart, drawing,
screenshot, logo, text, noise, X-ray radiograph, MR...) is refused with HTTP 422 `not_ct_like`. The
gate (`gate` in `model.json`, `lungscan/model/gate.py`) was fitted on the training splits only; its refusal
rates on images the fit never saw:

| set | images | refused |
|---|---:|---:|
{ct_rows}
| **held-out CT, all** | {ct_total} | **{_pct(evaluation["held_out_ct_refused"])}** |
| **non-CT evaluation set** | {non_ct_total} | **{_pct(evaluation["non_ct_refused"])}** |

The non-CT set: {evaluation.get("non_ct_set", "")}. Let through: {missed}.
"""
