"""Several datasets as one, on one question: the ``multi`` layout (a screening model that has seen more
than one hospital).

``data_dir`` is the folder holding the datasets (``../shared/data``). Each dataset is scanned, deduplicated
and split exactly as its own preset splits it (IQ-OTH/NCCD by blocks of file numbers, 20 blocks; Chest
CT-Scan source-disjoint, its ``valid/`` the test split), so no slice moves split between the single-source
bundles and this one, and every test split stays held out. Then each class is mapped onto the screening
question, ``malignant`` or ``normal``; a class mapped to None is left out of every split (benign: see
:data:`MALIGNANCY`).
"""

from __future__ import annotations

from dataclasses import replace

from training.data.dedup import DedupReport
from training.data.layouts import Sample
from training.data.splits import SPLITS, Split

# dataset folder -> (its layout, the split options of its own preset)
SOURCES: dict[str, tuple[str, dict]] = {
    "iq-oth-nccd": ("iq-oth", {"blocks": 20, "gap": 2, "seed": 42}),
    "chest-ct-scan": ("kaggle", {"seed": 42, "test_fraction": 0.2}),
}
# Benign (IQ-OTH/NCCD's 15 benign patients) is left out: a benign nodule is neither a normal slice nor
# cancer, and trained as either it would teach the model that a nodule means "normal" or "cancer". The
# served model answers benign slices all the same (the card reports how it flags them).
MALIGNANCY: dict[str, str | None] = {
    "normal": "normal",
    "malignant": "malignant",
    "adenocarcinoma": "malignant",
    "large_cell_carcinoma": "malignant",
    "squamous_cell_carcinoma": "malignant",
    "benign": None,
}
CLASSES = ("normal", "malignant")


def combine(parts: dict, dedups: dict) -> tuple[Split, DedupReport]:
    """One split and one deduplication report from each dataset's own (``parts``: name -> ``Split``),
    every sample mapped onto :data:`CLASSES` (benign left out)."""
    report = DedupReport()
    for name, dedup in dedups.items():
        for field in ("files", "kept", "dropped", "conflicting"):
            setattr(report, field, getattr(report, field) + getattr(dedup, field))
        report.dropped_files += [f"{name}/{file}" for file in dedup.dropped_files]
    split = Split(
        **{split_name: _mapped(part.by_name(split_name) for part in parts.values()) for split_name in SPLITS},
        gap_dropped=_mapped(part.gap_dropped for part in parts.values()),
        blocks={f"{name}/{label}": blocks for name, part in parts.items() for label, blocks in part.blocks.items()},
        method="each dataset split as its own preset splits it, then mapped onto malignant/normal (benign left "
        "out): " + "; ".join(f"{name}: {part.method}" for name, part in parts.items()),
        near_duplicates_dropped=[row for part in parts.values() for row in part.near_duplicates_dropped],
        classes=CLASSES,
    )
    return split, report


def _mapped(groups) -> list[Sample]:
    return [replace(s, label=MALIGNANCY[s.label]) for group in groups for s in group if MALIGNANCY.get(s.label)]
