"""A study's answer from its slices: "N flagged of M", the highest tier, uncertainty, and the slices to look at first.

Pure functions over the slice dicts ``lungscan.studies.batch`` makes; the images of the most suspicious slices are
the adapter's to render and link.
"""

from __future__ import annotations

from typing import Any

from lungscan.model.classifier import TIER_CLEAR, TIER_NOT_EXCLUDED, TIER_SUSPICIOUS
from lungscan.studies.ordering import order_slices

MOST_SUSPICIOUS = 5  # slices a summary points to, most suspicious first
TIER_RANK = [TIER_CLEAR, TIER_NOT_EXCLUDED, TIER_SUSPICIOUS]
STATUS_DONE = "done"
STATUS_FAILED = "failed"


def number_slices(slices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every slice with an ``index``: its upload index, else (an archive's named objects) its rank by name."""
    taken = {item["index"] for item in slices if item.get("index") is not None}
    spare = (number for number in range(len(slices) + len(taken)) if number not in taken)
    for item in sorted(slices, key=lambda entry: entry["name"]):
        if item.get("index") is None:
            item["index"] = next(spare)
    return slices


def summarize(slices: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary of ``slices`` (already in reading order): suspicious, tier, uncertain, flagged of total (answered
    slices; ``failed`` counts the refused ones), the most suspicious slices and every slice's positive probability."""
    answered = [item for item in slices if "error" not in item]
    ranked = sorted(answered, key=lambda item: -item["positive_probability"])  # stable: ties in reading order
    uncertain_values = [item.get("uncertain") for item in answered if item.get("uncertain") is not None]
    return {
        "suspicious": any(item["suspicious"] for item in answered),
        "tier": max((item["tier"] for item in answered), key=TIER_RANK.index) if answered else None,
        "uncertain": any(uncertain_values) if uncertain_values else None,
        "flagged": sum(1 for item in answered if item["suspicious"]),
        "total": len(answered),
        "failed": len(slices) - len(answered),
        "most_suspicious_slices": [_pointer(item) for item in ranked[:MOST_SUSPICIOUS]],
        "positive_probabilities": [
            {
                "index": item["index"],
                "position": item.get("position"),
                "positive_probability": item["positive_probability"],
            }
            for item in answered
        ],
    }


def _pointer(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "index": item["index"],
        "series": item.get("series"),
        "instance_number": item.get("instance_number"),
        "position": item.get("position"),
        "positive_probability": item["positive_probability"],
        "preview_url": None,  # filled by whoever renders the images
        "heatmap_url": None,
    }


def conclude(slices: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]], dict[str, Any], list[dict[str, Any]]]:
    """``(status, slices in reading order, the study's summary, one summary per series)``; failed when no slice
    could be answered (every file corrupt, or none at all)."""
    ordered = order_slices(number_slices(slices))
    summary = summarize(ordered)
    series_names = list(dict.fromkeys(item["series"] for item in ordered if item.get("series") is not None))
    series = [
        {"series": name, "summary": summarize([item for item in ordered if item.get("series") == name])}
        for name in series_names
    ]
    status = STATUS_DONE if summary["total"] else STATUS_FAILED
    return status, ordered, summary, series


def study_date(slices: list[dict[str, Any]]) -> str | None:
    """The study's acquisition day: the earliest date its slices carry, else None (the caller uses the upload day)."""
    dates = [item["study_date"] for item in slices if item.get("study_date")]
    return min(dates) if dates else None
