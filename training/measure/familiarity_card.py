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
    rows = [(f"own test split (`{metadata.name}`)", row) for row in evaluation.get("own", {}).values()]
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
