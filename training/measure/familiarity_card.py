"""The model card's section on the unfamiliar-CT signal, from ``model.json``'s ``familiarity``.

Every row comes from ``training/measure/familiarity.py``'s ``screening_figures``: the bundle's own test
split and the other datasets' slices are measured by the same code, through the serving path.
"""

from __future__ import annotations

from lungscan.bundle.metadata import BundleMetadata
from lungscan.model.classifier import UNFAMILIAR_NOTE

COLUMNS = (
    ("unfamiliar", "flagged unfamiliar"),
    ("cancer_confident_all_clear", "cancer slices neither flagged nor uncertain (target ≤ 2%)"),
    ("sensitivity", "flag sensitivity (cancer)"),
    ("specificity", "flag specificity (normal)"),
    ("uncertain_familiar", "familiar slices uncertain (target ≤ 35%)"),
    ("screening_coverage", "screening coverage (target ≥ 90% own, ≥ 85% other)"),
)


def _cell(value: dict | None) -> str:
    if not value or value.get("share") is None:
        return "n/a"
    n = value["n"]
    return f"{100 * value['share']:.1f}% ({round(value['share'] * n)}/{n})"


def familiarity_section(metadata: BundleMetadata) -> str:
    spec = metadata.familiarity
    if spec is None or not spec.evaluation:
        return ""
    evaluation = spec.evaluation
    # "test" is the whole own test split; "test: SOURCE" its slices from one dataset (a multi-source bundle).
    rows = [
        (f"own test split{key.removeprefix('test')} (`{metadata.name}`)", row)
        for key, row in evaluation.get("own", {}).items()
    ]
    rows += [(f"another hospital: `{name}`", row) for name, row in evaluation.get("other_sources", {}).items()]
    header = "| slices | n | " + " | ".join(title for _, title in COLUMNS) + " |"
    rule = "|---|---:|" + "---:|" * len(COLUMNS)
    lines = [
        f"| {title} | {row['n']} | " + " | ".join(_cell(row.get(key)) for key, _ in COLUMNS) + " |"
        for title, row in rows
    ]
    table = "\n".join([header, rule, *lines])
    fitted = spec.fitted_on
    return f"""
## Unfamiliar CT

A second question after the not-CT gate: is this CT slice like the ones this model learned from? An
unfamiliar slice is answered, never refused, with `unfamiliar: true`, `uncertain: true`, every flagged class
added to its prediction set, and the words "{UNFAMILIAR_NOTE}" Method: {spec.method}; fitted on the
{fitted.get("split")} split only (n={fitted.get("n")}, {fitted.get("components")} principal directions); threshold:
{fitted.get("threshold")}.

Measured through the serving path, by the same code for every row (`training/measure/familiarity.py`). Cancer
slices are those of a positive class of their own dataset; screening coverage counts a cancer slice covered when
its set holds a flagged class and a normal slice when its set holds `normal` (the datasets' classes differ, so this
is the malignancy question's coverage, not the per-class one above). Another hospital's slices are every file of
that dataset's split (this model saw none of them).

{table}
"""


def sources_section(metadata: BundleMetadata) -> str:
    """For a model trained on several datasets: its threshold choice and the leave-one-source-out figures."""
    metrics = metadata.metrics.model_dump()
    choice, cross = metrics.get("threshold_choice"), metrics.get("leave_one_source_out")
    if not choice and not cross:
        return ""
    text = "\n## Threshold and sources\n"
    if choice:
        text += (
            f"\nThe flag's threshold, {choice['threshold']}, was chosen on the calibration split for a sensitivity "
            f"target of {choice['target_sensitivity']:.0%}: {choice['method']}; there the flag reached sensitivity "
            f"{choice['sensitivity']} and specificity {choice['specificity']}.\n"
        )
    if cross:
        rows = "\n".join(
            f"| {'+'.join(row['trained_on'])} ({row['fit_images']} images) | `{held_out}` test split | "
            f"{row['test']['n']} ({row['test']['positives']} cancer) | {row['threshold']} | "
            f"{_share(row['test']['sensitivity'])} | {_share(row['test']['specificity'])} | {row['test']['roc_auc']} |"
            for held_out, row in cross.items()
        )
        text += f"""
Leave one source out (`training/measure/cross_source.py`): the same recipe (this bundle's frozen HOG front end,
its head refitted as the same class-balanced logistic regression) trained on one dataset's train + validation
files and tested on the other's test split, at the threshold chosen on the training dataset's calibration split
for the same target (the model's probability, no calibration or conformal set):

| trained on | tested on | slices | threshold | sensitivity | specificity | ROC-AUC |
|---|---|---:|---:|---:|---:|---:|
{rows}
"""
    return text


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"
